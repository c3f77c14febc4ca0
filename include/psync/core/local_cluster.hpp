#pragma once
/// @file
/// @brief Run a whole cluster (one server, N workers) in one process with any
/// policy, optionally over an emulated network, and get back what happened.

#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/core/metrics.hpp"
#include "psync/core/server.hpp"
#include "psync/core/trace.hpp"
#include "psync/core/worker.hpp"
#include "psync/data/dataset.hpp"
#include "psync/transport/emulated.hpp"
#include "psync/transport/in_process.hpp"

#include <Eigen/Core>

#include <chrono>
#include <cstdint>
#include <exception>
#include <future>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

namespace psync {

/// @brief Options of a local run. Defaults train 4 workers for 1000 steps each.
struct LocalOptions {
  std::uint32_t workers = 4;
  float learning_rate = 0.1f;
  Eigen::Index batch_size = 64;
  /// @brief Local SGD steps per worker (the run may stop earlier on `time_budget`).
  std::uint64_t steps_per_worker = 1000;
  /// @brief Wall-clock budget per worker from its first step (0: none).
  std::chrono::milliseconds time_budget{0};
  /// @brief Seeds the sharding and every worker's batch order.
  std::uint64_t seed = 1;
  /// @brief How often the server copies the model for the loss/accuracy series (0: only start and end).
  std::chrono::milliseconds snapshot_interval{100};
  /// @brief Per-worker straggling, by worker index (missing entries: none).
  std::vector<Straggler> stragglers;
  /// @brief Emulated links and server NIC (default: none, messages move directly).
  NetworkSpec network;
  /// @brief Optional timeline recorder for every thread of the run (not owned).
  Trace* trace = nullptr;
  /// @brief Deadline for every wait (joins, replies, silent peers).
  std::chrono::milliseconds timeout{60000};
  /// @brief Training samples used to evaluate the training loss of each snapshot.
  Eigen::Index eval_train_samples = 5000;
  /// @brief Server event log (joins, departures); nullptr for silence.
  std::ostream* log = nullptr;
};

namespace detail {

template <class M>
concept Classifier = requires(const M& m, const typename M::Batch& b) {
  { m.accuracy(b) } -> std::convertible_to<double>;
};

}  // namespace detail

/// @brief Evaluates each snapshot (outside any timed region): training loss on
/// `train_eval`, and test accuracy on `test` when the model is a classifier.
template <Model M>
std::vector<SeriesPoint> evaluate_snapshots(const M& prototype, const std::vector<Snapshot>& snapshots,
                                            const typename M::Batch& train_eval,
                                            const typename M::Batch* test = nullptr) {
  std::vector<SeriesPoint> series;
  series.reserve(snapshots.size());
  M model = prototype;
  for (const auto& s : snapshots) {
    model.parameters() = s.parameters;
    SeriesPoint p;
    p.seconds = s.seconds;
    p.version = s.version;
    p.steps = s.steps;
    p.train_loss = model.loss(train_eval);
    if constexpr (detail::Classifier<M>) {
      if (test) p.test_accuracy = model.accuracy(*test);
    }
    series.push_back(p);
  }
  return series;
}

/// @brief Trains `model` on `train` with `options.workers` workers under policy `P`,
/// all in this process (threads), and returns every worker's and the server's
/// report plus a loss/accuracy series (accuracy on `test` if given). The snapshots
/// behind the series are evaluated after the run, off the clock, then released.
///
/// Each worker gets a disjoint shard of `train` and its own batch order, both
/// derived from `options.seed`, so two runs with the same seed see the same data.
template <Model M, SyncPolicy P>
  requires std::same_as<typename M::Batch, data::Batch>
RunReport run_local(const M& model, const data::Dataset& train, const data::Dataset* test,
                    const LocalOptions& options, P policy = {}) {
  if (options.workers == 0) throw ConfigError("run_local: workers must be at least 1");
  if (options.batch_size < 1) throw ConfigError("run_local: batch_size must be at least 1");
  const auto shards = data::shard(train, static_cast<int>(options.workers), options.seed);
  std::vector<data::BatchSampler> samplers;
  samplers.reserve(shards.size());
  for (std::size_t w = 0; w < shards.size(); ++w) {
    samplers.emplace_back(shards[w], options.batch_size, options.seed * 7919 + w + 1);
  }
  const data::Batch train_eval = data::whole(train, options.eval_train_samples);
  std::optional<data::Batch> test_batch;
  if (test) test_batch = data::whole(*test);

  auto network = std::make_shared<Network>(options.network);
  InProcessHub hub;
  ServerOptions so;
  so.expected_workers = options.workers;
  so.join_timeout = options.timeout;
  so.peer_timeout = options.timeout;
  so.snapshot_interval = options.snapshot_interval;
  so.max_snapshots = 100000;
  so.log = options.log;
  so.trace = options.trace;
  if (options.trace) {
    options.trace->name_track(server_track, "server");
    for (PeerId w = 0; w < options.workers; ++w) {
      options.trace->name_track(worker_track(w), "worker " + std::to_string(w) + " compute");
      options.trace->name_track(worker_track(w) + 1, "worker " + std::to_string(w) + " comm");
    }
  }
  Server<M, P> server(model, so, policy);
  Emulated<InProcess> server_endpoint(hub.endpoint(server_peer), network);

  const auto start = Clock::now();
  auto served = std::async(std::launch::async, [&] { return server.run(server_endpoint); });
  std::vector<std::future<WorkerReport>> running;
  for (PeerId w = 0; w < options.workers; ++w) {
    running.push_back(std::async(std::launch::async, [&, w] {
      WorkerOptions wo;
      wo.id = w;
      wo.learning_rate = options.learning_rate;
      wo.max_steps = options.steps_per_worker;
      wo.time_budget = options.time_budget;
      wo.reply_timeout = options.timeout;
      if (w < options.stragglers.size()) wo.straggler = options.stragglers[w];
      wo.trace = options.trace;
      Worker<M, Emulated<InProcess>, P> worker(model, Emulated<InProcess>(hub.endpoint(w), network), wo, policy);
      auto& sampler = samplers[w];
      return worker.run([&sampler]() -> const data::Batch& { return sampler.next(); });
    }));
  }
  RunReport report;
  report.policy = policy.name();
  std::exception_ptr failure;
  for (auto& r : running) {
    try {
      report.workers.push_back(r.get());
    } catch (...) {
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) server.stop();
  try {
    report.server = served.get();
  } catch (...) {
    if (!failure) failure = std::current_exception();
  }
  report.wall_s = std::chrono::duration<double>(Clock::now() - start).count();
  if (failure) std::rethrow_exception(failure);
  report.parameters = server.model().parameters();
  report.series = evaluate_snapshots(model, report.server.snapshots, train_eval, test_batch ? &*test_batch : nullptr);
  // The series is what callers use; the raw copies would hold a model per snapshot.
  report.server.snapshots.clear();
  report.server.snapshots.shrink_to_fit();
  return report;
}

/// @brief Options of the sequential SGD reference run.
struct SequentialOptions {
  float learning_rate = 0.1f;
  Eigen::Index batch_size = 64;
  std::uint64_t steps = 1000;
  std::chrono::milliseconds time_budget{0};
  std::uint64_t seed = 1;
  std::chrono::milliseconds snapshot_interval{100};
  Eigen::Index eval_train_samples = 5000;
};

/// @brief Plain single-threaded minibatch SGD with the same report format as
/// `run_local` (policy "sequential"): the reference every comparison keeps.
template <Model M>
  requires std::same_as<typename M::Batch, data::Batch>
RunReport run_sequential(const M& model, const data::Dataset& train, const data::Dataset* test,
                         const SequentialOptions& options) {
  if (options.batch_size < 1) throw ConfigError("run_sequential: batch_size must be at least 1");
  data::BatchSampler sampler(train, options.batch_size, options.seed);
  const data::Batch train_eval = data::whole(train, options.eval_train_samples);
  std::optional<data::Batch> test_batch;
  if (test) test_batch = data::whole(*test);
  M m = model;
  Eigen::VectorXf g = Eigen::VectorXf::Zero(m.parameters().size());
  RunReport report;
  report.policy = "sequential";
  WorkerReport w;
  std::vector<Snapshot> snaps;
  const auto start = Clock::now();
  auto next_snapshot = start;
  auto snapshot = [&](Clock::time_point now) {
    snaps.push_back(Snapshot{std::chrono::duration<double>(now - start).count(), w.steps, w.steps, m.parameters()});
  };
  while (w.steps < options.steps) {
    const auto now = Clock::now();
    if (options.time_budget.count() > 0 && now - start >= options.time_budget) break;
    if (now >= next_snapshot) {
      snapshot(now);
      next_snapshot = options.snapshot_interval.count() > 0 ? now + options.snapshot_interval
                                                            : Clock::time_point::max();
    }
    const auto& batch = sampler.next();
    w.last_loss = m.gradient(batch, g);
    m.parameters() -= options.learning_rate * g;
    ++w.steps;
    w.samples += static_cast<std::uint64_t>(batch.size());
  }
  const auto end = Clock::now();
  snapshot(end);
  w.wall_s = w.compute_s = std::chrono::duration<double>(end - start).count();
  report.wall_s = w.wall_s;
  report.workers.push_back(w);
  report.server.wall_s = w.wall_s;
  report.server.version = report.server.steps_applied = w.steps;
  report.parameters = m.parameters();
  report.series = evaluate_snapshots(model, snaps, train_eval, test_batch ? &*test_batch : nullptr);
  return report;
}

}  // namespace psync
