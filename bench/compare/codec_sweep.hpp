// compare_policies --sweep-codec LIST: every policy of the scenario with every codec
// (virtual time), the first head-to-head of hiding communication (OSP) against
// shrinking it (update compression, docs/compression.md) and of both together.
//
// Rows are policy x codec. For each: the bytes one push carries (its payload, no
// headers), the bytes a round uploads (all pushes' bytes / model versions: a version
// is a round under BSP and OSP), the final test accuracy, the time to target and the
// speedup over BSP without compression. Writes <out>/<scenario>-sweep-codec.{csv,json,md,dat};
// scripts/plot_codec.gp draws the .dat (scripts/compare.sh --sweep-codec does).
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
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace compare {

struct CodecRow {
  std::string codec;
  Row row;
  double bytes_per_push = 0;
  double bytes_per_round = 0;
  double speedup_vs_bsp_none = std::numeric_limits<double>::quiet_NaN();
};

// Upload figures of one run: payload bytes per push and per model version.
inline void upload_figures(CodecRow& c) {
  std::uint64_t bytes = 0, pushes = 0;
  for (const auto& w : c.row.rep.workers) {
    bytes += w.pushed_bytes;
    pushes += w.pushes;
  }
  c.bytes_per_push = pushes ? static_cast<double>(bytes) / static_cast<double>(pushes) : 0;
  c.bytes_per_round = c.row.rep.server.version ? static_cast<double>(bytes) / static_cast<double>(c.row.rep.server.version) : 0;
}

inline std::vector<CodecRow> run_codec_sweep(Harness& h, const Scenario& base, const Options& o, const Progress& progress) {
  std::vector<PolicyId> policies;
  for (const auto& p : h.policies(base))
    if (!p.sequential()) policies.push_back(p);
  if (policies.empty()) throw std::runtime_error("--sweep-codec: no policy that pushes (sequential SGD has no pushes)");
  std::vector<CodecRow> out;
  for (const auto& codec : o.sweep_codec) {
    Scenario s = base;
    s.codec = codec;
    s.name = base.name + "@codec=" + codec;
    progress.line("sweep: " + s.name);
    for (auto& r : h.scenario(s, policies, false)) {
      CodecRow c{codec, std::move(r)};
      upload_figures(c);
      out.push_back(std::move(c));
    }
  }
  const CodecRow* bsp_none = nullptr;
  for (const auto& c : out)
    if (c.codec == "none" && c.row.label == "bsp") bsp_none = &c;
  if (bsp_none && bsp_none->row.tta > 0)
    for (auto& c : out)
      if (c.row.tta > 0) c.speedup_vs_bsp_none = bsp_none->row.tta / c.row.tta;
  return out;
}

inline void write_codec_sweep(const Scenario& base, const std::vector<CodecRow>& rows, const Options& o) {
  std::filesystem::create_directories(o.out);
  const std::string stem = (std::filesystem::path(o.out) / (base.name + "-sweep-codec")).string();
  const double target = o.target.value_or(base.target);
  const auto opt_num = [](double v, int prec) { return std::isnan(v) || v < 0 ? std::string() : fmt(v, prec); };
  {
    std::ofstream f(stem + ".csv");
    f << "policy,codec,lr,bytes_per_push,bytes_per_round,final_accuracy,time_to_target_s,speedup_vs_bsp_none,"
         "pushes,samples,target\n";
    for (const auto& c : rows)
      f << c.row.label << ',' << c.codec << ',' << json_rate(c.row.lr) << ',' << fmt(c.bytes_per_push, 1) << ','
        << fmt(c.bytes_per_round, 1) << ',' << fmt(c.row.final_acc, 4) << ',' << opt_num(c.row.tta, 3) << ','
        << opt_num(c.speedup_vs_bsp_none, 3) << ',' << c.row.pushes << ',' << c.row.samples << ',' << target << '\n';
  }
  {
    using psync::detail::json_number;
    using psync::detail::json_string;
    std::ofstream f(stem + ".json");
    f << "{\n  \"scenario\": " << json_string(base.name) << ",\n  \"summary\": " << json_string(base.summary)
      << ",\n  \"target\": " << json_number(target) << ",\n  \"command\": " << json_string(o.command_line)
      << ",\n  \"build\": " << json_string(PSYNC_BUILD_FLAGS) << ",\n  \"date\": " << json_string(now_utc())
      << ",\n  \"rows\": [";
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const auto& c = rows[i];
      f << (i ? "," : "") << "\n    {\"policy\": " << json_string(c.row.label) << ", \"codec\": " << json_string(c.codec)
        << ", \"lr\": " << json_rate(c.row.lr) << ", \"bytes_per_push\": " << json_number(c.bytes_per_push)
        << ", \"bytes_per_round\": " << json_number(c.bytes_per_round)
        << ", \"final_accuracy\": " << json_number(c.row.final_acc)
        << ", \"time_to_target_s\": " << (c.row.tta < 0 ? "null" : json_number(c.row.tta))
        << ", \"tta_seeds\": [";
      for (std::size_t k = 0; k < c.row.tta_seeds.size(); ++k)
        f << (k ? ", " : "") << (c.row.tta_seeds[k] < 0 ? "null" : json_number(c.row.tta_seeds[k]));
      f << "], \"speedup_vs_bsp_none\": "
        << (std::isnan(c.speedup_vs_bsp_none) ? "null" : json_number(c.speedup_vs_bsp_none))
        << ", \"pushes\": " << c.row.pushes << ", \"samples\": " << c.row.samples << "}";
    }
    f << "\n  ]\n}\n";
  }
  {  // gnuplot (scripts/plot_codec.gp): a header row, then one row per codec: its bytes per
     // round (the first policy's; every policy pushes the same encoding), then each
     // policy's virtual seconds to the target (NaN: not reached).
    std::vector<std::string> labels;
    for (const auto& c : rows)
      if (std::find(labels.begin(), labels.end(), c.row.label) == labels.end()) labels.push_back(c.row.label);
    std::ofstream f(stem + ".dat");
    f << "codec bytes_per_round";
    for (const auto& l : labels) f << ' ' << l;
    f << '\n';
    for (const auto& codec : o.sweep_codec) {
      f << codec;
      bool bytes_written = false;
      for (const auto& c : rows)
        if (c.codec == codec && !bytes_written) {
          f << ' ' << fmt(c.bytes_per_round, 0);
          bytes_written = true;
        }
      if (!bytes_written) f << " NaN";
      for (const auto& l : labels) {
        std::string v = "NaN";
        for (const auto& c : rows)
          if (c.codec == codec && c.row.label == l && c.row.tta > 0) v = fmt(c.row.tta, 3);
        f << ' ' << v;
      }
      f << '\n';
    }
  }
  {
    std::ofstream f(stem + ".md");
    f << "### Sweep: update compression, scenario `" << base.name << "`\n\n" << base.summary
      << ". Every policy with every codec (error feedback on; docs/compression.md). Bytes are the update's payload"
         " per push and per round (all pushes' bytes / model versions; no headers; models still go down dense)."
         " Virtual seconds to "
      << fmt(target, 2) << " test accuracy, median over seeds (speedup over BSP without compression); `-`: not reached"
      << " within the cap.\n\n| policy | codec | bytes/push | bytes/round | final accuracy | time to target | speedup |\n"
      << "|---|---|---:|---:|---:|---:|---:|\n";
    for (const auto& c : rows)
      f << "| " << c.row.label << " | " << c.codec << " | " << fmt(c.bytes_per_push, 0) << " | "
        << fmt(c.bytes_per_round, 0) << " | " << fmt(c.row.final_acc, 4) << " | " << tta_str(c.row.tta) << " | "
        << (std::isnan(c.speedup_vs_bsp_none) ? "-" : fmt(c.speedup_vs_bsp_none, 2) + "x") << " |\n";
    f << "\nBuild: `" << PSYNC_BUILD_FLAGS << "`. Date: " << now_utc() << ".\nCommand: `" << o.command_line << "`.\n";
  }
  std::printf("\n== sweep codec, %s == (virtual seconds to %.2f)\n", base.name.c_str(), target);
  std::printf("%-10s %-10s %12s %14s %8s %12s %8s\n", "policy", "codec", "bytes/push", "bytes/round", "acc", "tta", "speedup");
  for (const auto& c : rows)
    std::printf("%-10s %-10s %12.0f %14.0f %8.4f %12s %8s\n", c.row.label.c_str(), c.codec.c_str(), c.bytes_per_push,
                c.bytes_per_round, c.row.final_acc, tta_str(c.row.tta).c_str(),
                std::isnan(c.speedup_vs_bsp_none) ? "-" : (fmt(c.speedup_vs_bsp_none, 2) + "x").c_str());
  std::fflush(stdout);
}

}  // namespace compare
