#pragma once
/// @file
/// @brief `Sharded<T>`: a worker's transport to K server shards, each owning a slice
/// of the parameters, presented to the worker as one server.
///
/// The worker (`Worker`, `WorkerCore`) is unchanged: it sends one `Join`, `Push`,
/// `Pull` or `Leave` to `server_peer` and waits for one answer. This adapter sends
/// each shard its part (a push's update is cut into K slices, an encoded one by
/// `compress::split` into K payloads that decode to exactly those slices; each sent at once:
/// every transport's `send` only hands the message over, so the slices travel
/// concurrently) and hands the worker one `msg::Model` only when every shard has
/// answered the request, each shard's slice copied straight into the one full-size
/// vector the worker receives.
///
/// Why every policy keeps its semantics: every worker pushes every slice at every
/// clock, so each shard sees the same sequence of joins, pushes (one per worker per
/// clock) and leaves as an unsharded server, and its clock table, barrier and
/// staleness decisions are the same; the worker's read at clock c completes only when
/// every shard has allowed it, i.e. it waits on the slowest shard. Under a round-based
/// combiner (BSP, OSP: `combine::RoundAverage`) a version is a round, and the K
/// versions in one answer must be equal (`ShardedOptions::equal_versions`); under
/// `combine::Sum` each shard counts pushes as they reach it, so versions may differ by
/// the pushes still in flight to some shard, and the answer carries the smallest
/// (a version every shard has reached, as a push's `base_version` must be).

#include "psync/compress/codec.hpp"
#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/core/message.hpp"
#include "psync/core/sharding.hpp"
#include "psync/policies/rules.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace psync {

/// @brief How a `Sharded` transport checks and waits.
struct ShardedOptions {
  /// @brief Every read's K answers must carry the same version (else `ProtocolError`
  /// naming the shards). True for round-based combiners, where a version is a round
  /// (`shard_versions_agree<P>`); false for `combine::Sum`, whose versions count the
  /// pushes each shard has received so far.
  bool equal_versions = false;
  /// @brief While blocked on one shard's answer, look at the others (for a lost
  /// connection or a refusal) at least this often.
  std::chrono::milliseconds poll_slice{20};
};

/// @brief Whether policy `P`'s shards answer a read with equal versions (a version is a round).
template <SyncPolicy P>
inline constexpr bool shard_versions_agree = std::is_same_v<typename P::Combiner, combine::RoundAverage>;

/// @brief A worker's endpoint to K server shards over transports of type `T`, one per
/// shard; a `Transport` itself, so `Worker<M, Sharded<T>, P>` runs unchanged.
///
/// Shard i owns `layout().offset(i)` .. `+ layout().size(i)` of the parameters and is
/// served by a `Server<ParameterSlice, P>` whose model is that slice. Every shard must
/// run the same policy and see the same workers. Errors name the shard by index and
/// by the name given for it (e.g. its host:port):
/// - a refusal from a shard reaches the worker as that shard's `msg::Error`, its text
///   prefixed with the shard (so `ServerStoppingError`/`ProtocolError` name it);
/// - a lost shard throws `TransportError` from `receive`/`try_receive`, a failed send
///   from `send`;
/// - when `receive`'s deadline passes while a request is outstanding, it throws
///   `TimeoutError` naming the shards that have not answered (with nothing
///   outstanding it returns `std::nullopt`, as the concept says);
/// - answers whose join clocks, worker ids, sizes or (with `equal_versions`) versions
///   disagree throw `ProtocolError` naming the shards.
///
/// One thread sends and receives (as `Worker` does); not safe for concurrent use.
/// Steady state allocates nothing: a push's full-size vector becomes the destination
/// of its answer, and each shard's slice vectors come back (in-process) or are
/// received into (sockets) and are reused for the next push.
template <Transport T>
class Sharded {
 public:
  /// @brief Endpoints to the shards of a `dimension`-float model, in shard order,
  /// with a name for each (`names` may be empty: then "shard i"). Throws `ConfigError`
  /// for no shards, a name count that differs, endpoints for different workers, or a
  /// dimension smaller than the shard count.
  Sharded(std::vector<T> shards, std::vector<std::string> names, Eigen::Index dimension, ShardedOptions options = {})
      : shards_(std::move(shards)),
        names_(std::move(names)),
        layout_(dimension, checked_count(shards_.size())),
        options_(options),
        got_(shards_.size()),
        slice_spares_(shards_.size()),
        cut_(shards_.size()),
        payload_spares_(shards_.size()) {
    for (std::uint32_t i = 0; i < shards_.size(); ++i) sizes_.push_back(static_cast<std::uint64_t>(layout_.size(i)));
    if (names_.empty()) {
      for (std::size_t i = 0; i < shards_.size(); ++i) names_.push_back("shard " + std::to_string(i));
    }
    if (names_.size() != shards_.size()) {
      throw ConfigError("sharded transport: " + std::to_string(shards_.size()) + " shard endpoints but " +
                        std::to_string(names_.size()) + " names");
    }
    const PeerId id = shards_.front().self();
    for (std::size_t i = 1; i < shards_.size(); ++i) {
      if (shards_[i].self() != id) {
        throw ConfigError("sharded transport: the endpoint to " + who(i) + " is for peer " +
                          std::to_string(shards_[i].self()) + ", the one to " + who(0) + " for peer " +
                          std::to_string(id));
      }
    }
  }

  /// @brief This worker's id (the same on every shard).
  PeerId self() const { return shards_.front().self(); }
  /// @brief Which slice each shard owns.
  const ShardLayout& layout() const noexcept { return layout_; }
  /// @brief Number of shards.
  std::size_t shard_count() const noexcept { return shards_.size(); }
  /// @brief The slice sizes an encoded push is cut into, in shard order (empty for
  /// one shard): a worker's encoder takes them (`Worker` asks for them, the
  /// `WorkerCore::use_codec` argument), so qsgd8's buckets restart at each slice.
  std::vector<std::uint64_t> push_segments() const { return shards_.size() < 2 ? std::vector<std::uint64_t>{} : sizes_; }
  /// @brief The endpoint to shard `i`.
  T& shard(std::size_t i) { return shards_.at(i); }

  /// @brief Sends `m` to every shard: a `Push`'s update cut into slices, a `Join` with
  /// each shard's slice size as its dimension, the rest as they are. `to` must be
  /// `server_peer`. Throws `TransportError` naming the shard a send failed on,
  /// `ProtocolError` for a vector whose size is not the model's.
  void send(PeerId to, Message&& m) {
    if (to != server_peer) {
      throw TransportError(who_self() + ": a sharded endpoint sends only to the server, not to peer " +
                           std::to_string(to));
    }
    if (auto* push = std::get_if<msg::Push>(&m)) return send_push(std::move(*push));
    if (auto* join = std::get_if<msg::Join>(&m)) {
      if (join->dimension != static_cast<std::uint64_t>(layout_.dimension())) {
        throw ProtocolError(who_self() + ": a join for " + std::to_string(join->dimension) +
                            " parameters, but the shards hold " + std::to_string(layout_.dimension()));
      }
      for (std::size_t i = 0; i < shards_.size(); ++i) {
        msg::Join j = *join;
        j.dimension = static_cast<std::uint64_t>(layout_.size(static_cast<std::uint32_t>(i)));
        send_to(i, std::move(j));
      }
      requests_.push_back(true);
      return;
    }
    if (auto* pull = std::get_if<msg::Pull>(&m)) {
      for (std::size_t i = 0; i < shards_.size(); ++i) send_to(i, msg::Pull{pull->clock, take_slice(i)});
      keep_full(std::move(pull->buffer));
      requests_.push_back(false);
      return;
    }
    // Leave (and anything else a worker might send): every shard gets it; all are tried.
    std::optional<TransportError> first;
    for (std::size_t i = 0; i < shards_.size(); ++i) {
      try {
        send_to(i, Message(m));
      } catch (const TransportError& e) {
        if (!first) first.emplace(e);
      }
    }
    if (first) throw *first;
  }

  /// @brief The next whole answer (or a shard's refusal), blocking until `deadline`.
  /// Throws `TimeoutError` naming the shards still owing an answer if the deadline
  /// passes while a request is outstanding; `TransportError` for a lost shard.
  std::optional<Envelope> receive(Clock::time_point deadline) {
    while (true) {
      if (auto e = poll_all()) return e;
      const auto now = Clock::now();
      if (now >= deadline) {
        if (requests_.empty()) return std::nullopt;
        throw TimeoutError(who_self() + ": no answer within the deadline from " + pending_names() + " (" +
                           std::to_string(arrived_) + " of " + std::to_string(shards_.size()) + " shards answered)");
      }
      // Block on the first shard that owes an answer; look at the others every slice.
      const std::size_t i = first_pending();
      const auto until = shards_.size() == 1 ? deadline : std::min(deadline, now + options_.poll_slice);
      if (auto env = receive_from(i, until)) {
        if (auto out = handle(i, std::move(*env))) return out;
      }
    }
  }

  /// @brief A whole answer or a refusal if one is ready, without blocking.
  std::optional<Envelope> try_receive() { return poll_all(); }

 private:
  static std::uint32_t checked_count(std::size_t n) {
    if (n == 0) throw ConfigError("sharded transport: no shard endpoints");
    return static_cast<std::uint32_t>(n);
  }

  std::string who(std::size_t i) const {
    return "shard " + std::to_string(i) + " of " + std::to_string(shards_.size()) + " (" + names_[i] + ")";
  }
  std::string who_self() const { return "worker " + std::to_string(shards_.front().self()); }

  std::string pending_names() const {
    std::string s;
    for (std::size_t i = 0; i < shards_.size(); ++i) {
      if (got_[i]) continue;
      s += s.empty() ? "" : ", ";
      s += who(i);
    }
    return s;
  }

  std::size_t first_pending() const {
    for (std::size_t i = 0; i < shards_.size(); ++i) {
      if (!got_[i]) return i;
    }
    return 0;
  }

  void send_to(std::size_t i, Message&& m) {
    try {
      shards_[i].send(server_peer, std::move(m));
    } catch (const TransportError& e) {
      throw TransportError(who_self() + ": " + who(i) + ": " + e.what());
    }
  }

  std::optional<Envelope> receive_from(std::size_t i, Clock::time_point until) {
    try {
      return shards_[i].receive(until);
    } catch (const TransportError& e) {
      throw TransportError(who_self() + ": " + who(i) + ": " + e.what());
    }
  }

  void send_push(msg::Push&& p) {
    if (p.encoding != Encoding::dense) {
      if (p.encoded_dimension != static_cast<std::uint64_t>(layout_.dimension())) {
        throw ProtocolError(who_self() + ": a push of " + std::to_string(p.encoded_dimension) +
                            " parameters, but the shards hold " + std::to_string(layout_.dimension()));
      }
      if (shards_.size() == 1) {
        send_to(0, std::move(p));
        requests_.push_back(false);
        return;
      }
      // Cut into one ordinary payload per slice (compress::split), each decoding to
      // exactly its slice of the whole: the shards together apply what one server would.
      for (std::size_t i = 0; i < shards_.size(); ++i) cut_[i] = take_payload(i);
      if (auto fault = compress::split(p.encoding, p.payload, sizes_, cut_)) {
        throw ProtocolError(who_self() + ": cannot cut a " + std::string(encoding_name(p.encoding)) + " push over " +
                            std::to_string(shards_.size()) + " shards: " + *fault);
      }
      for (std::size_t i = 0; i < shards_.size(); ++i) {
        send_to(i, msg::Push{p.clock, p.base_version, p.steps, Eigen::VectorXf(), p.encoding, sizes_[i], std::move(cut_[i])});
      }
      // The whole payload's buffer goes back to the worker with the answer, for its next push.
      if (whole_payloads_.size() < 4) whole_payloads_.push_back(std::move(p.payload));
      requests_.push_back(false);
      return;
    }
    if (p.update.size() != layout_.dimension()) {
      throw ProtocolError(who_self() + ": a push of " + std::to_string(p.update.size()) +
                          " parameters, but the shards hold " + std::to_string(layout_.dimension()));
    }
    for (std::size_t i = 0; i < shards_.size(); ++i) {
      const auto s = static_cast<std::uint32_t>(i);
      Eigen::VectorXf slice = take_slice(i);
      slice.resize(layout_.size(s));  // a no-op for a reused slice vector
      slice = p.update.segment(layout_.offset(s), layout_.size(s));
      send_to(i, msg::Push{p.clock, p.base_version, p.steps, std::move(slice)});
    }
    // The full vector is free again: the whole answer is assembled into it.
    keep_full(std::move(p.update));
    requests_.push_back(false);
  }

  Eigen::VectorXf take_slice(std::size_t i) {
    auto& pool = slice_spares_[i];
    if (pool.empty()) return Eigen::VectorXf(layout_.size(static_cast<std::uint32_t>(i)));
    Eigen::VectorXf v = std::move(pool.back());
    pool.pop_back();
    return v;
  }

  void keep_slice(std::size_t i, Eigen::VectorXf&& v) {
    auto& pool = slice_spares_[i];
    if (v.size() == layout_.size(static_cast<std::uint32_t>(i)) && pool.size() < 4) pool.push_back(std::move(v));
  }

  std::vector<std::byte> take_payload(std::size_t i) {
    auto& pool = payload_spares_[i];
    if (pool.empty()) return {};
    std::vector<std::byte> b = std::move(pool.back());
    pool.pop_back();
    return b;
  }

  void keep_full(Eigen::VectorXf&& v) {
    if (v.size() == layout_.dimension() && full_spares_.size() < 4) full_spares_.push_back(std::move(v));
  }

  std::optional<Envelope> poll_all() {
    for (std::size_t i = 0; i < shards_.size(); ++i) {
      while (true) {
        std::optional<Envelope> env;
        try {
          env = shards_[i].try_receive();
        } catch (const TransportError& e) {
          throw TransportError(who_self() + ": " + who(i) + ": " + e.what());
        }
        if (!env) break;
        if (auto out = handle(i, std::move(*env))) return out;
      }
    }
    return std::nullopt;
  }

  /// Takes one message from shard i; returns what the worker must see now, if anything.
  std::optional<Envelope> handle(std::size_t i, Envelope&& env) {
    if (auto* model = std::get_if<msg::Model>(&env.message)) {
      if (requests_.empty()) throw ProtocolError(who_self() + ": " + who(i) + " sent a model no request asked for");
      if (got_[i]) throw ProtocolError(who_self() + ": " + who(i) + " answered one request twice");
      const auto expected = layout_.size(static_cast<std::uint32_t>(i));
      if (model->values().size() != expected) {
        throw ProtocolError(who_self() + ": " + who(i) + " sent " + std::to_string(model->values().size()) +
                            " parameters; its slice has " + std::to_string(expected));
      }
      got_[i] = std::move(*model);
      if (++arrived_ < shards_.size()) return std::nullopt;
      return assemble();
    }
    if (auto* error = std::get_if<msg::Error>(&env.message)) {
      return Envelope{server_peer, msg::Error{error->code, who(i) + ": " + error->text}};
    }
    if (std::holds_alternative<msg::Leave>(env.message)) {
      throw TransportError(who_self() + ": lost " + who(i) +
                           (requests_.empty() ? std::string() : std::string(" while waiting for its answer")));
    }
    throw ProtocolError(who_self() + ": unexpected '" + std::string(message_name(env.message)) + "' message from " +
                        who(i));
  }

  /// Every shard answered the oldest request: one model, each slice copied into place.
  Envelope assemble() {
    const bool join = requests_.front();
    const msg::Model& first = *got_[0];
    msg::Model out;
    out.version = first.version;
    out.min_clock = first.min_clock;
    out.held_ns = first.held_ns;
    out.worker = first.worker;
    for (std::size_t i = 1; i < shards_.size(); ++i) {
      const msg::Model& m = *got_[i];
      if (m.worker != first.worker) disagree(i, "worker id", first.worker, m.worker);
      if (join && m.min_clock != first.min_clock) disagree(i, "start clock", first.min_clock, m.min_clock);
      if (!join && options_.equal_versions && m.version != first.version) {
        disagree(i, "version", first.version, m.version);
      }
      out.version = std::min(out.version, m.version);
      out.min_clock = std::min(out.min_clock, m.min_clock);
      out.held_ns = std::max(out.held_ns, m.held_ns);
    }
    if (!full_spares_.empty()) {
      out.parameters = std::move(full_spares_.back());
      full_spares_.pop_back();
    } else {
      out.parameters.resize(layout_.dimension());
    }
    for (std::size_t i = 0; i < shards_.size(); ++i) {
      const auto s = static_cast<std::uint32_t>(i);
      msg::Model& m = *got_[i];
      out.parameters.segment(layout_.offset(s), layout_.size(s)) = m.values();
      keep_slice(i, std::move(m.parameters));
      keep_slice(i, std::move(m.spare));
      if (shards_.size() == 1) {
        out.spare_payload = std::move(m.spare_payload);  // an encoded push's buffer, back
      } else if (m.spare_payload.capacity() != 0 && payload_spares_[i].size() < 4) {
        payload_spares_[i].push_back(std::move(m.spare_payload));  // a slice's buffer, for the next cut
      }
      got_[i].reset();
    }
    if (!whole_payloads_.empty()) {
      out.spare_payload = std::move(whole_payloads_.back());
      whole_payloads_.pop_back();
    }
    arrived_ = 0;
    requests_.pop_front();
    return Envelope{server_peer, std::move(out)};
  }

  [[noreturn]] void disagree(std::size_t i, const char* what, std::uint64_t a, std::uint64_t b) const {
    throw ProtocolError(who_self() + ": the shards disagree on the " + what + " of one answer: " + who(0) + " says " +
                        std::to_string(a) + ", " + who(i) + " says " + std::to_string(b));
  }

  std::vector<T> shards_;
  std::vector<std::string> names_;
  ShardLayout layout_;
  ShardedOptions options_;
  std::vector<std::optional<msg::Model>> got_;  // shard i's answer to the oldest request, once it came
  std::size_t arrived_ = 0;
  std::deque<bool> requests_;                   // requests sent to every shard, oldest first (true: a join)
  std::vector<std::vector<Eigen::VectorXf>> slice_spares_;
  std::vector<Eigen::VectorXf> full_spares_;
  std::vector<std::uint64_t> sizes_;                                // each shard's slice size, in shard order
  std::vector<std::vector<std::byte>> cut_;                         // an encoded push's slices, being sent
  std::vector<std::vector<std::vector<std::byte>>> payload_spares_;  // per shard: slice payload buffers back from it
  std::vector<std::vector<std::byte>> whole_payloads_;              // encoded pushes' buffers, for the worker
};

}  // namespace psync
