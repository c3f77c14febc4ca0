#pragma once
/// @file
/// @brief MPI transport (opt-in: include this header and link `psync::mpi`): ranks
/// 0..servers-1 serve, ranks servers.. are workers 0, 1, ... Messages are the wire
/// codec's frames, sent nonblocking: each frame travels as two MPI messages from the
/// same rank, its header with the fixed fields (tag `tag_base`), then, if it has one,
/// its body (tag `tag_base + 1`, straight from and into the message's vector). MPI's
/// non-overtaking rule pairs each body with its header. The receiver probes a header
/// (`MPI_Improbe`), takes its size from the probe, validates it with the wire decoder
/// (which sizes the vector), and only then posts the body's receive (`MPI_Irecv`) of
/// the size the header names: a frame that breaks the protocol is refused before
/// anything is allocated, as on TCP.
///
/// Errors: the communicator's error handler is set to `MPI_ERRORS_RETURN` (Open MPI's
/// default aborts the job), and every failing MPI call becomes a `TransportError`
/// naming the call, the peer's rank and MPI's error string. Every wait has a deadline:
/// `receive` polls until its deadline; `close` waits for unfinished sends at most
/// `MpiOptions::close_timeout`, then cancels them.
///
/// Dead ranks: MPI has no connection to lose. Under Open MPI's `mpirun` a rank that
/// dies ends the whole job by default (the runtime kills the other ranks). Where the
/// others keep running (e.g. `mpirun --enable-recovery`), a dead worker is silent: the
/// server's `peer_timeout` removes it; a dead server leaves its workers' receives
/// empty: `Worker` throws `TimeoutError` after its `reply_timeout`. An MPI error on a
/// send or receive for a peer is reported as a `msg::Leave{disconnected}` from it.
///
/// Threads: the transport serializes its own MPI calls with a mutex, so it needs
/// `MPI_THREAD_SERIALIZED` (checked: `ConfigError` otherwise); `MpiSession` asks for it.
///
/// Sharded servers (`servers` > 1): ranks 0..K-1 each serve one shard (a
/// `Server<ParameterSlice, P>` over its own endpoint), and a worker rank holds K
/// endpoints, one per server rank (`MpiOptions::shard`, `mpi_shard_endpoints`), which
/// `Sharded<Mpi>` presents as one server. Each worker endpoint probes only its own
/// server rank, so the K endpoints of one process never take each other's frames.
/// They share no lock: use them from one thread (as `Sharded` does), or initialise
/// MPI with `MPI_THREAD_MULTIPLE`.

#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/core/message.hpp"
#include "psync/transport/wire.hpp"

#include <Eigen/Core>
#include <mpi.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

namespace psync {

/// @brief Name of an MPI thread level, for error texts.
inline std::string mpi_thread_level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE: return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED: return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED: return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE: return "MPI_THREAD_MULTIPLE";
  }
  return "thread level " + std::to_string(level);
}

/// @brief Initialises MPI (`MPI_Init_thread`) for this process and finalises it when
/// destroyed. Refuses (`ConfigError`) when the library provides less than `required`;
/// when MPI is already initialised, it only checks the level and finalises nothing.
class MpiSession {
 public:
  /// @brief The thread level the `Mpi` transport needs: it serializes its own calls.
  static constexpr int transport_level = MPI_THREAD_SERIALIZED;

  /// @brief `MPI_Init_thread(argc, argv, required)`, checked.
  MpiSession(int& argc, char**& argv, int required = transport_level) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized) {
      MPI_Query_thread(&provided_);
    } else {
      if (MPI_Init_thread(&argc, &argv, required, &provided_) != MPI_SUCCESS) {
        throw TransportError("mpi: MPI_Init_thread failed");
      }
      owned_ = true;
    }
    if (provided_ < required) {
      const std::string text = "mpi: the MPI library provides " + mpi_thread_level_name(provided_) + ", psync needs " +
                               mpi_thread_level_name(required);
      if (owned_) MPI_Finalize();
      owned_ = false;
      throw ConfigError(text);
    }
  }
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;
  /// @brief `MPI_Finalize`, when this session initialised MPI. Close every `Mpi` endpoint first.
  ~MpiSession() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Finalize();
  }

  /// @brief The thread level MPI provides.
  int provided() const noexcept { return provided_; }

 private:
  int provided_ = MPI_THREAD_SINGLE;
  bool owned_ = false;
};

/// @brief How an `Mpi` endpoint runs.
struct MpiOptions {
  /// @brief The communicator (not duplicated: `MPI_Comm_dup` is collective and has no
  /// deadline). Its error handler is set to `MPI_ERRORS_RETURN`. psync uses tags
  /// `tag_base` and `tag_base + 1` on it; keep the application's own messages off them.
  MPI_Comm comm = MPI_COMM_WORLD;
  /// @brief Ranks 0..servers-1 are servers (one per shard); rank r >= servers is
  /// worker r - servers. At least 1, and fewer than the communicator's ranks.
  int servers = 1;
  /// @brief On a worker rank: the server rank (0..servers-1) this endpoint talks to,
  /// i.e. the rank its `server_peer` names. With `servers` > 1 a worker holds one
  /// endpoint per server rank (`mpi_shard_endpoints`). Ignored on a server rank.
  int shard = 0;
  /// @brief The header tag; the body tag is the next one. Both must be at most MPI_TAG_UB.
  int tag_base = 0x7053;
  /// @brief What this endpoint accepts. The server's dimension is set by
  /// `Server::run` (`expect_dimension`); a worker learns it from its own `Join`.
  WireLimits limits{};
  /// @brief `receive` polls (yielding) this long before it sleeps between polls: MPI
  /// has no wait with a deadline, and a sleeping poller would miss fast replies.
  std::chrono::microseconds spin{2000};
  /// @brief Longest sleep between two polls once the spin is over.
  std::chrono::microseconds max_poll_interval{500};
  /// @brief `close` waits this long for unfinished sends, then cancels them.
  std::chrono::milliseconds close_timeout{5000};
};

/// @brief One rank's endpoint: a server (rank < servers) or a worker (rank r, worker id
/// r - servers). Satisfies `Transport`. Move-only; closing (or destroying) it finishes or
/// cancels its sends; it never calls `MPI_Finalize` (see `MpiSession`).
class Mpi {
 public:
  /// @brief The endpoint of this process's rank in `options.comm`. Throws `ConfigError`
  /// when MPI is not initialised, provides less than `MPI_THREAD_SERIALIZED`, or the
  /// communicator has no worker rank; `TransportError` when an MPI call fails.
  explicit Mpi(MpiOptions options = {}) : state_(std::make_unique<State>()) {
    State& s = *state_;
    s.options = options;
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) throw ConfigError("mpi: MPI is not initialised (create a psync::MpiSession first)");
    int provided = MPI_THREAD_SINGLE;
    MPI_Query_thread(&provided);
    if (provided < MpiSession::transport_level) {
      throw ConfigError("mpi: MPI provides " + mpi_thread_level_name(provided) + ", the transport needs " +
                        mpi_thread_level_name(MpiSession::transport_level));
    }
    s.comm = options.comm;
    check(MPI_Comm_set_errhandler(s.comm, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler", -1);
    check(MPI_Comm_rank(s.comm, &s.rank), "MPI_Comm_rank", -1);
    check(MPI_Comm_size(s.comm, &s.size), "MPI_Comm_size", -1);
    if (options.servers < 1) {
      throw ConfigError("mpi: servers is " + std::to_string(options.servers) + "; at least one rank must serve");
    }
    if (options.shard < 0 || options.shard >= options.servers) {
      throw ConfigError("mpi: shard " + std::to_string(options.shard) + " is not a server rank (ranks 0.." +
                        std::to_string(options.servers - 1) + " serve)");
    }
    if (s.size <= options.servers) {
      throw ConfigError("mpi: the communicator has " + std::to_string(s.size) + " rank(s): none is left for a worker (" +
                        std::to_string(options.servers) + " serve; run at least " +
                        std::to_string(options.servers + 1) + ", e.g. mpirun -np " +
                        std::to_string(options.servers + 2) + ")");
    }
    void* ub = nullptr;
    int has_ub = 0;
    check(MPI_Comm_get_attr(s.comm, MPI_TAG_UB, &ub, &has_ub), "MPI_Comm_get_attr(MPI_TAG_UB)", -1);
    const int tag_ub = has_ub ? *static_cast<int*>(ub) : 32767;
    if (options.tag_base < 0 || options.tag_base >= tag_ub) {
      throw ConfigError("mpi: tag_base " + std::to_string(options.tag_base) + " is not within 0.." +
                        std::to_string(tag_ub - 1));
    }
    s.self = s.rank < options.servers ? server_peer : static_cast<PeerId>(s.rank - options.servers);
  }

  Mpi(Mpi&&) noexcept = default;
  Mpi& operator=(Mpi&& other) noexcept {
    if (this != &other) {
      close();
      state_ = std::move(other.state_);
    }
    return *this;
  }
  Mpi(const Mpi&) = delete;
  Mpi& operator=(const Mpi&) = delete;
  ~Mpi() { close(); }

  /// @brief `server_peer` on a server rank, rank - servers on a worker rank.
  PeerId self() const { return state().self; }
  /// @brief This process's rank in the communicator.
  int rank() const { return state().rank; }
  /// @brief The communicator's size (servers + workers).
  int size() const { return state().size; }
  /// @brief Number of worker ranks.
  std::uint32_t workers() const { return static_cast<std::uint32_t>(state().size - state().options.servers); }
  /// @brief The rank of peer `id` (`server_peer`: the server rank this endpoint talks
  /// to, `MpiOptions::shard`; on a server rank, its own rank); -1 if there is none.
  int rank_of(PeerId id) const {
    const State& s = state();
    if (id == server_peer) return s.self == server_peer ? s.rank : s.options.shard;
    if (id >= static_cast<PeerId>(s.size - s.options.servers)) return -1;
    return static_cast<int>(id) + s.options.servers;
  }

  /// @brief Called by `Server::run`: only parameter vectors of `n` floats are accepted.
  void expect_dimension(std::uint64_t n) {
    std::lock_guard lock(state().mutex);
    state_->options.limits.expected_dimension = n;
  }

  /// @brief Starts sending `m` to `to` (nonblocking; the message is kept until MPI is
  /// done with it). Throws `TransportError` for an unknown peer, a peer this endpoint
  /// has dropped, a worker sending to another worker, or a failing MPI call;
  /// `ProtocolError` if `m` cannot be encoded.
  void send(PeerId to, Message&& m) {
    State& s = state();
    std::lock_guard lock(s.mutex);
    if (s.closed) throw TransportError(side() + ": send on a closed endpoint");
    const int dest = rank_of(to);
    if (dest < 0) {
      throw TransportError(side() + ": no peer " + peer_name(to) + " (the communicator has " +
                           std::to_string(workers()) + " worker rank(s))");
    }
    if (s.self != server_peer && to != server_peer) {
      throw TransportError(side() + ": a worker can only send to the server, not to " + peer_name(to));
    }
    if (s.dropped.count(dest)) throw TransportError(side() + ": " + peer_name(to) + " is gone");
    if (const auto* j = std::get_if<msg::Join>(&m); j && s.options.limits.expected_dimension == 0) {
      s.options.limits.expected_dimension = j->dimension;  // the server's models have our size
    }
    auto out = std::make_unique<Outgoing>();
    out->message = std::move(m);
    out->frame = wire::encode(s.self, out->message);  // points into out->message, which stays put
    out->peer = dest;
    if (out->frame.body.size() > static_cast<std::size_t>(std::numeric_limits<int>::max())) {
      throw ProtocolError(side() + ": a " + std::string(message_name(out->message)) + " of " +
                          std::to_string(out->frame.body.size()) + " bytes is above MPI's count limit");
    }
    const auto head = out->frame.head();
    int rc = MPI_Isend(head.data(), static_cast<int>(head.size()), MPI_BYTE, dest, s.options.tag_base, s.comm,
                       &out->requests[0]);
    if (rc != MPI_SUCCESS) fail_peer(dest, "MPI_Isend", rc);
    if (!out->frame.body.empty()) {
      const auto body = out->frame.body;
      rc = MPI_Isend(body.data(), static_cast<int>(body.size()), MPI_BYTE, dest, s.options.tag_base + 1, s.comm,
                     &out->requests[1]);
      if (rc != MPI_SUCCESS) {
        cancel(out->requests);  // the header's send must not outlive its buffer
        fail_peer(dest, "MPI_Isend", rc);
      }
    }
    s.outgoing.push_back(std::move(out));
    progress_sends();
  }

  /// @brief Next message, or `std::nullopt` once `deadline` has passed.
  std::optional<Envelope> receive(Clock::time_point deadline) {
    State& s = state();
    const auto start = Clock::now();
    auto pause = std::chrono::microseconds(20);
    while (true) {
      if (auto e = try_receive()) return e;
      const auto now = Clock::now();
      if (now >= deadline) return std::nullopt;
      if (now - start < s.options.spin) {
        std::this_thread::yield();
      } else {
        // MPI offers no wait with a deadline: sleep between polls, doubling up to the cap.
        std::this_thread::sleep_for(std::min<Clock::duration>(pause, deadline - now));
        pause = std::min(2 * pause, s.options.max_poll_interval);
      }
    }
  }

  /// @brief Next message if one is complete.
  std::optional<Envelope> try_receive() {
    State& s = state();
    std::lock_guard lock(s.mutex);
    if (s.closed) throw TransportError(side() + ": receive on a closed endpoint");
    progress_sends();
    while (probe_one()) {
    }
    progress_receives();
    if (s.ready.empty()) return std::nullopt;
    Envelope e = std::move(s.ready.front());
    s.ready.pop_front();
    return e;
  }

  /// @brief Waits at most `close_timeout` for unfinished sends, cancels the rest, and
  /// cancels unfinished receives; idempotent. Does not finalise MPI.
  void close() noexcept {
    if (!state_) return;
    State& s = *state_;
    std::lock_guard lock(s.mutex);
    if (s.closed) return;
    s.closed = true;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    const auto deadline = Clock::now() + s.options.close_timeout;
    while (!s.outgoing.empty() && Clock::now() < deadline) {
      progress_sends();
      if (!s.outgoing.empty()) std::this_thread::yield();
    }
    for (auto& out : s.outgoing) cancel(out->requests);
    s.outgoing.clear();
    for (auto& in : s.incoming) {
      std::array<MPI_Request, 2> r{in->request, MPI_REQUEST_NULL};
      cancel(r);
    }
    s.incoming.clear();
  }

 private:
  struct Outgoing {
    Message message;
    wire::EncodedFrame frame;
    int peer = -1;
    std::array<MPI_Request, 2> requests{MPI_REQUEST_NULL, MPI_REQUEST_NULL};
  };

  // A frame whose header has arrived and whose body is on its way.
  struct Incoming {
    Envelope envelope;
    int peer = -1;
    std::size_t expected = 0;  // body bytes the header announced
    MPI_Request request = MPI_REQUEST_NULL;
  };

  struct State {
    MpiOptions options;
    MPI_Comm comm = MPI_COMM_NULL;
    int rank = -1;
    int size = 0;
    PeerId self = 0;
    std::mutex mutex;
    bool closed = false;
    std::deque<std::unique_ptr<Outgoing>> outgoing;
    std::deque<std::unique_ptr<Incoming>> incoming;  // in arrival order of their headers
    std::deque<Envelope> ready;
    std::set<int> dropped;  // ranks whose frames are discarded and to which nothing is sent
    std::vector<std::string> failures;
    std::vector<Eigen::VectorXf> spare;  // vectors of finished sends, reused by receives of their size
  };

  /// Vectors kept for reuse: a fresh 40 MB vector costs its page faults on first touch
  /// (0.3 GB/s on our VMs against 17 GB/s reused), so as on TCP the vectors of sent
  /// messages are received into again (matched by exact size; an Eigen vector cannot
  /// change size without reallocating).
  static constexpr std::size_t spare_capacity = 4;

  /// The float vector a message owns, if it owns one as a plain `Eigen::VectorXf` member
  /// (`update`, `parameters`, `buffer`); a message that holds its floats otherwise is
  /// simply not recycled.
  template <class V>
  static Eigen::VectorXf* owned_vector(V& v) noexcept {
    if constexpr (requires { requires std::same_as<decltype(v.update), Eigen::VectorXf>; }) {
      return &v.update;
    } else if constexpr (requires { requires std::same_as<decltype(v.parameters), Eigen::VectorXf>; }) {
      return &v.parameters;
    } else if constexpr (requires { requires std::same_as<decltype(v.buffer), Eigen::VectorXf>; }) {
      return &v.buffer;
    } else {
      return nullptr;
    }
  }

  void recycle(Message& m) {
    State& s = *state_;
    Eigen::VectorXf* v = std::visit([](auto& alt) { return owned_vector(alt); }, m);
    // A server's reply shares its model (msg::Model::shared) and hands back the push's vector as `spare`.
    if (auto* model = std::get_if<msg::Model>(&m); model && model->spare.size() > 0) v = &model->spare;
    if (!v || v->size() == 0) return;
    if (s.spare.size() == spare_capacity) s.spare.erase(s.spare.begin());  // the oldest size is the least likely
    s.spare.push_back(std::move(*v));
  }

  Eigen::VectorXf acquire(Eigen::Index n) {
    State& s = *state_;
    for (auto it = s.spare.begin(); it != s.spare.end(); ++it) {
      if (it->size() == n) {
        Eigen::VectorXf v = std::move(*it);
        s.spare.erase(it);
        return v;
      }
    }
    return Eigen::VectorXf(n);
  }

  State& state() const {
    if (!state_) throw TransportError("mpi: use of a moved-from endpoint");
    return *state_;
  }

  std::string side() const {
    const State& s = *state_;
    if (s.self == server_peer) {
      return (s.options.servers == 1 ? std::string("mpi server") : "mpi server shard " + std::to_string(s.rank)) +
             " (rank " + std::to_string(s.rank) + ")";
    }
    return "mpi worker " + std::to_string(s.self) + " (rank " + std::to_string(s.rank) +
           (s.options.servers == 1 ? std::string(")") : ", endpoint to shard " + std::to_string(s.options.shard) + ")");
  }

  std::string peer_name(PeerId id) const {
    const int r = rank_of(id);
    const std::string where = r < 0 ? std::string(" (no such rank)") : " (rank " + std::to_string(r) + ")";
    return (id == server_peer ? std::string("the server") : "worker " + std::to_string(id)) + where;
  }

  std::string rank_name(int r) const {
    const State& s = *state_;
    if (r < s.options.servers) {
      return s.options.servers == 1 ? "the server (rank 0)"
                                    : "server shard " + std::to_string(r) + " of " + std::to_string(s.options.servers) +
                                          " (rank " + std::to_string(r) + ")";
    }
    return "worker " + std::to_string(r - s.options.servers) + " (rank " + std::to_string(r) + ")";
  }

  PeerId peer_of(int r) const {
    const State& s = *state_;
    return r < s.options.servers ? server_peer : static_cast<PeerId>(r - s.options.servers);
  }

  static std::string error_string(int rc) {
    char text[MPI_MAX_ERROR_STRING];
    int length = 0;
    if (MPI_Error_string(rc, text, &length) != MPI_SUCCESS) return "MPI error " + std::to_string(rc);
    return std::string(text, static_cast<std::size_t>(length));
  }

  void check(int rc, const char* call, int peer) const {
    if (rc == MPI_SUCCESS) return;
    throw TransportError("mpi: " + std::string(call) + (peer >= 0 ? " with rank " + std::to_string(peer) : "") +
                         " failed: " + error_string(rc));
  }

  [[noreturn]] void fail_peer(int peer, const char* call, int rc) {
    drop(peer);
    throw TransportError(side() + ": " + call + " to " + rank_name(peer) + " failed: " + error_string(rc));
  }

  static void cancel(std::array<MPI_Request, 2>& requests) noexcept {
    for (MPI_Request& r : requests) {
      if (r == MPI_REQUEST_NULL) continue;
      MPI_Cancel(&r);
      MPI_Request_free(&r);
    }
  }

  /// Stops talking to `peer` and tells the local receiver it is gone (once).
  void drop(int peer) {
    State& s = *state_;
    if (!s.dropped.insert(peer).second) return;
    for (auto it = s.incoming.begin(); it != s.incoming.end();) {
      if ((*it)->peer == peer) {
        std::array<MPI_Request, 2> r{(*it)->request, MPI_REQUEST_NULL};
        cancel(r);
        it = s.incoming.erase(it);
      } else {
        ++it;
      }
    }
    s.ready.push_back(Envelope{peer_of(peer), msg::Leave{msg::LeaveReason::disconnected}});
  }

  /// Completes what MPI has finished sending; a send that failed drops its peer.
  void progress_sends() {
    State& s = *state_;
    for (auto it = s.outgoing.begin(); it != s.outgoing.end();) {
      Outgoing& out = **it;
      int done = 0;
      MPI_Status statuses[2];
      const int rc = MPI_Testall(2, out.requests.data(), &done, statuses);
      if (rc != MPI_SUCCESS) {
        const int peer = out.peer;
        cancel(out.requests);
        it = s.outgoing.erase(it);
        if (!s.dropped.count(peer)) {
          record_failure(peer, "a send", rc);
          drop(peer);
        }
        continue;
      }
      if (done) {
        recycle(out.message);
        it = s.outgoing.erase(it);
      } else {
        ++it;
      }
    }
  }

  void record_failure(int peer, const char* what, int rc) {
    state_->failures.push_back(side() + ": " + what + " to " + rank_name(peer) + " failed: " + error_string(rc));
  }

  /// Takes one header off MPI if one has arrived; false if none.
  bool probe_one() {
    State& s = *state_;
    int found = 0;
    MPI_Message handle = MPI_MESSAGE_NULL;
    MPI_Status status;
    // A worker endpoint hears only its own server rank: a process's other shard endpoints take the rest.
    const int source = s.self == server_peer ? MPI_ANY_SOURCE : s.options.shard;
    check(MPI_Improbe(source, s.options.tag_base, s.comm, &found, &handle, &status), "MPI_Improbe", -1);
    if (!found) return false;
    const int peer = status.MPI_SOURCE;
    int count = 0;
    MPI_Get_count(&status, MPI_BYTE, &count);
    std::array<std::byte, wire::header_size + wire::max_fixed_size> head{};
    const bool fits = count >= 0 && static_cast<std::size_t>(count) <= head.size();
    // A header too large for the buffer is still taken off the queue (truncated), then refused.
    const int rc = MPI_Mrecv(head.data(), static_cast<int>(head.size()), MPI_BYTE, &handle, MPI_STATUS_IGNORE);
    if (s.dropped.count(peer)) return true;  // a peer we no longer talk to
    if (!fits || rc != MPI_SUCCESS) {
      refuse(peer, msg::ErrorCode::bad_frame,
             fits ? "receiving a frame header failed: " + error_string(rc)
                  : "frame header of " + std::to_string(count) + " bytes (a header and its fields take at most " +
                        std::to_string(head.size()) + ")");
      return true;
    }
    try {
      accept_header(peer, std::span<const std::byte>(head.data(), static_cast<std::size_t>(count)));
    } catch (const wire::FrameError& e) {
      refuse(peer, e.code(), e.what());
    } catch (const std::bad_alloc&) {
      refuse(peer, msg::ErrorCode::internal, "cannot allocate the frame's vector");
    }
    return true;
  }

  /// Validates a header and its fixed fields, then posts the receive of its body.
  void accept_header(int peer, std::span<const std::byte> head) {
    State& s = *state_;
    const WireLimits limits = wire::fit_dimension(s.options.limits);
    const wire::FrameHeader h = wire::decode_header(head, limits);
    const std::size_t fixed = wire::fixed_size(h.type);
    if (head.size() != wire::header_size + fixed) {
      throw wire::FrameError(msg::ErrorCode::bad_frame,
                             std::string("a ") + wire::type_name(h.type) + " header message of " +
                                 std::to_string(head.size()) + " bytes (expected " +
                                 std::to_string(wire::header_size + fixed) + ": header and fields)");
    }
    const PeerId from = peer_of(peer);
    if (h.sender != from && !(h.sender == any_worker && h.type == wire::MessageType::join)) {
      throw wire::FrameError(msg::ErrorCode::bad_frame, "frame with sender id " + std::to_string(h.sender) +
                                                            " from " + rank_name(peer));
    }
    if ((s.self == server_peer) == (from == server_peer)) {
      throw wire::FrameError(msg::ErrorCode::bad_frame, "a frame from " + rank_name(peer) + " to " +
                                                            rank_name(s.rank) + ": only workers and the server talk");
    }
    auto in = std::make_unique<Incoming>();
    in->peer = peer;
    in->envelope.from = from;
    // A Pull's buffer is not on the wire: scratch space the server allocates once it admits the read (as on TCP).
    const bool pull = h.type == wire::MessageType::pull;
    in->envelope.message = wire::decode_fixed(h, head.subspan(wire::header_size, fixed), limits,
                                              [&](Eigen::Index n) { return pull ? Eigen::VectorXf() : acquire(n); });
    if (auto* j = std::get_if<msg::Join>(&in->envelope.message)) {
      // On MPI a worker's id is its rank: a join for any_worker gets it, a join for another id is refused.
      if (j->worker == any_worker) {
        j->worker = from;
        j->assigned = true;
      } else if (j->worker != from) {
        throw wire::FrameError(msg::ErrorCode::bad_frame, rank_name(peer) + " joined as worker " +
                                                              std::to_string(j->worker) +
                                                              " (on MPI a worker's id is its rank - " +
                                                              std::to_string(s.options.servers) + ")");
      }
    }
    const std::span<std::byte> body = wire::body_bytes(in->envelope.message);
    in->expected = body.size();
    if (!body.empty()) {
      const int rc = MPI_Irecv(body.data(), static_cast<int>(body.size()), MPI_BYTE, peer, s.options.tag_base + 1,
                               s.comm, &in->request);
      if (rc != MPI_SUCCESS) {
        throw wire::FrameError(msg::ErrorCode::internal, "posting the receive of a " +
                                                             std::string(wire::type_name(h.type)) + " body failed: " +
                                                             error_string(rc));
      }
    }
    s.incoming.push_back(std::move(in));
  }

  /// Moves completed frames to `ready`, each peer's in the order its headers came.
  void progress_receives() {
    State& s = *state_;
    std::set<int> blocked;  // peers with an earlier frame still on its way
    for (auto it = s.incoming.begin(); it != s.incoming.end();) {
      Incoming& in = **it;
      if (blocked.count(in.peer)) {
        ++it;
        continue;
      }
      int done = 1;
      MPI_Status status;
      int rc = MPI_SUCCESS;
      if (in.request != MPI_REQUEST_NULL) rc = MPI_Test(&in.request, &done, &status);
      if (rc == MPI_SUCCESS && done && in.request == MPI_REQUEST_NULL && in.expected > 0) {
        int count = 0;
        MPI_Get_count(&status, MPI_BYTE, &count);
        if (count >= 0 && static_cast<std::size_t>(count) != in.expected) {
          const int peer = in.peer;
          refuse(peer, msg::ErrorCode::bad_frame,
                 "a frame body of " + std::to_string(count) + " bytes, its header announced " +
                     std::to_string(in.expected));
          it = s.incoming.begin();  // refuse() removed this peer's entries
          blocked.clear();
          continue;
        }
      }
      if (rc != MPI_SUCCESS) {
        const int peer = in.peer;
        refuse(peer, msg::ErrorCode::bad_frame, "receiving a frame body failed: " + error_string(rc));
        it = s.incoming.begin();
        blocked.clear();
        continue;
      }
      if (!done) {
        blocked.insert(in.peer);
        ++it;
        continue;
      }
      try {
        wire::check_body(in.envelope.message);  // an encoded push's indices and values
      } catch (const wire::FrameError& e) {
        const int peer = in.peer;
        refuse(peer, e.code(), e.what());
        it = s.incoming.begin();
        blocked.clear();
        continue;
      }
      s.ready.push_back(std::move(in.envelope));
      it = s.incoming.erase(it);
    }
  }

  /// A peer broke the protocol. The server answers it with an `msg::Error` (best
  /// effort) and drops it: its local receiver sees a `Leave{disconnected}`. A worker
  /// cannot go on without its server: it throws.
  void refuse(int peer, msg::ErrorCode code, const std::string& what) {
    State& s = *state_;
    const std::string text = side() + ": malformed frame from " + rank_name(peer) + ": " + what;
    if (s.self != server_peer) {
      drop(peer);
      throw wire::FrameError(code, text);
    }
    s.failures.push_back(text);
    auto out = std::make_unique<Outgoing>();
    out->message = msg::Error{code, what};
    out->frame = wire::encode(s.self, out->message);
    out->peer = peer;
    const auto head = out->frame.head();
    const auto body = out->frame.body;
    if (MPI_Isend(head.data(), static_cast<int>(head.size()), MPI_BYTE, peer, s.options.tag_base, s.comm,
                  &out->requests[0]) == MPI_SUCCESS &&
        (body.empty() || MPI_Isend(body.data(), static_cast<int>(body.size()), MPI_BYTE, peer, s.options.tag_base + 1,
                                   s.comm, &out->requests[1]) == MPI_SUCCESS)) {
      s.outgoing.push_back(std::move(out));
    } else {
      cancel(out->requests);
    }
    drop(peer);
  }

 public:
  /// @brief What went wrong with peers so far (malformed frames refused, sends that
  /// failed), oldest first; each line names the rank. The drivers see only the
  /// `Leave{disconnected}` that follows; a tool prints these.
  std::vector<std::string> failures() const {
    std::lock_guard lock(state().mutex);
    return state_->failures;
  }

 private:
  std::unique_ptr<State> state_;
};

static_assert(Transport<Mpi>);

/// @brief A worker rank's endpoints to the `options.servers` server ranks, in shard
/// order (endpoint i has `shard` = i), for `Sharded<Mpi>`; `expected_dimensions[i]`,
/// when given (one per server rank), is what endpoint i accepts. Throws `ConfigError`
/// on a server rank, for a dimension count that is not the server count, or as `Mpi`.
inline std::vector<Mpi> mpi_shard_endpoints(MpiOptions options, const std::vector<std::uint64_t>& expected_dimensions = {}) {
  if (!expected_dimensions.empty() && expected_dimensions.size() != static_cast<std::size_t>(options.servers)) {
    throw ConfigError("mpi: " + std::to_string(expected_dimensions.size()) + " shard dimensions for " +
                      std::to_string(options.servers) + " server ranks");
  }
  std::vector<Mpi> out;
  for (int i = 0; i < options.servers; ++i) {
    MpiOptions o = options;
    o.shard = i;
    if (!expected_dimensions.empty()) o.limits.expected_dimension = expected_dimensions[static_cast<std::size_t>(i)];
    out.emplace_back(o);
    if (out.back().self() == server_peer) {
      throw ConfigError("mpi: rank " + std::to_string(out.back().rank()) + " is a server rank (ranks 0.." +
                        std::to_string(options.servers - 1) + " serve): it has no shard endpoints");
    }
  }
  return out;
}

}  // namespace psync
