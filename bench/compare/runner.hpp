// compare_policies: running the policies of a scenario and measuring them: the
// Harness (real time over threads, virtual time through psync::harness), each
// policy's Row of figures, and the goals checked against them.
#pragma once

#include "format.hpp"
#include "options.hpp"
#include "scenarios.hpp"

#include <psync/harness/time_to_target.hpp>
#include <psync/models.hpp>
#include <psync/psync.hpp>
#include <psync/sim/simulator.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <optional>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace compare {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

// ---------------------------------------------------------------- progress

// Prints at most one line a second while a run is going; run_local blocks, so a
// watcher thread reports elapsed time and the caller reports each policy's end.
class Progress {
 public:
  explicit Progress(bool quiet) : quiet_(quiet) {}
  template <class F>
  auto watch(const std::string& what, double budget_s, F&& f) const {
    if (quiet_) return f();
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
    const auto t0 = std::chrono::steady_clock::now();
    std::thread watcher([&] {
      std::unique_lock lock(m);
      while (!cv.wait_for(lock, 1s, [&] { return done; })) {
        const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::fprintf(stderr, "  %-28s %5.1f s of %.0f s budget%s\n", what.c_str(), el, budget_s,
                     el > budget_s ? " (evaluating snapshots)" : "");
      }
    });
    auto finish = [&] {
      {
        std::lock_guard g(m);
        done = true;
      }
      cv.notify_all();
      watcher.join();
    };
    try {
      auto r = f();
      finish();
      return r;
    } catch (...) {
      finish();
      throw;
    }
  }
  void line(const std::string& s) const {
    if (!quiet_) std::fprintf(stderr, "%s\n", s.c_str());
  }

 private:
  bool quiet_;
};

// ---------------------------------------------------------------- measurements

struct Row {
  std::string label;
  float lr = 0;  // the learning rate this policy ran at
  psync::RunReport rep;
  double tta = -1;  // time to target accuracy, < 0 if never
  double speedup = std::numeric_limits<double>::quiet_NaN();
  bool speedup_lower_bound = false;
  double compute = 0, wait = 0, comm = 0, held = 0, hidden = 0;
  double comm_per_round = 0, step_s = 0;
  std::uint64_t samples = 0, pushes = 0;
  std::string note;
  // Final test accuracy (virtual time: of the final model on the full test set).
  double final_acc = -1;
  // Local SGD steps folded into the model at the time-to-target point (-1: never).
  double steps_at_target = -1;
  // Virtual time: time to target per seed (< 0: never); tta is their median.
  std::vector<double> tta_seeds;
  double real_s = 0;  // real seconds this row's runs took (simulation and evaluation)
  // Virtual time: the simulator's real cost over this row's runs (policies, not sequential SGD).
  psync::sim::SimStats sim;
};

// A row of figures from one run's report: time to `target`, the time split, throughput.
inline Row summarize(const std::string& label, float lr, psync::RunReport rep, double target) {
  Row r;
  r.label = label;
  r.lr = lr;
  r.tta = rep.time_to_accuracy(target);
  const double n = static_cast<double>(std::max<std::size_t>(1, rep.workers.size()));
  double comm_total = 0, steps_total = 0, compute_total = 0;
  for (const auto& w : rep.workers) {
    const double wall = w.wall_s > 0 ? w.wall_s : 1;
    r.compute += w.compute_s / wall / n;
    r.wait += w.wait_s / wall / n;
    r.comm += w.comm_s / wall / n;
    r.held += w.held_s / wall / n;
    r.hidden += w.hidden_fraction() / n;
    r.samples += w.samples;
    r.pushes += w.pushes;
    comm_total += w.comm_s;
    compute_total += w.compute_s;
    steps_total += static_cast<double>(w.steps);
  }
  r.comm_per_round = r.pushes ? comm_total / static_cast<double>(r.pushes) : 0;
  r.step_s = steps_total > 0 ? compute_total / steps_total : 0;
  r.final_acc = rep.final_accuracy();
  r.steps_at_target = psync::harness::steps_at(rep, r.tta);
  r.rep = std::move(rep);
  return r;
}

inline std::string speedup_str(const Row& r) {
  if (std::isnan(r.speedup)) return "-";
  return (r.speedup_lower_bound ? ">= " : "") + fmt(r.speedup, 2) + "x";
}

struct Data {
  psync::data::Dataset train, test;
};

// Caps a Chrome trace at `max_events` events: the writer puts one event per line.
inline void write_capped_trace(const psync::Trace& t, const fs::path& path, std::size_t max_events) {
  std::ostringstream s;
  t.write_json(s);
  std::istringstream in(s.str());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  std::string line;
  std::size_t events = 0;
  bool first = true;
  while (std::getline(in, line)) {
    if (line.rfind("],", 0) == 0) break;
    const bool is_meta = line.find("\"ph\":\"M\"") != std::string::npos;
    if (!first && !is_meta && line.find("\"ph\":") != std::string::npos) {
      if (events >= max_events) continue;
      ++events;
    }
    out << line << '\n';
    first = false;
  }
  out << "],\"displayTimeUnit\":\"ms\"}\n";
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

// Worker w's batch source over shards[w], seeded as psync::run_local and psync-train
// seed it (data::worker_seed): every call makes a fresh sampler, so two runs over the
// same shards see worker w's batches in the same order. `shards` must outlive the sources.
inline auto shard_sources(const std::vector<psync::data::Dataset>& shards, Eigen::Index batch, std::uint64_t seed) {
  return [&shards, batch, seed](psync::PeerId w) {
    return [smp = psync::data::BatchSampler(shards[w], batch, psync::data::worker_seed(seed, w))]() mutable
               -> const psync::data::Batch& { return smp.next(); };
  };
}

class Harness {
 public:
  Harness(const Options& o, const Data& d, const Progress& p)
      : opt_(o),
        data_(d),
        progress_(p),
        eval_train_(psync::data::whole(d.train, 500)),
        test_subset_(psync::data::whole(d.test, 2000)),
        test_full_(psync::data::whole(d.test)) {}

  // The model a scenario names (Scenario::model), initialized from seed 42. Virtual-time
  // runs dispatch on the name once (scenario_virtual); real-time runs, traces and
  // --validate train the MLP only.
  template <class M>
  static M make_model() {
    if constexpr (std::is_same_v<M, psync::models::Cnn>) {
      psync::models::Cnn m;
      m.initialize(42);
      return m;
    } else {
      psync::models::Mlp m({784, 256, 128, 10});
      m.initialize(42);
      return m;
    }
  }
  psync::models::Mlp model() const { return make_model<psync::models::Mlp>(); }

  std::uint32_t workers(const Scenario& s) const { return opt_.workers.value_or(s.workers); }
  float base_lr(const Scenario& s) const { return base_override_.value_or(opt_.lr.value_or(s.lr)); }
  // The rate `p` runs at in scenario `s` (see LrRule).
  float lr(const Scenario& s, const PolicyId& p) const {
    return learning_rate_for(p, base_lr(s), workers(s), opt_.lr_rule);
  }

  // The scenario's optimizer and schedule for workers running at `o.learning_rate`
  // (set that first: the schedule starts from it). A constant schedule stays empty,
  // so the default runs are the plain-SGD runs they always were.
  template <class RunOptions>
  static void choose_optimizer(const Scenario& s, RunOptions& o) {
    o.optimizer = psync::optim::parse_optimizer(s.optimizer);
    o.schedule = s.schedule == "constant" ? psync::optim::Schedule{} : psync::optim::parse_schedule(s.schedule, o.learning_rate);
  }

  psync::LocalOptions local(const Scenario& s, double budget_s) const {
    psync::LocalOptions lo;
    lo.workers = workers(s);
    lo.learning_rate = base_lr(s);
    lo.batch_size = s.batch;
    lo.steps_per_worker = std::numeric_limits<std::uint64_t>::max() / 2;
    lo.time_budget = std::chrono::milliseconds(static_cast<long long>(budget_s * 1000));
    lo.seed = opt_.seed;
    // Each snapshot costs a full test-set pass afterwards (off the clock, ~0.3 s
    // here), so 500 ms bounds the evaluation time; it is also the resolution of
    // every time-to-accuracy figure.
    lo.snapshot_interval = 500ms;
    lo.stragglers = s.stragglers(lo.workers);
    lo.network = s.network();
    lo.eval_train_samples = 2000;
    return lo;
  }

  psync::RunReport run(const Scenario& s, const PolicyId& p, double budget_s, psync::Trace* trace = nullptr) const {
    if (p.sequential()) {
      psync::SequentialOptions so;
      so.learning_rate = lr(s, p);
      so.batch_size = s.batch;
      so.steps = std::numeric_limits<std::uint64_t>::max() / 2;
      so.time_budget = std::chrono::milliseconds(static_cast<long long>(budget_s * 1000));
      so.seed = opt_.seed;
      so.snapshot_interval = 500ms;
      so.eval_train_samples = 2000;
      return psync::run_sequential(model(), data_.train, &data_.test, so);
    }
    auto lo = local(s, budget_s);
    lo.learning_rate = lr(s, p);
    choose_optimizer(s, lo);
    lo.trace = trace;
    return with_policy(p, [&](auto policy) { return psync::run_local(model(), data_.train, &data_.test, lo, policy); });
  }

  // Same total samples as `samples`, no time limit: the fair accuracy reference.
  psync::RunReport sequential_samples(const Scenario& s, std::uint64_t samples) const {
    psync::SequentialOptions so;
    so.learning_rate = base_lr(s);
    so.batch_size = s.batch;
    so.steps = std::max<std::uint64_t>(1, samples / static_cast<std::uint64_t>(s.batch));
    so.seed = 1;
    so.snapshot_interval = 1000ms;
    so.eval_train_samples = 2000;
    return psync::run_sequential(model(), data_.train, &data_.test, so);
  }

  void warm_up(const Scenario& s) const {
    psync::SequentialOptions so;
    so.learning_rate = base_lr(s);
    so.batch_size = s.batch;
    so.steps = 30;
    so.snapshot_interval = 0ms;
    (void)psync::run_sequential(model(), data_.train, nullptr, so);
    auto lo = local(s, 0);
    lo.time_budget = 0ms;
    lo.steps_per_worker = 10;
    lo.network = {};
    lo.stragglers.clear();
    lo.snapshot_interval = 0ms;
    lo.learning_rate = lr(s, {"asp"});
    (void)psync::run_local(model(), data_.train, nullptr, lo, psync::Asp{});
  }

  // The policies a scenario runs: sequential SGD, BSP, ASP, SSP(s), OSP(S), LOSP(S),
  // or --policies (sequential SGD always), and --sweep's.
  std::vector<PolicyId> policies(const Scenario& s) const {
    const unsigned S = opt_.osp.value_or(s.osp);
    const unsigned ssp = opt_.ssp.value_or(s.ssp);
    // Built by appending: GCC 12 -O3 reported a false -Wrestrict on `kind + (":" + ...)` here
    // once compare_policies.cpp included codec_sweep.hpp.
    const auto numbered = [](const char* kind, unsigned v) {
      std::string label = kind;
      label += ':';
      label += std::to_string(v);
      return PolicyId{std::move(label)};
    };
    std::vector<PolicyId> policies = {{"sequential"},      {"bsp"},           {"asp"},
                                      numbered("ssp", ssp), numbered("osp", S), numbered("losp", S)};
    const auto listed = [&](const PolicyId& p) {
      return std::any_of(policies.begin(), policies.end(), [&](const PolicyId& q) { return q.label == p.label; });
    };
    if (!opt_.only.empty()) {
      std::erase_if(policies, [&](const PolicyId& p) {
        return !p.sequential() && std::none_of(opt_.only.begin(), opt_.only.end(),
                                               [&](const PolicyId& q) { return q.label == p.label; });
      });
      for (const auto& p : opt_.only)
        if (!listed(p)) policies.push_back(p);
    }
    if (opt_.sweep) {
      for (unsigned v : {1u, 3u, 8u})
        if (!listed(numbered("ssp", v))) policies.push_back(numbered("ssp", v));
      for (unsigned v : {5u, 10u, 20u, 40u})
        if (!listed(numbered("osp", v))) policies.push_back(numbered("osp", v));
    }
    return policies;
  }

  std::vector<Row> scenario(const Scenario& s) { return scenario(s, policies(s)); }

  // `policies` (sequential SGD among them if wanted) in scenario `s`. With
  // `sample_references`, also sequential SGD on as many samples as OSP(S) (and, in
  // virtual time, LOSP(S)) processed: the accuracy goals' references, which the
  // sweeps, printing no goals, go without.
  std::vector<Row> scenario(const Scenario& s, const std::vector<PolicyId>& policies, bool sample_references = true) {
    const double budget = opt_.budget_s.value_or(s.budget_s);
    const double target = opt_.target.value_or(s.target);
    const unsigned S = opt_.osp.value_or(s.osp);
    progress_.line("compare: scenario " + s.name + ": " + s.summary);
    if (opt_.virtual_time) return scenario_virtual(s, policies, sample_references);
    progress_.line("compare: warm-up (data touched, threads and buffers exercised)");
    warm_up(s);
    std::vector<Row> rows;
    for (const auto& p : policies) {
      const std::string what = "[" + s.name + "] " + p.label + " (lr " + fmt(lr(s, p), 4) + ")";
      auto rep = progress_.watch(what, budget, [&] { return run(s, p, budget); });
      rows.push_back(summarize(p.label, lr(s, p), std::move(rep), target));
      const auto& r = rows.back();
      progress_.line("  " + what + " done: final accuracy " + fmt(r.final_acc) + ", " + s.name +
                     " target " + fmt(target, 2) + ": " + tta_s(r.tta) + ", " + fmt(r.rep.throughput(), 0) +
                     " samples/s");
    }
    // Sequential SGD with as many samples as OSP processed (the accuracy goal's reference).
    const auto osp_it = std::find_if(rows.begin(), rows.end(), [&](const Row& r) { return r.label == "osp:" + std::to_string(S); });
    if (sample_references && osp_it != rows.end()) {
      const std::uint64_t n = osp_it->samples;
      const std::string what = "[" + s.name + "] sequential, " + std::to_string(n) + " samples";
      auto rep = progress_.watch(what, budget, [&] { return sequential_samples(s, n); });
      Row r = summarize("sequential@osp-samples", base_lr(s), std::move(rep), target);
      r.note = "no time limit; same samples as osp:" + std::to_string(S);
      progress_.line("  " + what + " done: final accuracy " + fmt(r.final_acc));
      rows.push_back(std::move(r));
    }
    speedups(rows);
    if (!opt_.trace_dir.empty()) traces(s, policies);
    return rows;
  }

  // ------------------------------------------------------------ virtual time
  //
  // Every policy runs in psync::sim::simulate: the real ServerCore and WorkerCores
  // and the real gradients on the real data, with time modelled (a step costs
  // step_s times the worker's slowdown, the scenario's network, the server's cost
  // per float). Sequential SGD is a plain SGD loop (psync::harness::sequential_virtual)
  // whose virtual time is steps x step_s, evaluated as it goes so it stops at the target.
  //
  // Cost control: a run's real cost is its gradient math, so each policy runs once
  // and stops when its time to target is reached and held
  // (psync::harness::run_until_target), at most the scenario's cap. The series evaluates each snapshot on 2,000 test samples (and
  // 500 training samples for the loss); only the final figure uses the full 10k test set.

  struct VirtualCosts {
    double step_s = 0;
    double step_cv = 0;
    double server_s_per_float = 0;
    bool step_given = false;
    bool cv_given = false;
    // --host-cores C without --step-ms: the step was calibrated on this many threads at
    // once (every shared core computing), not on one (0: single-threaded).
    unsigned loaded_threads = 0;
    // The mean step: a lognormal with median step_s and coefficient of variation cv
    // has mean step_s * sqrt(1 + cv^2). Sequential SGD's virtual time is steps x this.
    double mean_step_s() const { return step_s * std::sqrt(1 + step_cv * step_cv); }
    std::size_t data_bytes = 0;   // the training and test features in memory
    std::size_t shard_bytes = 0;  // each run's shards: a copy of the training features
    std::size_t model_floats = 0;
    std::string model = "mlp";    // Scenario::model these costs are for
    // A CNN scenario: the MLP's step, measured by the same calibration (0: not measured,
    // e.g. with --step-ms), for the ratio printed with the CNN's.
    double mlp_step_s = 0;
    // What the step cost is, for the tables: the model, and the CNN/MLP ratio if measured.
    std::string step_note() const {
      if (model != "cnn") return "";
      std::string n = "the CNN's step (psync::models::Cnn, " + std::to_string(model_floats) + " parameters)";
      if (mlp_step_s > 0)
        n += "; the MLP 784-256-128-10's, calibrated the same way in this run: " + fmt(mlp_step_s * 1e3, 3) +
             " ms, so CNN / MLP = " + fmt(step_s / mlp_step_s, 2) + "x";
      return n;
    }
  };

  // The step cost (median and spread of calibrate_step_spread, data touched first)
  // and the server's cost per float (psync::harness::calibrate_server_cost: median of
  // `model += update` plus a copy, model-sized). A given --step-ms without --step-cv
  // varies by 5%, what calibrate_step_spread measured for the MLP on a quiet 2-core
  // machine (4.5-7%), so identical workers do not stay in an artificial lockstep.
  static std::string cv_source(const VirtualCosts& c) {
    if (c.cv_given) return "--step-cv";
    return c.step_given ? "default with --step-ms" : "calibrated";
  }

  template <class M>
  VirtualCosts calibrate() const {
    VirtualCosts c;
    const auto m = make_model<M>();
    if (opt_.step_ms) {
      c.step_s = *opt_.step_ms * 1e-3;
      c.step_cv = 0.05;
      c.step_given = true;
    } else if (opt_.host_cores >= 2) {
      // A shared host: a step costs more while the other cores compute too (shared
      // caches and memory bandwidth), so calibrate it with every core busy, each thread
      // on its own model and batches; the median of their medians and spreads.
      const unsigned threads = static_cast<unsigned>(std::min(64.0, std::floor(opt_.host_cores)));
      std::vector<psync::sim::StepCalibration> cals(threads);
      std::vector<std::thread> pool;
      for (unsigned t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
          const auto mine = make_model<M>();
          psync::data::BatchSampler sampler(data_.train, 64, 12345 + t);
          cals[t] = psync::sim::calibrate_step_spread(mine, [&]() -> const psync::data::Batch& { return sampler.next(); },
                                                      200, 20);
        });
      }
      for (auto& th : pool) th.join();
      std::vector<double> medians, cvs;
      for (const auto& cal : cals) {
        medians.push_back(cal.median_s);
        cvs.push_back(cal.cv);
      }
      // (median_time's median: every value here is >= 0, so none counts as "never".)
      c.step_s = psync::harness::median_time(std::move(medians));
      c.step_cv = psync::harness::median_time(std::move(cvs));
      c.loaded_threads = threads;
    } else {
      psync::data::BatchSampler sampler(data_.train, 64, 12345);
      const auto cal =
          psync::sim::calibrate_step_spread(m, [&]() -> const psync::data::Batch& { return sampler.next(); }, 200, 20);
      c.step_s = cal.median_s;
      c.step_cv = cal.cv;
    }
    if (opt_.step_cv) {
      c.step_cv = *opt_.step_cv;
      c.cv_given = true;
    }
    c.server_s_per_float = opt_.server_ns ? *opt_.server_ns * 1e-9 : psync::harness::calibrate_server_cost(m);
    c.data_bytes = static_cast<std::size_t>(data_.train.features.size() + data_.test.features.size()) * sizeof(float);
    c.shard_bytes = static_cast<std::size_t>(data_.train.features.size()) * sizeof(float);
    c.model_floats = static_cast<std::size_t>(m.parameters().size());
    if constexpr (std::is_same_v<M, psync::models::Cnn>) c.model = "cnn";
    return c;
  }

  double virtual_cap(const Scenario& s) const {
    if (opt_.budget_s) return *opt_.budget_s;
    return opt_.quick ? s.quick_budget_s : s.virtual_budget_s;
  }

  // The scenario's simulation set-up for policy `p` and `seed`; run_until_target
  // sets each attempt's budget_s and snapshot_interval_s.
  psync::sim::SimOptions sim_options(const Scenario& s, const PolicyId& p, std::uint64_t seed) const {
    psync::sim::SimOptions o;
    o.workers = workers(s);
    o.shards = s.shards;
    o.codec = psync::compress::parse_codec(s.codec);
    o.learning_rate = lr(s, p);
    o.steps_per_worker = std::numeric_limits<std::uint64_t>::max() / 2;
    const VirtualCosts& costs = costs_for(s);
    o.compute.step_s = costs.step_s;
    o.compute.step_cv = costs.step_cv;
    o.compute.slowdown = {s.slow_worker};
    // The simulator draws random slow steps for every worker (run_local: workers 1..P-1 only).
    o.compute.random_probability = s.random_p;
    o.compute.random_factor = s.random_factor;
    o.network = s.network();
    o.network.seed = 7 + seed - 1;
    o.server_s_per_float = costs.server_s_per_float;
    o.host.cores = opt_.host_cores;
    o.host.s_per_byte = opt_.cpu_ns_per_byte * 1e-9;
    o.replies = opt_.replies_at_step_end ? psync::sim::Replies::at_step_end : psync::sim::Replies::on_arrival;
    o.seed = seed;
    choose_optimizer(s, o);
    return o;
  }

  template <class M>
  psync::Evaluation evaluate_subset(const M& m) const {
    return psync::Evaluation{m.loss(eval_train_), m.accuracy(test_subset_)};
  }
  // One evaluator type per model for every simulation (the simulator is instantiated
  // once per policy and model, not once per call site).
  template <class M>
  struct SubsetEvaluator {
    const Harness* h;
    psync::Evaluation operator()(const M& m) const { return h->evaluate_subset(m); }
  };

  template <class M>
  double full_accuracy(const Eigen::VectorXf& parameters) const {
    auto m = make_model<M>();
    m.parameters() = parameters;
    return m.accuracy(test_full_);
  }

  // Sequential SGD at the scenario's base rate on batches seeded by `seed`, for
  // `max_steps` steps (virtual time steps x step_s), evaluated every `every` steps;
  // stops at the target when `stop_at_target`.
  template <class M>
  psync::RunReport sequential_virtual(const Scenario& s, std::uint64_t seed, std::uint64_t max_steps,
                                      std::uint64_t every, double target, bool stop_at_target) const {
    psync::data::BatchSampler sampler(data_.train, s.batch, seed);
    return psync::harness::sequential_virtual(
        make_model<M>(), [&]() -> const psync::data::Batch& { return sampler.next(); }, base_lr(s),
        costs_for(s).mean_step_s(), max_steps, every, SubsetEvaluator<M>{this}, target, stop_at_target);
  }

  // One policy, one seed, run until it reaches and holds the target (see
  // psync::harness::run_until_target), at most the scenario's cap, evaluations every
  // snapshot_s of the scenario; the simulator's real cost goes to `stats`.
  template <class M>
  psync::RunReport run_virtual(const Scenario& s, const PolicyId& p, std::uint64_t seed, double target,
                               psync::sim::SimStats& stats) const {
    const auto shards = psync::data::shard(data_.train, static_cast<int>(workers(s)), seed);
    const auto sources = shard_sources(shards, s.batch, seed);
    psync::harness::TargetRun run;
    run.cap_s = virtual_cap(s);
    run.snapshot_s = s.snapshot_s;
    run.target = target;
    const auto options = sim_options(s, p, seed);
    return with_policy(p, [&](auto policy) {
      return psync::harness::run_until_target(make_model<M>(), policy, sources, options, SubsetEvaluator<M>{this}, run,
                                              &stats);
    });
  }

  // sequential@osp-samples costs as many real gradient steps as OSP computed: above this, it is skipped.
  static constexpr std::uint64_t max_reference_steps = 20000;

  // Scenario s's virtual costs (those of its model), calibrated on first use. A CNN
  // scenario calibrates the MLP too (unless --step-ms), for the CNN / MLP step ratio.
  const VirtualCosts& ensure_costs(const Scenario& s) {
    const bool cnn = s.model == "cnn";
    VirtualCosts& c = cnn ? cnn_costs_ : mlp_costs_;
    if (!c.step_s) {
      if (cnn && !opt_.step_ms) (void)ensure_costs(Scenario{});
      c = cnn ? calibrate<psync::models::Cnn>() : calibrate<psync::models::Mlp>();
      if (cnn && !c.step_given) c.mlp_step_s = mlp_costs_.step_s;
      const std::string note = c.step_note();
      progress_.line("compare: virtual step (" + c.model + ") " + fmt(c.step_s * 1e3, 3) + " ms (" +
                     (c.step_given ? "--step-ms" : "calibrate_step median on this machine") + "), spread " +
                     fmt(100 * c.step_cv, 1) + "% (" + cv_source(c) + "), server " +
                     fmt(c.server_s_per_float * 1e9, 3) + " ns per float (" +
                     (opt_.server_ns ? "--server-ns" : "median of += and copy") + ")" +
                     (note.empty() ? "" : ": " + note));
    }
    return c;
  }

  const Data& data() const { return data_; }

  // Dispatches once on the scenario's model: everything below is one template.
  std::vector<Row> scenario_virtual(const Scenario& s, const std::vector<PolicyId>& policies, bool sample_references) {
    ensure_costs(s);
    if (s.model == "cnn") return scenario_virtual_as<psync::models::Cnn>(s, policies, sample_references);
    if (s.model != "mlp") throw std::invalid_argument("scenario " + s.name + ": unknown model '" + s.model + "'");
    return scenario_virtual_as<psync::models::Mlp>(s, policies, sample_references);
  }

  template <class M>
  std::vector<Row> scenario_virtual_as(const Scenario& s, const std::vector<PolicyId>& policies, bool sample_references) {
    const VirtualCosts& costs = costs_for(s);
    const double target = opt_.target.value_or(s.target);
    const double cap = virtual_cap(s);
    // One policy at the current base rate over every seed: the median row.
    const auto run_seeds = [&](const PolicyId& p) {
      Row row;
      psync::sim::SimStats row_sim;
      std::vector<double> steps;
      const auto t0 = std::chrono::steady_clock::now();
      for (unsigned k = 0; k < opt_.seeds; ++k) {
        const std::uint64_t seed = opt_.seed + k;
        psync::RunReport rep;
        if (p.sequential()) {
          const auto max_steps = static_cast<std::uint64_t>(cap / costs.mean_step_s());
          const auto every = static_cast<std::uint64_t>(std::max(1.0, std::round(s.snapshot_s / costs.mean_step_s())));
          rep = sequential_virtual<M>(s, seed, max_steps, every, target, true);
        } else {
          psync::sim::SimStats st;
          rep = run_virtual<M>(s, p, seed, target, st);
          row_sim += st;
        }
        const double acc = full_accuracy<M>(rep.parameters);
        Row r = summarize(p.label, lr(s, p), std::move(rep), target);
        r.final_acc = acc;
        progress_.line("  [" + s.name + "] " + p.label + " lr " + fmt(lr(s, p), 4) + " seed " + std::to_string(seed) +
                       ": target " + fmt(target, 2) + " at " + tta_s(r.tta) + " virtual (" +
                       (r.steps_at_target < 0 ? std::string("-") : fmt(r.steps_at_target, 0)) + " steps), run " +
                       fmt(r.rep.wall_s, 1) + " virtual s, final accuracy " + fmt(acc, 4));
        row.tta_seeds.push_back(r.tta);
        steps.push_back(r.steps_at_target);
        if (k == 0) row = std::move(r), row.tta_seeds = {row.tta};
      }
      row.real_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      row.sim = row_sim;
      row.tta = psync::harness::median_time(row.tta_seeds);
      row.steps_at_target = psync::harness::median_time(steps);
      return row;
    };
    std::vector<Row> rows;
    for (const auto& p : policies) {
      if (opt_.lr_grid.empty()) {
        rows.push_back(run_seeds(p));
        continue;
      }
      // --lr-grid: every base rate (each policy's own rate follows from it by --lr-rule);
      // the row kept is the one with the earliest median time to target.
      std::optional<Row> best;
      std::string tried;
      double real_s = 0;
      psync::sim::SimStats all;
      for (float base : opt_.lr_grid) {
        base_override_ = base;
        Row r = run_seeds(p);
        real_s += r.real_s;
        all += r.sim;
        tried += (tried.empty() ? "" : ", ") + fmt(r.lr, 4) + ": " + tta_str(r.tta);
        const auto earlier = [](double a, double b) { return (a < 0 ? 1e300 : a) < (b < 0 ? 1e300 : b); };
        if (!best || earlier(r.tta, best->tta)) best = std::move(r);
      }
      base_override_.reset();
      best->real_s = real_s;
      best->sim = all;
      best->note = "lr grid (time to target): " + tried;
      progress_.line("  [" + s.name + "] " + p.label + ": best lr " + fmt(best->lr, 4) + " (" + tried + ")");
      rows.push_back(std::move(*best));
    }
    // Sequential SGD on as many samples as OSP and as LOSP processed (first seed), no
    // time limit: the accuracy goals' references.
    for (const char* kind : {"osp", "losp"}) {
      const std::string label = kind + (":" + std::to_string(opt_.osp.value_or(s.osp)));
      const auto it = std::find_if(rows.begin(), rows.end(), [&](const Row& r) { return r.label == label; });
      if (opt_.quick || !sample_references || it == rows.end()) continue;
      if (opt_.accuracy_steps > 0) {
        const auto pit = std::find_if(policies.begin(), policies.end(), [&](const PolicyId& p) { return p.label == label; });
        if (pit != policies.end()) equal_steps_rows<M>(s, *pit, it->lr, target, rows);
        continue;
      }
      const std::string name = std::string("sequential@") + kind + "-samples";
      const std::uint64_t steps = std::max<std::uint64_t>(1, it->samples / static_cast<std::uint64_t>(s.batch));
      if (steps > max_reference_steps) {
        progress_.line("  [" + s.name + "] " + name + " skipped: " + std::to_string(steps) + " steps is more than " +
                       std::to_string(max_reference_steps) + " (cost)");
        continue;
      }
      const auto t0 = std::chrono::steady_clock::now();
      auto rep = sequential_virtual<M>(s, opt_.seed, steps, 0, target, false);
      const double acc = full_accuracy<M>(rep.parameters);
      Row r = summarize(name, base_lr(s), std::move(rep), target);
      r.final_acc = acc;
      r.tta = -1;
      r.steps_at_target = -1;
      r.note = "no time limit; same samples as " + label;
      r.real_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      progress_.line("  [" + s.name + "] sequential on " + std::to_string(r.samples) + " samples: final accuracy " +
                     fmt(acc, 4));
      rows.push_back(std::move(r));
    }
    speedups(rows);
    return rows;
  }

  // --accuracy-steps K: policy `p` at rate `rate` for K gradient steps in all (K / P per
  // worker, no time cap, first seed), then sequential SGD for K steps on the same seed;
  // rows "LABEL@K-steps" and "sequential@K-steps" (their final full-test accuracy).
  template <class M>
  void equal_steps_rows(const Scenario& s, const PolicyId& p, float rate, double target, std::vector<Row>& rows) const {
    const std::uint64_t k = opt_.accuracy_steps;
    const std::string suffix = "@" + std::to_string(k) + "-steps";
    const auto shards = psync::data::shard(data_.train, static_cast<int>(workers(s)), opt_.seed);
    const auto sources = shard_sources(shards, s.batch, opt_.seed);
    auto o = sim_options(s, p, opt_.seed);
    o.learning_rate = rate;
    choose_optimizer(s, o);  // the schedule starts from this rate
    o.steps_per_worker = std::max<std::uint64_t>(1, k / workers(s));
    o.budget_s = 0;
    o.snapshot_interval_s = 1e9;  // only the start and the end
    auto t0 = std::chrono::steady_clock::now();
    auto rep = with_policy(p, [&](auto policy) {
      return psync::sim::simulate(make_model<M>(), sources, o, policy, SubsetEvaluator<M>{this});
    });
    const double acc = full_accuracy<M>(rep.parameters);
    Row r = summarize(p.label + suffix, rate, std::move(rep), target);
    r.final_acc = acc;
    r.tta = -1;
    r.steps_at_target = -1;
    r.note = "no time limit; " + std::to_string(o.steps_per_worker) + " steps per worker";
    r.real_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    progress_.line("  [" + s.name + "] " + r.label + ": " + std::to_string(r.samples) + " samples, final accuracy " +
                   fmt(acc, 4));
    const std::uint64_t samples = r.samples;
    rows.push_back(std::move(r));
    // OSP and LOSP make the same sequential reference: run it once.
    if (std::any_of(rows.begin(), rows.end(), [&](const Row& x) { return x.label == "sequential" + suffix && x.samples == samples; }))
      return;
    t0 = std::chrono::steady_clock::now();
    auto seq = sequential_virtual<M>(s, opt_.seed, std::max<std::uint64_t>(1, samples / static_cast<std::uint64_t>(s.batch)),
                                  0, target, false);
    const double seq_acc = full_accuracy<M>(seq.parameters);
    Row q = summarize("sequential" + suffix, base_lr(s), std::move(seq), target);
    q.final_acc = seq_acc;
    q.tta = -1;
    q.steps_at_target = -1;
    q.note = "no time limit; " + std::to_string(q.samples) + " samples, as " + p.label + suffix;
    q.real_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    progress_.line("  [" + s.name + "] sequential" + suffix + ": " + std::to_string(q.samples) +
                   " samples, final accuracy " + fmt(seq_acc, 4));
    rows.push_back(std::move(q));
  }

  // Speedup over BSP in time to target, for real and virtual rows alike.
  static void speedups(std::vector<Row>& rows) {
    const auto bsp = std::find_if(rows.begin(), rows.end(), [](const Row& r) { return r.label == "bsp"; });
    for (auto& r : rows) {
      if (r.tta < 0 || bsp == rows.end() || r.label.rfind("sequential@", 0) == 0) continue;
      if (bsp->tta > 0) {
        r.speedup = bsp->tta / r.tta;
      } else if (bsp->tta < 0) {
        // BSP never got there within its budget: budget / t is a lower bound.
        r.speedup = bsp->rep.wall_s / r.tta;
        r.speedup_lower_bound = true;
      }
    }
  }

  // Scenario s's costs (empty until a virtual-time run calibrated them).
  const VirtualCosts& costs_for(const Scenario& s) const { return s.model == "cnn" ? cnn_costs_ : mlp_costs_; }

  void traces(const Scenario& s, const std::vector<PolicyId>& policies) const {
    fs::create_directories(opt_.trace_dir);
    for (const auto& p : policies) {
      if (p.sequential()) continue;
      psync::Trace t(1 << 14);
      (void)progress_.watch("[" + s.name + "] trace " + p.label, 2.0, [&] { return run(s, p, 2.0, &t); });
      std::string name = p.label;
      std::replace(name.begin(), name.end(), ':', '-');
      const fs::path path = fs::path(opt_.trace_dir) / (s.name + "-" + name + ".trace.json");
      write_capped_trace(t, path, 4000);
      progress_.line("  trace: " + path.string() + " (" + std::to_string(t.size()) + " events recorded, <= 4000 kept)");
    }
  }

 private:
  const Options& opt_;
  const Data& data_;
  const Progress& progress_;
  psync::data::Batch eval_train_, test_subset_, test_full_;
  VirtualCosts mlp_costs_, cnn_costs_;
  std::optional<float> base_override_;  // the --lr-grid rate being run
};

// ---------------------------------------------------------------- goals

struct Goal {
  std::string text, measured, verdict;
};

inline const Row* find(const std::vector<Row>& rows, const std::string& label) {
  for (const auto& r : rows)
    if (r.label == label) return &r;
  return nullptr;
}

inline std::vector<Goal> goals(const Scenario& s, const std::vector<Row>& rows, const Options& o) {
  std::vector<Goal> g;
  const unsigned S = o.osp.value_or(s.osp);
  const unsigned ssp = o.ssp.value_or(s.ssp);
  const std::string osp_l = "osp:" + std::to_string(S);
  const Row* osp = find(rows, osp_l);
  const Row* bsp = find(rows, "bsp");
  const Row* asp = find(rows, "asp");
  const Row* sspr = find(rows, "ssp:" + std::to_string(ssp));
  const Row* seq = find(rows, "sequential@osp-samples");
  const std::string losp_l = "losp:" + std::to_string(S);
  const Row* losp = find(rows, losp_l);
  const Row* seq_losp = find(rows, "sequential@losp-samples");
  // The accuracy goals: at the time runs' samples, or after --accuracy-steps K.
  const Row* osp_acc = osp;
  const Row* losp_acc = losp;
  if (o.accuracy_steps > 0) {
    const std::string suffix = "@" + std::to_string(o.accuracy_steps) + "-steps";
    osp_acc = find(rows, osp_l + suffix);
    losp_acc = find(rows, losp_l + suffix);
    seq = seq_losp = find(rows, "sequential" + suffix);
  }
  const double target = o.target.value_or(s.target);
  auto t = [](const Row* r) { return r && r->tta >= 0 ? r->tta : std::numeric_limits<double>::infinity(); };
  // OSP at least 3x faster than BSP, LOSP at least 8x; both ahead of SSP and ASP.
  const auto speed_goals = [&](const Row* r, const std::string& label, double factor) {
    if (!s.emulate || !r || !bsp) return;
    Goal a;
    a.text = label + " reaches " + fmt(target, 2) + " at least " + fmt(factor, 0) + "x faster than BSP";
    if (r->tta < 0) {
      a.measured = label + " did not reach the target";
      a.verdict = "miss";
    } else {
      a.measured = "speedup " + speedup_str(*r) + " (" + label + " " + tta_str(r->tta) + " s, bsp " +
                   tta_str(bsp->tta) + (bsp->tta < 0 ? " in " + fmt(bsp->rep.wall_s, 1) + " s" : " s") + ")";
      a.verdict = r->speedup >= factor ? "pass"
                                       : (r->speedup_lower_bound ? "inconclusive (BSP never reached it)" : "miss");
    }
    g.push_back(a);
    Goal b;
    b.text = label + " reaches " + fmt(target, 2) + " faster than SSP and ASP";
    const auto tta_or_not_run = [](const Row* q) { return q ? tta_s(q->tta) : std::string("not run"); };
    b.measured = label + " " + tta_s(r->tta) + ", ssp:" + std::to_string(ssp) + " " + tta_or_not_run(sspr) + ", asp " +
                 tta_or_not_run(asp);
    if (!sspr || !asp) {
      b.verdict = "n/a (ssp:" + std::to_string(ssp) + " or asp not run)";
    } else {
      b.verdict = (r->tta >= 0 && t(r) < t(sspr) && t(r) < t(asp)) ? "pass" : "miss";
    }
    g.push_back(b);
  };
  speed_goals(osp, osp_l, 3);
  speed_goals(losp, losp_l, 8);
  // LOSP's final accuracy against sequential SGD on as many samples.
  if (losp_acc && seq_losp) {
    Goal c;
    const Row* losp = losp_acc;
    const double d = 100 * (losp->final_acc - seq_losp->final_acc);
    c.text = losp_l + " final accuracy within 0.5 points of sequential SGD on the same samples";
    c.measured = losp->label + " " + fmt(losp->final_acc, 4) + " vs sequential " + fmt(seq_losp->final_acc, 4) + " on " +
                 std::to_string(seq_losp->samples) + " samples (" + (d >= 0 ? "+" : "") + fmt(d, 2) + " points)";
    c.verdict = d >= -0.5 ? "pass" : "miss";
    g.push_back(c);
  }
  if (osp_acc && seq) {
    Goal c;
    const Row* osp = osp_acc;
    const double d = 100 * (osp->final_acc - seq->final_acc);
    c.text = osp_l + " final accuracy within 0.5 points of sequential SGD on the same samples";
    c.measured = osp->label + " " + fmt(osp->final_acc, 4) + " vs sequential " +
                 fmt(seq->final_acc, 4) + " on " + std::to_string(seq->samples) + " samples (" +
                 (d >= 0 ? "+" : "") + fmt(d, 2) + " points)";
    c.verdict = d >= -0.5 ? "pass" : "miss";
    g.push_back(c);
  }
  if (osp && s.emulate) {
    Goal h;
    const bool cond = osp->comm_per_round < S * osp->step_s;
    h.text = osp_l + " hides >= 90% of communication when a round's comm < S compute steps";
    h.measured = "hidden " + pct(osp->hidden) + "%; comm per round " + fmt(1e3 * osp->comm_per_round, 1) +
                 " ms vs S x step " + fmt(1e3 * S * osp->step_s, 1) + " ms (condition " + (cond ? "holds" : "does not hold") + ")";
    h.verdict = !cond ? "n/a (condition not met)" : (osp->hidden >= 0.9 ? "pass" : "miss");
    g.push_back(h);
  }
  if (!s.emulate && asp) {
    Goal f;
    f.text = "no policy's throughput more than 10% below ASP's";
    double worst = 1e300;
    std::string who;
    for (const auto& r : rows) {
      if (r.label.rfind("sequential", 0) == 0) continue;
      const double ratio = r.rep.throughput() / asp->rep.throughput();
      if (ratio < worst) {
        worst = ratio;
        who = r.label;
      }
    }
    f.measured = "lowest: " + who + " at " + pct(worst) + "% of ASP's " + fmt(asp->rep.throughput(), 0) + " samples/s";
    f.verdict = worst >= 0.9 ? "pass" : "miss";
    g.push_back(f);
  }
  return g;
}

}  // namespace compare
