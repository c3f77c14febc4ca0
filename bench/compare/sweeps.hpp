// compare_policies --sweep-bandwidth / --sweep-workers: one scenario rerun at each
// value of one parameter (virtual time), every policy's time to target per value.
// Writes <out>/<scenario>-sweep-<param>.{csv,dat,md}; scripts/compare.sh draws
// <scenario>-sweep-<param>.png from the .dat (scripts/plot_sweep.gp).
#pragma once

#include "format.hpp"
#include "options.hpp"
#include "runner.hpp"
#include "scenarios.hpp"
#include "writers.hpp"

#include <psync/detail/json.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace compare {

struct SweepPoint {
  double value = 0;
  std::vector<Row> rows;
};

// `param` is "bandwidth" (values in Gbit/s: links and server NIC) or "workers".
inline std::vector<SweepPoint> run_sweep(Harness& h, const Scenario& base, const std::string& param,
                                         const std::vector<double>& values, const Progress& progress) {
  std::vector<SweepPoint> points;
  for (double v : values) {
    Scenario s = base;
    if (param == "bandwidth") {
      s.gbps = v;
      s.emulate = true;
    } else {
      s.workers = static_cast<std::uint32_t>(v);
    }
    s.name = base.name + "@" + param + "=" + fmt(v, v < 1 ? 2 : 0);
    progress.line("sweep: " + s.name);
    points.push_back(SweepPoint{v, h.scenario(s)});
  }
  return points;
}

inline void write_sweep(const Scenario& base, const std::string& param, const std::vector<SweepPoint>& points,
                        const Options& o) {
  if (points.empty()) return;
  std::filesystem::create_directories(o.out);
  const std::string stem = (std::filesystem::path(o.out) / (base.name + "-sweep-" + param)).string();
  const double target = o.target.value_or(base.target);
  const std::string unit = param == "bandwidth" ? "gbit_s" : "workers";
  std::vector<std::string> labels;
  for (const auto& r : points.front().rows)
    if (r.label.rfind("sequential@", 0) != 0) labels.push_back(r.label);
  const auto row_of = [](const SweepPoint& p, const std::string& label) -> const Row* {
    for (const auto& r : p.rows)
      if (r.label == label) return &r;
    return nullptr;
  };
  {  // CSV: one line per value and policy.
    std::ofstream f(stem + ".csv");
    f << unit << ",policy,lr,time_to_target_s,speedup_vs_bsp,steps_at_target,final_accuracy,samples,target\n";
    for (const auto& p : points)
      for (const auto& label : labels)
        if (const Row* r = row_of(p, label))
          f << p.value << ',' << label << ',' << json_rate(r->lr) << ',' << (r->tta < 0 ? "" : fmt(r->tta, 3)) << ','
            << (std::isnan(r->speedup) ? "" : fmt(r->speedup, 3)) << ','
            << (r->steps_at_target < 0 ? "" : fmt(r->steps_at_target, 0)) << ',' << fmt(r->final_acc, 4) << ','
            << r->samples << ',' << target << '\n';
  }
  {  // gnuplot: one line per value, one column per policy (NaN: never reached).
    std::ofstream f(stem + ".dat");
    f << "# " << unit;
    for (const auto& l : labels) f << ' ' << l;
    f << '\n';
    for (const auto& p : points) {
      f << p.value;
      for (const auto& l : labels) {
        const Row* r = row_of(p, l);
        f << ' ' << (r && r->tta >= 0 ? fmt(r->tta, 3) : "NaN");
      }
      f << '\n';
    }
  }
  {  // markdown: value x policy, time to target and speedup over BSP.
    std::ofstream f(stem + ".md");
    f << "### Sweep: " << (param == "bandwidth" ? "bandwidth (links and server NIC, Gbit/s)" : "worker count")
      << ", scenario `" << base.name << "`\n\n" << base.summary << " (the swept parameter replaces the scenario's). "
      << "Virtual seconds to " << fmt(target, 2) << " test accuracy (speedup over BSP); `-`: not reached within "
      << "the cap.\n\n| " << (param == "bandwidth" ? "Gbit/s" : "workers");
    for (const auto& l : labels) f << " | " << l;
    f << " |\n|---";
    for (std::size_t i = 0; i < labels.size(); ++i) f << "|---";
    f << "|\n";
    for (const auto& p : points) {
      f << "| " << fmt(p.value, p.value < 1 ? 2 : 0);
      for (const auto& l : labels) {
        const Row* r = row_of(p, l);
        f << " | " << (r && r->tta >= 0 ? fmt(r->tta, 2) + (std::isnan(r->speedup) ? "" : " (" + fmt(r->speedup, 2) + "x)")
                                         : "-");
      }
      f << " |\n";
    }
    f << "\nBuild: `" << PSYNC_BUILD_FLAGS << "`. Date: " << now_utc() << ".\nCommand: `" << o.command_line << "`.\n";
  }
  std::printf("\n== sweep %s, %s == (virtual seconds to %.2f)\n%-10s", param.c_str(), base.name.c_str(), target,
              param == "bandwidth" ? "Gbit/s" : "workers");
  for (const auto& l : labels) std::printf(" %12s", l.c_str());
  std::printf("\n");
  for (const auto& p : points) {
    std::printf("%-10s", fmt(p.value, p.value < 1 ? 2 : 0).c_str());
    for (const auto& l : labels) {
      const Row* r = row_of(p, l);
      std::printf(" %12s", r ? tta_str(r->tta).c_str() : "-");
    }
    std::printf("\n");
  }
  std::fflush(stdout);
}

}  // namespace compare
