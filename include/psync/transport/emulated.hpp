#pragma once
/// @file
/// @brief Emulated network: a decorator over any transport that delays each sent
/// message in real time by a link model (per-worker bandwidth, latency and jitter,
/// a server NIC shared by all workers), seeded and reproducible.
///
/// The model: a message from A to B occupies A's uplink and B's downlink for
/// size / min(bandwidth) seconds, queueing behind earlier messages on either link
/// as on a real NIC; it is delivered `latency + jitter` after its last byte left.
/// A worker's link has that worker's `LinkSpec`; the server's side of every link is
/// the server NIC (separate in and out directions, no latency of its own).

#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/core/message.hpp"
#include "psync/detail/config.hpp"
#include "psync/transport/in_process.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace psync {

/// @brief One worker's network link (used for both its uplink and its downlink).
struct LinkSpec {
  /// @brief Bytes per second in each direction; 0 means infinite.
  double bandwidth_bytes_per_s = 0;
  /// @brief One-way propagation delay added after the last byte is transmitted.
  std::chrono::microseconds latency{0};
  /// @brief Extra delay drawn uniformly from [0, jitter] per message (seeded).
  std::chrono::microseconds jitter{0};

  /// @brief True if this link delays anything at all.
  bool enabled() const noexcept {
    return bandwidth_bytes_per_s > 0 || latency.count() > 0 || jitter.count() > 0;
  }
};

/// @brief The whole emulated network: worker links, the server NIC and the seed.
struct NetworkSpec {
  /// @brief Default link of every worker (up and down).
  LinkSpec worker_link;
  /// @brief Links that differ from `worker_link` (stragglers, slow sites), by worker id.
  std::map<PeerId, LinkSpec> per_worker;
  /// @brief The server NIC's bandwidth per direction, shared by all its traffic; 0 means infinite.
  double server_nic_bytes_per_s = 0;
  /// @brief Seeds every sender's jitter generator (`seed ^ sender id`).
  std::uint64_t seed = 1;

  /// @brief False when every bandwidth is infinite and every latency and jitter zero:
  /// `Emulated` then forwards directly, with no thread hop.
  bool enabled() const noexcept {
    if (worker_link.enabled() || server_nic_bytes_per_s > 0) return true;
    return std::any_of(per_worker.begin(), per_worker.end(), [](const auto& kv) { return kv.second.enabled(); });
  }

  /// @brief The link of worker `worker`: its override if any, else `worker_link`.
  const LinkSpec& link(PeerId worker) const noexcept {
    auto it = per_worker.find(worker);
    return it == per_worker.end() ? worker_link : it->second;
  }
};

/// @brief Bytes of framing counted per message; close to the wire codec's header
/// without depending on it, so the model does not move when the codec does.
inline constexpr std::size_t emulated_header_bytes = 64;

/// @brief The size a message is charged on an emulated link: header plus payload
/// (4 bytes per float, the bytes of any string). A `Pull`'s buffer is a local
/// allocation hint that a real wire does not carry, so it is not charged.
PSYNC_DECL std::size_t emulated_size(const Message& m) noexcept;

/// @brief When one message crosses the emulated network (all on `Clock`).
struct Transmission {
  Clock::time_point sent;        ///< when it was handed to `send`
  Clock::time_point start;       ///< first byte on the wire, after queueing behind busy links
  Clock::time_point finish;      ///< last byte through the slower of the two links
  Clock::time_point deliver_at;  ///< finish + latency + jitter, held back behind earlier messages on the same pair
};

/// @brief Shared state of one emulated network: how long each link is busy, and each
/// sender's jitter generator. Thread-safe; share it between all endpoints of a cluster
/// with `std::make_shared<Network>(spec)`.
///
/// `schedule` is the whole model and is deterministic: the same spec and the same
/// sequence of calls (with the same `now` values) give the same transmissions, so
/// tests and simulators can drive it with virtual times.
class Network {
 public:
  /// @brief Validates `spec`: throws `ConfigError` on a negative or NaN bandwidth,
  /// latency or jitter.
  explicit Network(NetworkSpec spec);

  /// @brief The specification this network was built from.
  const NetworkSpec& spec() const noexcept { return spec_; }

  /// @brief Whether any delay is emulated at all (see `NetworkSpec::enabled`).
  bool enabled() const noexcept { return spec_.enabled(); }

  /// @brief Reserves the links for a message of `bytes` bytes that `from` hands to
  /// the network at `now` for `to`, and returns when it is transmitted and delivered.
  Transmission schedule(PeerId from, PeerId to, std::size_t bytes, Clock::time_point now);

 private:
  static void check_bandwidth(double bw, const std::string& what);
  static void check_link(const LinkSpec& link, const std::string& what);

  /// 0 (and +inf) stand for an unlimited link.
  static bool limited(double bw) noexcept { return bw > 0 && std::isfinite(bw); }

  /// 0 stands for infinite, so the slower of two links is the smaller positive one.
  static double slower(double a, double b) noexcept;

  double bandwidth(PeerId p) const noexcept;
  Clock::duration latency(PeerId p) const noexcept;
  std::chrono::microseconds jitter(PeerId p) const noexcept;

  NetworkSpec spec_;
  std::mutex mutex_;
  // A peer's uplink is its sending direction; the server's "uplink" is its NIC out.
  std::map<PeerId, Clock::time_point> uplink_busy_;
  std::map<PeerId, Clock::time_point> downlink_busy_;
  std::map<PeerId, std::mt19937_64> jitter_rng_;
  std::map<std::pair<PeerId, PeerId>, Clock::time_point> last_delivery_;
};

/// @brief What an `Emulated` endpoint did, for reports.
struct EmulatedStats {
  std::uint64_t messages = 0;       ///< messages handed to `send`
  std::uint64_t bytes = 0;          ///< their emulated size (`emulated_size`)
  std::uint64_t delivered = 0;      ///< forwarded to the inner endpoint
  std::uint64_t dropped = 0;        ///< the inner `send` failed at delivery time (peer gone)
  std::uint64_t flushed_early = 0;  ///< forwarded before their time by `close`
  Clock::duration queueing{0};      ///< total time spent waiting for busy links
  Clock::duration transmission{0};  ///< total size / bandwidth
  Clock::duration propagation{0};   ///< total latency + jitter (+ FIFO hold-back)
  Clock::duration max_lateness{0};  ///< worst delay of an actual forward behind its schedule (host noise)

  /// @brief Delay the emulation added in total: queueing + transmission + propagation.
  Clock::duration total_delay() const noexcept { return queueing + transmission + propagation; }
};

/// @brief A transport endpoint whose sends cross an emulated network.
///
/// Sends are scheduled on the shared `Network` and forwarded to the inner endpoint
/// by this endpoint's delivery thread when due; receives pass straight through.
/// The inner endpoint's `send` is therefore called from that thread while the
/// owner calls `receive`, which the inner transport must allow. When the network
/// is not `enabled()`, sends are forwarded directly and no thread is started.
/// Movable (the state lives on the heap, so the thread survives a move).
template <Transport T>
class Emulated {
 public:
  /// @brief Wraps `inner`; a null `network` behaves like a disabled one.
  Emulated(T inner, std::shared_ptr<Network> network)
      : state_(std::make_unique<State>(std::move(inner), std::move(network))) {
    if (state_->delayed) state_->thread = std::thread([s = state_.get()] { run(*s); });
  }
  /// @brief Takes over `other`'s endpoint, pending messages and thread.
  Emulated(Emulated&& other) noexcept = default;
  /// @brief Closes this endpoint (see `close()`), then takes over `other`'s.
  Emulated& operator=(Emulated&& other) noexcept {
    if (this != &other) {
      close();
      state_ = std::move(other.state_);
    }
    return *this;
  }
  Emulated(const Emulated&) = delete;
  Emulated& operator=(const Emulated&) = delete;
  /// @brief Same as `close()`.
  ~Emulated() { close(); }

  /// @brief The inner endpoint's peer id.
  PeerId self() const { return state().inner.self(); }

  /// @brief Schedules `m` for `to` on the network; returns at once. Throws
  /// `TransportError` after `close`. A failure of the inner `send` at delivery time
  /// (the peer has gone) drops the message and counts it in `stats().dropped`;
  /// when the network is disabled the inner `send` runs here and throws here.
  void send(PeerId to, Message&& m) {
    State& s = state();
    const std::size_t bytes = emulated_size(m);
    std::unique_lock lock(s.mutex);
    if (s.closing) throw TransportError("emulated: send on a closed endpoint");
    ++s.stats.messages;
    s.stats.bytes += bytes;
    if (!s.delayed) {
      lock.unlock();
      s.inner.send(to, std::move(m));
      lock.lock();
      ++s.stats.delivered;
      return;
    }
    // Scheduled under our own lock so sends from several threads of this endpoint
    // enter the queue in the order the network saw them.
    const Transmission t = s.network->schedule(s.inner.self(), to, bytes, Clock::now());
    s.stats.queueing += t.start - t.sent;
    s.stats.transmission += t.finish - t.start;
    s.stats.propagation += t.deliver_at - t.finish;
    const bool earliest = s.queue.empty() || t.deliver_at < s.queue.front().deliver_at;
    s.queue.push_back(Pending{t.deliver_at, s.next_seq++, to, std::move(m)});
    std::push_heap(s.queue.begin(), s.queue.end(), later);
    lock.unlock();
    // The thread sleeps until the earliest due time; only a new earliest moves it.
    if (earliest) s.wake.notify_one();
  }

  /// @brief Next received message, or `std::nullopt` once `deadline` has passed (inner's `receive`).
  std::optional<Envelope> receive(Clock::time_point deadline) { return state().inner.receive(deadline); }

  /// @brief Next received message if one is waiting (inner's `try_receive`).
  std::optional<Envelope> try_receive() { return state().inner.try_receive(); }

  /// @brief Flushes and closes: pending messages are forwarded at once, in order,
  /// without the rest of their delay; then the thread is joined and the inner
  /// endpoint closed (if it has `close()`). Idempotent; never blocks on the network.
  void close() noexcept { close(Clock::now()); }

  /// @brief Like `close()`, but pending messages keep their emulated delivery times
  /// until `deadline`; whatever is still pending then is forwarded at once.
  void close(Clock::time_point deadline) noexcept {
    if (!state_) return;
    State& s = *state_;
    std::lock_guard close_lock(s.close_mutex);
    {
      std::lock_guard lock(s.mutex);
      if (s.closing) return;
      s.closing = true;
      s.flush_deadline = deadline;
    }
    s.wake.notify_all();
    if (s.thread.joinable()) s.thread.join();
    if constexpr (requires { s.inner.close(); }) s.inner.close();
  }

  /// @brief The wrapped endpoint.
  T& inner() { return state().inner; }
  /// @brief The wrapped endpoint.
  const T& inner() const { return state().inner; }

  /// @brief The network this endpoint sends over (may be null: then nothing is delayed).
  const std::shared_ptr<Network>& network() const { return state().network; }

  /// @brief A snapshot of this endpoint's counters.
  EmulatedStats stats() const {
    const State& s = state();
    std::lock_guard lock(s.mutex);
    return s.stats;
  }

 private:
  struct Pending {
    Clock::time_point deliver_at;
    std::uint64_t seq = 0;
    PeerId to = 0;
    Message message;
  };

  struct State {
    State(T i, std::shared_ptr<Network> n)
        : inner(std::move(i)), network(std::move(n)), delayed(network && network->enabled()) {}
    T inner;
    std::shared_ptr<Network> network;
    const bool delayed;
    std::mutex close_mutex;  // serialises close() callers so only one joins the thread
    mutable std::mutex mutex;
    std::condition_variable wake;
    std::vector<Pending> queue;  // a heap on (deliver_at, seq), earliest at front
    std::uint64_t next_seq = 0;
    bool closing = false;
    Clock::time_point flush_deadline;
    EmulatedStats stats;
    std::thread thread;
  };

  /// Heap order: earliest due first; the sequence number keeps equal times in send order.
  static bool later(const Pending& a, const Pending& b) noexcept {
    return a.deliver_at != b.deliver_at ? a.deliver_at > b.deliver_at : a.seq > b.seq;
  }

  /// The delivery thread. Ordering by due time instead of a plain FIFO keeps a slow
  /// destination from holding back messages to fast ones; per-pair order still
  /// holds because `Network::schedule` never lets a pair's due times decrease.
  static void run(State& s) {
    // Bounds the cost of any missed wake-up; the waits are timed, never spinning.
    constexpr auto idle_wake = std::chrono::milliseconds(500);
    std::unique_lock lock(s.mutex);
    for (;;) {
      if (s.queue.empty()) {
        if (s.closing) return;
        s.wake.wait_until(lock, Clock::now() + idle_wake);
        continue;
      }
      Clock::time_point due = s.queue.front().deliver_at;
      const bool early = s.closing && s.flush_deadline < due;
      if (early) due = s.flush_deadline;
      const auto now = Clock::now();
      if (now < due) {
        s.wake.wait_until(lock, due);
        continue;
      }
      std::pop_heap(s.queue.begin(), s.queue.end(), later);
      Pending p = std::move(s.queue.back());
      s.queue.pop_back();
      if (early) {
        ++s.stats.flushed_early;
      } else {
        s.stats.max_lateness = std::max(s.stats.max_lateness, now - p.deliver_at);
      }
      // Forwarded unlocked: the inner send may block, and the owner must be able
      // to keep sending meanwhile. This thread is the only forwarder, so order holds.
      lock.unlock();
      bool ok = true;
      try {
        s.inner.send(p.to, std::move(p.message));
      } catch (...) {
        ok = false;
      }
      lock.lock();
      ++(ok ? s.stats.delivered : s.stats.dropped);
    }
  }

  State& state() const {
    if (!state_) throw TransportError("emulated: use of a moved-from endpoint");
    return *state_;
  }

  std::unique_ptr<State> state_;
};

static_assert(Transport<Emulated<InProcess>>);

}  // namespace psync

#if PSYNC_HEADER_ONLY
#include "psync/impl/emulated.ipp"
#endif
