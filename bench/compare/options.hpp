// compare_policies: the command line (Options, parse, usage) and the policies it
// names (PolicyId, with_policy) with the learning rate each runs at (LrRule).
#pragma once

#include "scenarios.hpp"

#include <psync/compress/codec.hpp>
#include <psync/core/error.hpp>
#include <psync/core/metrics.hpp>
#include <psync/models.hpp>
#include <psync/optim/parse.hpp>
#include <psync/policies/parse.hpp>
#include <psync/policies/rules.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace compare {

// ---------------------------------------------------------------- policies

// A policy by its canonical spelling ("bsp", "ssp:3", "dssp:2:6", "osp:20", ...),
// or "sequential" for the single-threaded reference.
struct PolicyId {
  std::string label;
  bool sequential() const { return label == "sequential"; }
};

// The spelling psync itself gives the policy `text` names (throws psync::ConfigError
// if it names none), so "ssp:03" and "ssp:3" are one policy.
inline PolicyId policy_id(const std::string& text) {
  if (text == "sequential") return {text};
  return {psync::with_policy(text, [](const auto& policy) { return policy.name(); })};
}

// The library's one run-time -> compile-time table (psync::with_policy) picks the type.
template <class F>
psync::RunReport with_policy(const PolicyId& p, F&& f) {
  return psync::with_policy(p.label, [&](auto policy) -> psync::RunReport { return f(policy); });
}

// How each policy's learning rate follows from --lr.
enum class LrRule {
  scaled,  // --lr for averaging policies (and sequential SGD); lr / P for those that add every push
  same,    // --lr for every policy
};

inline const char* lr_rule_name(LrRule r) { return r == LrRule::scaled ? "scaled" : "same"; }

// The rate policy `p` runs at under `rule`: with `scaled`, one round moves the model
// as far as a round of an averaging policy at `base` (Combiner::step_scale is the
// factor relative to sequential SGD: 1 for combine::Sum, 1/P for combine::RoundAverage).
inline float learning_rate_for(const PolicyId& p, float base, std::uint32_t workers, LrRule rule) {
  if (p.sequential() || rule == LrRule::same) return base;
  return psync::with_policy(p.label, [&](const auto& policy) {
    using Combiner = typename std::decay_t<decltype(policy)>::Combiner;
    return static_cast<float>(base * psync::combine::RoundAverage::step_scale(workers) / Combiner::step_scale(workers));
  });
}

// ---------------------------------------------------------------- options

struct Options {
  std::string scenario = "paper-like";
  std::optional<double> budget_s;
  std::optional<double> target;
  std::optional<std::uint32_t> workers;
  std::optional<unsigned> ssp;
  std::optional<unsigned> osp;
  bool sweep = false;
  std::string trace_dir;
  std::string out = "docs/results";
  bool quiet = false;
  std::optional<float> lr;
  LrRule lr_rule = LrRule::scaled;
  std::vector<PolicyId> only;  // --policies: policies to run (empty: all)
  std::string command_line;
  bool virtual_time = true;        // --time virtual|real
  std::uint64_t seed = 1;          // --seed: sharding, batch order, stragglers, jitter
  unsigned seeds = 1;              // --seeds K: seeds seed .. seed+K-1 (virtual time)
  // --accuracy-steps K: the accuracy goals compare OSP/LOSP and sequential SGD after K
  // gradient steps each (K x batch samples; virtual time), not at OSP's time to target.
  std::uint64_t accuracy_steps = 0;
  std::optional<double> step_ms;   // --step-ms: virtual step cost instead of calibrating
  std::optional<double> step_cv;   // --step-cv: spread of a step's cost (default: calibrated, or 0.05 with --step-ms)
  bool quick = false;              // --quick: small budgets, no sequential@osp-samples
  std::optional<double> server_ns;  // --server-ns: server cost per float instead of calibrating
  double host_cores = 0;            // --host-cores: the cluster shares this many cores (virtual time; 0: none shared)
  double cpu_ns_per_byte = 0;       // --cpu-ns-per-byte: each end of a message costs this CPU per byte (needs --host-cores)
  bool replies_at_step_end = false; // --replies step-end: computing workers take replies at step ends (psync's Worker)
  std::optional<double> gbps;       // --gbps: links and server NIC
  std::optional<double> latency_ms; // --latency-ms: one-way per link
  std::optional<double> straggler;  // --straggler: worker 0's slowdown (1: none)
  std::vector<float> lr_grid;       // --lr-grid: base rates to try; each policy keeps its best
  std::vector<double> sweep_gbps;   // --sweep-bandwidth: Gbit/s values
  std::vector<unsigned> sweep_workers;  // --sweep-workers: worker counts
  std::vector<unsigned> sweep_shards;   // --sweep-shards: server shard counts
  std::optional<unsigned> shards;       // --shards: server shards (virtual time)
  std::optional<std::string> codec;     // --codec: how workers encode pushes (virtual time)
  std::vector<std::string> sweep_codec; // --sweep-codec: codecs, each run with every policy
  std::optional<std::string> optimizer; // --optimizer: every worker's optimizer (psync::optim::parse_optimizer)
  std::optional<std::string> schedule;  // --schedule: every worker's rate schedule (psync::optim::parse_schedule)
  std::vector<unsigned> sweep_osp;      // --sweep-staleness S-LIST/s-LIST: OSP's and LOSP's S values
  std::vector<unsigned> sweep_ssp;      // ... and SSP's s values
  bool validate = false;            // --validate: real threads vs virtual time, P = 2

  // The sweeps asked for, in the order they run: "bandwidth", "workers", "staleness"
  // (each writes <scenario>-sweep-<name>.*; see sweeps.hpp).
  std::vector<std::string> sweeps() const {
    std::vector<std::string> v;
    if (!sweep_gbps.empty()) v.push_back("bandwidth");
    if (!sweep_workers.empty()) v.push_back("workers");
    if (!sweep_shards.empty()) v.push_back("shards");
    if (!sweep_codec.empty()) v.push_back("codec");
    if (!sweep_osp.empty() || !sweep_ssp.empty()) v.push_back("staleness");
    return v;
  }

  // Whether scenario `name` was asked for (--scenario takes a comma-separated list or "all").
  bool wants(const std::string& name) const {
    if (scenario == "all") return true;
    std::stringstream ss(scenario);
    for (std::string t; std::getline(ss, t, ',');)
      if (t == name) return true;
    return false;
  }
};

inline void usage(std::ostream& o) {
  o << "usage: compare_policies [options]\n"
       "  --scenario NAME|all   scenario to run (default paper-like; see --list)\n"
       "  --list                print the scenarios and exit\n"
       "  --time virtual|real   virtual (default): discrete-event simulation (psync::sim), real math,\n"
       "                        modelled time; real: threads over the emulated network, wall clock\n"
       "  --budget SECONDS      budget per policy: virtual seconds (a cap; runs stop once the target\n"
       "                        is reached) or wall-clock seconds (default: the scenario's)\n"
       "  --seed N              seed of sharding, batch order, stragglers and jitter (default 1)\n"
       "  --seeds K             virtual time and --validate: run seeds N..N+K-1, report median and\n"
       "                        min-max (--validate: medians of real and virtual times to target)\n"
       "  --accuracy-steps K    virtual time: the accuracy goals run OSP/LOSP for K gradient steps in\n"
       "                        all (K / workers each, no time cap) and sequential SGD for K steps,\n"
       "                        and compare their final accuracy (default: at the time runs' samples)\n"
       "  --step-ms X           virtual time: a step costs X ms (default: calibrated on this machine)\n"
       "  --step-cv X           virtual time: steps vary lognormally around that median with this\n"
       "                        coefficient of variation (default: calibrated with the step, or\n"
       "                        0.05 with --step-ms; 0: every step costs the same)\n"
       "  --quick               virtual time: target 0.80 (unless --target), 60 s cap, no\n"
       "                        sequential@osp-samples (the demo)\n"
       "  --target ACC          target test accuracy in (0,1) (default 0.85)\n"
       "  --workers N           workers, 1..1024 (real time: at most 64; default: the scenario's)\n"
       "  --ssp S               SSP staleness bound (default 3)\n"
       "  --osp S               OSP/LOSP stale threshold, >= 1 (default 20)\n"
       "  --policies LIST       only these, comma-separated (sequential always runs); each one of\n"
       "                        bsp, asp, ssp:s, dssp:LO:HI, osp:S, losp:S, osp-uninstalled:S,\n"
       "                        losp-uninstalled:S (e.g. bsp,osp:20,dssp:2:6)\n"
       "  --lr RATE             base learning rate (default: the scenario's, 0.15)\n"
       "  --lr-rule scaled|same scaled (default): RATE for bsp/osp/losp and sequential SGD,\n"
       "                        RATE / workers for asp/ssp/dssp, which add every push where\n"
       "                        bsp/osp average a round; same: RATE for every policy\n"
       "  --sweep               also run OSP S in {5,10,20,40} and SSP s in {1,3,8}\n"
       "  --gbps X              links and server NIC at X Gbit/s (default: the scenario's, 1)\n"
       "  --latency-ms X        one-way latency per link (default: the scenario's, 1)\n"
       "  --straggler X         worker 0 is X times slower (1: no straggler; default: the scenario's)\n"
       "  --server-ns X         virtual time: the server spends X ns per float of a push\n"
       "                        (default: calibrated on this machine)\n"
       "  --host-cores C        virtual time: every worker, the server and communication share\n"
       "                        C cores (one test box, as scripts/netns_crosscheck.sh runs it;\n"
       "                        default 0: each has cores of its own, a real cluster); the\n"
       "                        step, unless given, is calibrated on C threads at once\n"
       "  --cpu-ns-per-byte X   with --host-cores: each byte of a message costs X ns of CPU at\n"
       "                        its sender and again at its receiver (the kernel's TCP, copies)\n"
       "  --replies WHEN        virtual time: when a computing OSP worker takes a reply:\n"
       "                        on-arrival (default; a dedicated thread, the reference code) or\n"
       "                        step-end (psync's Worker driver; --validate always uses it)\n"
       "  --lr-grid LIST        virtual time: try each base rate (e.g. 0.1,0.2,0.4); every policy\n"
       "                        keeps the rate with its earliest median time to target\n"
       "  --sweep-bandwidth LIST  virtual time: rerun at each Gbit/s value (e.g. 0.1,0.3,1,3,10);\n"
       "                        writes SCENARIO-sweep-bandwidth.{csv,dat,md} (and a plot via compare.sh)\n"
       "  --sweep-workers LIST  virtual time: rerun with each worker count (e.g. 2,4,8,16,32);\n"
       "                        writes SCENARIO-sweep-workers.{csv,dat,md}\n"
       "  --shards K            virtual time: K server shards, each owning a slice of the model\n"
       "                        and its own NIC (default 1)\n"
       "  --sweep-shards LIST   virtual time: rerun with each shard count (e.g. 1,2,4);\n"
       "                        writes SCENARIO-sweep-shards.{csv,dat,md}\n"
       "  --codec SPEC          virtual time: workers encode pushes with SPEC: none, fp16, topk:R\n"
       "                        (fraction R kept), qsgd8; error feedback on (docs/compression.md)\n"
       "  --optimizer SPEC      every worker's optimizer: sgd (default), momentum[:MU], nesterov[:MU],\n"
       "                        adam[:B1,B2,EPS]; each worker keeps its own state; the sequential\n"
       "                        SGD references stay SGD (docs/optimizers.md#choosing-at-run-time)\n"
       "  --schedule SPEC       every worker's learning rate per local step, from its policy's rate:\n"
       "                        constant (default), step:GAMMA,EVERY, cosine:STEPS[,MIN_LR],\n"
       "                        warmup:N[,SCHEDULE] (e.g. warmup:100,cosine:900)\n"
       "  --sweep-codec LIST    virtual time: every policy with each codec (e.g. none,fp16,topk:0.01,qsgd8);\n"
       "                        writes SCENARIO-sweep-codec.{csv,json,md,dat}: bytes per push and round,\n"
       "                        final accuracy, time to target\n"
       "  --sweep-staleness S-LIST/s-LIST  virtual time: each OSP/LOSP policy at every S of S-LIST and\n"
       "                        each SSP policy at every s of s-LIST (e.g. 5,10,20,40/1,3,8; either list\n"
       "                        may be empty), the other policies once as references; writes\n"
       "                        SCENARIO-sweep-staleness.{csv,dat,md}\n"
       "  --validate            real threads (emulated network, wall clock) against virtual time at\n"
       "                        2 workers: time to target per policy, and BSP's parameters; models\n"
       "                        this machine's cores (--host-cores, default nproc) and Emulated's\n"
       "                        one-message-at-a-time NIC; 3 seeds unless --seeds is given\n"
       "  --trace DIR           also write one Chrome trace JSON per policy (short separate run)\n"
       "  --out DIR             where results go (default docs/results)\n"
       "  --quiet               no progress on stderr\n"
       "  --help                this text\n";
}

[[noreturn]] inline void bad(const std::string& m) {
  std::cerr << "compare_policies: " << m << "\n(try --help)\n";
  std::exit(2);
}

inline double parse_double(const std::string& flag, const std::string& v) {
  try {
    std::size_t pos = 0;
    double d = std::stod(v, &pos);
    if (pos != v.size() || !std::isfinite(d)) throw std::invalid_argument(v);
    return d;
  } catch (const std::exception&) {
    bad(flag + " needs a number, got '" + v + "'");
  }
}

inline unsigned parse_unsigned(const std::string& flag, const std::string& v) {
  try {
    std::size_t pos = 0;
    unsigned long u = std::stoul(v, &pos);
    if (pos != v.size() || v.empty() || v[0] == '-' || u > 1000000) throw std::invalid_argument(v);
    return static_cast<unsigned>(u);
  } catch (const std::exception&) {
    bad(flag + " needs a non-negative integer, got '" + v + "'");
  }
}

// "a,b,c" as numbers.
inline std::vector<double> parse_list(const std::string& flag, const std::string& v) {
  std::vector<double> out;
  std::stringstream ss(v);
  for (std::string t; std::getline(ss, t, ',');) out.push_back(parse_double(flag, t));
  if (out.empty()) bad(flag + " needs a comma-separated list");
  return out;
}

inline Options parse(int argc, char** argv) {
  Options o;
  bool seeds_given = false, host_cores_given = false;
  for (int i = 0; i < argc; ++i) {
    if (i) o.command_line += ' ';
    o.command_line += argv[i];
  }
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) bad(a + " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      usage(std::cout);
      std::exit(0);
    } else if (a == "--list") {
      for (const auto& s : scenarios()) std::cout << s.name << ": " << s.summary << "\n";
      std::exit(0);
    } else if (a == "--scenario") {
      o.scenario = value();
      if (o.scenario != "all") {
        std::stringstream ss(o.scenario);
        for (std::string t; std::getline(ss, t, ',');) {
          bool known = false;
          for (const auto& s : scenarios()) known = known || s.name == t;
          if (!known) bad("unknown scenario '" + t + "' (see --list)");
        }
      }
    } else if (a == "--time") {
      const std::string t = value();
      if (t == "virtual") {
        o.virtual_time = true;
      } else if (t == "real") {
        o.virtual_time = false;
      } else {
        bad("--time must be virtual or real, got '" + t + "'");
      }
    } else if (a == "--seed") {
      o.seed = parse_unsigned(a, value());
    } else if (a == "--seeds") {
      o.seeds = parse_unsigned(a, value());
      seeds_given = true;
      if (o.seeds < 1 || o.seeds > 20) bad("--seeds must be in [1, 20]");
    } else if (a == "--accuracy-steps") {
      o.accuracy_steps = parse_unsigned(a, value());
      if (o.accuracy_steps < 1) bad("--accuracy-steps must be at least 1");
    } else if (a == "--step-ms") {
      o.step_ms = parse_double(a, value());
      if (!(*o.step_ms > 0) || *o.step_ms > 10000) bad("--step-ms must be in (0, 10000]");
    } else if (a == "--step-cv") {
      o.step_cv = parse_double(a, value());
      if (!(*o.step_cv >= 0) || *o.step_cv > 1) bad("--step-cv must be in [0, 1]");
    } else if (a == "--quick") {
      o.quick = true;
    } else if (a == "--budget") {
      o.budget_s = parse_double(a, value());
      if (*o.budget_s < 0.5 || *o.budget_s > 36000) bad("--budget must be in [0.5, 36000] seconds");
    } else if (a == "--target") {
      o.target = parse_double(a, value());
      if (*o.target <= 0 || *o.target >= 1) bad("--target must be in (0, 1)");
    } else if (a == "--workers") {
      o.workers = parse_unsigned(a, value());
      if (*o.workers < 1 || *o.workers > 1024) bad("--workers must be in [1, 1024] (above 64: virtual time only)");
    } else if (a == "--ssp") {
      o.ssp = parse_unsigned(a, value());
    } else if (a == "--osp") {
      o.osp = parse_unsigned(a, value());
      if (*o.osp < 1) bad("--osp must be at least 1");
    } else if (a == "--lr") {
      o.lr = static_cast<float>(parse_double(a, value()));
      if (!(*o.lr > 0) || *o.lr > 10) bad("--lr must be in (0, 10]");
    } else if (a == "--lr-rule") {
      const std::string r = value();
      if (r == "scaled") {
        o.lr_rule = LrRule::scaled;
      } else if (r == "same") {
        o.lr_rule = LrRule::same;
      } else {
        bad("--lr-rule must be scaled or same, got '" + r + "'");
      }
    } else if (a == "--policies") {
      std::stringstream ss(value());
      for (std::string t; std::getline(ss, t, ',');) {
        try {
          o.only.push_back(policy_id(t));
        } catch (const psync::ConfigError& e) {
          bad(std::string("--policies: ") + e.what());
        }
      }
    } else if (a == "--sweep") {
      o.sweep = true;
    } else if (a == "--gbps") {
      o.gbps = parse_double(a, value());
      if (!(*o.gbps >= 0.001) || *o.gbps > 1000) bad("--gbps must be in [0.001, 1000]");
    } else if (a == "--latency-ms") {
      o.latency_ms = parse_double(a, value());
      if (*o.latency_ms < 0 || *o.latency_ms > 10000) bad("--latency-ms must be in [0, 10000]");
    } else if (a == "--straggler") {
      o.straggler = parse_double(a, value());
      if (*o.straggler < 1 || *o.straggler > 1000) bad("--straggler must be in [1, 1000]");
    } else if (a == "--replies") {
      const std::string v = value();
      if (v != "on-arrival" && v != "step-end") bad("--replies must be on-arrival or step-end, got '" + v + "'");
      o.replies_at_step_end = v == "step-end";
    } else if (a == "--host-cores") {
      o.host_cores = parse_double(a, value());
      host_cores_given = true;
      if (!(o.host_cores >= 0) || o.host_cores > 4096) bad("--host-cores must be in [0, 4096]");
    } else if (a == "--cpu-ns-per-byte") {
      o.cpu_ns_per_byte = parse_double(a, value());
      if (!(o.cpu_ns_per_byte >= 0) || o.cpu_ns_per_byte > 1e6) bad("--cpu-ns-per-byte must be in [0, 1e6]");
    } else if (a == "--server-ns") {
      o.server_ns = parse_double(a, value());
      if (*o.server_ns < 0 || *o.server_ns > 1e6) bad("--server-ns must be in [0, 1e6]");
    } else if (a == "--lr-grid") {
      for (double v : parse_list(a, value())) {
        if (!(v > 0) || v > 10) bad("--lr-grid rates must be in (0, 10]");
        o.lr_grid.push_back(static_cast<float>(v));
      }
    } else if (a == "--sweep-bandwidth") {
      for (double v : parse_list(a, value())) {
        if (!(v >= 0.001) || v > 1000) bad("--sweep-bandwidth values must be in [0.001, 1000] Gbit/s");
        o.sweep_gbps.push_back(v);
      }
    } else if (a == "--sweep-workers") {
      for (double v : parse_list(a, value())) {
        if (v < 1 || v > 1024 || v != std::floor(v)) bad("--sweep-workers values must be integers in [1, 1024]");
        o.sweep_workers.push_back(static_cast<unsigned>(v));
      }
    } else if (a == "--shards") {
      o.shards = parse_unsigned(a, value());
      if (*o.shards < 1 || *o.shards > 64) bad("--shards must be in [1, 64]");
    } else if (a == "--codec" || a == "--sweep-codec") {
      const bool sweep = a == "--sweep-codec";
      std::stringstream ss(value());
      for (std::string t; std::getline(ss, t, ',');) {
        try {
          t = psync::compress::parse_codec(t).name();  // one spelling per codec
        } catch (const psync::ConfigError& e) {
          bad(a + ": " + e.what());
        }
        if (!sweep) {
          if (o.codec) bad("--codec takes one codec (--sweep-codec compares several)");
          o.codec = t;
        } else if (std::find(o.sweep_codec.begin(), o.sweep_codec.end(), t) == o.sweep_codec.end()) {
          o.sweep_codec.push_back(t);
        }
      }
      if (sweep && o.sweep_codec.empty()) bad("--sweep-codec needs at least one codec");
    } else if (a == "--optimizer") {
      const std::string t = value();
      try {
        (void)psync::optim::parse_optimizer(t);
      } catch (const psync::ConfigError& e) {
        bad(a + ": " + e.what());
      }
      o.optimizer = t;
    } else if (a == "--schedule") {
      const std::string t = value();
      try {
        (void)psync::optim::parse_schedule(t, 1.0f);  // the form; the rate is each policy's
      } catch (const psync::ConfigError& e) {
        bad(a + ": " + e.what());
      }
      o.schedule = t.empty() ? "constant" : t;
    } else if (a == "--sweep-shards") {
      for (double v : parse_list(a, value())) {
        if (v < 1 || v > 64 || v != std::floor(v)) bad("--sweep-shards values must be integers in [1, 64]");
        o.sweep_shards.push_back(static_cast<unsigned>(v));
      }
    } else if (a == "--sweep-staleness") {
      const std::string v = value();
      const auto slash = v.find('/');
      if (slash == std::string::npos || v.find('/', slash + 1) != std::string::npos)
        bad("--sweep-staleness needs S-LIST/s-LIST (e.g. 5,10,20,40/1,3,8), got '" + v + "'");
      // One side's integers, at least `least` each (the empty side sweeps nothing).
      const auto side = [&](const std::string& text, unsigned least, const char* what) {
        std::vector<unsigned> out;
        if (text.empty()) return out;
        for (double x : parse_list(a, text)) {
          if (x < least || x > 1000000 || x != std::floor(x))
            bad(std::string("--sweep-staleness: ") + what + " values must be integers >= " + std::to_string(least));
          out.push_back(static_cast<unsigned>(x));
        }
        return out;
      };
      o.sweep_osp = side(v.substr(0, slash), 1, "OSP/LOSP S");
      o.sweep_ssp = side(v.substr(slash + 1), 0, "SSP s");
      if (o.sweep_osp.empty() && o.sweep_ssp.empty()) bad("--sweep-staleness: both lists are empty");
    } else if (a == "--validate") {
      o.validate = true;
    } else if (a == "--trace") {
      o.trace_dir = value();
    } else if (a == "--out") {
      o.out = value();
    } else if (a == "--quiet") {
      o.quiet = true;
    } else {
      bad("unknown argument '" + a + "'");
    }
  }
  if (!o.virtual_time && o.workers && *o.workers > 64) bad("--time real runs at most 64 workers");
  if (o.cpu_ns_per_byte > 0 && o.host_cores == 0) bad("--cpu-ns-per-byte needs --host-cores (communication takes CPU from compute only on shared cores)");
  if (!o.virtual_time && (o.host_cores > 0 || o.cpu_ns_per_byte > 0)) bad("--host-cores and --cpu-ns-per-byte model time: they need --time virtual");
  if (!o.virtual_time && (!o.lr_grid.empty() || !o.sweeps().empty()))
    bad("--lr-grid and the sweeps run in virtual time");
  if (!o.sweep_workers.empty() && o.workers) bad("--sweep-workers sets the worker count: drop --workers");
  if (!o.sweep_shards.empty() && o.shards) bad("--sweep-shards sets the shard count: drop --shards");
  if ((!o.virtual_time || o.validate) && o.shards && *o.shards > 1)
    bad("--shards runs in virtual time (real-time runs and --validate use one server)");
  if (o.validate && o.workers) bad("--validate runs 2 workers: drop --workers");
  if (o.validate) {
    // The real threads share this machine's cores; model them unless told otherwise.
    if (!host_cores_given) o.host_cores = std::max(1u, std::thread::hardware_concurrency());
    // One seed's time to target under an asynchronous policy is mostly noise.
    if (!seeds_given) o.seeds = 3;
  }
  if (!o.sweep_codec.empty() && o.codec) bad("--sweep-codec sets the codec: drop --codec");
  if ((o.codec && *o.codec != "none") || !o.sweep_codec.empty()) {
    if (!o.virtual_time || o.validate) bad("--codec and --sweep-codec run in virtual time");
  }
  if (o.validate && (o.optimizer || o.schedule)) bad("--optimizer and --schedule do not apply to --validate (it checks SGD)");
  // --quick (the demo): a lower target, so every policy gets there in a few thousand steps.
  if (o.quick && o.virtual_time && !o.target) o.target = 0.80;
  return o;
}

// The scenario with the command line's network and straggler overrides applied
// (its summary says what changed).
inline Scenario with_overrides(Scenario s, const Options& o) {
  const Scenario base = s;
  if (o.gbps) s.gbps = *o.gbps, s.emulate = true;
  if (o.latency_ms) s.latency_ms = *o.latency_ms;
  if (o.straggler) s.slow_worker = *o.straggler;
  if (o.workers) s.workers = *o.workers;
  if (o.shards) s.shards = *o.shards;
  if (o.codec) s.codec = *o.codec;
  if (o.optimizer) s.optimizer = *o.optimizer;
  if (o.schedule) s.schedule = *o.schedule;
  s.summary += describe_overrides(base, s);
  return s;
}

}  // namespace compare
