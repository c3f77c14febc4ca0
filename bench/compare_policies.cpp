// compare_policies: which synchronization policy wins, measured.
//
// Two clocks (--time): `virtual` (the default) runs every policy in psync::sim's
// discrete-event simulator: the real server and worker cores and the real gradient
// math on the real data, with time modelled from a step cost calibrated on this
// machine (or --step-ms), the scenario's network and stragglers, and a measured
// server cost per float; results do not depend on this machine's load, only on the
// step cost. Each policy runs until it reaches and holds the target (see
// Harness::run_virtual), so budgets (--budget, virtual seconds) are caps. `real`
// runs threads over the emulated network with a wall-clock budget, as before.
//
// Trains the same model on the same data (Fashion-MNIST), from the same seed and
// with the same wall-clock budget, under sequential SGD (the reference), BSP, ASP,
// SSP(s), OSP(S) and LOSP(S) (and any policy --policies names, DSSP included), over
// an emulated network, and reports time to a target test accuracy, final accuracy,
// throughput, where each worker's time went, OSP's hidden-communication fraction,
// staleness in clocks and in versions, and OSP's steps per push. Writes CSV, JSON, a
// markdown table and gnuplot data under --out (default docs/results). Nothing is
// hard-coded: every figure printed is measured by this run.
//
// Learning rates (--lr-rule): BSP and OSP average each round's pushes, ASP, SSP and
// DSSP add every push, so at one rate the latter move the model P times further per
// round. By default (`scaled`) --lr is the averaging policies' rate and the others
// run at lr / P; `same` gives every policy --lr. Every table prints the rate used.
//
//   compare_policies --list
//   compare_policies [--time virtual|real] [--seed N] [--seeds K] [--step-ms X] [--quick]
//                    [--scenario paper-like|paper-like-p8|fast-network|heavy-straggler|LIST|all] [--budget S]
//                    [--target ACC] [--workers N] [--ssp S] [--osp S] [--sweep]
//                    [--lr RATE] [--lr-rule scaled|same] [--policies LIST]
//                    [--trace DIR] [--out DIR] [--quiet]
#include <psync/detail/json.hpp>
#include <psync/psync.hpp>
#include <psync/sim/simulator.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#ifndef PSYNC_BUILD_FLAGS
#define PSYNC_BUILD_FLAGS "unknown"
#endif

namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

// ---------------------------------------------------------------- scenarios

struct Scenario {
  std::string name;
  std::string summary;
  std::uint32_t workers = 4;
  Eigen::Index batch = 64;
  // The base learning rate: sequential SGD's and, under --lr-rule scaled (the
  // default), BSP's and OSP's, with ASP/SSP/DSSP at lr / workers. 0.15 was chosen
  // when every policy ran at one rate (--lr-rule same): ASP, which adds every
  // worker's update unaveraged onto models a few versions stale, collapsed at 0.2
  // with 4 workers on Fashion-MNIST while 0.15 kept every policy stable, and 0.1
  // slowed all of them so few reached the target within the budget.
  float lr = 0.15f;
  bool emulate = true;
  double slow_worker = 1.0;     // slowdown of worker 0
  double random_p = 0.0;        // others: probability of a random slow step
  double random_factor = 1.0;   // ... and its factor
  double target = 0.85;
  unsigned osp = 20;
  unsigned ssp = 3;
  // Per policy; with snapshot evaluation the default run takes about 3-4 minutes.
  double budget_s = 20;
  // Virtual time: the most virtual seconds a policy may run (runs stop earlier once
  // they reach the target, see VirtualRunner), and the --quick cap.
  double virtual_budget_s = 600;
  double quick_budget_s = 60;
  // Virtual seconds between evaluations (the same for every policy, so the 3-point
  // window of time_to_accuracy spans the same time for all).
  double snapshot_s = 0.25;

  psync::NetworkSpec network() const {
    psync::NetworkSpec n;
    if (!emulate) return n;
    n.worker_link.bandwidth_bytes_per_s = 125e6;  // 1 Gbit/s
    n.worker_link.latency = std::chrono::microseconds(1000);
    n.server_nic_bytes_per_s = 125e6;
    n.seed = 7;
    return n;
  }
  std::vector<psync::Straggler> stragglers(std::uint32_t workers) const {
    std::vector<psync::Straggler> s(workers);
    for (std::uint32_t w = 0; w < workers; ++w) {
      s[w].seed = 1000 + w;
      if (w == 0) {
        s[w].slowdown = slow_worker;
      } else if (random_p > 0) {
        s[w].random_probability = random_p;
        s[w].random_factor = random_factor;
      }
    }
    return s;
  }
};

std::vector<Scenario> scenarios() {
  Scenario paper;
  paper.name = "paper-like";
  paper.summary =
      "Fashion-MNIST, MLP 784-256-128-10, 4 workers, batch 64; emulated 1 Gbit/s links, 1 ms latency, "
      "server NIC shared at 1 Gbit/s; worker 0 2x slower; OSP S=20, SSP s=3";
  paper.slow_worker = 2.0;

  Scenario paper8 = paper;
  paper8.name = "paper-like-p8";
  paper8.workers = 8;
  paper8.summary =
      "as paper-like, with 8 workers (MLP 784-256-128-10, batch 64, 1 Gbit/s links and NIC, 1 ms latency, "
      "worker 0 2x slower, OSP S=20, SSP s=3)";

  Scenario fast = paper;
  fast.name = "fast-network";
  fast.summary = "as paper-like, but no network emulation and no straggler";
  fast.emulate = false;
  fast.slow_worker = 1.0;

  Scenario heavy = paper;
  heavy.name = "heavy-straggler";
  heavy.summary = "as paper-like, but worker 0 4x slower and the others 3x slower with probability 0.1 per step";
  heavy.slow_worker = 4.0;
  heavy.random_p = 0.1;
  heavy.random_factor = 3.0;
  return {paper, paper8, fast, heavy};
}

// ---------------------------------------------------------------- policies

// A policy by its canonical spelling ("bsp", "ssp:3", "dssp:2:6", "osp:20", ...),
// or "sequential" for the single-threaded reference.
struct PolicyId {
  std::string label;
  bool sequential() const { return label == "sequential"; }
};

// The spelling psync itself gives the policy `text` names (throws psync::ConfigError
// if it names none), so "ssp:03" and "ssp:3" are one policy.
PolicyId policy_id(const std::string& text) {
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

const char* lr_rule_name(LrRule r) { return r == LrRule::scaled ? "scaled" : "same"; }

// The rate policy `p` runs at under `rule`: with `scaled`, one round moves the model
// as far as a round of an averaging policy at `base` (Combiner::step_scale is the
// factor relative to sequential SGD: 1 for combine::Sum, 1/P for combine::RoundAverage).
float learning_rate_for(const PolicyId& p, float base, std::uint32_t workers, LrRule rule) {
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
  std::optional<double> step_ms;   // --step-ms: virtual step cost instead of calibrating
  bool quick = false;              // --quick: small budgets, no sequential@osp-samples

  // Whether scenario `name` was asked for (--scenario takes a comma-separated list or "all").
  bool wants(const std::string& name) const {
    if (scenario == "all") return true;
    std::stringstream ss(scenario);
    for (std::string t; std::getline(ss, t, ',');)
      if (t == name) return true;
    return false;
  }
};

void usage(std::ostream& o) {
  o << "usage: compare_policies [options]\n"
       "  --scenario NAME|all   scenario to run (default paper-like; see --list)\n"
       "  --list                print the scenarios and exit\n"
       "  --time virtual|real   virtual (default): discrete-event simulation (psync::sim), real math,\n"
       "                        modelled time; real: threads over the emulated network, wall clock\n"
       "  --budget SECONDS      budget per policy: virtual seconds (a cap; runs stop once the target\n"
       "                        is reached) or wall-clock seconds (default: the scenario's)\n"
       "  --seed N              seed of sharding, batch order, stragglers and jitter (default 1)\n"
       "  --seeds K             virtual time: run seeds N..N+K-1, report median and min-max\n"
       "  --step-ms X           virtual time: a step costs X ms (default: calibrated on this machine)\n"
       "  --quick               virtual time: target 0.80 (unless --target), 60 s cap, no\n"
       "                        sequential@osp-samples (the demo)\n"
       "  --target ACC          target test accuracy in (0,1) (default 0.85)\n"
       "  --workers N           workers, 1..64 (default 4)\n"
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
       "  --trace DIR           also write one Chrome trace JSON per policy (short separate run)\n"
       "  --out DIR             where results go (default docs/results)\n"
       "  --quiet               no progress on stderr\n"
       "  --help                this text\n";
}

[[noreturn]] void bad(const std::string& m) {
  std::cerr << "compare_policies: " << m << "\n(try --help)\n";
  std::exit(2);
}

double parse_double(const std::string& flag, const std::string& v) {
  try {
    std::size_t pos = 0;
    double d = std::stod(v, &pos);
    if (pos != v.size() || !std::isfinite(d)) throw std::invalid_argument(v);
    return d;
  } catch (const std::exception&) {
    bad(flag + " needs a number, got '" + v + "'");
  }
}

unsigned parse_unsigned(const std::string& flag, const std::string& v) {
  try {
    std::size_t pos = 0;
    unsigned long u = std::stoul(v, &pos);
    if (pos != v.size() || v.empty() || v[0] == '-' || u > 1000000) throw std::invalid_argument(v);
    return static_cast<unsigned>(u);
  } catch (const std::exception&) {
    bad(flag + " needs a non-negative integer, got '" + v + "'");
  }
}

Options parse(int argc, char** argv) {
  Options o;
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
      if (o.seeds < 1 || o.seeds > 20) bad("--seeds must be in [1, 20]");
    } else if (a == "--step-ms") {
      o.step_ms = parse_double(a, value());
      if (!(*o.step_ms > 0) || *o.step_ms > 10000) bad("--step-ms must be in (0, 10000]");
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
      if (*o.workers < 1 || *o.workers > 64) bad("--workers must be in [1, 64]");
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
  // --quick (the demo): a lower target, so every policy gets there in a few thousand steps.
  if (o.quick && o.virtual_time && !o.target) o.target = 0.80;
  return o;
}

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
};

// Local steps folded into the model when the series first met the target (-1: never).
double steps_at(const psync::RunReport& rep, double tta) {
  if (tta < 0) return -1;
  for (const auto& p : rep.series)
    if (p.seconds == tta) return static_cast<double>(p.steps);
  return -1;
}

Row summarize(const std::string& label, float lr, psync::RunReport rep, double target) {
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
  r.steps_at_target = steps_at(rep, r.tta);
  r.rep = std::move(rep);
  return r;
}

std::string fmt(double v, int prec = 3) {
  if (std::isnan(v)) return "-";
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", prec, v);
  return b;
}

std::string pct(double v) { return fmt(100 * v, 1); }

std::string tta_str(double t) { return t < 0 ? "not reached" : fmt(t, 2); }

// "12.34 s" or "not reached", for sentences.
std::string tta_s(double t) { return t < 0 ? "not reached" : fmt(t, 2) + " s"; }

std::string speedup_str(const Row& r) {
  if (std::isnan(r.speedup)) return "-";
  return (r.speedup_lower_bound ? ">= " : "") + fmt(r.speedup, 2) + "x";
}

// "mean<sep>max" of a summary, e.g. "1.25 / 3".
std::string summary_str(const psync::Summary& v, const char* sep) {
  return fmt(v.mean(), 2) + sep + std::to_string(v.max);
}

std::string now_utc() {
  std::time_t t = std::time(nullptr);
  char b[64];
  std::strftime(b, sizeof b, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&t));
  return b;
}

struct Data {
  psync::data::Dataset train, test;
};

// Caps a Chrome trace at `max_events` events: the writer puts one event per line.
void write_capped_trace(const psync::Trace& t, const fs::path& path, std::size_t max_events) {
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

class Harness {
 public:
  Harness(const Options& o, const Data& d, const Progress& p)
      : opt_(o),
        data_(d),
        progress_(p),
        eval_train_(psync::data::whole(d.train, 500)),
        test_subset_(psync::data::whole(d.test, 2000)),
        test_full_(psync::data::whole(d.test)) {}

  psync::models::Mlp model() const {
    psync::models::Mlp m({784, 256, 128, 10});
    m.initialize(42);
    return m;
  }

  std::uint32_t workers(const Scenario& s) const { return opt_.workers.value_or(s.workers); }
  float base_lr(const Scenario& s) const { return opt_.lr.value_or(s.lr); }
  // The rate `p` runs at in scenario `s` (see LrRule).
  float lr(const Scenario& s, const PolicyId& p) const {
    return learning_rate_for(p, base_lr(s), workers(s), opt_.lr_rule);
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

  std::vector<Row> scenario(const Scenario& s) {
    const double budget = opt_.budget_s.value_or(s.budget_s);
    const double target = opt_.target.value_or(s.target);
    const unsigned S = opt_.osp.value_or(s.osp);
    const unsigned ssp = opt_.ssp.value_or(s.ssp);
    const auto numbered = [](const char* kind, unsigned v) { return PolicyId{kind + (":" + std::to_string(v))}; };
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
    progress_.line("compare: scenario " + s.name + ": " + s.summary);
    if (opt_.virtual_time) return scenario_virtual(s, policies);
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
    if (osp_it != rows.end()) {
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
  // per float). Sequential SGD is a plain SGD loop (as run_sequential's) whose
  // virtual time is steps x step_s, evaluated as it goes so it stops at the target.
  //
  // Cost control: a run's real cost is its gradient math, so a policy first runs
  // with a small virtual budget, which doubles (up to the scenario's cap) until its
  // time to target is reached: a run is deterministic given its seed, so the last
  // run's prefix is what a single long run would have done. The series evaluates
  // each snapshot on 2,000 test samples (and 500 training samples for the loss);
  // only the final figure uses the full 10k test set.

  struct VirtualCosts {
    double step_s = 0;
    double server_s_per_float = 0;
    bool step_given = false;
  };

  // The step cost (median of calibrate_step, data touched first) and the server's
  // cost per float (median of `model += update` plus a copy, model-sized).
  VirtualCosts calibrate() const {
    VirtualCosts c;
    const auto m = model();
    if (opt_.step_ms) {
      c.step_s = *opt_.step_ms * 1e-3;
      c.step_given = true;
    } else {
      psync::data::BatchSampler sampler(data_.train, 64, 12345);
      c.step_s = psync::sim::calibrate_step(m, [&]() -> const psync::data::Batch& { return sampler.next(); }, 40, 10);
    }
    const Eigen::Index n = m.parameters().size();
    Eigen::VectorXf v = m.parameters(), u = Eigen::VectorXf::Constant(n, 1e-6f), copy(n);
    std::vector<double> times;
    float sink = 0;
    for (int i = 0; i < 25; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      v += u;
      copy = v;
      const auto t1 = std::chrono::steady_clock::now();
      sink += copy[i % n];
      if (i >= 5) times.push_back(std::chrono::duration<double>(t1 - t0).count());
    }
    volatile float keep = sink;
    (void)keep;
    std::nth_element(times.begin(), times.begin() + static_cast<std::ptrdiff_t>(times.size() / 2), times.end());
    c.server_s_per_float = times[times.size() / 2] / static_cast<double>(n);
    return c;
  }

  double virtual_cap(const Scenario& s) const {
    if (opt_.budget_s) return *opt_.budget_s;
    return opt_.quick ? s.quick_budget_s : s.virtual_budget_s;
  }

  psync::sim::SimOptions sim_options(const Scenario& s, const PolicyId& p, std::uint64_t seed, double budget,
                                     double interval) const {
    psync::sim::SimOptions o;
    o.workers = workers(s);
    o.learning_rate = lr(s, p);
    o.steps_per_worker = std::numeric_limits<std::uint64_t>::max() / 2;
    o.budget_s = budget;
    o.compute.step_s = costs_.step_s;
    o.compute.slowdown = {s.slow_worker};
    // The simulator draws random slow steps for every worker (run_local: workers 1..P-1 only).
    o.compute.random_probability = s.random_p;
    o.compute.random_factor = s.random_factor;
    o.network = s.network();
    o.network.seed = 7 + seed - 1;
    o.server_s_per_float = costs_.server_s_per_float;
    o.snapshot_interval_s = interval;
    o.seed = seed;
    return o;
  }

  psync::Evaluation evaluate_subset(const psync::models::Mlp& m) const {
    return psync::Evaluation{m.loss(eval_train_), m.accuracy(test_subset_)};
  }

  double full_accuracy(const Eigen::VectorXf& parameters) const {
    auto m = model();
    m.parameters() = parameters;
    return m.accuracy(test_full_);
  }

  // Sequential SGD for `max_steps` steps (virtual time steps x step_s), evaluated
  // every `every` steps; stops at the target when `stop_at_target`.
  psync::RunReport sequential_virtual(const Scenario& s, std::uint64_t seed, std::uint64_t max_steps,
                                      std::uint64_t every, double target, bool stop_at_target) const {
    auto m = model();
    psync::data::BatchSampler sampler(data_.train, s.batch, seed);
    const float rate = base_lr(s);
    Eigen::VectorXf g = Eigen::VectorXf::Zero(m.parameters().size());
    psync::RunReport rep;
    rep.policy = "sequential";
    psync::WorkerReport w;
    const auto point = [&] {
      const auto e = evaluate_subset(m);
      rep.series.push_back(psync::SeriesPoint{static_cast<double>(w.steps) * costs_.step_s, w.steps, w.steps,
                                              e.train_loss, e.test_accuracy});
    };
    point();
    while (w.steps < max_steps) {
      const auto& batch = sampler.next();
      w.last_loss = std::as_const(m).gradient(batch, g);
      m.parameters() -= rate * g;
      ++w.steps;
      w.samples += static_cast<std::uint64_t>(batch.size());
      if (every > 0 && w.steps % every == 0) {
        point();
        if (stop_at_target && rep.time_to_accuracy(target) >= 0) break;
      }
    }
    if (rep.series.back().steps != w.steps) point();
    w.wall_s = w.compute_s = static_cast<double>(w.steps) * costs_.step_s;
    rep.wall_s = w.wall_s;
    rep.workers.push_back(w);
    rep.server.wall_s = w.wall_s;
    rep.server.version = rep.server.updates_applied = rep.server.steps_applied = w.steps;
    rep.parameters = m.parameters();
    return rep;
  }

  // Mean test accuracy of the last 3 points of a series (as time_to_accuracy's window).
  static double tail_accuracy(const psync::RunReport& r) {
    const std::size_t n = std::min<std::size_t>(3, r.series.size());
    double sum = 0;
    for (std::size_t i = r.series.size() - n; i < r.series.size(); ++i) sum += r.series[i].test_accuracy;
    return n ? sum / static_cast<double>(n) : -1;
  }

  // Sequential SGD's steps to reach accuracy `a` (3-point mean), -1 if it never did.
  static double sequential_steps_to(const psync::RunReport& seq, double a) {
    const double t = seq.time_to_accuracy(a);
    return t < 0 ? -1 : steps_at(seq, t);
  }

  // One policy, one seed. A first run at `first` virtual seconds. If it misses the
  // target, the next budget is extrapolated: the accuracy it ended at is worth some
  // number of sequential SGD steps (from `seq`, sequential SGD's series), and at that
  // pace the sequential steps to target need `budget x needed / worth` (x 1.25,
  // between 1.25x and 8x the last budget; 2x when it cannot tell), up to the cap.
  // A run that meets the target too close to its end (less than max(4 evaluations,
  // 10%) after it) is run once more, a little longer, so the target is held, not grazed. The snapshot interval is the scenario's, so a
  // longer run's snapshots repeat the shorter one's (a run is deterministic given its
  // seed) and their evaluations are reused.
  psync::RunReport run_virtual(const Scenario& s, const PolicyId& p, std::uint64_t seed, double first,
                               const psync::RunReport& seq, double target) const {
    const double cap = virtual_cap(s);
    const auto shards = psync::data::shard(data_.train, static_cast<int>(workers(s)), seed);
    const auto sources = [&](psync::PeerId w) {
      return [smp = psync::data::BatchSampler(shards[w], s.batch, seed * 7919 + w + 1)]() mutable
                 -> const psync::data::Batch& { return smp.next(); };
    };
    std::unordered_map<std::size_t, psync::Evaluation> memo;
    const auto evaluate = [&](const psync::models::Mlp& m) {
      const auto& v = m.parameters();
      const std::size_t key = std::hash<std::string_view>{}(
          std::string_view(reinterpret_cast<const char*>(v.data()), static_cast<std::size_t>(v.size()) * sizeof(float)));
      if (auto it = memo.find(key); it != memo.end()) return it->second;
      return memo[key] = evaluate_subset(m);
    };
    const double needed = sequential_steps_to(seq, target);
    double budget = std::min(cap, std::max(first, 1e-3));
    const double interval = s.snapshot_s;
    for (int attempt = 0;; ++attempt) {
      const auto o = sim_options(s, p, seed, budget, interval);
      auto rep = with_policy(p, [&](auto policy) { return psync::sim::simulate(model(), sources, o, policy, evaluate); });
      const double t = rep.time_to_accuracy(target);
      if (budget >= cap) return rep;
      double next = 0;
      if (t >= 0) {
        // Held: the run went on for max(4 evaluations, 10%) past the point it met the target.
        const double margin = std::max(4 * s.snapshot_s, 0.1 * t);
        if (budget >= t + margin) return rep;
        next = t + 2 * margin;
      } else {
        next = 2 * budget;
        const double worth = sequential_steps_to(seq, tail_accuracy(rep));
        if (needed > 0 && worth > 0) next = std::clamp(1.25 * budget * needed / worth, 1.25 * budget, 8 * budget);
      }
      next = std::min(cap, next);
      progress_.line("    " + p.label + " seed " + std::to_string(seed) + ": " +
                     (t >= 0 ? "target met late (" + fmt(t, 2) + " s)" : "target not reached") + " in " +
                     fmt(budget, 1) + " virtual s; next " + fmt(next, 1) + " s");
      budget = next;
    }
  }

  static double median_tta(std::vector<double> v) {
    // Never reached counts as infinitely late.
    for (auto& t : v)
      if (t < 0) t = std::numeric_limits<double>::infinity();
    std::sort(v.begin(), v.end());
    const double m = v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
    return std::isfinite(m) ? m : -1;
  }

  // sequential@osp-samples costs as many real gradient steps as OSP computed: above this, it is skipped.
  static constexpr std::uint64_t max_reference_steps = 20000;

  std::vector<Row> scenario_virtual(const Scenario& s, const std::vector<PolicyId>& policies) {
    if (!costs_.step_s) {
      costs_ = calibrate();
      progress_.line("compare: virtual step " + fmt(costs_.step_s * 1e3, 3) + " ms (" +
                     (costs_.step_given ? "--step-ms" : "calibrate_step median on this machine") +
                     "), server " + fmt(costs_.server_s_per_float * 1e9, 3) + " ns per float (median of += and copy)");
    }
    const double target = opt_.target.value_or(s.target);
    const double cap = virtual_cap(s);
    std::vector<Row> rows;
    std::vector<double> seq_tta(opt_.seeds, -1);
    std::vector<psync::RunReport> seq_runs(opt_.seeds);
    for (const auto& p : policies) {
      Row row;
      std::vector<double> steps;
      const auto t0 = std::chrono::steady_clock::now();
      for (unsigned k = 0; k < opt_.seeds; ++k) {
        const std::uint64_t seed = opt_.seed + k;
        psync::RunReport rep;
        if (p.sequential()) {
          const auto max_steps = static_cast<std::uint64_t>(cap / costs_.step_s);
          const auto every = static_cast<std::uint64_t>(std::max(1.0, std::round(s.snapshot_s / costs_.step_s)));
          rep = sequential_virtual(s, seed, max_steps, every, target, true);
          seq_tta[k] = rep.time_to_accuracy(target);
          seq_runs[k] = rep;
        } else {
          // First try: the sequential time over P (a perfect speedup), at least 2 s.
          const double guess = seq_tta[k] > 0 ? seq_tta[k] / workers(s) : cap / 16;
          rep = run_virtual(s, p, seed, std::max(2.0, guess), seq_runs[k], target);
        }
        const double acc = full_accuracy(rep.parameters);
        Row r = summarize(p.label, lr(s, p), std::move(rep), target);
        r.final_acc = acc;
        progress_.line("  [" + s.name + "] " + p.label + " seed " + std::to_string(seed) + ": target " + fmt(target, 2) +
                       " at " + tta_s(r.tta) + " virtual (" + (r.steps_at_target < 0 ? std::string("-") : fmt(r.steps_at_target, 0)) +
                       " steps), run " + fmt(r.rep.wall_s, 1) + " virtual s, final accuracy " + fmt(acc, 4));
        row.tta_seeds.push_back(r.tta);
        steps.push_back(r.steps_at_target);
        if (k == 0) row = std::move(r), row.tta_seeds = {row.tta};
      }
      row.real_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      row.tta = median_tta(row.tta_seeds);
      row.steps_at_target = median_tta(steps);
      rows.push_back(std::move(row));
    }
    const auto osp_it = std::find_if(rows.begin(), rows.end(), [&](const Row& r) {
      return r.label == "osp:" + std::to_string(opt_.osp.value_or(s.osp));
    });
    const std::uint64_t osp_steps =
        osp_it == rows.end() ? 0 : std::max<std::uint64_t>(1, osp_it->samples / static_cast<std::uint64_t>(s.batch));
    if (osp_steps > max_reference_steps) {
      progress_.line("  [" + s.name + "] sequential@osp-samples skipped: " + std::to_string(osp_steps) +
                     " steps is more than " + std::to_string(max_reference_steps) + " (cost)");
    }
    if (!opt_.quick && osp_it != rows.end() && osp_steps <= max_reference_steps) {
      // Sequential SGD on as many samples as OSP processed (first seed), no time limit.
      const auto t0 = std::chrono::steady_clock::now();
      const std::uint64_t steps = osp_steps;
      auto rep = sequential_virtual(s, opt_.seed, steps, 0, target, false);
      const double acc = full_accuracy(rep.parameters);
      Row r = summarize("sequential@osp-samples", base_lr(s), std::move(rep), target);
      r.final_acc = acc;
      r.tta = -1;
      r.steps_at_target = -1;
      r.note = "no time limit; same samples as " + osp_it->label;
      r.real_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      progress_.line("  [" + s.name + "] sequential on " + std::to_string(r.samples) + " samples: final accuracy " + fmt(acc, 4));
      rows.push_back(std::move(r));
    }
    speedups(rows);
    return rows;
  }

  // Speedup over BSP in time to target, for real and virtual rows alike.
  static void speedups(std::vector<Row>& rows) {
    const auto bsp = std::find_if(rows.begin(), rows.end(), [](const Row& r) { return r.label == "bsp"; });
    for (auto& r : rows) {
      if (r.tta < 0 || bsp == rows.end() || r.label == "sequential@osp-samples") continue;
      if (bsp->tta > 0) {
        r.speedup = bsp->tta / r.tta;
      } else if (bsp->tta < 0) {
        // BSP never got there within its budget: budget / t is a lower bound.
        r.speedup = bsp->rep.wall_s / r.tta;
        r.speedup_lower_bound = true;
      }
    }
  }

  const VirtualCosts& costs() const { return costs_; }

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
  VirtualCosts costs_;
};

// ---------------------------------------------------------------- goals

struct Goal {
  std::string text, measured, verdict;
};

const Row* find(const std::vector<Row>& rows, const std::string& label) {
  for (const auto& r : rows)
    if (r.label == label) return &r;
  return nullptr;
}

std::vector<Goal> goals(const Scenario& s, const std::vector<Row>& rows, const Options& o) {
  std::vector<Goal> g;
  const unsigned S = o.osp.value_or(s.osp);
  const unsigned ssp = o.ssp.value_or(s.ssp);
  const std::string osp_l = "osp:" + std::to_string(S);
  const Row* osp = find(rows, osp_l);
  const Row* bsp = find(rows, "bsp");
  const Row* asp = find(rows, "asp");
  const Row* sspr = find(rows, "ssp:" + std::to_string(ssp));
  const Row* seq = find(rows, "sequential@osp-samples");
  const double target = o.target.value_or(s.target);
  auto t = [](const Row* r) { return r && r->tta >= 0 ? r->tta : std::numeric_limits<double>::infinity(); };
  if (s.emulate && osp && bsp) {
    Goal a;
    a.text = osp_l + " reaches " + fmt(target, 2) + " at least 3x faster than BSP";
    if (osp->tta < 0) {
      a.measured = osp_l + " did not reach the target";
      a.verdict = "miss";
    } else {
      a.measured = "speedup " + speedup_str(*osp) + " (" + osp_l + " " + tta_str(osp->tta) + " s, bsp " +
                   tta_str(bsp->tta) + (bsp->tta < 0 ? " in " + fmt(bsp->rep.wall_s, 1) + " s" : " s") + ")";
      a.verdict = osp->speedup >= 3 ? "pass" : (osp->speedup_lower_bound ? "inconclusive (BSP never reached it)" : "miss");
    }
    g.push_back(a);
    Goal b;
    b.text = osp_l + " reaches " + fmt(target, 2) + " faster than SSP and ASP";
    b.measured = osp_l + " " + tta_s(osp->tta) + ", ssp:" + std::to_string(ssp) + " " + tta_s(sspr ? sspr->tta : -1) +
                 ", asp " + tta_s(asp ? asp->tta : -1);
    b.verdict = (osp->tta >= 0 && t(osp) < t(sspr) && t(osp) < t(asp)) ? "pass" : "miss";
    g.push_back(b);
  }
  if (osp && seq) {
    Goal c;
    const double d = 100 * (osp->final_acc - seq->final_acc);
    c.text = osp_l + " final accuracy within 0.5 points of sequential SGD on the same samples";
    c.measured = osp_l + " " + fmt(osp->final_acc, 4) + " vs sequential " +
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

// ---------------------------------------------------------------- output

using psync::detail::json_number;
using psync::detail::json_string;

// A learning rate as JSON/CSV: a float's own 7 digits ("0.0375", not "0.0375000015").
std::string json_rate(float v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.7g", static_cast<double>(v));
  return b;
}

// The paragraph under every table saying how each policy's learning rate was chosen.
std::string lr_rule_text(const Scenario& s, const Options& o) {
  const float base = o.lr.value_or(s.lr);
  const std::uint32_t workers = o.workers.value_or(s.workers);
  const std::string p = std::to_string(workers);
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

std::string spread_str(const Row& r);
std::string steps_ratio_str(const Row& r, const std::vector<Row>& rows);
std::string steps_str(double v);

void write_outputs(const Scenario& s, const std::vector<Row>& rows, const std::vector<Goal>& gs, const Options& o,
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
      if (r.label == "sequential@osp-samples") continue;
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
      if (r.label.rfind("sequential", 0) == 0) continue;
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
        << json_string(costs.step_given ? "given (--step-ms)" : "calibrated (calibrate_step median)")
        << ",\n  \"server_s_per_float\": " << json_number(costs.server_s_per_float) << ",\n  \"quick\": "
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
      << (costs.step_given ? "given with --step-ms" : "the median measured on this machine by `calibrate_step`")
      << ") times the worker's slowdown; the server spends " << fmt(costs.server_s_per_float * 1e9, 3)
      << " ns per float of a push (measured: `model += update` plus a copy); links, latency and the fair-shared "
         "server NIC are the scenario's. Sequential SGD's virtual time is steps x step cost. Local steps to target: "
         "the SGD steps folded into the global model when the target was met, and that count over sequential SGD's "
         "(sample efficiency). Final accuracy is the last model's on the full 10k test set; runs stop at different "
         "virtual times (run column), so compare time to target, not final accuracy. Real s: real seconds the "
         "simulations (and their evaluations) of this row took. `sequential@osp-samples`: sequential SGD on as many "
         "samples as OSP processed.\n\n";
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

void print_table_real(const Scenario& s, const std::vector<Row>& rows, const std::vector<Goal>& gs, const Options& o) {
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


// Virtual time, several seeds: "min-max" of the times to target ("-" with one seed;
// a seed that never reached it shows as "never").
std::string spread_str(const Row& r) {
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
std::string steps_ratio_str(const Row& r, const std::vector<Row>& rows) {
  const Row* seq = nullptr;
  for (const auto& q : rows)
    if (q.label == "sequential") seq = &q;
  if (!seq || seq->steps_at_target <= 0 || r.steps_at_target < 0) return "-";
  return fmt(r.steps_at_target / seq->steps_at_target, 2) + "x";
}

std::string steps_str(double v) { return v < 0 ? "-" : fmt(v, 0); }

void print_table(const Scenario& s, const std::vector<Row>& rows, const std::vector<Goal>& gs, const Options& o) {
  if (!o.virtual_time) return print_table_real(s, rows, gs, o);
  const double target = o.target.value_or(s.target);
  std::printf("\n== %s == (virtual time; cap %.0f virtual s per policy, target %.2f, %u seed(s) from %llu, %u workers)\n",
              s.name.c_str(), o.budget_s.value_or(o.quick ? s.quick_budget_s : s.virtual_budget_s), target, o.seeds,
              static_cast<unsigned long long>(o.seed), o.workers.value_or(s.workers));
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
  for (const auto& g : gs) std::printf("goal: %s\n  measured: %s\n  -> %s\n", g.text.c_str(), g.measured.c_str(), g.verdict.c_str());
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = parse(argc, argv);
  const Progress progress(opt.quiet);
  try {
    progress.line(std::string("compare: build ") + PSYNC_BUILD_FLAGS);
    progress.line("compare: loading Fashion-MNIST");
    auto tt = psync::data::load_fashion_mnist();
    Data data{std::move(tt.train), std::move(tt.test)};
    // First pass over freshly loaded data is slow (page faults): do it before any clock.
    volatile double touch = data.train.features.sum() + data.test.features.sum();
    (void)touch;
    Harness h(opt, data, progress);
    for (const auto& s : scenarios()) {
      if (!opt.wants(s.name)) continue;
      const auto rows = h.scenario(s);
      const auto gs = goals(s, rows, opt);
      print_table(s, rows, gs, opt);
      write_outputs(s, rows, gs, opt, h.costs());
      progress.line("compare: wrote " + (fs::path(opt.out) / s.name).string() + ".{csv,json,md,-series.dat,-time.dat}");
    }
  } catch (const std::exception& e) {
    std::cerr << "compare_policies: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
