// compare_policies --sweep-bandwidth / --sweep-workers / --sweep-shards / --sweep-staleness: every
// policy's time to target against one parameter (virtual time).
//
// bandwidth, workers and shards rerun the whole scenario at each value; staleness runs the
// scenario once, with each OSP/LOSP policy at every S and each SSP policy at every
// s, and the policies without such a bound (sequential SGD, BSP, ASP, DSSP) once, as
// references. A sweep has one x axis per parameter (staleness two: S and s) and
// writes <out>/<scenario>-sweep-<param>.{csv,dat,md}; scripts/compare.sh draws
// <scenario>-sweep-<param>.png from the .dat (scripts/plot_sweep.gp).
#pragma once

#include "format.hpp"
#include "options.hpp"
#include "runner.hpp"
#include "scenarios.hpp"
#include "writers.hpp"

#include <psync/detail/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace compare {

struct SweepPoint {
  double value = 0;
  std::vector<Row> rows;
};

// One x axis of a sweep and the rows measured at each of its values.
struct SweepAxis {
  std::string key;      // the .dat's x column: "gbit_s", "workers", "S", "s"
  std::string heading;  // the markdown table's first column: "Gbit/s", "workers", "S", "s"
  // Staleness: a row's column is its policy family and the axis, "osp:S" for osp:5,
  // osp:10, ...; otherwise its label.
  bool family_columns = false;
  std::vector<SweepPoint> points;

  std::string column(const Row& r) const {
    return family_columns ? r.label.substr(0, r.label.find(':')) + ":" + key : r.label;
  }
  // The columns, in the order of first appearance (sequential@... rows left out).
  std::vector<std::string> columns() const {
    std::vector<std::string> c;
    for (const auto& p : points)
      for (const auto& r : p.rows)
        if (r.label.rfind("sequential@", 0) != 0 && std::find(c.begin(), c.end(), column(r)) == c.end())
          c.push_back(column(r));
    return c;
  }
  const Row* at(const SweepPoint& p, const std::string& col) const {
    for (const auto& r : p.rows)
      if (column(r) == col) return &r;
    return nullptr;
  }
};

struct Sweep {
  std::string param;    // "bandwidth", "workers", "staleness": the file names' suffix
  std::string csv_key;  // the CSV's value column: "gbit_s", "workers", "staleness" (the row's own S or s)
  std::string title;    // the markdown heading's "Sweep: ..."
  std::vector<SweepAxis> axes;
  // Rows no axis changes (staleness: the policies without a bound), measured once:
  // the plot's dashed reference lines.
  std::vector<Row> references;
};

// "0.30" below 1, "20" from 1 up (the values are Gbit/s, counts or bounds).
inline std::string value_str(double v) { return fmt(v, v < 1 && v > 0 ? 2 : 0); }

// A value as the CSV and .dat write it: the stream's default, "0.1", "20".
inline std::string plain(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// "33.00 (1.00x)": time to target and speedup over BSP, "-" if never reached.
inline std::string cell_str(const Row* r) {
  if (!r || r->tta < 0) return "-";
  return fmt(r->tta, 2) + (std::isnan(r->speedup) ? "" : " (" + fmt(r->speedup, 2) + "x)");
}

// The staleness axis a policy belongs to: "S" for OSP and LOSP (either gate), "s"
// for SSP, "" for a policy with no single bound (sequential SGD, BSP, ASP, DSSP).
inline std::string staleness_axis(const PolicyId& p) {
  const std::string kind = p.label.substr(0, p.label.find(':'));
  if (kind == "ssp") return "s";
  if (kind == "osp" || kind == "losp" || kind == "osp-uninstalled" || kind == "losp-uninstalled") return "S";
  return "";
}

// bandwidth or workers: the scenario rerun at each value (Gbit/s of links and
// server NIC, or the worker count).
inline Sweep run_rerun_sweep(Harness& h, const Scenario& base, const std::string& param, const std::vector<double>& values,
                             const Progress& progress) {
  Sweep sw;
  sw.param = param;
  SweepAxis axis;
  if (param == "bandwidth") {
    sw.csv_key = axis.key = "gbit_s";
    sw.title = "bandwidth (links and server NIC, Gbit/s)";
    axis.heading = "Gbit/s";
  } else if (param == "shards") {
    sw.csv_key = axis.key = axis.heading = "shards";
    sw.title = "server shards (each owns a slice of the model and its own NIC)";
  } else {
    sw.csv_key = axis.key = axis.heading = "workers";
    sw.title = "worker count";
  }
  for (double v : values) {
    Scenario s = base;
    if (param == "bandwidth") {
      s.gbps = v;
      s.emulate = true;
    } else if (param == "shards") {
      s.shards = static_cast<std::uint32_t>(v);
    } else {
      s.workers = static_cast<std::uint32_t>(v);
    }
    s.name = base.name + "@" + param + "=" + value_str(v);
    progress.line("sweep: " + s.name);
    axis.points.push_back(SweepPoint{v, h.scenario(s, h.policies(s), false)});
  }
  sw.axes.push_back(std::move(axis));
  return sw;
}

// staleness: one run of the scenario's policies (the default set or --policies),
// each OSP/LOSP one at every S of `osp_values` and each SSP one at every s of
// `ssp_values`; a policy whose axis has no values runs once, as a reference.
inline Sweep run_staleness_sweep(Harness& h, const Scenario& base, const std::vector<unsigned>& osp_values,
                                 const std::vector<unsigned>& ssp_values, const Progress& progress) {
  Sweep sw;
  sw.param = "staleness";
  sw.csv_key = "staleness";
  sw.title = "staleness bounds (OSP's and LOSP's S, SSP's s)";
  struct Axis {
    std::string key;
    const std::vector<unsigned>& values;
    std::vector<std::string> families;  // "osp", "losp", ... in --policies order
  };
  std::vector<Axis> axes = {{"S", osp_values, {}}, {"s", ssp_values, {}}};
  std::vector<PolicyId> references, runs;
  for (const auto& p : h.policies(base)) {
    const std::string key = staleness_axis(p);
    auto a = std::find_if(axes.begin(), axes.end(), [&](const Axis& x) { return x.key == key; });
    if (a == axes.end() || a->values.empty()) {
      references.push_back(p);
      continue;
    }
    const std::string family = p.label.substr(0, p.label.find(':'));
    if (std::find(a->families.begin(), a->families.end(), family) == a->families.end()) a->families.push_back(family);
  }
  runs = references;
  for (const auto& a : axes)
    for (const auto& f : a.families)
      for (unsigned v : a.values) runs.push_back(policy_id(f + ":" + std::to_string(v)));
  if (runs.size() == references.size())
    throw std::runtime_error("--sweep-staleness: no policy of --policies has a swept bound (osp, losp or ssp)");
  Scenario s = base;
  s.name = base.name + "@staleness";
  progress.line("sweep: " + s.name);
  std::vector<Row> rows = h.scenario(s, runs, false);
  for (const auto& a : axes) {
    if (a.families.empty()) continue;
    SweepAxis axis;
    axis.key = axis.heading = a.key;
    axis.family_columns = true;
    for (unsigned v : a.values) {
      SweepPoint point{static_cast<double>(v), {}};
      for (const auto& f : a.families) {
        const std::string label = policy_id(f + ":" + std::to_string(v)).label;
        for (const auto& r : rows)
          if (r.label == label) point.rows.push_back(r);
      }
      axis.points.push_back(std::move(point));
    }
    sw.axes.push_back(std::move(axis));
  }
  for (const auto& r : rows)
    if (std::any_of(references.begin(), references.end(), [&](const PolicyId& p) { return p.label == r.label; }))
      sw.references.push_back(r);
  return sw;
}

// The sweep `param` (one of Options::sweeps()) of scenario `s`, as the command line asks.
inline Sweep run_sweep(Harness& h, const Scenario& s, const std::string& param, const Options& o,
                       const Progress& progress) {
  if (param == "bandwidth") return run_rerun_sweep(h, s, param, o.sweep_gbps, progress);
  if (param == "workers")
    return run_rerun_sweep(h, s, param, std::vector<double>(o.sweep_workers.begin(), o.sweep_workers.end()), progress);
  if (param == "shards")
    return run_rerun_sweep(h, s, param, std::vector<double>(o.sweep_shards.begin(), o.sweep_shards.end()), progress);
  return run_staleness_sweep(h, s, o.sweep_osp, o.sweep_ssp, progress);
}

inline void write_sweep(const Scenario& base, const Sweep& sw, const Options& o) {
  if (sw.axes.empty()) return;
  std::filesystem::create_directories(o.out);
  const std::string stem = (std::filesystem::path(o.out) / (base.name + "-sweep-" + sw.param)).string();
  const double target = o.target.value_or(base.target);
  const auto csv_row = [&](std::ofstream& f, const std::string& value, const Row& r) {
    f << value << ',' << r.label << ',' << json_rate(r.lr) << ',' << (r.tta < 0 ? "" : fmt(r.tta, 3)) << ','
      << (std::isnan(r.speedup) ? "" : fmt(r.speedup, 3)) << ','
      << (r.steps_at_target < 0 ? "" : fmt(r.steps_at_target, 0)) << ',' << fmt(r.final_acc, 4) << ',' << r.samples
      << ',' << target << '\n';
  };
  {  // CSV: one line per value and policy (the policy's own label); references once, with no value.
    std::ofstream f(stem + ".csv");
    f << sw.csv_key << ",policy,lr,time_to_target_s,speedup_vs_bsp,steps_at_target,final_accuracy,samples,target\n";
    for (const auto& axis : sw.axes)
      for (const auto& p : axis.points)
        for (const auto& col : axis.columns())
          if (const Row* r = axis.at(p, col)) csv_row(f, plain(p.value), *r);
    for (const auto& r : sw.references) csv_row(f, "", r);
  }
  {  // gnuplot: one block per axis (`index`), one line per value, one column per
     // policy (NaN: never reached), then each reference as a constant column "ref:LABEL".
    std::ofstream f(stem + ".dat");
    for (std::size_t i = 0; i < sw.axes.size(); ++i) {
      const auto& axis = sw.axes[i];
      const auto cols = axis.columns();
      if (i) f << "\n\n";
      f << "# " << axis.key;
      for (const auto& c : cols) f << ' ' << c;
      for (const auto& r : sw.references) f << " ref:" << r.label;
      f << '\n';
      const auto tta = [](const Row* r) { return r && r->tta >= 0 ? fmt(r->tta, 3) : std::string("NaN"); };
      for (const auto& p : axis.points) {
        f << p.value;
        for (const auto& c : cols) f << ' ' << tta(axis.at(p, c));
        for (const auto& r : sw.references) f << ' ' << tta(&r);
        f << '\n';
      }
    }
  }
  {  // markdown: per axis, value x policy, time to target and speedup over BSP; the references below.
    std::ofstream f(stem + ".md");
    f << "### Sweep: " << sw.title << ", scenario `" << base.name << "`\n\n" << base.summary
      << " (the swept parameter replaces the scenario's). Virtual seconds to " << fmt(target, 2)
      << " test accuracy (speedup over BSP); `-`: not reached within the cap.\n";
    for (const auto& axis : sw.axes) {
      const auto cols = axis.columns();
      f << "\n| " << axis.heading;
      for (const auto& c : cols) f << " | " << c;
      f << " |\n|---";
      for (std::size_t i = 0; i < cols.size(); ++i) f << "|---";
      f << "|\n";
      for (const auto& p : axis.points) {
        f << "| " << value_str(p.value);
        for (const auto& c : cols) f << " | " << cell_str(axis.at(p, c));
        f << " |\n";
      }
    }
    if (!sw.references.empty()) {
      f << "\nIndependent of the swept bounds (the plot's dashed reference lines):";
      for (std::size_t i = 0; i < sw.references.size(); ++i)
        f << (i ? ", " : " ") << sw.references[i].label << " " << cell_str(&sw.references[i]);
      f << ".\n";
    }
    f << "\nBuild: `" << PSYNC_BUILD_FLAGS << "`. Date: " << now_utc() << ".\nCommand: `" << o.command_line << "`.\n";
  }
  std::printf("\n== sweep %s, %s == (virtual seconds to %.2f)\n", sw.param.c_str(), base.name.c_str(), target);
  for (const auto& axis : sw.axes) {
    const auto cols = axis.columns();
    std::printf("%-10s", axis.heading.c_str());
    for (const auto& c : cols) std::printf(" %12s", c.c_str());
    std::printf("\n");
    for (const auto& p : axis.points) {
      std::printf("%-10s", value_str(p.value).c_str());
      for (const auto& c : cols) {
        const Row* r = axis.at(p, c);
        std::printf(" %12s", r ? tta_str(r->tta).c_str() : "-");
      }
      std::printf("\n");
    }
  }
  for (const auto& r : sw.references) std::printf("%-10s %12s\n", r.label.c_str(), tta_str(r.tta).c_str());
  std::fflush(stdout);
}

}  // namespace compare
