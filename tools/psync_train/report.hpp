#pragma once
// psync-train's JSON reports (--metrics): the server's and a worker's, written atomically.

#include "cli.hpp"

#include <psync/core/metrics.hpp>

#include <Eigen/Core>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace psync_train {

/// Writes `text` to `path` through a temporary file, so a reader never sees half of it.
void write_file_atomically(const std::string& path, const std::string& text);

/// Fails early (usage error naming `flag`) if the output file `path` (--metrics, --trace)
/// cannot be created, before any training.
void check_writable(const char* flag, const std::string& path);

/// CPU seconds of this process (getrusage): in user space and in the kernel (its
/// share of TCP's work shows there); and of the whole machine (/proc/stat: every
/// process, the kernel and its interrupts, each counted once). Negative: not measured.
struct CpuTimes {
  double user_s = -1;
  double sys_s = -1;
  double machine_busy_s = -1;
  /// What was used since `start` (the time a run took, without loading the data).
  CpuTimes since(const CpuTimes& start) const {
    CpuTimes d;
    if (user_s >= 0 && start.user_s >= 0) {
      d.user_s = user_s - start.user_s;
      d.sys_s = sys_s - start.sys_s;
    }
    if (machine_busy_s >= 0 && start.machine_busy_s >= 0) d.machine_busy_s = machine_busy_s - start.machine_busy_s;
    return d;
  }
};

/// This process's CPU times now.
CpuTimes cpu_times();

/// What the server's report holds beyond `psync::ServerReport`.
struct ServerSummary {
  std::string listening;  // host:port
  bool interrupted = false;
  double final_test_accuracy = 0;
  double final_test_loss = 0;
  Eigen::Index test_samples = 0;
  std::size_t workers_lost = 0;
  /// --series-ms: each model copy evaluated on the first --series-samples test samples;
  /// seconds count from the start of training (`ServerReport::started_s`).
  std::vector<psync::SeriesPoint> series;
  double time_to_target_s = -1;  // --target: -1 when not reached (or not asked)
  CpuTimes cpu;                  // used by Server::run (training), not by loading or evaluation
};

/// The server's --metrics file, if one was asked for.
void write_server_metrics(const Config& c, const ServerSummary& s, const psync::ServerReport& report);

/// A worker's evaluation of the last global model it installed (a worker of sharded
/// servers, which is the only process that holds the whole model).
struct FinalEvaluation {
  double test_accuracy = 0;
  double test_loss = 0;
  Eigen::Index test_samples = 0;
};

/// A worker's --metrics file, if one was asked for: `id` is null if the worker never
/// learnt it (no --id, no join reply), `r` is null after a failure, `error` says why;
/// `final_model`, when given, adds final_test_accuracy, final_test_loss and test_samples.
void write_worker_metrics(const Config& c, std::optional<std::uint32_t> id, const psync::WorkerReport* r,
                          const std::string& error, const FinalEvaluation* final_model = nullptr,
                          CpuTimes cpu = {});

}  // namespace psync_train
