#pragma once
/// @file
/// @brief What a run measured: per-worker time split, per-peer staleness, the
/// server's snapshots and the evaluated loss/accuracy series.

#include "psync/core/message.hpp"
#include "psync/detail/config.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace psync {

/// @brief Running summary of a non-negative integer quantity (staleness, steps per push).
struct Summary {
  std::uint64_t count = 0;
  double sum = 0;
  std::uint64_t max = 0;

  /// @brief Adds one observation.
  void add(std::uint64_t v) noexcept {
    ++count;
    sum += static_cast<double>(v);
    max = std::max(max, v);
  }
  /// @brief Mean, 0 when empty.
  double mean() const noexcept { return count ? sum / static_cast<double>(count) : 0.0; }
  /// @brief Combines two summaries.
  void merge(const Summary& o) noexcept {
    count += o.count;
    sum += o.sum;
    max = std::max(max, o.max);
  }
};

/// @brief What one worker measured about itself.
struct WorkerReport {
  PeerId id = 0;
  std::uint64_t steps = 0;     ///< local SGD steps computed
  std::uint64_t samples = 0;   ///< training samples consumed
  std::uint64_t pushes = 0;    ///< updates sent
  /// @brief Bytes of update the pushes carried (4 per float dense, the codec's payload encoded; no headers).
  std::uint64_t pushed_bytes = 0;
  std::uint64_t installs = 0;  ///< global models installed
  double wall_s = 0;           ///< from first step to leaving
  double compute_s = 0;        ///< computing gradients (including straggler stretch)
  double wait_s = 0;           ///< compute blocked on the network or on other workers
  double comm_s = 0;           ///< push->model round trips, less what the server held them
  double held_s = 0;           ///< time the server held this worker's reads for the policy
  /// @brief Loss of the last batch computed, when the model's `gradient` returns it; NaN when it
  /// returns void (the worker does not spend a forward pass per step to find it).
  double last_loss = std::numeric_limits<double>::quiet_NaN();
  /// @brief Staleness in clocks, one observation per model received: this worker's clock
  /// minus the slowest live clock when the server answered (SSP(s) keeps it <= s).
  Summary clock_staleness;
  /// @brief Local steps each push carried: 1 for BSP/ASP/SSP; for OSP, the steps
  /// accumulated while the previous push was in flight.
  Summary steps_per_push;
  /// @brief Largest count of unsent local steps seen at a step boundary (OSP's gate counts these).
  std::uint32_t max_unsent = 0;
  /// @brief Times this worker rejoined a server after its connection was replaced.
  std::uint64_t rejoins = 0;
  /// @brief Pushes the server no longer had when this worker rejoined (it resumed
  /// from an older checkpoint): the worker's clock minus the clock the server kept.
  std::uint64_t pushes_lost = 0;
  /// @brief Local steps dropped at a rejoin that found pushes lost: the unsent ones
  /// and those of the push in flight.
  std::uint64_t steps_discarded = 0;
  /// @brief Time spent reconnecting to the server (from the loss to a new connection).
  double reconnect_s = 0;

  /// @brief Share of communication that did not stall compute (OSP's "hidden"
  /// communication); 0 for synchronous policies, whose compute waits for every reply.
  double hidden_fraction() const noexcept {
    const double total = comm_s + held_s;
    if (total <= 0) return 0;
    return std::clamp(1.0 - wait_s / total, 0.0, 1.0);
  }
};

/// @brief What the server saw of one worker.
struct PeerReport {
  PeerId id = 0;
  std::uint64_t pushes = 0;
  /// @brief Staleness in versions: the server's version when a push was applied minus the
  /// version its first step was computed on. Versions count pushes under `combine::Sum`
  /// and rounds under `combine::RoundAverage`, so compare within a combination rule.
  Summary version_staleness;
  msg::LeaveReason left = msg::LeaveReason::finished;
  bool left_known = false;
};

/// @brief A copy of the global parameters at a moment of the run.
struct Snapshot {
  double seconds = 0;  ///< since the server started serving
  std::uint64_t version = 0;
  std::uint64_t steps = 0;  ///< local SGD steps folded into this version
  Eigen::VectorXf parameters;
};

/// @brief What the server measured.
struct ServerReport {
  double wall_s = 0;
  /// @brief Seconds from serving to the start of training (the expected workers had
  /// joined, or the join timeout passed with some); -1 if training never started here
  /// (or it was already started in the checkpoint this run resumed from).
  double started_s = -1;
  std::uint64_t version = 0;          ///< final model version
  std::uint64_t updates_applied = 0;  ///< pushes folded into the model
  std::uint64_t steps_applied = 0;    ///< local SGD steps those pushes covered
  std::uint64_t model_replies = 0;    ///< replies carrying the model (to joins, pushes and pulls)
  /// @brief Copies of the model made for them: one per model version a reply was sent
  /// at (one per reply with `share_replies` off).
  std::uint64_t model_copies = 0;
  std::vector<PeerReport> peers;
  std::vector<Snapshot> snapshots;
  std::vector<std::string> events;  ///< joins, departures, timeouts, errors
  std::uint64_t checkpoints_written = 0;  ///< checkpoints written by the server driver
  std::uint64_t checkpoint_failures = 0;  ///< checkpoint writes that failed (each logged)
  double checkpoint_s = 0;                ///< time the server thread spent writing checkpoints
  std::uint64_t checkpoint_bytes = 0;     ///< size of the last checkpoint written
  /// @brief The checkpoint this run resumed from (sequence 0 and an empty path: it started fresh).
  std::uint64_t resumed_sequence = 0;
  std::string resumed_path;               ///< the checkpoint file resumed from
  std::uint64_t resumed_steps = 0;        ///< `steps_applied` in that checkpoint
};

/// @brief One evaluated point of a run's time series.
struct SeriesPoint {
  double seconds = 0;
  std::uint64_t version = 0;
  std::uint64_t steps = 0;  ///< local SGD steps folded into the model
  double train_loss = 0;
  double test_accuracy = -1;  ///< -1 when the model has no accuracy or no test set
};

/// @brief Everything a local run produced.
struct RunReport {
  std::string policy;
  double wall_s = 0;
  std::vector<WorkerReport> workers;
  ServerReport server;
  std::vector<SeriesPoint> series;
  Eigen::VectorXf parameters;  ///< final global parameters

  /// @brief Training samples per second over the whole run.
  double throughput() const noexcept {
    std::uint64_t s = 0;
    for (const auto& w : workers) s += w.samples;
    return wall_s > 0 ? static_cast<double>(s) / wall_s : 0;
  }
  /// @brief Staleness in clocks over all workers (reader clock - slowest clock at each read).
  Summary clock_staleness() const noexcept {
    Summary s;
    for (const auto& w : workers) s.merge(w.clock_staleness);
    return s;
  }
  /// @brief Staleness in versions over all workers, as the server measured it.
  Summary version_staleness() const noexcept {
    Summary s;
    for (const auto& p : server.peers) s.merge(p.version_staleness);
    return s;
  }
  /// @brief Local steps per push over all workers (OSP's pending steps per round).
  Summary steps_per_push() const noexcept {
    Summary s;
    for (const auto& w : workers) s.merge(w.steps_per_push);
    return s;
  }
  /// @brief First time the mean test accuracy of the last `window` evaluations
  /// reached `target` (so one lucky evaluation cannot decide), or a negative value
  /// if never (or if the series has fewer than `window` points).
  double time_to_accuracy(double target, std::size_t window = 3) const noexcept;
  /// @brief Test accuracy of the last point, or -1.
  double final_accuracy() const noexcept { return series.empty() ? -1 : series.back().test_accuracy; }
};

/// @brief First time in `series` the mean test accuracy of the last `window`
/// points reached `target`, or a negative value if never (or if the series has
/// fewer than `window` points). One lucky evaluation cannot decide it.
PSYNC_DECL double time_to_accuracy(const std::vector<SeriesPoint>& series, double target,
                                   std::size_t window = 3) noexcept;


}  // namespace psync

#if PSYNC_HEADER_ONLY
#include "psync/impl/metrics.ipp"
#endif
