#pragma once
/// @file
/// @brief The parameter server: holds the global model and answers workers as
/// the synchronization policy allows.

#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/core/message.hpp"
#include "psync/core/metrics.hpp"
#include "psync/core/server_core.hpp"
#include "psync/core/trace.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
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
  /// @brief A live worker silent this long (from its last message or the server's last
  /// answer to it; never while the server holds its read) is removed.
  std::chrono::milliseconds peer_timeout{60000};
  /// @brief Most distinct worker ids ever admitted; later joins are refused.
  std::uint32_t max_workers = 4096;
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

/// @brief The parameter server for model type `M` under policy `P`: a thin driver
/// that runs a `ServerCore` on the calling thread with a transport and the steady clock.
///
/// `run(transport)` serves until every worker that joined has left, or `stop()`.
/// What the policy decides (when a read is answered, how pushes combine) and what
/// the protocol refuses are the core's; this class adds receiving with deadlines,
/// sending, snapshots, progress callbacks, the event log and the trace.
template <ParameterSet M, SyncPolicy P>
class Server {
 public:
  /// @brief A server whose initial global model is `model`.
  explicit Server(M model, ServerOptions options = {}, P policy = {})
      : initial_(std::move(model)), options_(std::move(options)), policy_(std::move(policy)) {
    if (options_.expected_workers == 0) throw ConfigError("server: expected_workers must be at least 1");
  }

  /// @brief Parameter count.
  Eigen::Index dimension() const { return model().parameters().size(); }
  /// @brief The global model (read it after `run` returns).
  const M& model() const noexcept { return core_ ? core_->model() : *initial_; }
  /// @brief The policy.
  const P& policy() const noexcept { return core_ ? core_->policy() : policy_; }
  /// @brief Asks `run` to return; thread-safe.
  void stop() noexcept { stop_.store(true, std::memory_order_relaxed); }

  /// @brief Serves on `transport` until all joined workers have left or `stop()`.
  /// Throws `TimeoutError` if no worker joins within `join_timeout`. Runs once.
  template <Transport T>
  ServerReport run(T& transport) {
    if (core_) throw ConfigError("server: run() may be called once");
    start_ = Clock::now();
    ServerCoreOptions co;
    co.expected_workers = options_.expected_workers;
    co.join_timeout = options_.join_timeout;
    co.peer_timeout = options_.peer_timeout;
    co.max_workers = options_.max_workers;
    if (options_.log) {
      co.log = [log = options_.log](std::string_view line) { *log << "[psync server] " << line << '\n' << std::flush; };
    }
    core_.emplace(std::move(*initial_), std::move(co), policy_, start_);
    initial_.reset();
    // A transport that can refuse a wrong-sized vector before reading it is told the size.
    if constexpr (requires { transport.expect_dimension(std::uint64_t{}); }) {
      transport.expect_dimension(static_cast<std::uint64_t>(dimension()));
    }
    next_snapshot_ = start_;
    snapshots_.reserve(options_.max_snapshots);
    take_snapshot_if_due(start_);
    while (!stop_.load(std::memory_order_relaxed)) {
      const auto now = Clock::now();
      if (now >= core_->next_deadline()) {
        core_->on_timer(now);
        flush(transport);
      }
      if (core_->done()) break;
      auto deadline = std::min(now + std::chrono::milliseconds(50), core_->next_deadline());
      if (options_.snapshot_interval.count() > 0) deadline = std::min(deadline, next_snapshot_);
      if (auto env = transport.receive(deadline)) {
        ScopedSpan span(std::holds_alternative<msg::Push>(env->message) ? options_.trace : nullptr, server_track,
                        "apply");
        core_->on_message(env->from, std::move(env->message), Clock::now());
      }
      flush(transport);
      take_snapshot_if_due(Clock::now());
      report_progress_if_due(Clock::now());
    }
    const auto end = Clock::now();
    core_->shutdown(end);
    flush(transport);
    force_snapshot(end);
    ServerReport report = core_->finish_report();
    report.wall_s = seconds_since_start(end);
    report.snapshots = std::move(snapshots_);
    return report;
  }

 private:
  double seconds_since_start(Clock::time_point t) const {
    return std::chrono::duration<double>(t - start_).count();
  }

  /// Sends everything the core queued; a peer the transport cannot reach is reported
  /// back to the core, which may queue more (answers it was holding back).
  template <Transport T>
  void flush(T& transport) {
    while (true) {
      while (auto t = core_->poll_transmit()) {
        try {
          transport.send(t->to, std::move(t->message));
        } catch (const TransportError&) {
          lost_.push_back(t->to);
        }
      }
      if (lost_.empty()) return;
      const auto now = Clock::now();
      for (PeerId p : lost_) core_->on_peer_lost(p, msg::LeaveReason::disconnected, now);
      lost_.clear();
    }
  }

  void report_progress_if_due(Clock::time_point now) {
    if (!options_.on_progress || !core_->started() || now < next_progress_) return;
    next_progress_ = now + options_.progress_interval;
    options_.on_progress(ServerProgress{seconds_since_start(now), core_->version(), core_->report().steps_applied,
                                        core_->live_workers(), core_->model().parameters()});
  }

  void take_snapshot_if_due(Clock::time_point now) {
    if (options_.snapshot_interval.count() <= 0 || now < next_snapshot_) return;
    force_snapshot(now);
    while (next_snapshot_ <= now) next_snapshot_ += options_.snapshot_interval;
  }

  void force_snapshot(Clock::time_point now) {
    if (snapshots_.size() >= options_.max_snapshots) return;
    if (!snapshots_.empty() && snapshots_.back().version == core_->version()) return;
    snapshots_.push_back(
        Snapshot{seconds_since_start(now), core_->version(), core_->report().steps_applied, core_->model().parameters()});
  }

  std::optional<M> initial_;
  std::optional<ServerCore<M, P>> core_;
  ServerOptions options_;
  [[no_unique_address]] P policy_;
  std::vector<PeerId> lost_;
  std::vector<Snapshot> snapshots_;
  std::atomic<bool> stop_{false};
  Clock::time_point start_{};
  Clock::time_point next_snapshot_{};
  Clock::time_point next_progress_{};
};

}  // namespace psync
