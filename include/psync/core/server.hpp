#pragma once
/// @file
/// @brief The parameter server: holds the global model and answers workers as
/// the synchronization policy allows.

#include "psync/concepts.hpp"
#include "psync/core/clock_table.hpp"
#include "psync/core/error.hpp"
#include "psync/core/message.hpp"
#include "psync/core/metrics.hpp"
#include "psync/core/trace.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

namespace psync {

/// @brief Trace track of the server; worker w uses `worker_track(w)` and `worker_track(w) + 1`.
inline constexpr std::uint32_t server_track = 0;
/// @brief Trace track of worker `w`'s compute; its communication uses the next track.
constexpr std::uint32_t worker_track(PeerId w) noexcept { return 1 + 2 * w; }

/// @brief What the server passes to its progress callback.
struct ServerProgress {
  double seconds = 0;                      ///< since serving started
  std::uint64_t version = 0;               ///< model version
  std::uint64_t steps_applied = 0;         ///< local SGD steps folded into the model
  std::size_t live_workers = 0;
  Eigen::Ref<const Eigen::VectorXf> parameters;  ///< the current global parameters (valid during the call)
};

/// @brief How a server runs.
struct ServerOptions {
  /// @brief Workers to wait for before the first model is handed out (later joiners start at the current clock).
  std::uint32_t expected_workers = 1;
  /// @brief How long to wait for `expected_workers`; then start with those present (none: `TimeoutError`).
  std::chrono::milliseconds join_timeout{30000};
  /// @brief A live worker the server is waiting on that stays silent this long is removed.
  std::chrono::milliseconds peer_timeout{60000};
  /// @brief Copy the parameters this often (0: never) for a loss/accuracy series evaluated after the run.
  std::chrono::milliseconds snapshot_interval{0};
  /// @brief At most this many snapshots (each copies the parameters: keep the interval coarse).
  std::size_t max_snapshots = 0;
  /// @brief Where to print one line per event (joins, departures, errors); nullptr for silence.
  std::ostream* log = nullptr;
  /// @brief Optional timeline recorder (not owned).
  Trace* trace = nullptr;
  /// @brief Called on the server thread at most once per `progress_interval` while
  /// training (e.g. to print a progress line); keep it short, it delays the server.
  std::function<void(const ServerProgress&)> on_progress;
  /// @brief Minimum time between two `on_progress` calls.
  std::chrono::milliseconds progress_interval{1000};
};

/// @brief The parameter server for model type `M` under policy `P`.
///
/// `run(transport)` serves until every worker that joined has left, or `stop()`.
/// ASP and SSP apply each push on arrival; BSP and OSP wait for a push from every
/// live worker for the round, then apply the average. Every push is answered with
/// the model once the policy allows the read at the worker's new clock.
template <ParameterSet M, SyncPolicy P>
class Server {
 public:
  /// @brief A server whose initial global model is `model`.
  explicit Server(M model, ServerOptions options = {}, P policy = {})
      : model_(std::move(model)), options_(std::move(options)), policy_(policy) {
    if (options_.expected_workers == 0) throw ConfigError("server: expected_workers must be at least 1");
    round_sum_ = Eigen::VectorXf::Zero(dimension());
  }

  /// @brief Parameter count.
  Eigen::Index dimension() const { return model_.parameters().size(); }
  /// @brief The global model (read it after `run` returns).
  const M& model() const noexcept { return model_; }
  /// @brief The policy.
  const P& policy() const noexcept { return policy_; }
  /// @brief Asks `run` to return; thread-safe.
  void stop() noexcept { stop_.store(true, std::memory_order_relaxed); }

  /// @brief Serves on `transport` until all joined workers have left or `stop()`.
  /// Throws `TimeoutError` if no worker joins within `join_timeout`.
  template <Transport T>
  ServerReport run(T& transport) {
    start_ = Clock::now();
    const auto join_deadline = start_ + options_.join_timeout;
    next_snapshot_ = start_;
    report_.snapshots.reserve(options_.max_snapshots);
    take_snapshot_if_due(start_);
    while (!stop_.load(std::memory_order_relaxed)) {
      const auto now = Clock::now();
      if (!started_ && now >= join_deadline) {
        if (clocks_.known_count() == 0) {
          throw TimeoutError("server: no worker joined within " + std::to_string(options_.join_timeout.count()) +
                             " ms");
        }
        note("join timeout: starting with " + std::to_string(clocks_.live_count()) + " of " +
             std::to_string(options_.expected_workers) + " workers");
        start_training(transport);
      }
      if (started_ && clocks_.live_count() == 0) break;
      expire_silent_peers(transport, now);
      auto deadline = now + std::chrono::milliseconds(50);
      if (!started_) deadline = std::min(deadline, join_deadline);
      if (options_.snapshot_interval.count() > 0) deadline = std::min(deadline, next_snapshot_);
      if (auto env = transport.receive(deadline)) handle(transport, std::move(*env));
      take_snapshot_if_due(Clock::now());
      report_progress_if_due(Clock::now());
    }
    // Pushes accepted into an unfinished round are applied, not lost.
    if (round_pushes_ > 0) apply_round();
    for (auto& h : held_) {
      try_send(transport, h.worker, msg::Error{msg::ErrorCode::shutting_down, "server: stopping"});
    }
    held_.clear();
    const auto end = Clock::now();
    force_snapshot(end);
    report_.wall_s = seconds_since_start(end);
    report_.version = version_;
    report_.peers.clear();
    for (auto& [id, p] : peers_) report_.peers.push_back(p);
    return std::move(report_);
  }

 private:
  struct HeldRead {
    PeerId worker;
    std::uint64_t read_clock;
    Clock::time_point since;
    Eigen::VectorXf buffer;
  };

  double seconds_since_start(Clock::time_point t) const {
    return std::chrono::duration<double>(t - start_).count();
  }

  void note(std::string line) {
    if (options_.log) *options_.log << "[psync server] " << line << '\n' << std::flush;
    if (report_.events.size() < 10000) report_.events.push_back(std::move(line));
  }

  static std::string who(PeerId w) { return "worker " + std::to_string(w); }

  template <Transport T>
  void try_send(T& transport, PeerId to, Message&& m) {
    try {
      transport.send(to, std::move(m));
    } catch (const TransportError& e) {
      note(who(to) + ": send failed (" + e.what() + "), removing it");
      remove_worker(to, msg::LeaveReason::disconnected);
    }
  }

  template <Transport T>
  void refuse(T& transport, PeerId to, msg::ErrorCode code, std::string text) {
    note(who(to) + ": refused: " + text);
    try {
      transport.send(to, msg::Error{code, std::move(text)});
    } catch (const TransportError&) {
      // The peer is already gone; the refusal is logged, nothing else to do.
    }
  }

  template <Transport T>
  void handle(T& transport, Envelope&& env) {
    const PeerId from = env.from;
    last_heard_[from] = Clock::now();
    std::visit(
        [&](auto&& m) {
          using K = std::decay_t<decltype(m)>;
          if constexpr (std::is_same_v<K, msg::Join>) {
            on_join(transport, from, std::move(m));
          } else if constexpr (std::is_same_v<K, msg::Push>) {
            on_push(transport, from, std::move(m));
          } else if constexpr (std::is_same_v<K, msg::Pull>) {
            on_pull(transport, from, std::move(m));
          } else if constexpr (std::is_same_v<K, msg::Leave>) {
            if (clocks_.live(from)) {
              if (m.reason != msg::LeaveReason::finished) note(who(from) + ": lost (" + leave_name(m.reason) + ")");
              remove_worker(from, m.reason);
              progress(transport);
            }
          } else if constexpr (std::is_same_v<K, msg::Error>) {
            note(who(from) + ": reported error " + std::string(error_code_name(m.code)) + ": " + m.text);
            if (clocks_.live(from)) {
              remove_worker(from, msg::LeaveReason::failed);
              progress(transport);
            }
          } else {
            refuse(transport, from, msg::ErrorCode::bad_frame,
                   "server: unexpected '" + std::string(message_name(Message{std::move(m)})) + "' message");
          }
        },
        std::move(env.message));
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

  template <Transport T>
  void on_join(T& transport, PeerId from, msg::Join&& j) {
    if (j.worker != from) {
      refuse(transport, from, msg::ErrorCode::bad_frame,
             "join names worker " + std::to_string(j.worker) + " but came from " + who(from));
      return;
    }
    if (j.dimension != static_cast<std::uint64_t>(dimension())) {
      refuse(transport, from, msg::ErrorCode::wrong_dimension,
             "worker model has " + std::to_string(j.dimension) + " parameters, server model has " +
                 std::to_string(dimension()));
      return;
    }
    if (j.policy != policy_.name()) {
      refuse(transport, from, msg::ErrorCode::policy_mismatch,
             "worker runs policy '" + j.policy + "', server runs '" + policy_.name() + "'");
      return;
    }
    // A late joiner starts at the slowest live clock so it neither blocks nor skips rounds.
    const std::uint64_t start_clock = started_ ? clocks_.min_clock() : 0;
    if (!clocks_.join(from, start_clock)) {
      refuse(transport, from, msg::ErrorCode::duplicate_worker, who(from) + " is already connected");
      return;
    }
    peers_[from].id = from;
    note(who(from) + " joined at clock " + std::to_string(start_clock));
    held_.push_back(HeldRead{from, start_clock, Clock::now(), Eigen::VectorXf(dimension())});
    // A worker that joined and died already counts as arrived: waiting for it would hang the rest.
    if (!started_ && clocks_.known_count() >= options_.expected_workers) start_training(transport);
    if (started_) progress(transport);
  }

  template <Transport T>
  void start_training(T& transport) {
    started_ = true;
    progress(transport);
  }

  template <Transport T>
  bool check_member(T& transport, PeerId from, const char* what, Eigen::Index size) {
    if (!clocks_.live(from)) {
      refuse(transport, from, msg::ErrorCode::not_joined, std::string(what) + " from " + who(from) + " before join");
      return false;
    }
    if (size != dimension()) {
      refuse(transport, from, msg::ErrorCode::wrong_dimension,
             std::string(what) + " from " + who(from) + " has " + std::to_string(size) + " floats, model has " +
                 std::to_string(dimension()));
      remove_worker(from, msg::LeaveReason::failed);
      progress(transport);
      return false;
    }
    return true;
  }

  template <Transport T>
  void on_push(T& transport, PeerId from, msg::Push&& p) {
    if (!check_member(transport, from, "push", p.update.size())) return;
    if (p.clock != clocks_.clock(from)) {
      refuse(transport, from, msg::ErrorCode::bad_clock,
             "push from " + who(from) + " stamped clock " + std::to_string(p.clock) + ", expected " +
                 std::to_string(clocks_.clock(from)));
      remove_worker(from, msg::LeaveReason::failed);
      progress(transport);
      return;
    }
    auto& peer = peers_[from];
    ++peer.pushes;
    peer.staleness.add(version_ >= p.base_version ? version_ - p.base_version : 0);
    {
      ScopedSpan span(options_.trace, server_track, "apply");
      if constexpr (P::server_mode == ServerMode::apply_on_arrival) {
        model_.parameters() += p.update;
        ++version_;
        ++report_.updates_applied;
        report_.steps_applied += p.steps;
      } else {
        round_sum_ += p.update;
        ++round_pushes_;
        round_steps_ += p.steps;
      }
    }
    const std::uint64_t clock = clocks_.tick(from);
    held_.push_back(HeldRead{from, clock, Clock::now(), std::move(p.update)});
    progress(transport);
  }

  template <Transport T>
  void on_pull(T& transport, PeerId from, msg::Pull&& p) {
    if (!clocks_.live(from)) {
      refuse(transport, from, msg::ErrorCode::not_joined, "pull from " + who(from) + " before join");
      return;
    }
    if (p.buffer.size() != dimension()) p.buffer.resize(dimension());
    held_.push_back(HeldRead{from, p.clock, Clock::now(), std::move(p.buffer)});
    progress(transport);
  }

  void apply_round() {
    ScopedSpan span(options_.trace, server_track, "apply");
    model_.parameters() += round_sum_ / static_cast<float>(round_pushes_);
    round_sum_.setZero();
    report_.updates_applied += round_pushes_;
    report_.steps_applied += round_steps_;
    round_pushes_ = 0;
    round_steps_ = 0;
    ++version_;
  }

  /// Closes every complete round and answers every read the policy now allows.
  template <Transport T>
  void progress(T& transport) {
    if (!started_) return;
    if constexpr (P::server_mode == ServerMode::round_barrier) {
      // Round r is complete when every live worker's clock has passed r.
      while (clocks_.live_count() > 0 && clocks_.min_clock() > round_) {
        if (round_pushes_ > 0) apply_round();
        ++round_;
      }
    }
    const std::uint64_t min_clock = clocks_.min_clock();
    const auto now = Clock::now();
    for (std::size_t i = 0; i < held_.size();) {
      auto& h = held_[i];
      if (!policy_.read_ready(h.read_clock, min_clock)) {
        ++i;
        continue;
      }
      msg::Model reply;
      reply.version = version_;
      reply.min_clock = min_clock;
      reply.held_ns = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(now - h.since).count());
      reply.parameters = std::move(h.buffer);
      reply.parameters = model_.parameters();
      const PeerId to = h.worker;
      held_[i] = std::move(held_.back());
      held_.pop_back();
      try_send(transport, to, std::move(reply));
    }
  }

  void remove_worker(PeerId w, msg::LeaveReason reason) {
    if (!clocks_.leave(w)) return;
    auto& peer = peers_[w];
    peer.id = w;
    peer.left = reason;
    peer.left_known = true;
    std::erase_if(held_, [w](const HeldRead& h) { return h.worker == w; });
  }

  template <Transport T>
  void expire_silent_peers(T& transport, Clock::time_point now) {
    if (!started_) return;
    bool removed = false;
    std::vector<PeerId> silent;
    clocks_.for_each_live([&](PeerId w, std::uint64_t) {
      // A worker waiting on the server is silent by design; only one the others wait on can be late.
      const bool waiting = std::any_of(held_.begin(), held_.end(), [w](const HeldRead& h) { return h.worker == w; });
      auto it = last_heard_.find(w);
      if (!waiting && it != last_heard_.end() && now - it->second > options_.peer_timeout) silent.push_back(w);
    });
    for (PeerId w : silent) {
      note(who(w) + ": silent for more than " + std::to_string(options_.peer_timeout.count()) + " ms, removed");
      remove_worker(w, msg::LeaveReason::timed_out);
      removed = true;
    }
    if (removed) progress(transport);
  }

  void report_progress_if_due(Clock::time_point now) {
    if (!options_.on_progress || !started_ || now < next_progress_) return;
    next_progress_ = now + options_.progress_interval;
    options_.on_progress(ServerProgress{seconds_since_start(now), version_, report_.steps_applied,
                                        clocks_.live_count(), model_.parameters()});
  }

  void take_snapshot_if_due(Clock::time_point now) {
    if (options_.snapshot_interval.count() <= 0 || now < next_snapshot_) return;
    force_snapshot(now);
    while (next_snapshot_ <= now) next_snapshot_ += options_.snapshot_interval;
  }

  void force_snapshot(Clock::time_point now) {
    auto& snaps = report_.snapshots;
    if (snaps.size() >= options_.max_snapshots) return;
    if (!snaps.empty() && snaps.back().version == version_) return;
    snaps.push_back(Snapshot{seconds_since_start(now), version_, report_.steps_applied, model_.parameters()});
  }

  M model_;
  ServerOptions options_;
  [[no_unique_address]] P policy_;
  ClockTable clocks_;
  std::map<PeerId, PeerReport> peers_;
  std::map<PeerId, Clock::time_point> last_heard_;
  std::vector<HeldRead> held_;
  Eigen::VectorXf round_sum_;
  std::uint64_t round_pushes_ = 0;
  std::uint64_t round_steps_ = 0;
  std::uint64_t round_ = 0;
  std::uint64_t version_ = 0;
  bool started_ = false;
  std::atomic<bool> stop_{false};
  Clock::time_point start_{};
  Clock::time_point next_snapshot_{};
  Clock::time_point next_progress_{};
  ServerReport report_;
};

}  // namespace psync
