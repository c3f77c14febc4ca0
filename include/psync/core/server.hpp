#pragma once
/// @file
/// @brief The parameter server: holds the global model and answers workers as
/// the synchronization policy allows.

#include "psync/concepts.hpp"
#include "psync/core/checkpoint.hpp"
#include "psync/core/error.hpp"
#include "psync/core/log.hpp"
#include "psync/core/message.hpp"
#include "psync/core/metrics.hpp"
#include "psync/core/server_core.hpp"
#include "psync/core/trace.hpp"
#include "psync/optim/optimizer.hpp"
#include "psync/optim/schedule.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <filesystem>
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
  /// @brief Replies of one model version share one immutable snapshot (one copy of the
  /// model per version); false copies the model into every reply, to measure the difference.
  bool share_replies = true;
  /// @brief The learning rate of the server-side optimizer by optimizer step (see
  /// `ServerCoreOptions::optimizer_schedule`); required with one, ignored without.
  optim::Schedule optimizer_schedule;
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
  /// @brief Where to write checkpoints (empty: none). See docs/checkpoints.md.
  std::filesystem::path checkpoint_dir;
  /// @brief While training, a checkpoint is written at most this often (0: only when
  /// `run` ends). One is also written when `run` ends, by `stop()` or because every
  /// worker left.
  std::chrono::milliseconds checkpoint_every{60000};
  /// @brief Also write one whenever the model has advanced this many versions since
  /// the last (rounds under BSP/OSP, pushes under ASP/SSP); 0: off.
  std::uint64_t checkpoint_every_versions = 0;
  /// @brief How many of the newest checkpoints stay in `checkpoint_dir`.
  std::size_t checkpoint_keep = checkpoint::default_keep;
  /// @brief At the start of `run`, resume from the newest valid checkpoint in
  /// `checkpoint_dir` (damaged newer files are logged and skipped). With none,
  /// `run` throws `CheckpointError` before serving.
  bool resume = false;
};

/// @brief The parameter server for model type `M` under policy `P`: a thin driver
/// that runs a `ServerCore` on the calling thread with a transport and the steady clock.
///
/// `run(transport)` serves until every worker that joined has left, or `stop()`.
/// What the policy decides (when a read is answered, how pushes combine) and what
/// the protocol refuses are the core's; this class adds receiving with deadlines,
/// sending, snapshots, progress callbacks, the event log and the trace.
///
/// With `checkpoint_dir` set, the server thread writes the core's state there
/// (`write_checkpoint`: atomic, fsynced, the newest `checkpoint_keep` kept) at most
/// every `checkpoint_every` while training and once more when `run` returns; with
/// `resume` it starts from the newest valid checkpoint and takes the workers back
/// as they reconnect. The report counts the checkpoints and the time they took.
///
/// `O` is an optional server-side optimizer (`optim::None` by default: pushes are
/// updates). With one, the workers push gradients (`optim::OnServer`) and the server
/// applies `O` to the combined gradient at `ServerOptions::optimizer_schedule`'s rate.
template <ParameterSet M, SyncPolicy P, class O = optim::None>
  requires std::same_as<O, optim::None> || optim::Optimizer<O>
class Server {
 public:
  /// @brief A server whose initial global model is `model`, with server-side optimizer `optimizer` if `O` is one.
  explicit Server(M model, ServerOptions options = {}, P policy = {}, O optimizer = {})
      : initial_(std::move(model)), options_(std::move(options)), policy_(std::move(policy)), optimizer_(std::move(optimizer)) {
    if (options_.expected_workers == 0) throw ConfigError("server: expected_workers must be at least 1");
    if (options_.resume && options_.checkpoint_dir.empty()) throw ConfigError("server: resume needs a checkpoint_dir");
    if (options_.checkpoint_keep == 0) throw ConfigError("server: checkpoint_keep must be at least 1");
  }

  /// @brief Parameter count.
  Eigen::Index dimension() const { return model().parameters().size(); }
  /// @brief The global model (read it after `run` returns).
  const M& model() const noexcept { return core_ ? core_->model() : *initial_; }
  /// @brief The policy.
  const P& policy() const noexcept { return core_ ? core_->policy() : policy_; }
  /// @brief Asks `run` to return (after a last checkpoint, when checkpoints are on); thread-safe.
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
    co.share_replies = options_.share_replies;
    co.optimizer_schedule = options_.optimizer_schedule;
    if (options_.log) {
      co.log = [log = options_.log](std::string_view line) { *log << "[psync server] " << line << '\n' << std::flush; };
    }
    core_.emplace(std::move(*initial_), std::move(co), policy_, start_, optimizer_);
    initial_.reset();
    if (!options_.checkpoint_dir.empty()) open_checkpoints(start_);
    // A transport that assigns worker ids must not give away one the core holds (restored from a checkpoint).
    if constexpr (requires { transport.reserve_worker_ids(std::vector<PeerId>{}); }) {
      transport.reserve_worker_ids(core_->known_workers());
    }
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
      if (checkpoint_timer()) deadline = std::min(deadline, next_checkpoint_);
      if (auto env = transport.receive(deadline)) {
        ScopedSpan span(std::holds_alternative<msg::Push>(env->message) ? options_.trace : nullptr, server_track,
                        "apply");
        core_->on_message(env->from, std::move(env->message), Clock::now());
      }
      flush(transport);
      take_snapshot_if_due(Clock::now());
      checkpoint_if_due(Clock::now());
      report_progress_if_due(Clock::now());
    }
    const auto end = Clock::now();
    // Stopped mid-run: checkpoint before shutdown applies the open round, so a resumed
    // server completes that round with the workers that return.
    const bool done = core_->done();
    if (!done && !options_.checkpoint_dir.empty()) {
      // Take in what has already arrived, then save. The answers this produces are not
      // sent: the workers read again when they rejoin, so a push accepted here is kept
      // by the checkpoint instead of being answered and followed by one that is lost.
      for (int i = 0; i < 4096; ++i) {
        auto env = transport.try_receive();
        if (!env) break;
        core_->on_message(env->from, std::move(env->message), Clock::now());
      }
      while (core_->poll_transmit()) {
      }
      final_checkpoint();
    }
    core_->shutdown(end);
    flush(transport);
    if (done) final_checkpoint();
    force_snapshot(end);
    ServerReport report = core_->finish_report();
    report.wall_s = seconds_since_start(end);
    if (const auto t = core_->started_at()) report.started_s = seconds_since_start(*t);
    report.snapshots = std::move(snapshots_);
    report.events.insert(report.events.end(), events_.begin(), events_.end());
    report.checkpoints_written = checkpoints_written_;
    report.checkpoint_failures = checkpoint_failures_;
    report.checkpoint_s = checkpoint_s_;
    report.checkpoint_bytes = checkpoint_bytes_;
    report.resumed_sequence = resumed_sequence_;
    report.resumed_path = resumed_path_;
    report.resumed_steps = resumed_steps_;
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

  /// One line to the event log; warnings go to the library's log hook when there is no event log.
  void say(LogLevel level, const std::string& line, bool record = false) {
    if (options_.log) {
      *options_.log << "[psync server] " << line << '\n' << std::flush;
    } else if (level >= LogLevel::warning) {
      psync::log(level, "psync server: " + line);
    }
    if (record && events_.size() < 1000) events_.push_back(line);
  }

  bool checkpoint_timer() const { return !options_.checkpoint_dir.empty() && options_.checkpoint_every.count() > 0; }

  /// Resumes from the newest valid checkpoint, or finds the sequence to write next.
  void open_checkpoints(Clock::time_point now) {
    const auto& dir = options_.checkpoint_dir;
    next_checkpoint_ = now + options_.checkpoint_every;
    if (!options_.resume) {
      const auto listing = checkpoint::detail::list(dir);
      if (!listing.final_files.empty()) {
        next_sequence_ = listing.final_files.back().first + 1;
        say(LogLevel::info, dir.string() + " already holds checkpoints up to " +
                                listing.final_files.back().second.filename().string() + ": this run writes from sequence " +
                                std::to_string(next_sequence_));
      }
      return;
    }
    LoadedCheckpoint loaded = load_latest_checkpoint(dir);
    for (const SkippedCheckpoint& k : loaded.skipped) {
      say(LogLevel::warning, "skipped checkpoint " + k.path.string() + ": " + k.reason, true);
    }
    if (!loaded.state) {
      throw CheckpointError(dir, loaded.skipped.empty()
                                     ? std::string("no checkpoint to resume from")
                                     : "no valid checkpoint to resume from (" + std::to_string(loaded.skipped.size()) +
                                           " damaged: " + loaded.skipped.front().path.filename().string() + ": " +
                                           loaded.skipped.front().reason + (loaded.skipped.size() > 1 ? "; ..." : "") + ")");
    }
    core_->restore(*loaded.state, now);
    next_sequence_ = loaded.next_sequence;
    resumed_sequence_ = loaded.sequence;
    resumed_path_ = loaded.path.string();
    resumed_steps_ = loaded.state->steps_applied;
    last_checkpoint_changes_ = core_->state_changes();
    last_checkpoint_version_ = core_->version();
    say(LogLevel::info,
        "resumed from " + resumed_path_ + ": version " + std::to_string(loaded.state->version) + ", " +
            std::to_string(loaded.state->steps_applied) + " steps applied, " + std::to_string(core_->awaited_workers()) +
            " worker(s) expected back",
        true);
  }

  void checkpoint_if_due(Clock::time_point now) {
    if (options_.checkpoint_dir.empty() || !core_->started()) return;
    const bool time_due = checkpoint_timer() && now >= next_checkpoint_;
    const bool versions_due = options_.checkpoint_every_versions > 0 &&
                              core_->version() >= last_checkpoint_version_ + options_.checkpoint_every_versions;
    if (!time_due && !versions_due) return;
    if (core_->state_changes() != last_checkpoint_changes_) write_checkpoint_now();
    // "At most this often": the next one is due an interval after this one ended.
    next_checkpoint_ = Clock::now() + options_.checkpoint_every;
  }

  void final_checkpoint() {
    if (options_.checkpoint_dir.empty() || !core_->started()) return;
    write_checkpoint_now();
  }

  /// Writes the core's state as the next checkpoint; a failure is logged and counted, not thrown.
  void write_checkpoint_now() {
    const auto t0 = Clock::now();
    core_->checkpoint_state(checkpoint_);
    try {
      const CheckpointWritten w =
          write_checkpoint(options_.checkpoint_dir, checkpoint_, next_sequence_, options_.checkpoint_keep);
      ++next_sequence_;
      ++checkpoints_written_;
      checkpoint_bytes_ = w.bytes;
      last_checkpoint_changes_ = core_->state_changes();
      last_checkpoint_version_ = checkpoint_.version;
      for (const std::string& p : w.problems) say(LogLevel::warning, "checkpoint retention: " + p, true);
      const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      char line[160];
      std::snprintf(line, sizeof line, ": version %llu, %llu steps applied, %llu bytes in %.1f ms",
                    static_cast<unsigned long long>(checkpoint_.version),
                    static_cast<unsigned long long>(checkpoint_.steps_applied),
                    static_cast<unsigned long long>(w.bytes), ms);
      say(LogLevel::info, "checkpoint " + w.path.filename().string() + " written" + line);
    } catch (const std::exception& e) {
      ++checkpoint_failures_;
      say(LogLevel::warning, std::string("checkpoint not written: ") + e.what(), true);
    }
    checkpoint_s_ += seconds(Clock::now() - t0);
  }

  static double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

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
  std::optional<ServerCore<M, P, O>> core_;
  ServerOptions options_;
  [[no_unique_address]] P policy_;
  [[no_unique_address]] O optimizer_;
  std::vector<PeerId> lost_;
  std::vector<Snapshot> snapshots_;
  std::atomic<bool> stop_{false};
  CheckpointState checkpoint_;  // refilled for every checkpoint: its vectors are reused
  std::uint64_t next_sequence_ = 1;
  std::uint64_t last_checkpoint_changes_ = 0;
  std::uint64_t last_checkpoint_version_ = 0;
  std::uint64_t checkpoints_written_ = 0;
  std::uint64_t checkpoint_failures_ = 0;
  std::uint64_t checkpoint_bytes_ = 0;
  double checkpoint_s_ = 0;
  std::uint64_t resumed_sequence_ = 0;
  std::string resumed_path_;
  std::uint64_t resumed_steps_ = 0;
  std::vector<std::string> events_;
  Clock::time_point next_checkpoint_{};
  Clock::time_point start_{};
  Clock::time_point next_snapshot_{};
  Clock::time_point next_progress_{};
};

}  // namespace psync
