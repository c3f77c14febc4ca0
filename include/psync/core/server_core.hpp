#pragma once
/// @file
/// @brief The parameter server's protocol as a sans-I/O state machine: messages
/// and the time go in, messages to send come out. No threads, no transport, no clock.

#include "psync/compress/codec.hpp"
#include "psync/concepts.hpp"
#include "psync/core/checkpoint.hpp"
#include "psync/core/clock_table.hpp"
#include "psync/core/error.hpp"
#include "psync/core/message.hpp"
#include "psync/core/metrics.hpp"
#include "psync/core/model_snapshot.hpp"
#include "psync/core/transmit.hpp"
#include "psync/optim/optimizer.hpp"
#include "psync/optim/schedule.hpp"
#include "psync/policies/rules.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace psync {

/// @brief What the server core needs to know; the driver's options add threads and snapshots.
struct ServerCoreOptions {
  /// @brief Workers to wait for before the first model is handed out (later joiners start at the slowest clock).
  std::uint32_t expected_workers = 1;
  /// @brief How long to wait for `expected_workers`; then start with those present (none: `TimeoutError`).
  std::chrono::milliseconds join_timeout{30000};
  /// @brief A live worker that stays silent this long is removed. Silence counts
  /// from its last message or from the server's last answer to it, whichever is
  /// later; a worker whose read the server holds is waiting, not silent.
  std::chrono::milliseconds peer_timeout{60000};
  /// @brief Most distinct worker ids the server will ever admit (each costs a clock
  /// table entry and a report); a join beyond it is refused with `limit_exceeded`.
  std::uint32_t max_workers = 4096;
  /// @brief Receives one line per event (joins, departures, refusals); may be empty.
  std::function<void(std::string_view)> log;
  /// @brief Replies share one immutable snapshot per model version (`msg::Model::shared`):
  /// one copy of the model per version instead of one per reply. false restores the
  /// copy into every reply (the server before snapshots), to measure what sharing saves.
  bool share_replies = true;
  /// @brief The learning rate of a server-side optimizer by optimizer step (0-based:
  /// rounds under `RoundAverage`, pushes under `Sum`). Required when the core has an
  /// optimizer (`ServerCore<M, P, O>`), ignored otherwise.
  optim::Schedule optimizer_schedule;
};

/// @brief The server's decisions for model type `M` under policy `P`, with no I/O.
///
/// Feed it every received message (`on_message`), every peer the transport lost
/// (`on_peer_lost`) and the passing of time (`on_timer` by `next_deadline()`);
/// send what `poll_transmit()` returns. The policy decides when a read is answered
/// (`read_ready`) and how pushes combine (`P::Combiner`); the core enforces the
/// protocol: one outstanding read per worker, pushes stamped with the worker's own
/// clock, finite updates of the model's dimension, and reads at the reader's clock.
/// An encoded push (`msg::Push::encoding`, docs/compression.md) is validated and
/// decoded into a dense vector (one buffer, allocated once) before anything else
/// sees it, so every policy combines the same dense update whatever the codec; a
/// malformed one is refused (`bad_frame`, naming the fault) like a non-finite push.
/// A refused peer gets a `msg::Error` naming what was wrong and is removed; what
/// was accepted before stays applied.
///
/// **Checkpoints.** `checkpoint_state` captures what the core cannot recompute;
/// `restore` starts a fresh core from it. A worker restored as live is expected
/// back: its `Join` is its return at its saved clock (not a `duplicate_worker`), the
/// join reply's `min_clock` carries that clock, and it is removed after
/// `peer_timeout` (counted from the restore) if it never returns.
///
/// **Server-side optimizer.** With `O` an `optim::Optimizer` (not the default
/// `optim::None`) the workers push gradients (`optim::OnServer`; their `Join` names the
/// policy with `optim::gradient_suffix`, and a worker without it is refused) and the
/// core applies `O` to the combined gradient at `ServerCoreOptions::optimizer_schedule`'s
/// rate: under `RoundAverage` once per closed round, on the round's mean gradient; under
/// `Sum` once per push, on that push's gradient sum. The optimizer's state is saved in
/// checkpoints (`CheckpointState::policy_state`); an optimizer without `save`/`restore`
/// makes `checkpoint_state` throw `ConfigError`.
template <ParameterSet M, SyncPolicy P, class O = optim::None>
  requires std::same_as<O, optim::None> || optim::Optimizer<O>
class ServerCore {
  static constexpr bool has_optimizer = !std::is_same_v<O, optim::None>;
  static constexpr const char* state_magic = "psync-server-optimizer-1";

 public:
  /// @brief A core whose initial global model is `model`, starting at `now`; `optimizer`
  /// is the server-side optimizer when `O` is one.
  ServerCore(M model, ServerCoreOptions options, P policy, Clock::time_point now, O optimizer = {})
      : model_(std::move(model)), options_(std::move(options)), policy_(std::move(policy)), optimizer_(std::move(optimizer)) {
    if (options_.expected_workers == 0) throw ConfigError("server: expected_workers must be at least 1");
    if constexpr (has_optimizer) {
      if (!options_.optimizer_schedule) {
        throw ConfigError("server: the server-side optimizer '" + optimizer_.name() +
                          "' needs a learning rate (ServerCoreOptions::optimizer_schedule is empty)");
      }
      if constexpr (!installs_global<P>) {
        throw ConfigError("server: policy '" + policy_.name() + "' installs '" + P::Install::name +
                          "' models (LOSP's local compensation), which a server-side optimizer ('" + optimizer_.name() +
                          "') cannot support: run the optimizer on the workers");
      }
      optimizer_.reset(dimension());
    }
    combiner_.reset(dimension());
    join_deadline_ = now + options_.join_timeout;
    outbox_.reserve(16);
  }

  /// @brief Parameter count.
  Eigen::Index dimension() const { return model_.parameters().size(); }
  /// @brief The global model.
  const M& model() const noexcept { return model_; }
  /// @brief The policy (stateful policies learn from the pushes).
  const P& policy() const noexcept { return policy_; }
  /// @brief The server-side optimizer (`optim::None` without one).
  const O& optimizer() const noexcept { return optimizer_; }
  /// @brief Server-side optimizer steps taken (the schedule's next argument).
  std::uint64_t optimizer_steps() const noexcept { return optimizer_steps_; }
  /// @brief Model versions made so far.
  std::uint64_t version() const noexcept { return version_; }
  /// @brief True once the expected workers joined (or the join timeout passed with some).
  bool started() const noexcept { return started_; }
  /// @brief When this core started training (the expected workers had joined, or the
  /// join timeout passed with some); empty before, and for a core restored as started.
  std::optional<Clock::time_point> started_at() const noexcept { return started_at_; }
  /// @brief Workers joined and not gone.
  std::size_t live_workers() const { return clocks_.live_count(); }
  /// @brief The slowest live worker's clock.
  std::uint64_t min_clock() const { return clocks_.min_clock(); }
  /// @brief Training started and every worker that joined has left: nothing more will happen.
  bool done() const { return started_ && clocks_.live_count() == 0; }
  /// @brief Reads held back by the policy right now.
  std::size_t held_reads() const noexcept { return held_.size(); }
  /// @brief Vectors the reply snapshots use (allocated once each; for tests and diagnostics).
  std::size_t snapshot_buffers() const noexcept { return snapshots_.kept(); }
  /// @brief What the core measured so far (peers are filled in by `finish_report`).
  const ServerReport& report() const noexcept { return report_; }
  /// @brief Counts the changes a checkpoint would capture (joins, accepted pushes,
  /// departures, the start, a restore): a driver skips a checkpoint when it has not moved.
  std::uint64_t state_changes() const noexcept { return changes_; }
  /// @brief Workers restored as live that have not sent their `Join` yet.
  std::size_t awaited_workers() const noexcept { return returning_.size(); }
  /// @brief Every worker id this core holds: joined at any time (live, finished, lost)
  /// or restored from a checkpoint. None is assigned to a new worker; a transport
  /// that assigns ids is told them (`Server::run` does, after a restore).
  std::vector<PeerId> known_workers() const {
    std::vector<PeerId> ids;
    ids.reserve(peers_.size());
    for (const auto& [id, p] : peers_) ids.push_back(id);
    return ids;
  }

  /// @brief Fills `out` with the state a checkpoint stores (see `CheckpointState`),
  /// reusing its vectors: once `out` has the model's size this copies the parameters
  /// (and an averaging policy's round sum) and allocates nothing model-sized.
  /// Held reads, the outbox and last-heard times are not part of it.
  void checkpoint_state(CheckpointState& out) const {
    out.policy = policy_.name();
    out.dimension = static_cast<std::uint64_t>(dimension());
    out.version = version_;
    out.parameters = model_.parameters();
    out.workers.clear();
    clocks_.for_each([&](PeerId w, std::uint64_t clock, bool live) { out.workers.push_back(WorkerClock{w, clock, live}); });
    out.max_clock_seen = clocks_.max_clock_seen();
    out.started = started_;
    combiner_.save(out.round);
    out.updates_applied = report_.updates_applied;
    out.steps_applied = report_.steps_applied;
    out.policy_state.clear();
    if constexpr (has_optimizer) {
      if constexpr (requires(std::vector<std::byte>& b) { optimizer_.save(b); }) {
        optim::put_string(out.policy_state, state_magic);
        optim::put_string(out.policy_state, optimizer_.name());
        optim::put_u64(out.policy_state, optimizer_steps_);
        optimizer_.save(out.policy_state);
      } else {
        throw ConfigError("server: the server-side optimizer '" + optimizer_.name() +
                          "' has no save()/restore(), so its state cannot be checkpointed");
      }
    }
  }

  /// @brief The state a checkpoint stores, in a new object.
  CheckpointState checkpoint_state() const {
    CheckpointState s;
    checkpoint_state(s);
    return s;
  }

  /// @brief Starts this fresh core (no message handled yet) from checkpoint `s` at
  /// `now`: the parameters, version, clocks, the combiner's open round, the counters
  /// and whether training had started. Each worker restored as live gets `now` as
  /// its last-heard time (so one that never returns is removed after `peer_timeout`)
  /// and its next `Join` is taken as its return at its saved clock. Throws
  /// `ConfigError` if the core is not fresh, or if `s` was written under another
  /// policy or dimension or is inconsistent (nothing is changed then).
  void restore(const CheckpointState& s, Clock::time_point now) {
    if (clocks_.known_count() != 0 || started_ || changes_ != 0) {
      throw ConfigError("server: restore() needs a fresh core (no message handled yet)");
    }
    check_compatible(s, policy_.name(), static_cast<std::uint64_t>(dimension()));
    if (s.parameters.size() != dimension()) {
      throw ConfigError("server: the checkpoint's parameters have " + std::to_string(s.parameters.size()) +
                        " floats, its dimension says " + std::to_string(s.dimension));
    }
    // Everything that can throw runs on copies first: a refused state changes nothing.
    ClockTable clocks;
    clocks.restore(s.workers, s.max_clock_seen);
    typename P::Combiner combiner;
    combiner.reset(dimension());
    combiner.restore(s.round, dimension());
    std::uint64_t optimizer_steps = 0;
    O optimizer = optimizer_;
    if constexpr (has_optimizer) {
      if (s.policy_state.empty()) {
        throw ConfigError("server: the checkpoint holds no server-side optimizer state, this server runs '" +
                          optimizer_.name() + "' (it was written without a server-side optimizer)");
      }
      optim::StateReader in(s.policy_state);
      if (in.string() != state_magic) throw ConfigError("server: the checkpoint's policy state is not a server optimizer's");
      if (const std::string name = in.string(); name != optimizer_.name()) {
        throw ConfigError("server: the checkpoint's server-side optimizer is '" + name + "', this server runs '" +
                          optimizer_.name() + "'");
      }
      optimizer_steps = in.u64();
      if constexpr (requires(optim::StateReader& r) { optimizer.restore(r); }) optimizer.restore(in);
      if (in.left() != 0) {
        throw ConfigError("server: " + std::to_string(in.left()) + " bytes left over after the server-side optimizer's state");
      }
    } else if (!s.policy_state.empty()) {
      throw ConfigError("server: the checkpoint holds " + std::to_string(s.policy_state.size()) +
                        " bytes of policy or optimizer state (a server-side optimizer's?), which this server has none of");
    }
    clocks_ = std::move(clocks);
    optimizer_ = std::move(optimizer);
    optimizer_steps_ = optimizer_steps;
    combiner_ = std::move(combiner);
    model_.parameters() = s.parameters;
    version_ = s.version;
    started_ = s.started;
    model_changed_ = true;
    report_.updates_applied = s.updates_applied;
    report_.steps_applied = s.steps_applied;
    for (const WorkerClock& w : s.workers) {
      peers_[w.worker].id = w.worker;
      if (!w.live) continue;
      returning_.insert(w.worker);
      last_heard_[w.worker] = now;
    }
    join_deadline_ = now + options_.join_timeout;
    ++changes_;
    note("restored at version " + std::to_string(version_) + " (" + std::to_string(s.steps_applied) +
         " steps applied), " + std::to_string(returning_.size()) + " live worker(s) to return, clocks " +
         std::to_string(clocks_.min_clock()) + ".." + std::to_string(s.max_clock_seen));
  }

  /// @brief The next message to send, or nothing.
  std::optional<Transmit> poll_transmit() { return outbox_.poll(); }

  /// @brief Handles one message from peer `from` received at `now`.
  void on_message(PeerId from, Message&& message, Clock::time_point now) {
    std::visit(
        [&](auto&& m) {
          using K = std::decay_t<decltype(m)>;
          if constexpr (std::is_same_v<K, msg::Join>) {
            on_join(from, std::move(m), now);
          } else if constexpr (std::is_same_v<K, msg::Push>) {
            on_push(from, std::move(m), now);
          } else if constexpr (std::is_same_v<K, msg::Pull>) {
            on_pull(from, std::move(m), now);
          } else if constexpr (std::is_same_v<K, msg::Leave>) {
            // The connection of a refused assigned join closing, not the worker that holds the id.
            if (m.reason == msg::LeaveReason::disconnected && refused_assigned_.erase(from) != 0) return;
            if (clocks_.live(from)) {
              if (m.reason != msg::LeaveReason::finished) note(who(from) + ": lost (" + leave_name(m.reason) + ")");
              remove_worker(from, m.reason, now);
            }
          } else if constexpr (std::is_same_v<K, msg::Error>) {
            note(who(from) + ": reported error " + std::string(error_code_name(m.code)) + ": " + m.text);
            remove_worker(from, msg::LeaveReason::failed, now);
          } else {
            // Appended, not `"..." + std::string(...)`: GCC 12 at -O3 warns falsely
            // (-Warray-bounds) on that temporary once this is inlined into a test.
            std::string what = "server: unexpected '";
            what += message_name(Message{std::move(m)});
            what += "' message";
            refuse(from, msg::ErrorCode::bad_frame, what);
          }
        },
        std::move(message));
    // Only members are remembered: a stranger's traffic must not grow the server's state.
    if (clocks_.live(from)) last_heard_[from] = now;
  }

  /// @brief The transport could not deliver to (or lost) `peer`: it is removed and
  /// every read it was holding back is reconsidered at once.
  void on_peer_lost(PeerId peer, msg::LeaveReason reason, Clock::time_point now) {
    if (refused_assigned_.contains(peer)) return;  // the refused connection, not the worker (its Leave follows)
    if (clocks_.live(peer)) note(who(peer) + ": lost (" + leave_name(reason) + ")");
    remove_worker(peer, reason, now);
  }

  /// @brief When `on_timer` next has something to do.
  Clock::time_point next_deadline() const {
    if (!started_) return join_deadline_;
    Clock::time_point next = Clock::time_point::max();
    clocks_.for_each_live([&](PeerId w, std::uint64_t) {
      if (holds_read(w)) return;
      if (auto it = last_heard_.find(w); it != last_heard_.end()) next = std::min(next, it->second + options_.peer_timeout);
    });
    return next;
  }

  /// @brief Lets time pass: starts training at the join deadline with the workers
  /// present (throws `TimeoutError` if none joined) and removes live workers that
  /// the others wait on and that stayed silent past `peer_timeout`.
  void on_timer(Clock::time_point now) {
    if (!started_) {
      if (now < join_deadline_) return;
      if (clocks_.known_count() == 0) {
        throw TimeoutError("server: no worker joined within " + std::to_string(options_.join_timeout.count()) + " ms");
      }
      note("join timeout: starting with " + std::to_string(clocks_.live_count()) + " of " +
           std::to_string(options_.expected_workers) + " workers");
      start(now);
      return;
    }
    std::vector<PeerId> silent;
    clocks_.for_each_live([&](PeerId w, std::uint64_t) {
      // A worker whose read is held is waiting on the server, silent by design.
      if (holds_read(w)) return;
      auto it = last_heard_.find(w);
      if (it != last_heard_.end() && now - it->second > options_.peer_timeout) silent.push_back(w);
    });
    for (PeerId w : silent) {
      note(who(w) + ": silent for more than " + std::to_string(options_.peer_timeout.count()) + " ms, removed");
      remove_worker(w, msg::LeaveReason::timed_out, now);
    }
  }

  /// @brief Stops serving: a round still open is applied (accepted pushes are never
  /// lost) and every held read is answered with `shutting_down`.
  void shutdown(Clock::time_point) {
    if constexpr (has_optimizer) {
      account(combiner_.flush(model_.parameters(), apply_optimizer()));
    } else {
      account(combiner_.flush(model_.parameters()));
    }
    for (auto& h : held_) outbox_.push(h.worker, msg::Error{msg::ErrorCode::shutting_down, "server: stopping"});
    held_.clear();
  }

  /// @brief The report with one entry per worker that ever joined.
  ServerReport finish_report() {
    report_.version = version_;
    report_.peers.clear();
    for (auto& [id, p] : peers_) report_.peers.push_back(p);
    return report_;
  }

 private:
  struct HeldRead {
    PeerId worker;
    std::uint64_t read_clock;
    Clock::time_point since;
    Eigen::VectorXf buffer;
    bool join = false;  // the read is a Join: its reply carries the worker's start clock
    std::vector<std::byte> payload{};  // an encoded push's bytes, handed back for reuse
  };

  void note(std::string line) {
    if (options_.log) options_.log(line);
    if (report_.events.size() < 10000) report_.events.push_back(std::move(line));
  }

  static std::string who(PeerId w) { return "worker " + std::to_string(w); }

  /// The policy string a worker's Join must carry.
  std::string join_policy() const {
    if constexpr (has_optimizer) {
      return policy_.name() + optim::gradient_suffix;
    } else {
      return policy_.name();
    }
  }

  std::string optimizer_name() const {
    if constexpr (has_optimizer) {
      return optimizer_.name();
    } else {
      return "none";
    }
  }

  /// What the combiner calls with a combined gradient: one optimizer step, added to the model.
  auto apply_optimizer() {
    return [this](Eigen::Ref<Eigen::VectorXf> model, Eigen::VectorXf& gradient) {
      if constexpr (has_optimizer) {
        const float lr = optim::rate_at(options_.optimizer_schedule, 0.0f, optimizer_steps_, [] { return "server optimizer"; });
        optimizer_.apply(gradient, lr);
        ++optimizer_steps_;
        model += gradient;
      }
    };
  }

  static std::string leave_name(msg::LeaveReason r) {
    switch (r) {
      case msg::LeaveReason::finished: return "finished";
      case msg::LeaveReason::disconnected: return "disconnected";
      case msg::LeaveReason::timed_out: return "timed out";
      case msg::LeaveReason::failed: return "failed";
    }
    return "unknown";
  }

  /// True if no entry is NaN or infinite. x * 0 is 0 for every finite x and NaN
  /// otherwise, so one vectorised sum decides: a third of Eigen's allFinite() time
  /// (which compares x - x with itself). Not valid under -ffast-math.
  static bool all_finite(const Eigen::VectorXf& v) { return std::isfinite((v.array() * 0.0f).sum()); }

  bool holds_read(PeerId w) const {
    return std::any_of(held_.begin(), held_.end(), [w](const HeldRead& h) { return h.worker == w; });
  }

  /// Refuses a request with an Error frame (which closes the conversation, as msg::Error says).
  void refuse(PeerId to, msg::ErrorCode code, std::string text) {
    note(who(to) + ": refused: " + text);
    outbox_.push(to, msg::Error{code, std::move(text)});
  }

  /// Refuses and removes a joined worker that broke the protocol.
  void expel(PeerId w, msg::ErrorCode code, std::string text, Clock::time_point now) {
    refuse(w, code, std::move(text));
    remove_worker(w, msg::LeaveReason::failed, now);
  }

  void on_join(PeerId from, msg::Join&& j, Clock::time_point now) {
    if (j.worker == any_worker) {
      // Assigning is the transport's: it binds the connection to the id it picks.
      refuse(from, msg::ErrorCode::bad_frame,
             "join asks for an assigned worker id, which this transport does not give: name the worker's id");
      return;
    }
    if (j.assigned && peers_.contains(j.worker)) {
      // The endpoint picked an id this core holds (a worker restored from a checkpoint
      // the endpoint had not been told of yet): refuse it; the connection's close is not that worker's.
      refused_assigned_.insert(j.worker);
      refuse(from, msg::ErrorCode::duplicate_worker,
             "assigned " + who(j.worker) + " is held by a worker the server knows; join again for another id");
      return;
    }
    if (j.worker != from) {
      refuse(from, msg::ErrorCode::bad_frame, "join names worker " + std::to_string(j.worker) + " but came from " + who(from));
      return;
    }
    if (j.dimension != static_cast<std::uint64_t>(dimension())) {
      refuse(from, msg::ErrorCode::wrong_dimension,
             "worker model has " + std::to_string(j.dimension) + " parameters, server model has " + std::to_string(dimension()));
      return;
    }
    if (j.policy != join_policy()) {
      std::string hint;
      if (has_optimizer) hint = " (the server runs optimizer '" + optimizer_name() + "': workers must push gradients, optim::OnServer)";
      if (!has_optimizer && j.policy.ends_with(optim::gradient_suffix)) {
        hint = " (the worker pushes gradients for a server-side optimizer, and this server has none)";
      }
      refuse(from, msg::ErrorCode::policy_mismatch,
             "worker runs policy '" + j.policy + "', server runs '" + join_policy() + "'" + hint);
      return;
    }
    if (!peers_.contains(from) && peers_.size() >= options_.max_workers) {
      refuse(from, msg::ErrorCode::limit_exceeded,
             "server: " + std::to_string(peers_.size()) + " worker ids already admitted (max_workers " +
                 std::to_string(options_.max_workers) + ")");
      return;
    }
    std::uint64_t start_clock = 0;
    if (returning_.erase(from) != 0) {
      // Restored as live from a checkpoint: its return, at the clock the server kept
      // (its pushes up to there are in the parameters or the round sum). The read is
      // at that clock, so BSP/OSP answer it once the round it is waiting for closes.
      start_clock = clocks_.clock(from);
      note(who(from) + " returned at clock " + std::to_string(start_clock));
    } else {
      // A late joiner starts at the slowest live clock so it neither blocks nor skips rounds.
      start_clock = started_ ? clocks_.min_clock() : 0;
      // One that lost its connection and comes back keeps its own clock when that is
      // ahead: its last push may still be in the open round, and pushing that round
      // again would count it twice.
      if (auto it = peers_.find(from);
          started_ && it != peers_.end() && it->second.left_known && it->second.left != msg::LeaveReason::finished) {
        start_clock = std::max(start_clock, clocks_.clock(from));
      }
      if (!clocks_.join(from, start_clock)) {
        refuse(from, msg::ErrorCode::duplicate_worker, who(from) + " is already connected");
        return;
      }
      note(who(from) + " joined at clock " + std::to_string(start_clock));
    }
    ++changes_;
    peers_[from].id = from;
    // The join reply's min_clock is the clock the worker starts at (HeldRead::join).
    // A shared reply needs no buffer of the worker's; a copied one is written into this.
    held_.push_back(HeldRead{from, start_clock, now, options_.share_replies ? Eigen::VectorXf() : Eigen::VectorXf(dimension()), true});
    // A worker that joined and died already counts as arrived: waiting for it would hang the rest.
    if (!started_ && clocks_.known_count() >= options_.expected_workers) {
      start(now);
    } else {
      progress(now);
    }
  }

  void start(Clock::time_point now) {
    started_ = true;
    started_at_ = now;
    ++changes_;
    progress(now);
  }

  /// Checks what every read (push or pull) from `from` must satisfy; refuses and returns false otherwise.
  bool admit_read(PeerId from, const char* what, std::uint64_t clock, std::uint64_t size, Clock::time_point now) {
    if (!clocks_.live(from)) {
      refuse(from, msg::ErrorCode::not_joined, std::string(what) + " from " + who(from) + " before join");
      return false;
    }
    if (size != static_cast<std::uint64_t>(dimension())) {
      expel(from, msg::ErrorCode::wrong_dimension,
            std::string(what) + " from " + who(from) + " has " + std::to_string(size) + " floats, model has " +
                std::to_string(dimension()),
            now);
      return false;
    }
    if (holds_read(from)) {
      // One outstanding read per worker: a second would put its next round's push into this round.
      expel(from, msg::ErrorCode::bad_clock,
            std::string(what) + " from " + who(from) + " before the server answered its previous read (clock " +
                std::to_string(clocks_.clock(from)) + ")",
            now);
      return false;
    }
    if (clock != clocks_.clock(from)) {
      expel(from, msg::ErrorCode::bad_clock,
            std::string(what) + " from " + who(from) + " stamped clock " + std::to_string(clock) + ", expected " +
                std::to_string(clocks_.clock(from)),
            now);
      return false;
    }
    return true;
  }

  void on_push(PeerId from, msg::Push&& p, Clock::time_point now) {
    if (!admit_read(from, "push", p.clock, p.dimension(), now)) return;
    if (p.steps == 0 || p.base_version > version_) {
      expel(from, msg::ErrorCode::bad_clock,
            "push from " + who(from) + " claims " + std::to_string(p.steps) + " steps on model version " +
                std::to_string(p.base_version) + " (server is at version " + std::to_string(version_) + ")",
            now);
      return;
    }
    if (p.encoding != Encoding::dense) {
      // Decoded into the server's own buffer: the policy combines a dense update as ever.
      if (decoded_.size() != dimension()) decoded_.resize(dimension());
      if (auto fault = compress::decode(p.encoding, p.payload, decoded_)) {
        expel(from, msg::ErrorCode::bad_frame,
              "push from " + who(from) + " has a malformed " + encoding_name(p.encoding) + " update: " + *fault, now);
        return;
      }
    }
    Eigen::VectorXf& update = p.encoding == Encoding::dense ? p.update : decoded_;
    if (!all_finite(update)) {
      // Checked before anything is applied: the model never sees a NaN or an infinity.
      expel(from, msg::ErrorCode::bad_frame, "push from " + who(from) + " holds a non-finite value (NaN or infinity)", now);
      return;
    }
    auto& peer = peers_[from];
    ++peer.pushes;
    peer.version_staleness.add(version_ - p.base_version);
    if constexpr (has_optimizer) {
      account(combiner_.add(model_.parameters(), update, p.steps, apply_optimizer()));
    } else {
      account(combiner_.add(model_.parameters(), update, p.steps));
    }
    const std::uint64_t clock = clocks_.tick(from);
    detail::observe_push(policy_, from, clock, now);
    ++changes_;
    held_.push_back(HeldRead{from, clock, now, std::move(p.update), false, std::move(p.payload)});
    progress(now);
  }

  void on_pull(PeerId from, msg::Pull&& p, Clock::time_point now) {
    if (!admit_read(from, "pull", p.clock, static_cast<std::uint64_t>(dimension()), now)) return;
    if (!options_.share_replies && p.buffer.size() != dimension()) p.buffer.resize(dimension());
    held_.push_back(HeldRead{from, p.clock, now, std::move(p.buffer), false});
    progress(now);
  }

  void account(const Applied& a) {
    if (a.versions != 0 || a.updates != 0) model_changed_ = true;
    version_ += a.versions;
    report_.updates_applied += a.updates;
    report_.steps_applied += a.steps;
  }

  /// Closes what the combiner can close and answers every read the policy now allows.
  void progress(Clock::time_point now) {
    if (!started_) return;
    const std::uint64_t min_clock = clocks_.min_clock();
    if (clocks_.live_count() > 0) {
      if constexpr (has_optimizer) {
        account(combiner_.advance(model_.parameters(), min_clock, apply_optimizer()));
      } else {
        account(combiner_.advance(model_.parameters(), min_clock));
      }
    }
    for (std::size_t i = 0; i < held_.size();) {
      HeldRead& h = held_[i];
      if (!policy_.read_ready(ReadQuery{h.worker, h.read_clock, min_clock, now})) {
        ++i;
        continue;
      }
      msg::Model reply;
      reply.version = version_;
      // A join reply tells the worker its own starting clock: the slowest live clock
      // for a new worker, its saved clock for one returning after a restore.
      reply.min_clock = h.join ? h.read_clock : min_clock;
      reply.held_ns = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(now - h.since).count());
      reply.worker = h.worker;
      if (options_.share_replies) {
        reply.shared = current_snapshot();
        reply.spare = std::move(h.buffer);  // the push's vector goes back for reuse, unread
        reply.spare_payload = std::move(h.payload);
      } else {
        reply.parameters = std::move(h.buffer);
        reply.parameters = model_.parameters();
        ++report_.model_copies;
      }
      ++report_.model_replies;
      const PeerId to = h.worker;
      held_[i] = std::move(held_.back());
      held_.pop_back();
      // The worker's silence counts from this answer, not from the request it waited
      // on: a read held longer than peer_timeout must not get the worker removed.
      last_heard_[to] = now;
      outbox_.push(to, std::move(reply));
    }
  }

  /// The snapshot of the model as it is now: the last one made, unless the model
  /// changed since; then one copy into storage nobody holds any more (see ModelSnapshotPool).
  const ModelSnapshot& current_snapshot() {
    if (model_changed_ || !current_) {
      current_.reset();  // not held by us any more: the pool may reuse it if nobody else does
      current_ = snapshots_.make(model_.parameters());
      model_changed_ = false;
      ++report_.model_copies;
    }
    return current_;
  }

  void remove_worker(PeerId w, msg::LeaveReason reason, Clock::time_point now) {
    if (!clocks_.leave(w)) return;
    ++changes_;
    returning_.erase(w);
    auto& peer = peers_[w];
    peer.id = w;
    peer.left = reason;
    peer.left_known = true;
    std::erase_if(held_, [w](const HeldRead& h) { return h.worker == w; });
    // The slowest clock may have moved: reads the departed worker held back are answered now.
    progress(now);
  }

  M model_;
  ServerCoreOptions options_;
  [[no_unique_address]] P policy_;
  [[no_unique_address]] O optimizer_;
  std::uint64_t optimizer_steps_ = 0;  // server-side optimizer steps taken (the schedule's argument)
  typename P::Combiner combiner_;
  ClockTable clocks_;
  std::map<PeerId, PeerReport> peers_;
  std::map<PeerId, Clock::time_point> last_heard_;
  std::vector<HeldRead> held_;
  detail::Outbox outbox_;
  std::set<PeerId> returning_;  // restored as live, Join not seen yet
  std::set<PeerId> refused_assigned_;  // assigned joins refused: their connection's Leave is not the worker's
  std::uint64_t version_ = 0;
  std::uint64_t changes_ = 0;
  bool started_ = false;
  std::optional<Clock::time_point> started_at_;
  Clock::time_point join_deadline_{};
  ServerReport report_;
  ModelSnapshotPool snapshots_;
  ModelSnapshot current_;      // the model's values at the last reply, shared by the replies
  Eigen::VectorXf decoded_;    // an encoded push, decoded (allocated at the first one)
  bool model_changed_ = true;  // the model moved since current_ was made
};

}  // namespace psync
