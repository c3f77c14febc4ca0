#pragma once
/// @file
/// @brief Time to a target accuracy in virtual time, for any `psync::Model`: the
/// sequential SGD reference with virtual time steps x step cost, a policy run in
/// `psync::sim::simulate` that stops once it has reached and held the target, the
/// server's measured cost per float, and the figures read off the resulting
/// reports (steps at the target, tail accuracy, median over seeds).

#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/core/metrics.hpp"
#include "psync/harness/local_cluster.hpp"
#include "psync/sim/simulator.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace psync::harness {

/// @brief The server's cost per float of a push, in seconds: the median over
/// `repetitions` timed rounds (after `warmup` untimed ones) of `v += u; copy = v`
/// on model-sized vectors (apply the update, copy the model into the reply),
/// divided by the parameter count. What `sim::SimOptions::server_s_per_float` asks for.
/// A model without parameters costs 0.
template <Model M>
double calibrate_server_cost(const M& model, int repetitions = 20, int warmup = 5) {
  if (repetitions < 1) throw ConfigError("calibrate_server_cost: repetitions must be at least 1");
  const Eigen::Ref<const Eigen::VectorXf> parameters = model.parameters();
  const Eigen::Index n = parameters.size();
  if (n == 0) return 0;
  Eigen::VectorXf v = parameters, u = Eigen::VectorXf::Constant(n, 1e-6f), copy(n);
  std::vector<double> times;
  times.reserve(static_cast<std::size_t>(repetitions));
  float sink = 0;
  for (int i = 0; i < std::max(0, warmup) + repetitions; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    v += u;
    copy = v;
    const auto t1 = std::chrono::steady_clock::now();
    sink += copy[i % n];
    if (i >= warmup) times.push_back(std::chrono::duration<double>(t1 - t0).count());
  }
  // Keeps the timed work observable, so it cannot be optimised away.
  volatile float keep = sink;
  (void)keep;
  std::nth_element(times.begin(), times.begin() + static_cast<std::ptrdiff_t>(times.size() / 2), times.end());
  return times[times.size() / 2] / static_cast<double>(n);
}

/// @brief Plain sequential SGD in virtual time: `model` takes up to `max_steps`
/// steps of `parameters -= learning_rate * gradient` on batches from `next`, and
/// step k ends at virtual time k x `step_s`. `evaluate(model)` gives a series point
/// at the start, every `every` steps (0: none in between) and at the end; with
/// `stop_at_target` the run stops at the first of those evaluations where
/// `time_to_accuracy(target)` is met. Same report format as `run_sequential`
/// (policy "sequential", one worker whose every step is an update applied), times
/// in virtual seconds.
template <Model M, class NextBatch, class Evaluate>
  requires BatchSource<NextBatch, typename M::Batch> && SnapshotEvaluator<Evaluate, M>
RunReport sequential_virtual(M model, NextBatch&& next, float learning_rate, double step_s, std::uint64_t max_steps,
                             std::uint64_t every, Evaluate&& evaluate, double target, bool stop_at_target) {
  using Batch = typename M::Batch;
  Eigen::VectorXf g = Eigen::VectorXf::Zero(model.parameters().size());
  RunReport rep;
  rep.policy = "sequential";
  WorkerReport w;
  const auto point = [&] {
    const Evaluation e = std::invoke(evaluate, std::as_const(model));
    rep.series.push_back(
        SeriesPoint{static_cast<double>(w.steps) * step_s, w.steps, w.steps, e.train_loss, e.test_accuracy});
  };
  point();
  while (w.steps < max_steps) {
    const Batch& batch = std::invoke(next);
    if constexpr (detail::GradientReturnsLoss<M>) {
      w.last_loss = std::as_const(model).gradient(batch, g);
    } else {
      std::as_const(model).gradient(batch, g);
    }
    model.parameters() -= learning_rate * g;
    ++w.steps;
    w.samples += detail::samples_in(batch);
    if (every > 0 && w.steps % every == 0) {
      point();
      if (stop_at_target && rep.time_to_accuracy(target) >= 0) break;
    }
  }
  if (rep.series.back().steps != w.steps) point();
  w.wall_s = w.compute_s = static_cast<double>(w.steps) * step_s;
  rep.wall_s = w.wall_s;
  rep.workers.push_back(w);
  rep.server.wall_s = w.wall_s;
  rep.server.version = rep.server.updates_applied = rep.server.steps_applied = w.steps;
  rep.parameters = model.parameters();
  return rep;
}

/// @brief Local SGD steps folded into the model at the series point whose time is
/// `tta` (a time `time_to_accuracy` returned), or -1 if `tta < 0` or no point has it.
inline double steps_at(const RunReport& report, double tta) {
  if (tta < 0) return -1;
  for (const auto& p : report.series)
    if (p.seconds == tta) return static_cast<double>(p.steps);
  return -1;
}

/// @brief Mean test accuracy of the last 3 points of the series (the window
/// `time_to_accuracy` uses), or -1 for an empty series.
inline double tail_accuracy(const RunReport& report) {
  const std::size_t n = std::min<std::size_t>(3, report.series.size());
  double sum = 0;
  for (std::size_t i = report.series.size() - n; i < report.series.size(); ++i) sum += report.series[i].test_accuracy;
  return n ? sum / static_cast<double>(n) : -1;
}

/// @brief The local steps sequential SGD (its report `seq`) took to reach
/// accuracy `a` (3-point mean, as `time_to_accuracy`), or -1 if it never did.
inline double sequential_steps_to(const RunReport& seq, double a) {
  const double t = seq.time_to_accuracy(a);
  return t < 0 ? -1 : steps_at(seq, t);
}

/// @brief Median of times to target (e.g. one per seed), where a negative time
/// (never reached) counts as infinitely late; -1 if the median itself is never
/// (or `times` is empty).
inline double median_time(std::vector<double> times) {
  if (times.empty()) return -1;
  for (auto& t : times)
    if (t < 0) t = std::numeric_limits<double>::infinity();
  std::sort(times.begin(), times.end());
  const std::size_t k = times.size() / 2;
  const double m = times.size() % 2 ? times[k] : 0.5 * (times[k - 1] + times[k]);
  return std::isfinite(m) ? m : -1;
}

/// @brief What `run_until_target` is asked for.
struct TargetRun {
  /// @brief The most virtual seconds the run may last.
  double cap_s = 600;
  /// @brief Virtual seconds between evaluations (overrides the base options'
  /// `snapshot_interval_s`); also the unit of the "held" margin.
  double snapshot_s = 0.25;
  /// @brief Target test accuracy (3-point mean, as `RunReport::time_to_accuracy`).
  double target = 0.85;
};

/// @brief The virtual time after which a run that met the target at `t` has held
/// it long enough: max(4 evaluations, 10% of t) later.
inline double held_until(double t, double snapshot_s) { return t + std::max(4 * snapshot_s, 0.1 * t); }

/// @brief Runs `policy` in `sim::simulate` until it reaches and holds the target
/// (or until `run.cap_s`), in one run, and returns its report.
///
/// The run is `base` with `budget_s = run.cap_s`, `snapshot_interval_s =
/// run.snapshot_s` and a `stop_when` that ends it once the series has met the
/// target (`time_to_accuracy`, 3-point mean) and gone on for `held_until` that time,
/// so the target is held, not grazed; a run is deterministic given its set-up, so
/// stopping early changes nothing before the stop. The run's real cost goes to
/// `stats` when given.
template <Model M, SyncPolicy P, class BatchesFor, class Evaluate>
  requires BatchSourceFactory<BatchesFor, typename M::Batch> && SnapshotEvaluator<Evaluate, M>
RunReport run_until_target(const M& model, const P& policy, BatchesFor&& batches_for, const sim::SimOptions& base,
                           Evaluate&& evaluate, const TargetRun& run, sim::SimStats* stats = nullptr) {
  if (!(run.snapshot_s > 0)) throw ConfigError("run_until_target: snapshot_s must be positive");
  if (!(run.cap_s > 0)) throw ConfigError("run_until_target: cap_s must be positive");
  sim::SimOptions o = base;
  o.budget_s = run.cap_s;
  o.snapshot_interval_s = run.snapshot_s;
  o.stop_when = [&run, outer = base.stop_when](const std::vector<SeriesPoint>& series) {
    if (outer && outer(series)) return true;
    const double t = time_to_accuracy(series, run.target);
    return t >= 0 && series.back().seconds >= held_until(t, run.snapshot_s);
  };
  return sim::simulate(model, batches_for, o, policy, evaluate, stats);
}

}  // namespace psync::harness
