#pragma once
/// @file
/// @brief Run a whole cluster (one server, N workers) in one process with any
/// policy, optionally over an emulated network, and get back what happened; and
/// the single-threaded SGD reference run with the same report.
///
/// Both runs take any `psync::Model` with its own batch type: the general
/// overloads ask for a batch source (per worker for `run_local`) and an
/// evaluation function; the `data::Dataset` overloads are built on them.

#include "psync/compress/codec.hpp"
#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/core/metrics.hpp"
#include "psync/core/server.hpp"
#include "psync/core/trace.hpp"
#include "psync/core/worker.hpp"
#include "psync/data/dataset.hpp"
#include "psync/optim/any.hpp"
#include "psync/optim/schedule.hpp"
#include "psync/transport/emulated.hpp"
#include "psync/transport/in_process.hpp"

#include <Eigen/Core>

#include <chrono>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace psync {

/// @brief What an evaluation function says about one model: a point of the
/// loss/accuracy series without its time and version.
struct Evaluation {
  double train_loss = 0;      ///< loss on whatever training sample the function chose
  double test_accuracy = -1;  ///< -1 when there is no accuracy to report
};

/// @brief A callable `s()` yielding the next `const Batch&` (a reference that stays
/// valid until the next call, as `data::BatchSampler::next` gives). The same
/// requirement as `Worker::run`'s batch source, so whatever a harness accepts, a
/// worker accepts.
template <class S, class Batch>
concept BatchSource = std::invocable<S&> && std::convertible_to<std::invoke_result_t<S&>, const Batch&>;

/// @brief A callable `f(worker)` returning, by value, worker `worker`'s `BatchSource`.
/// By value because the harness keeps each source for the whole run and hands it
/// to that worker's thread alone: it must be movable, and a reference would leave
/// its lifetime and sharing to guesswork.
template <class F, class Batch>
concept BatchSourceFactory =
    std::invocable<F&, PeerId> && std::is_object_v<std::invoke_result_t<F&, PeerId>> &&
    std::move_constructible<std::remove_cv_t<std::invoke_result_t<F&, PeerId>>> &&
    BatchSource<std::remove_cv_t<std::invoke_result_t<F&, PeerId>>, Batch>;

/// @brief A callable `e(model)` turning a model into an `Evaluation`; called after
/// the run, off the clock, once per snapshot.
template <class E, class M>
concept SnapshotEvaluator =
    std::invocable<E&, const M&> && std::convertible_to<std::invoke_result_t<E&, const M&>, Evaluation>;

namespace detail {

/// Models with an `accuracy(batch)` get a test accuracy in the dataset overloads.
template <class M>
concept Classifier = requires(const M& m, const typename M::Batch& b) {
  { m.accuracy(b) } -> std::convertible_to<double>;
};

/// Models whose `gradient` also returns the batch loss (psync's own do); others return void.
template <class M>
concept GradientReturnsLoss = requires(const M& m, const typename M::Batch& b, Eigen::Ref<Eigen::VectorXf> g) {
  { m.gradient(b, g) } -> std::convertible_to<double>;
};

/// Samples in a batch: `b.size()` when the batch has one, else 1 (as `Worker` counts).
template <class B>
std::uint64_t samples_in(const B& b) {
  if constexpr (requires { b.size(); }) {
    return static_cast<std::uint64_t>(b.size());
  } else {
    return 1;
  }
}

/// The dataset overloads' evaluation: loss on `train_eval`, accuracy on `test` for a classifier.
template <Model M>
auto loss_and_accuracy(const typename M::Batch& train_eval, const typename M::Batch* test) {
  return [&train_eval, test](const M& m) {
    Evaluation e;
    e.train_loss = m.loss(train_eval);
    if constexpr (Classifier<M>) {
      if (test) e.test_accuracy = m.accuracy(*test);
    }
    return e;
  };
}

}  // namespace detail

/// @brief Turns snapshots into the loss/accuracy series: for each, a copy of
/// `prototype` with the snapshot's parameters is passed to `evaluate`. Call it
/// outside any timed region; it runs on the calling thread, in snapshot order.
template <Model M, class Evaluate>
  requires SnapshotEvaluator<Evaluate, M>
std::vector<SeriesPoint> evaluate_snapshots(const M& prototype, const std::vector<Snapshot>& snapshots,
                                            Evaluate&& evaluate) {
  std::vector<SeriesPoint> series;
  series.reserve(snapshots.size());
  M model = prototype;
  for (const auto& s : snapshots) {
    model.parameters() = s.parameters;
    const Evaluation e = std::invoke(evaluate, std::as_const(model));
    SeriesPoint p;
    p.seconds = s.seconds;
    p.version = s.version;
    p.steps = s.steps;
    p.train_loss = e.train_loss;
    p.test_accuracy = e.test_accuracy;
    series.push_back(p);
  }
  return series;
}

/// @brief Evaluates each snapshot (outside any timed region): training loss on
/// `train_eval`, and test accuracy on `test` when the model is a classifier.
template <Model M>
std::vector<SeriesPoint> evaluate_snapshots(const M& prototype, const std::vector<Snapshot>& snapshots,
                                            const typename M::Batch& train_eval,
                                            const typename M::Batch* test = nullptr) {
  return evaluate_snapshots(prototype, snapshots, detail::loss_and_accuracy<M>(train_eval, test));
}

/// @brief Options of a local run. Defaults train 4 workers for 1000 steps each.
struct LocalOptions {
  /// @brief Worker threads, with ids 0 to workers-1 (their endpoints' ids).
  std::uint32_t workers = 4;
  /// @brief SGD learning rate of every worker. The same rate is not the same step
  /// under every policy: BSP and OSP (`combine::RoundAverage`) apply the mean of a
  /// round's P pushes, while ASP, SSP and DSSP (`combine::Sum`) add every push, so
  /// one round moves the model P times further under them. Divide the rate by P
  /// for a Sum policy to compare at equal step (`P::Combiner::step_scale`).
  float learning_rate = 0.1f;
  /// @brief Samples per minibatch (dataset overload only; a batch source decides its own).
  Eigen::Index batch_size = 64;
  /// @brief Every worker's optimizer (docs/optimizers.md), chosen at run time: each
  /// worker starts from its own copy, so each keeps its own state (momentum buffers,
  /// Adam moments). Default `optim::Sgd`, the plain `-learning_rate * g` update.
  optim::Any optimizer{};
  /// @brief Every worker's learning-rate schedule (e.g. `optim::parse_schedule("cosine:900",
  /// 0.1f)`); empty (default): the constant `learning_rate`. A schedule carries its own
  /// starting rate, so when one is set `learning_rate` is not used.
  optim::Schedule schedule{};
  /// @brief How every worker encodes its pushes (docs/compression.md; default dense).
  compress::Codec codec{};
  /// @brief Local SGD steps per worker (the run may stop earlier on `time_budget`).
  std::uint64_t steps_per_worker = 1000;
  /// @brief Wall-clock budget per worker from its first step (0: none).
  std::chrono::milliseconds time_budget{0};
  /// @brief Seeds the sharding and every worker's batch order (dataset overload only).
  std::uint64_t seed = 1;
  /// @brief How often the server copies the model for the loss/accuracy series (0: only the final model).
  std::chrono::milliseconds snapshot_interval{100};
  /// @brief Per-worker straggling, by worker index (missing entries: none).
  std::vector<Straggler> stragglers;
  /// @brief Emulated links and server NIC (default: none, messages move directly).
  NetworkSpec network;
  /// @brief Optional timeline recorder for every thread of the run (not owned).
  Trace* trace = nullptr;
  /// @brief Deadline for every wait (joins, replies, silent peers).
  std::chrono::milliseconds timeout{60000};
  /// @brief Training samples used to evaluate the training loss of each snapshot (dataset overload only).
  Eigen::Index eval_train_samples = 5000;
  /// @brief Server event log (joins, departures); nullptr for silence.
  std::ostream* log = nullptr;
};

/// @brief Trains `model` with `options.workers` workers under policy `P`, all in
/// this process (one thread per worker and one for the server), and returns every
/// worker's and the server's report plus a loss/accuracy series.
///
/// `batches_for(w)` is called once per worker, on the calling thread and before any
/// thread starts (so it need not be thread-safe), and returns worker `w`'s batch
/// source by value; that source is then called only from worker `w`'s thread, so
/// sources must not share mutable state. `evaluate(model)` turns each server
/// snapshot into a series point after the run, off the clock; the snapshots are
/// then released. A worker's id is its endpoint's, 0 to workers-1.
template <Model M, SyncPolicy P, class BatchesFor, class Evaluate>
  requires BatchSourceFactory<BatchesFor, typename M::Batch> && SnapshotEvaluator<Evaluate, M>
RunReport run_local(const M& model, BatchesFor&& batches_for, const LocalOptions& options, P policy,
                    Evaluate&& evaluate) {
  if (options.workers == 0) throw ConfigError("run_local: workers must be at least 1");
  using Source = std::remove_cv_t<std::invoke_result_t<BatchesFor&, PeerId>>;
  std::vector<Source> sources;
  sources.reserve(options.workers);
  for (PeerId w = 0; w < options.workers; ++w) sources.push_back(std::invoke(batches_for, w));

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
      wo.learning_rate = options.learning_rate;
      wo.learning_rate_schedule = options.schedule;
      wo.max_steps = options.steps_per_worker;
      wo.time_budget = options.time_budget;
      wo.reply_timeout = options.timeout;
      wo.codec = options.codec;
      wo.codec_seed = options.seed;
      if (w < options.stragglers.size()) wo.straggler = options.stragglers[w];
      wo.trace = options.trace;
      // One worker type whatever the optimizer (optim::Any), so the choice costs no instantiation.
      Worker<M, Emulated<InProcess>, P, optim::Any> worker(model, Emulated<InProcess>(hub.endpoint(w), network), wo, policy,
                                                           options.optimizer);
      return worker.run(sources[w]);
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
  // A worker that failed never leaves; the server would otherwise wait out the peer timeout.
  if (failure) server.stop();
  try {
    report.server = served.get();
  } catch (...) {
    if (!failure) failure = std::current_exception();
  }
  report.wall_s = std::chrono::duration<double>(Clock::now() - start).count();
  if (failure) std::rethrow_exception(failure);
  report.parameters = server.model().parameters();
  report.series = evaluate_snapshots(model, report.server.snapshots, evaluate);
  // The series is what callers use; the raw copies would hold a model per snapshot.
  report.server.snapshots.clear();
  report.server.snapshots.shrink_to_fit();
  return report;
}

/// @brief Trains `model` on `train` with `options.workers` workers under policy `P`
/// (see the general overload) and evaluates each snapshot's training loss on the
/// first `options.eval_train_samples` samples of `train` and, for a classifier,
/// its accuracy on `test` if given.
///
/// Each worker gets a disjoint shard of `train` and its own batch order, both
/// derived from `options.seed` (shards: `data::shard(train, workers, seed)`;
/// worker w's sampler seed: `data::worker_seed(seed, w)`), so two runs with the same seed
/// see the same data.
template <Model M, SyncPolicy P>
  requires std::same_as<typename M::Batch, data::Batch>
RunReport run_local(const M& model, const data::Dataset& train, const data::Dataset* test,
                    const LocalOptions& options, P policy) {
  if (options.workers == 0) throw ConfigError("run_local: workers must be at least 1");
  if (options.batch_size < 1) throw ConfigError("run_local: batch_size must be at least 1");
  const auto shards = data::shard(train, static_cast<int>(options.workers), options.seed);
  // Every sampler (and its batch buffer) exists before the clock starts; a batch
  // size larger than a shard is reported here, not from a worker thread.
  std::vector<data::BatchSampler> samplers;
  samplers.reserve(shards.size());
  for (std::size_t w = 0; w < shards.size(); ++w) {
    samplers.emplace_back(shards[w], options.batch_size, data::worker_seed(options.seed, w));
  }
  const data::Batch train_eval = data::whole(train, options.eval_train_samples);
  std::optional<data::Batch> test_batch;
  if (test) test_batch = data::whole(*test);
  const auto batches_for = [&samplers](PeerId w) {
    return [sampler = &samplers[w]]() -> const data::Batch& { return sampler->next(); };
  };
  return run_local(model, batches_for, options, std::move(policy),
                   detail::loss_and_accuracy<M>(train_eval, test_batch ? &*test_batch : nullptr));
}

/// @brief Options of the sequential SGD reference run.
struct SequentialOptions {
  /// @brief SGD learning rate; a step is -learning_rate * gradient, as one BSP round's mean.
  float learning_rate = 0.1f;
  /// @brief Samples per minibatch (dataset overload only).
  Eigen::Index batch_size = 64;
  /// @brief SGD steps (the run may stop earlier on `time_budget`).
  std::uint64_t steps = 1000;
  /// @brief Wall-clock budget (0: none).
  std::chrono::milliseconds time_budget{0};
  /// @brief Seeds the batch order (dataset overload only).
  std::uint64_t seed = 1;
  /// @brief How often the model is copied for the series (0: only start and end).
  std::chrono::milliseconds snapshot_interval{100};
  /// @brief Training samples used to evaluate the training loss (dataset overload only).
  Eigen::Index eval_train_samples = 5000;
};

/// @brief Plain single-threaded minibatch SGD with the same report format as
/// `run_local` (policy "sequential", one worker whose every step is an update
/// applied): the reference every comparison keeps.
///
/// `next()` yields the next `const typename M::Batch&`; `evaluate(model)` turns each
/// snapshot into a series point after the run, off the clock. A model whose
/// `gradient` returns void leaves the worker's `last_loss` NaN.
template <Model M, class NextBatch, class Evaluate>
  requires BatchSource<NextBatch, typename M::Batch> && SnapshotEvaluator<Evaluate, M>
RunReport run_sequential(const M& model, NextBatch&& next, const SequentialOptions& options, Evaluate&& evaluate) {
  using Batch = typename M::Batch;
  if (!(options.learning_rate > 0) || !std::isfinite(options.learning_rate)) {
    throw ConfigError("run_sequential: learning rate must be positive and finite");
  }
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
    const Batch& batch = std::invoke(next);
    // The gradient is taken on the const model, as the `Model` concept promises and the workers do.
    if constexpr (detail::GradientReturnsLoss<M>) {
      w.last_loss = std::as_const(m).gradient(batch, g);
    } else {
      std::as_const(m).gradient(batch, g);
    }
    m.parameters() -= options.learning_rate * g;
    ++w.steps;
    w.samples += detail::samples_in(batch);
  }
  const auto end = Clock::now();
  snapshot(end);
  w.wall_s = w.compute_s = std::chrono::duration<double>(end - start).count();
  report.wall_s = w.wall_s;
  report.workers.push_back(w);
  report.server.wall_s = w.wall_s;
  report.server.version = report.server.updates_applied = report.server.steps_applied = w.steps;
  report.parameters = m.parameters();
  report.series = evaluate_snapshots(model, snaps, evaluate);
  return report;
}

/// @brief Sequential SGD on `train` (batches of `options.batch_size` in an order
/// seeded by `options.seed`), evaluated like the dataset `run_local`.
template <Model M>
  requires std::same_as<typename M::Batch, data::Batch>
RunReport run_sequential(const M& model, const data::Dataset& train, const data::Dataset* test,
                         const SequentialOptions& options) {
  if (options.batch_size < 1) throw ConfigError("run_sequential: batch_size must be at least 1");
  data::BatchSampler sampler(train, options.batch_size, options.seed);
  const data::Batch train_eval = data::whole(train, options.eval_train_samples);
  std::optional<data::Batch> test_batch;
  if (test) test_batch = data::whole(*test);
  return run_sequential(
      model, [&sampler]() -> const data::Batch& { return sampler.next(); }, options,
      detail::loss_and_accuracy<M>(train_eval, test_batch ? &*test_batch : nullptr));
}

}  // namespace psync
