// compare_policies: what a scenario's rows become: the CSV, JSON, markdown and
// gnuplot files under --out, and the table on stdout.
#pragma once

#include "format.hpp"
#include "options.hpp"
#include "runner.hpp"
#include "scenarios.hpp"

#include <psync/detail/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <thread>

#include <sys/resource.h>
#include <vector>

// Reported by every table and file, so each figure says how it was built (set by CMake).
#ifndef PSYNC_BUILD_FLAGS
#define PSYNC_BUILD_FLAGS "unknown"
#endif

namespace compare {

namespace fs = std::filesystem;

// ---------------------------------------------------------------- output

using psync::detail::json_number;
using psync::detail::json_string;

// A learning rate as JSON/CSV: a float's own 7 digits ("0.0375", not "0.0375000015").
inline std::string json_rate(float v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.7g", static_cast<double>(v));
  return b;
}

// The paragraph under every table saying how each policy's learning rate was chosen.
inline std::string lr_rule_text(const Scenario& s, const Options& o) {
  const float base = o.lr.value_or(s.lr);
  const std::uint32_t workers = o.workers.value_or(s.workers);
  const std::string p = std::to_string(workers);
  if (!o.lr_grid.empty()) {
    std::string grid;
    for (float v : o.lr_grid) grid += (grid.empty() ? "" : ", ") + fmt(v, 4);
    return "Learning rates (`--lr-grid " + grid + "`, `--lr-rule " + lr_rule_name(o.lr_rule) +
           "`): every policy ran at each base rate of the grid" +
           (o.lr_rule == LrRule::scaled ? " (ASP, SSP and DSSP, which add every push, at the base rate / " + p +
                                              "; BSP and OSP/LOSP, which average a round, and sequential SGD at it)"
                                        : "") +
           " over every seed, and each row is the rate with the earliest median time to target (the lr column; "
           "the JSON's note lists every rate's time).";
  }
  if (o.lr_rule == LrRule::same) {
    return "Learning rates (`--lr-rule same`): every policy ran at " + fmt(base, 4) +
           ". BSP and OSP/LOSP average each round's pushes while ASP, SSP and DSSP add every push, so per round "
           "the latter moved the model " + p + "x further.";
  }
  const float sum_rate = learning_rate_for(PolicyId{"asp"}, base, workers, LrRule::scaled);
  return "Learning rates (`--lr-rule scaled`, the default): BSP and OSP/LOSP average each round's pushes and ran at " +
         fmt(base, 4) + ", as did sequential SGD; ASP, SSP and DSSP add every push and ran at " + fmt(base, 4) +
         " / " + p + " = " + fmt(sum_rate, 4) + ", so one round of " + p +
         " pushes moves the model as far under both rules (`--lr-rule same` gives every policy " + fmt(base, 4) + ").";
}

// Virtual time, several seeds: "min-max" of the times to target ("-" with one seed;
// a seed that never reached it shows as "never").
inline std::string spread_str(const Row& r) {
  if (r.tta_seeds.size() < 2) return "-";
  double lo = std::numeric_limits<double>::infinity(), hi = 0;
  bool never = false;
  for (double t : r.tta_seeds) {
    if (t < 0) {
      never = true;
      continue;
    }
    lo = std::min(lo, t);
    hi = std::max(hi, t);
  }
  if (!std::isfinite(lo)) return "never";
  return fmt(lo, 2) + "-" + (never ? std::string("never") : fmt(hi, 2));
}

// Local steps to target relative to sequential SGD's ("-" if either never got there).
inline std::string steps_ratio_str(const Row& r, const std::vector<Row>& rows) {
  const Row* seq = nullptr;
  for (const auto& q : rows)
    if (q.label == "sequential") seq = &q;
  if (!seq || seq->steps_at_target <= 0 || r.steps_at_target < 0) return "-";
  return fmt(r.steps_at_target / seq->steps_at_target, 2) + "x";
}

inline std::string steps_str(double v) { return v < 0 ? "-" : fmt(v, 0); }

// What the simulator cost over a scenario's policy runs: its overhead over the
// gradient math alone (evaluation excluded) and the process's peak memory against
// the data and P model copies.
inline std::string sim_cost_text(const std::vector<Row>& rows, const Harness::VirtualCosts& costs,
                                 std::uint32_t workers) {
  psync::sim::SimStats t;
  for (const auto& r : rows) t += r.sim;
  if (t.steps == 0) return "";
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  const double mb = 1.0 / (1024.0 * 1024.0);
  const double model_mb = static_cast<double>(costs.model_floats * sizeof(float)) * mb;
  return "Simulator cost (policy runs): " + fmt(t.real_s, 1) + " real s, of which " + fmt(t.gradient_s, 1) +
         " s of gradient math (" + std::to_string(t.steps) + " steps, " + fmt(1e3 * t.gradient_s / static_cast<double>(t.steps), 3) +
         " ms each) and " + fmt(t.evaluate_s, 1) + " s of evaluation: overhead " + fmt(t.overhead(), 3) +
         "x the gradient math (goal <= 1.2x). Peak RSS " + fmt(static_cast<double>(ru.ru_maxrss) / 1024.0, 0) +
         " MB: data " + fmt(static_cast<double>(costs.data_bytes) * mb, 0) + " MB and a run's shards " +
         fmt(static_cast<double>(costs.shard_bytes) * mb, 0) + " MB, one model " + fmt(model_mb, 2) +
         " MB x " + std::to_string(workers) + " workers = " + fmt(model_mb * workers, 1) + " MB; at most " +
         std::to_string(t.peak_in_flight) + " messages in flight.";
}

inline void write_outputs(const Scenario& s, const std::vector<Row>& rows, const std::vector<Goal>& gs, const Options& o,
                   const Harness::VirtualCosts& costs) {
  fs::create_directories(o.out);
  const fs::path base = fs::path(o.out) / s.name;
  const double budget =
      o.virtual_time ? o.budget_s.value_or(o.quick ? s.quick_budget_s : s.virtual_budget_s) : o.budget_s.value_or(s.budget_s);
  const double target = o.target.value_or(s.target);
  const auto workers = o.workers.value_or(s.workers);
  const unsigned cores = std::thread::hardware_concurrency();

  {  // CSV
    std::ofstream f(base.string() + ".csv");
    // scripts/compare.sh reads the target from column 5: keep the first five columns.
    f << "scenario,policy,budget_s,wall_s,target,learning_rate,time_to_target_s,speedup_vs_bsp,speedup_is_lower_bound,"
         "final_accuracy,samples,throughput,compute_frac,wait_frac,comm_frac,held_frac,hidden_frac,"
         "clock_staleness_mean,clock_staleness_max,version_staleness_mean,version_staleness_max,"
         "steps_per_push_mean,steps_per_push_max,pushes,versions,comm_per_round_s,step_s\n";
    for (const auto& r : rows) {
      const auto cs = r.rep.clock_staleness();
      const auto vs = r.rep.version_staleness();
      const auto spp = r.rep.steps_per_push();
      f << s.name << ',' << r.label << ',' << budget << ',' << json_number(r.rep.wall_s) << ',' << target << ','
        << json_rate(r.lr) << ',' << (r.tta < 0 ? "" : json_number(r.tta)) << ','
        << (std::isnan(r.speedup) ? "" : json_number(r.speedup)) << ',' << (r.speedup_lower_bound ? 1 : 0) << ','
        << json_number(r.final_acc) << ',' << r.samples << ',' << json_number(r.rep.throughput()) << ','
        << json_number(r.compute) << ',' << json_number(r.wait) << ',' << json_number(r.comm) << ','
        << json_number(r.held) << ',' << json_number(r.hidden) << ',' << json_number(cs.mean()) << ',' << cs.max << ','
        << json_number(vs.mean()) << ',' << vs.max << ',' << json_number(spp.mean()) << ',' << spp.max << ','
        << r.pushes << ',' << r.rep.server.version << ',' << json_number(r.comm_per_round) << ','
        << json_number(r.step_s) << '\n';
    }
  }
  {  // gnuplot data: accuracy series, one block per policy
    std::ofstream f(base.string() + "-series.dat");
    bool first = true;
    for (const auto& r : rows) {
      if (r.label.find('@') != std::string::npos) continue;  // references, not time runs
      if (!first) f << "\n\n";
      first = false;
      f << "# " << r.label << "\n\"" << r.label << "\" seconds steps train_loss\n";
      for (const auto& p : r.rep.series)
        f << json_number(p.test_accuracy) << ' ' << json_number(p.seconds) << ' ' << p.steps << ' ' << json_number(p.train_loss) << '\n';
    }
  }
  {  // gnuplot data: time split, fractions of wall time
    std::ofstream f(base.string() + "-time.dat");
    f << "# label compute blocked_network blocked_held other\n";
    for (const auto& r : rows) {
      if (r.label.rfind("sequential", 0) == 0 || r.label.find('@') != std::string::npos) continue;
      const double held = std::min(r.wait, r.held);
      const double net = std::max(0.0, r.wait - held);
      const double other = std::max(0.0, 1 - r.compute - r.wait);
      std::string lab = r.label + "\\ncomm " + pct(r.comm) + "%";
      if (r.label.rfind("osp", 0) == 0 || r.label.rfind("losp", 0) == 0) lab += "\\nhidden " + pct(r.hidden) + "%";
      f << '"' << lab << "\" " << json_number(100 * r.compute) << ' ' << json_number(100 * net) << ' '
        << json_number(100 * held) << ' ' << json_number(100 * other) << '\n';
    }
  }
  {  // JSON
    std::ofstream f(base.string() + ".json");
    f << "{\n  \"scenario\": " << json_string(s.name) << ",\n  \"summary\": " << json_string(s.summary)
      << ",\n  \"build_flags\": " << json_string(PSYNC_BUILD_FLAGS) << ",\n  \"nproc\": " << cores
      << ",\n  \"date\": " << json_string(now_utc()) << ",\n  \"command\": " << json_string(o.command_line)
      << ",\n  \"budget_s\": " << budget << ",\n  \"target\": " << target << ",\n  \"workers\": " << workers
      << ",\n  \"base_learning_rate\": " << json_rate(o.lr.value_or(s.lr))
      << ",\n  \"lr_rule\": " << json_string(lr_rule_name(o.lr_rule)) << ",\n  \"time\": "
      << json_string(o.virtual_time ? "virtual" : "real") << ",\n  \"seed\": " << o.seed << ",\n  \"seeds\": "
      << (o.virtual_time ? o.seeds : 1u);
    if (o.virtual_time)
      f << ",\n  \"step_s\": " << json_number(costs.step_s) << ",\n  \"step_cost\": "
        << json_string(costs.step_given       ? "given (--step-ms)"
                       : costs.loaded_threads ? "calibrated (calibrate_step median, " + std::to_string(costs.loaded_threads) +
                                                    " threads at once)"
                                              : "calibrated (calibrate_step median)")
        << ",\n  \"step_cv\": " << json_number(costs.step_cv)
        << (costs.model == "cnn" ? ",\n  \"model\": \"cnn\"" : "")
        << (costs.mlp_step_s > 0 ? ",\n  \"mlp_step_s\": " + json_number(costs.mlp_step_s) : std::string())
        << ",\n  \"server_s_per_float\": " << json_number(costs.server_s_per_float)
        << ",\n  \"host_cores\": " << json_number(o.host_cores)
        << ",\n  \"cpu_s_per_byte\": " << json_number(o.cpu_ns_per_byte * 1e-9)
        << ",\n  \"replies\": " << json_string(o.replies_at_step_end ? "step-end" : "on-arrival") << ",\n  \"quick\": "
        << (o.quick ? "true" : "false");
    f << ",\n  \"goals\": [";
    for (std::size_t i = 0; i < gs.size(); ++i)
      f << (i ? "," : "") << "\n    {\"goal\": " << json_string(gs[i].text) << ", \"measured\": " << json_string(gs[i].measured)
        << ", \"verdict\": " << json_string(gs[i].verdict) << "}";
    f << "\n  ],\n  \"policies\": [";
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const auto& r = rows[i];
      const auto cs = r.rep.clock_staleness();
      const auto vs = r.rep.version_staleness();
      const auto spp = r.rep.steps_per_push();
      f << (i ? "," : "") << "\n    {\"policy\": " << json_string(r.label)
        << ", \"learning_rate\": " << json_rate(r.lr) << ", \"wall_s\": " << json_number(r.rep.wall_s)
        << ", \"time_to_target_s\": " << (r.tta < 0 ? "null" : json_number(r.tta))
        << ", \"speedup_vs_bsp\": " << json_number(r.speedup) << ", \"speedup_is_lower_bound\": "
        << (r.speedup_lower_bound ? "true" : "false") << ", \"final_accuracy\": " << json_number(r.final_acc)
        << ", \"samples\": " << r.samples << ", \"throughput\": " << json_number(r.rep.throughput())
        << ", \"compute_frac\": " << json_number(r.compute) << ", \"wait_frac\": " << json_number(r.wait)
        << ", \"comm_frac\": " << json_number(r.comm) << ", \"held_frac\": " << json_number(r.held)
        << ", \"hidden_frac\": " << json_number(r.hidden) << ", \"clock_staleness_mean\": " << json_number(cs.mean())
        << ", \"clock_staleness_max\": " << cs.max << ", \"version_staleness_mean\": " << json_number(vs.mean())
        << ", \"version_staleness_max\": " << vs.max << ", \"steps_per_push_mean\": " << json_number(spp.mean())
        << ", \"steps_per_push_max\": " << spp.max << ", \"pushes\": " << r.pushes
        << ", \"steps_to_target\": " << (r.steps_at_target < 0 ? "null" : json_number(r.steps_at_target))
        << ", \"real_s\": " << json_number(r.real_s) << ", \"time_to_target_seeds\": [";
      for (std::size_t k = 0; k < r.tta_seeds.size(); ++k)
        f << (k ? "," : "") << (r.tta_seeds[k] < 0 ? "null" : json_number(r.tta_seeds[k]));
      f << "]"
        << ", \"note\": " << json_string(r.note) << ",\n     \"series\": [";
      for (std::size_t k = 0; k < r.rep.series.size(); ++k) {
        const auto& p = r.rep.series[k];
        f << (k ? "," : "") << "[" << json_number(p.seconds) << "," << p.steps << "," << json_number(p.test_accuracy) << ","
          << json_number(p.train_loss) << "]";
      }
      f << "]}";
    }
    f << "\n  ],\n  \"series_columns\": [\"seconds\", \"steps\", \"test_accuracy\", \"train_loss\"]\n}\n";
  }
  if (o.virtual_time) {  // markdown, virtual time
    std::ofstream f(base.string() + ".md");
    f << "### Scenario `" << s.name << "` (virtual time)\n\n" << s.summary << ". Target test accuracy " << fmt(target, 2)
      << "; each policy runs until it reaches it (mean of the last 3 evaluations, 2,000 test samples) or "
      << fmt(budget, 0) << " virtual s. " << (o.seeds > 1 ? std::to_string(o.seeds) + " seeds (" + std::to_string(o.seed) +
                                                                  ".." + std::to_string(o.seed + o.seeds - 1) +
                                                                  "): median, and min-max across seeds."
                                                            : "Seed " + std::to_string(o.seed) + ".")
      << "\n\n";
    f << "| policy | lr | time to " << fmt(target, 2) << " (virtual s) | min-max | speedup vs BSP | local steps to "
      << fmt(target, 2) << " | vs sequential | final acc (10k) | run (virtual s) | samples | compute % | wait % | "
         "steps per push mean / max | real s |\n";
    f << "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for (const auto& r : rows) {
      const bool seq = r.label.rfind("sequential", 0) == 0;
      f << "| " << r.label << " | " << fmt(r.lr, 4) << " | " << tta_str(r.tta) << " | " << spread_str(r) << " | "
        << speedup_str(r) << " | " << steps_str(r.steps_at_target) << " | " << steps_ratio_str(r, rows) << " | "
        << fmt(r.final_acc, 4) << " | " << fmt(r.rep.wall_s, 1) << " | " << r.samples << " | " << pct(r.compute)
        << " | " << (seq ? "-" : pct(r.wait)) << " | " << (seq ? "-" : summary_str(r.rep.steps_per_push(), " / "))
        << " | " << fmt(r.real_s, 1) << " |\n";
    }
    f << "\n" << lr_rule_text(s, o) << "\n";
    if (!gs.empty()) {
      f << "\n| goal | measured | verdict |\n|---|---|---|\n";
      for (const auto& g : gs) f << "| " << g.text << " | " << g.measured << " | " << g.verdict << " |\n";
    }
    f << "\nVirtual time (`psync::sim::simulate`): the real server and worker cores and the real gradients on the real "
         "data, one thread, with time modelled: a local step costs "
      << fmt(costs.step_s * 1e3, 3) << " ms ("
      << (costs.step_given       ? std::string("given with --step-ms")
          : costs.loaded_threads ? "the median measured on this machine by `calibrate_step` on " +
                                       std::to_string(costs.loaded_threads) +
                                       " threads at once, every shared core computing (--host-cores)"
                                 : std::string("the median measured on this machine by `calibrate_step`"))
      << (costs.step_note().empty() ? "" : "; " + costs.step_note()) << "), varies lognormally from step to step by " << fmt(100 * costs.step_cv, 1) << "% ("
      << (costs.cv_given ? "given with --step-cv"
                         : costs.step_given ? "the default with --step-ms" : "measured with the step")
      << ", seeded) and is multiplied by the worker's slowdown; the server spends " << fmt(costs.server_s_per_float * 1e9, 3)
      << " ns per float of a push ("
      << (o.server_ns ? "given with --server-ns" : "measured: `model += update` plus a copy")
      << "); links, latency and the fair-shared server NIC are the scenario's"
      << (o.host_cores > 0 ? "; every worker, the server and communication share " + fmt(o.host_cores, 0) +
                                 " cores (--host-cores), and each byte of a message costs " + fmt(o.cpu_ns_per_byte, 3) +
                                 " ns of CPU at each end (--cpu-ns-per-byte)"
                           : std::string())
      << (o.replies_at_step_end ? "; a computing worker takes a reply at the end of its step, as psync's Worker does "
                                  "(--replies step-end)"
                                : std::string())
      << ". Sequential SGD's virtual time is steps x the mean step cost. Local steps to target: "
         "the SGD steps folded into the global model when the target was met, and that count over sequential SGD's "
         "(sample efficiency). Final accuracy is the last model's on the full 10k test set; runs stop at different "
         "virtual times (run column), so compare time to target, not final accuracy. Real s: real seconds the "
         "simulations (and their evaluations) of this row took. `sequential@osp-samples` / `@losp-samples`: "
         "sequential SGD on as many samples as OSP / LOSP processed. `LABEL@K-steps` / `sequential@K-steps` "
         "(--accuracy-steps K): the policy run for K gradient steps in all, without a time limit, and sequential "
         "SGD for as many samples; the accuracy goals then compare these.\n\n";
    if (const auto c = sim_cost_text(rows, costs, workers); !c.empty()) f << c << "\n\n";
    f << "Build: `" << PSYNC_BUILD_FLAGS << "`. Date: " << now_utc() << ".\nCommand: `" << o.command_line << "`.\n"
      << "Plots: `" << (fs::path(o.out) / (s.name + "-accuracy.png")).string() << "` (test accuracy vs virtual time), `"
      << (fs::path(o.out) / (s.name + "-time.png")).string() << "` (time split).\n";
  } else {  // markdown
    std::ofstream f(base.string() + ".md");
    f << "### Scenario `" << s.name << "`\n\n" << s.summary << ". Budget " << fmt(budget, 1)
      << " s of wall clock per policy, target test accuracy " << fmt(target, 2) << " (full 10k test set).\n\n";
    f << "| policy | lr | time to " << fmt(target, 2) << " (s) | speedup vs BSP | final acc | samples | samples/s | "
         "compute % | wait % | comm % | held % | hidden % | clock staleness mean / max | "
         "version staleness mean / max | steps per push mean / max |\n";
    f << "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for (const auto& r : rows) {
      const bool seq = r.label.rfind("sequential", 0) == 0;
      f << "| " << r.label << " | " << fmt(r.lr, 4) << " | " << tta_str(r.tta) << " | " << speedup_str(r) << " | "
        << fmt(r.final_acc, 4) << " | " << r.samples << " | " << fmt(r.rep.throughput(), 0) << " | "
        << pct(r.compute) << " | " << pct(r.wait) << " | " << (seq ? "-" : pct(r.comm)) << " | "
        << (seq ? "-" : pct(r.held)) << " | " << (seq ? "-" : pct(r.hidden)) << " | "
        << (seq ? "-" : summary_str(r.rep.clock_staleness(), " / ")) << " | "
        << (seq ? "-" : summary_str(r.rep.version_staleness(), " / ")) << " | "
        << (seq ? "-" : summary_str(r.rep.steps_per_push(), " / ")) << " |\n";
    }
    f << "\n" << lr_rule_text(s, o) << "\n";
    if (!gs.empty()) {
      f << "\n| goal | measured | verdict |\n|---|---|---|\n";
      for (const auto& g : gs) f << "| " << g.text << " | " << g.measured << " | " << g.verdict << " |\n";
    }
    f << "\nPercentages are means over workers of the share of each worker's wall time: compute (gradients, "
         "straggler stretch included), wait (compute blocked on the network or the policy), comm (push-to-model "
         "round trips less the time the server held the reply; for OSP/LOSP this runs beside compute), held (the "
         "server held the read for the policy). Hidden = 1 - wait / (comm + held). A `>=` speedup means BSP did not "
         "reach the target within its budget, so budget / time is a lower bound. `sequential@osp-samples` is sequential "
         "SGD run without a time limit on as many samples as OSP processed. Clock staleness: the reader's clock minus "
         "the slowest worker's, at each model a worker received (SSP(s) keeps it <= s). Version staleness: model "
         "versions between the one a push was computed on and the one it was applied to; versions count pushes under "
         "ASP/SSP/DSSP and rounds under BSP/OSP, so compare it within one rule. Steps per push: local steps each push "
         "carried (1 but for OSP/LOSP, where steps go on while a push is in flight).\n\n";
    f << "Machine: " << cores << " hardware threads (`nproc`); " << workers
      << " worker threads + 1 server thread share them, so compute is contended and "
         "throughput is not that of " << workers << " dedicated machines.\n"
      << "Build: `" << PSYNC_BUILD_FLAGS << "`. Date: " << now_utc() << ".\n"
      << "Command: `" << o.command_line << "`.\n"
      << "Plots: `" << (fs::path(o.out) / (s.name + "-accuracy.png")).string() << "` (test accuracy vs time), `"
      << (fs::path(o.out) / (s.name + "-time.png")).string() << "` (time split).\n";
  }
}

inline void print_table_real(const Scenario& s, const std::vector<Row>& rows, const std::vector<Goal>& gs, const Options& o) {
  const double target = o.target.value_or(s.target);
  std::printf("\n== %s == (budget %.1f s, target %.2f, build: %s, nproc %u)\n", s.name.c_str(),
              o.budget_s.value_or(s.budget_s), target, PSYNC_BUILD_FLAGS, std::thread::hardware_concurrency());
  std::printf("%-24s %7s %11s %10s %8s %9s %9s %6s %6s %6s %6s %6s %10s %10s %10s\n", "policy", "lr", "t_target(s)",
              "vs BSP", "final", "samples", "samples/s", "comp%", "wait%", "comm%", "held%", "hid%", "clk m/max",
              "ver m/max", "steps/push");
  for (const auto& r : rows) {
    std::printf("%-24s %7s %11s %10s %8.4f %9llu %9.0f %6s %6s %6s %6s %6s %10s %10s %10s\n", r.label.c_str(),
                fmt(r.lr, 4).c_str(), tta_str(r.tta).c_str(), speedup_str(r).c_str(), r.final_acc,
                static_cast<unsigned long long>(r.samples), r.rep.throughput(), pct(r.compute).c_str(),
                pct(r.wait).c_str(), pct(r.comm).c_str(), pct(r.held).c_str(), pct(r.hidden).c_str(),
                summary_str(r.rep.clock_staleness(), "/").c_str(), summary_str(r.rep.version_staleness(), "/").c_str(),
                summary_str(r.rep.steps_per_push(), "/").c_str());
  }
  std::printf("%s\n", lr_rule_text(s, o).c_str());
  for (const auto& g : gs) std::printf("goal: %s\n  measured: %s\n  -> %s\n", g.text.c_str(), g.measured.c_str(), g.verdict.c_str());
  std::fflush(stdout);
}

inline void print_table(const Scenario& s, const std::vector<Row>& rows, const std::vector<Goal>& gs, const Options& o,
                        const Harness::VirtualCosts& costs) {
  if (!o.virtual_time) return print_table_real(s, rows, gs, o);
  const double target = o.target.value_or(s.target);
  std::printf("\n== %s == (virtual time; cap %.0f virtual s per policy, target %.2f, %u seed(s) from %llu, %u workers)\n",
              s.name.c_str(), o.budget_s.value_or(o.quick ? s.quick_budget_s : s.virtual_budget_s), target, o.seeds,
              static_cast<unsigned long long>(o.seed), o.workers.value_or(s.workers));
  if (const auto note = costs.step_note(); !note.empty())
    std::printf("virtual step %s ms (%s): %s\n", fmt(costs.step_s * 1e3, 3).c_str(),
                costs.step_given ? "--step-ms" : "calibrated", note.c_str());
  std::printf("%-22s %7s %10s %13s %9s %9s %8s %8s %8s %9s %6s %6s %10s %7s\n", "policy", "lr", "t_target", "min-max",
              "vs BSP", "steps@tgt", "vs seq", "final", "run(s)", "samples", "comp%", "wait%", "steps/push", "real s");
  for (const auto& r : rows) {
    std::printf("%-22s %7s %10s %13s %9s %9s %8s %8.4f %8.1f %9llu %6s %6s %10s %7.1f\n", r.label.c_str(),
                fmt(r.lr, 4).c_str(), tta_str(r.tta).c_str(), spread_str(r).c_str(), speedup_str(r).c_str(),
                steps_str(r.steps_at_target).c_str(), steps_ratio_str(r, rows).c_str(), r.final_acc, r.rep.wall_s,
                static_cast<unsigned long long>(r.samples), pct(r.compute).c_str(), pct(r.wait).c_str(),
                summary_str(r.rep.steps_per_push(), "/").c_str(), r.real_s);
  }
  std::printf("%s\n", lr_rule_text(s, o).c_str());
  if (const auto c = sim_cost_text(rows, costs, o.workers.value_or(s.workers)); !c.empty()) std::printf("%s\n", c.c_str());
  for (const auto& g : gs) std::printf("goal: %s\n  measured: %s\n  -> %s\n", g.text.c_str(), g.measured.c_str(), g.verdict.c_str());
  std::fflush(stdout);
}

}  // namespace compare
