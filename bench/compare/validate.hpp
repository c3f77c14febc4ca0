// compare_policies --validate: virtual time checked against real runs on this
// machine, in one benchmark run.
//
// At 2 workers (2 worker threads fit on 2 cores) each policy runs twice on the
// same data, seeds, network and straggler: once as real threads over the emulated
// network (run_local, wall clock) and in psync::sim with the step cost calibrated
// before the runs. Both evaluate the same snapshots the same way (2,000 test
// samples, every 0.25 s), so the two times to target differ only by how well
// virtual time models the real run. The goal is within 15%, judged on the virtual
// run that models what the real one runs on: `Emulated` sends one message at a
// time through the server NIC (Sharing::fifo), so the verdict's column does too;
// the kernel's fair share (psync::sim's default) is a column beside it.
//
// BSP's round barrier fixes the order of everything, and with 2 workers the round's
// sum a + b is the same float whichever push arrives first: real and virtual BSP
// must end at the same parameters, bit for bit.
#pragma once

#include "format.hpp"
#include "options.hpp"
#include "runner.hpp"
#include "scenarios.hpp"
#include "writers.hpp"

#include <psync/harness/time_to_target.hpp>
#include <psync/models.hpp>
#include <psync/psync.hpp>
#include <psync/sim/simulator.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace compare {

// One policy at one seed: the real time to target and its virtual counterparts.
struct ValidationRun {
  double real_tta = -1;
  double virtual_tta = -1;   // calibrated step, FIFO server NIC as `Emulated` (the verdict)
  double fair_tta = -1;      // calibrated step, the NIC shared fairly as the kernel does
  double real_step_ms = 0;   // mean real compute per step of the real run's speed-1 workers
  double measured_tta = -1;  // FIFO NIC at the real run's own step cost
};

// One policy over the seeds: medians (a seed that never reached the target counts as
// infinitely late, as in psync::harness::median_time).
struct ValidationRow {
  std::string policy;
  float lr = 0;
  std::vector<ValidationRun> runs;
  double real_tta = -1, virtual_tta = -1, fair_tta = -1, measured_tta = -1;
  double real_step_ms = 0;  // median over the seeds
  void summarise() {
    const auto med = [&](double ValidationRun::*f) {
      std::vector<double> v;
      for (const auto& r : runs) v.push_back(r.*f);
      return psync::harness::median_time(std::move(v));
    };
    real_tta = med(&ValidationRun::real_tta);
    virtual_tta = med(&ValidationRun::virtual_tta);
    fair_tta = med(&ValidationRun::fair_tta);
    measured_tta = med(&ValidationRun::measured_tta);
    real_step_ms = med(&ValidationRun::real_step_ms);
  }
  double error() const { return relative(virtual_tta); }
  double measured_error() const { return relative(measured_tta); }
  double relative(double v) const { return real_tta > 0 && v > 0 ? (v - real_tta) / real_tta : std::nan(""); }
};

// Runs the validation on scenario `base` at 2 workers; prints the table and
// writes <out>/validation.md. Returns false if any figure missed its goal.
inline bool validate(Harness& h, const Scenario& base, const Options& o, const Progress& progress,
                     const std::vector<PolicyId>& policies) {
  Scenario s = base;
  s.workers = 2;
  const double target = o.target.value_or(s.target);
  const double budget = o.budget_s.value_or(60);
  const std::uint64_t seed = o.seed;  // BSP's bit-for-bit check; time to target runs seeds seed..seed+K-1
  const auto& costs = h.ensure_costs(s);
  progress.line("validate: 2 workers, " + s.name + " network and straggler; virtual step " +
                fmt(costs.step_s * 1e3, 3) + " ms (" + (costs.step_given ? "--step-ms" : "calibrated") +
                "), spread " + fmt(100 * costs.step_cv, 1) + "%, real budget " + fmt(budget, 0) + " s per policy, target " + fmt(target, 2));
  const unsigned seeds = std::max(1u, o.seeds);
  const auto evaluate = [&h](const psync::models::Mlp& m) { return h.evaluate_subset(m); };
  const auto local = [&](const PolicyId& p, double budget_s, std::uint64_t steps, std::uint64_t sd) {
    auto lo = h.local(s, budget_s);
    lo.workers = 2;
    lo.learning_rate = h.lr(s, p);
    lo.seed = sd;
    lo.snapshot_interval = std::chrono::milliseconds(static_cast<long long>(s.snapshot_s * 1000));
    lo.stragglers = s.stragglers(2);
    if (steps) lo.steps_per_worker = steps;
    return lo;
  };
  const auto virtual_options = [&](const PolicyId& p, std::uint64_t sd) {
    auto vo = h.sim_options(s, p, sd);
    vo.workers = 2;
    // run_local seeds the network with NetworkSpec::seed; use the same.
    vo.network = s.network();
    // run_local's workers are psync::Worker, which takes replies at step boundaries.
    vo.replies = psync::sim::Replies::at_step_end;
    return vo;
  };

  bool ok = true;
  std::string md = "### Validation: virtual time against real runs (2 workers)\n\n";

  // 1. BSP: the same parameters.
  const std::uint64_t steps = 300;
  progress.line("validate: BSP, " + std::to_string(steps) + " steps per worker, real and virtual");
  const PolicyId bsp{"bsp"};
  const auto shards = psync::data::shard(h.data().train, 2, seed);
  const auto sources = shard_sources(shards, s.batch, seed);
  const auto real_bsp = psync::run_local(h.model(), sources, local(bsp, 0, steps, seed), psync::Bsp{},
                                         [](const psync::models::Mlp&) { return psync::Evaluation{}; });
  auto bo = virtual_options(bsp, seed);
  bo.steps_per_worker = steps;
  bo.budget_s = 0;
  const auto virt_bsp = psync::sim::simulate(h.model(), sources, bo, psync::Bsp{},
                                             [](const psync::models::Mlp&) { return psync::Evaluation{}; });
  const bool same_size = real_bsp.parameters.size() == virt_bsp.parameters.size();
  const double max_diff = same_size ? (real_bsp.parameters - virt_bsp.parameters).cwiseAbs().maxCoeff() : -1;
  const bool identical = same_size && real_bsp.parameters == virt_bsp.parameters;
  ok = ok && identical;
  const std::string bsp_line = "BSP, " + std::to_string(steps) + " steps per worker: real and virtual parameters " +
                               (identical ? "identical, bit for bit" : "differ (max |diff| " + fmt(max_diff, 9) + ")") +
                               " over " + std::to_string(real_bsp.parameters.size()) + " floats (steps applied: real " +
                               std::to_string(real_bsp.server.steps_applied) + ", virtual " +
                               std::to_string(virt_bsp.server.steps_applied) + ") -> " + (identical ? "pass" : "miss");
  std::printf("\n== validation (2 workers, %s) ==\n%s\n", s.name.c_str(), bsp_line.c_str());
  md += "- " + bsp_line + "\n\n";

  // 2. Time to target per policy, real threads against virtual time.
  std::vector<ValidationRow> rows;
  for (const auto& p : policies) {
    if (p.sequential()) continue;
    ValidationRow r;
    r.policy = p.label;
    r.lr = h.lr(s, p);
    for (unsigned k = 0; k < seeds; ++k) {
      const std::uint64_t sd = seed + k;
      const auto seed_shards = psync::data::shard(h.data().train, 2, sd);
      const auto seed_sources = shard_sources(seed_shards, s.batch, sd);
      ValidationRun v;
      progress.line("validate: " + p.label + " seed " + std::to_string(sd) + " real (up to " + fmt(budget, 0) +
                    " s of wall clock)");
      const auto real = with_policy(p, [&](auto policy) {
        return psync::run_local(h.model(), seed_sources, local(p, budget, 0, sd), policy, evaluate);
      });
      v.real_tta = real.time_to_accuracy(target);
      double compute = 0, n = 0;
      for (std::size_t w = 1; w < real.workers.size(); ++w) {  // worker 0 is the straggler
        compute += real.workers[w].compute_s;
        n += static_cast<double>(real.workers[w].steps);
      }
      v.real_step_ms = n > 0 ? 1e3 * compute / n : 0;
      progress.line("validate: " + p.label + " seed " + std::to_string(sd) + " virtual");
      psync::harness::TargetRun run;
      run.cap_s = budget;
      run.snapshot_s = s.snapshot_s;
      run.target = target;
      // Virtual time to target of policy `p` under simulation options `vo`.
      const auto virtual_tta = [&](const psync::sim::SimOptions& vo) {
        return with_policy(p, [&](auto policy) {
          return psync::harness::run_until_target(h.model(), policy, seed_sources, vo, evaluate, run);
        }).time_to_accuracy(target);
      };
      auto vo = virtual_options(p, sd);
      v.fair_tta = virtual_tta(vo);
      // Emulated's server NIC sends one message at a time: model that.
      vo.sharing = psync::sim::Sharing::fifo;
      v.virtual_tta = virtual_tta(vo);
      // The same run at the step cost the real run measured: what is left is the
      // model of the network, the server and the policies.
      // (The real step is a mean; the simulator's step_s is the median of its lognormal.)
      if (v.real_step_ms > 0) vo.compute.step_s = v.real_step_ms * 1e-3 / std::sqrt(1 + vo.compute.step_cv * vo.compute.step_cv);
      v.measured_tta = virtual_tta(vo);
      r.runs.push_back(v);
    }
    r.summarise();
    rows.push_back(r);
  }
  std::printf("%-10s %7s %10s %12s %8s %12s %8s %8s %12s %8s %8s\n", "policy", "lr", "real t(s)", "virtual t(s)",
              "error", "fair NIC", "error", "step ms", "at real step", "error", "verdict");
  md += "Medians over " + std::to_string(seeds) + " seed(s), " + std::to_string(seed) + ".." +
        std::to_string(seed + seeds - 1) + " (a seed that never reached the target counts as infinitely late); "
        "every seed's figures are in the second table.\n\n";
  md += "| policy | lr | real time to " + fmt(target, 2) + " (s) | virtual, calibrated step (s) | error | "
        "virtual, calibrated step, fair NIC (s) | error | real step (ms) | virtual, real step (s) | error | "
        "verdict (calibrated, within 15%) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n";
  const auto pct_str = [](double e) { return std::isnan(e) ? std::string("-") : (e >= 0 ? "+" : "") + fmt(100 * e, 1) + "%"; };
  for (const auto& r : rows) {
    const double e = r.error();
    const std::string verdict = std::isnan(e) ? "n/a (target not reached)" : (std::abs(e) <= 0.15 ? "pass" : "miss");
    if (verdict != "pass") ok = false;
    std::printf("%-10s %7s %10s %12s %8s %12s %8s %8s %12s %8s %8s\n", r.policy.c_str(), fmt(r.lr, 4).c_str(),
                tta_str(r.real_tta).c_str(), tta_str(r.virtual_tta).c_str(), pct_str(e).c_str(),
                tta_str(r.fair_tta).c_str(), pct_str(r.relative(r.fair_tta)).c_str(), fmt(r.real_step_ms, 3).c_str(),
                tta_str(r.measured_tta).c_str(), pct_str(r.measured_error()).c_str(), verdict.c_str());
    md += "| " + r.policy + " | " + fmt(r.lr, 4) + " | " + tta_str(r.real_tta) + " | " + tta_str(r.virtual_tta) + " | " +
          pct_str(e) + " | " + tta_str(r.fair_tta) + " | " + pct_str(r.relative(r.fair_tta)) + " | " +
          fmt(r.real_step_ms, 3) + " | " + tta_str(r.measured_tta) + " | " + pct_str(r.measured_error()) + " | " +
          verdict + " |\n";
  }
  md += "\n| policy | seed | real (s) | virtual, calibrated (s) | fair NIC (s) | real step (ms) | virtual, real step (s) |\n"
        "|---|---|---|---|---|---|---|\n";
  for (const auto& r : rows) {
    for (std::size_t k = 0; k < r.runs.size(); ++k) {
      const auto& v = r.runs[k];
      md += "| " + r.policy + " | " + std::to_string(seed + k) + " | " + tta_str(v.real_tta) + " | " +
            tta_str(v.virtual_tta) + " | " + tta_str(v.fair_tta) + " | " + fmt(v.real_step_ms, 3) + " | " +
            tta_str(v.measured_tta) + " |\n";
    }
  }
  const std::string how =
      "Real: `run_local`, 2 worker threads and the server thread over the emulated network (" + fmt(s.gbps, 2) +
      " Gbit/s, " + fmt(s.latency_ms, 2) + " ms, worker 0 " + fmt(s.slow_worker, 1) +
      "x slower), wall clock. Virtual: `psync::sim` with the step cost calibrated " +
      (costs.loaded_threads ? "with " + std::to_string(costs.loaded_threads) + " threads computing at once, on " +
                                  fmt(o.host_cores, 0) + " cores shared by the workers and the server (--host-cores)"
                            : std::string("single-threaded, each worker and the server on cores of their own")) +
      ". Same data, "
      "seeds and evaluation (2,000 test samples every " + fmt(s.snapshot_s, 2) +
      " s; time to target is the first time the mean of the last 3 evaluations reached it). Calibrated step: " +
      fmt(costs.step_s * 1e3, 3) + " ms, the median of `calibrate_step` before the runs (" +
      (costs.loaded_threads ? std::to_string(costs.loaded_threads) + " threads at once" : std::string("single-threaded")) +
      "), varying lognormally by " +
      fmt(100 * costs.step_cv, 1) + "% from step to step. Real "
      "step: the speed-1 worker's mean compute per step in the real run, where it shares 2 cores with the other "
      "worker, the server and the emulator; the virtual run at that step isolates the model of the network, the "
      "server and the policies from the calibration. The server NIC is modelled as `Emulated` runs it, one message "
      "at a time in the order they were sent (--validate's model, like with like), except in the fair-NIC column, "
      "which shares it fairly between concurrent messages as the kernel does (psync::sim's default).";
  std::printf("%s\n", how.c_str());
  md += "\n" + how + "\n\nBuild: `" + std::string(PSYNC_BUILD_FLAGS) + "`. Date: " + now_utc() + ".\nCommand: `" +
        o.command_line + "`.\n";
  std::filesystem::create_directories(o.out);
  std::ofstream(std::filesystem::path(o.out) / "validation.md") << md;
  std::fflush(stdout);
  return ok;
}

}  // namespace compare
