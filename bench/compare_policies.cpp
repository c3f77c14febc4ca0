// compare_policies: which synchronization policy wins, measured.
//
// Trains the same model on the same data (Fashion-MNIST), from the same seed and
// with the same wall-clock budget, under sequential SGD (the reference), BSP, ASP,
// SSP(s), OSP(S) and LOSP(S), over an emulated network, and reports time to a
// target test accuracy, final accuracy, throughput, where each worker's time went,
// OSP's hidden-communication fraction and staleness. Writes CSV, JSON, a markdown
// table and gnuplot data under --out (default docs/results). Nothing is hard-coded:
// every figure printed is measured by this run.
//
//   compare_policies --list
//   compare_policies [--scenario paper-like|fast-network|heavy-straggler|all] [--budget S]
//                    [--target ACC] [--workers N] [--ssp S] [--osp S] [--sweep]
//                    [--trace DIR] [--out DIR] [--quiet]
#include <psync/detail/json.hpp>
#include <psync/psync.hpp>

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
#include <thread>
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
  // One learning rate for every policy, sequential SGD included. ASP is the
  // policy a large rate hurts first: it adds every worker's update unaveraged onto
  // models up to a few versions stale. With 4 workers on Fashion-MNIST we saw ASP's
  // accuracy collapse at 0.2 (--lr 0.2 reruns it) while 0.15 kept every policy
  // stable; 0.1 slows all of them alike, so few would reach the target within
  // the budget. BSP and OSP average each round, so they are not favoured by it.
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
  return {paper, fast, heavy};
}

// ---------------------------------------------------------------- policies

struct PolicyId {
  std::string kind;  // sequential, sequential-same-samples, bsp, asp, ssp, osp, losp
  unsigned param = 0;
  std::string label() const {
    if (kind == "ssp" || kind == "osp" || kind == "losp") return kind + ":" + std::to_string(param);
    return kind;
  }
};

// The library's one run-time -> compile-time table (psync::with_policy) picks the type.
template <class F>
psync::RunReport with_policy(const PolicyId& p, F&& f) {
  return psync::with_policy(p.label(), [&](auto policy) -> psync::RunReport { return f(policy); });
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
  std::vector<std::string> only;  // --policies: labels to run (empty: all)
  std::string command_line;
};

void usage(std::ostream& o) {
  o << "usage: compare_policies [options]\n"
       "  --scenario NAME|all   scenario to run (default paper-like; see --list)\n"
       "  --list                print the scenarios and exit\n"
       "  --budget SECONDS      wall-clock budget per policy (default: the scenario's)\n"
       "  --target ACC          target test accuracy in (0,1) (default 0.85)\n"
       "  --workers N           workers, 1..64 (default 4)\n"
       "  --ssp S               SSP staleness bound (default 3)\n"
       "  --osp S               OSP/LOSP stale threshold, >= 1 (default 20)\n"
       "  --policies LIST       only these, comma-separated (e.g. bsp,osp:20; sequential always runs)\n"
       "  --lr RATE             learning rate for every policy (default: the scenario's)\n"
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
      bool known = o.scenario == "all";
      for (const auto& s : scenarios()) known = known || s.name == o.scenario;
      if (!known) bad("unknown scenario '" + o.scenario + "' (see --list)");
    } else if (a == "--budget") {
      o.budget_s = parse_double(a, value());
      if (*o.budget_s < 0.5 || *o.budget_s > 3600) bad("--budget must be in [0.5, 3600] seconds");
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
    } else if (a == "--policies") {
      std::stringstream ss(value());
      for (std::string t; std::getline(ss, t, ',');) {
        if (t != "sequential") {
          try {
            psync::parse_policy(t);
          } catch (const psync::ConfigError& e) {
            bad(std::string("--policies: ") + e.what());
          }
        }
        o.only.push_back(t);
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
  psync::RunReport rep;
  double tta = -1;  // time to target accuracy, < 0 if never
  double speedup = std::numeric_limits<double>::quiet_NaN();
  bool speedup_lower_bound = false;
  double compute = 0, wait = 0, comm = 0, held = 0, hidden = 0;
  double comm_per_round = 0, step_s = 0;
  std::uint64_t samples = 0, pushes = 0;
  std::string note;
};

Row summarize(const std::string& label, psync::RunReport rep, double target) {
  Row r;
  r.label = label;
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
  Harness(const Options& o, const Data& d, const Progress& p) : opt_(o), data_(d), progress_(p) {}

  psync::models::Mlp model() const {
    psync::models::Mlp m({784, 256, 128, 10});
    m.initialize(42);
    return m;
  }

  psync::LocalOptions local(const Scenario& s, double budget_s) const {
    psync::LocalOptions lo;
    lo.workers = opt_.workers.value_or(s.workers);
    lo.learning_rate = opt_.lr.value_or(s.lr);
    lo.batch_size = s.batch;
    lo.steps_per_worker = std::numeric_limits<std::uint64_t>::max() / 2;
    lo.time_budget = std::chrono::milliseconds(static_cast<long long>(budget_s * 1000));
    lo.seed = 1;
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
    if (p.kind == "sequential") {
      psync::SequentialOptions so;
      so.learning_rate = opt_.lr.value_or(s.lr);
      so.batch_size = s.batch;
      so.steps = std::numeric_limits<std::uint64_t>::max() / 2;
      so.time_budget = std::chrono::milliseconds(static_cast<long long>(budget_s * 1000));
      so.seed = 1;
      so.snapshot_interval = 500ms;
      so.eval_train_samples = 2000;
      return psync::run_sequential(model(), data_.train, &data_.test, so);
    }
    auto lo = local(s, budget_s);
    lo.trace = trace;
    return with_policy(p, [&](auto policy) { return psync::run_local(model(), data_.train, &data_.test, lo, policy); });
  }

  // Same total samples as `samples`, no time limit: the fair accuracy reference.
  psync::RunReport sequential_samples(const Scenario& s, std::uint64_t samples) const {
    psync::SequentialOptions so;
    so.learning_rate = opt_.lr.value_or(s.lr);
    so.batch_size = s.batch;
    so.steps = std::max<std::uint64_t>(1, samples / static_cast<std::uint64_t>(s.batch));
    so.seed = 1;
    so.snapshot_interval = 1000ms;
    so.eval_train_samples = 2000;
    return psync::run_sequential(model(), data_.train, &data_.test, so);
  }

  void warm_up(const Scenario& s) const {
    psync::SequentialOptions so;
    so.learning_rate = opt_.lr.value_or(s.lr);
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
    (void)psync::run_local(model(), data_.train, nullptr, lo, psync::Asp{});
  }

  std::vector<Row> scenario(const Scenario& s) const {
    const double budget = opt_.budget_s.value_or(s.budget_s);
    const double target = opt_.target.value_or(s.target);
    const unsigned S = opt_.osp.value_or(s.osp);
    const unsigned ssp = opt_.ssp.value_or(s.ssp);
    std::vector<PolicyId> policies = {{"sequential", 0}, {"bsp", 0}, {"asp", 0}, {"ssp", ssp},
                                      {"osp", S},        {"losp", S}};
    if (!opt_.only.empty()) {
      std::erase_if(policies, [&](const PolicyId& p) {
        return p.kind != "sequential" && std::find(opt_.only.begin(), opt_.only.end(), p.label()) == opt_.only.end();
      });
      for (const auto& t : opt_.only) {
        const auto c = t.find(':');
        PolicyId p{t.substr(0, c), c == std::string::npos ? 0u : static_cast<unsigned>(std::stoul(t.substr(c + 1)))};
        if (std::none_of(policies.begin(), policies.end(), [&](const PolicyId& q) { return q.label() == p.label(); }))
          policies.push_back(p);
      }
    }
    if (opt_.sweep) {
      for (unsigned v : {1u, 3u, 8u})
        if (v != ssp) policies.push_back({"ssp", v});
      for (unsigned v : {5u, 10u, 20u, 40u})
        if (v != S) policies.push_back({"osp", v});
    }
    progress_.line("compare: scenario " + s.name + ": " + s.summary);
    progress_.line("compare: warm-up (data touched, threads and buffers exercised)");
    warm_up(s);
    std::vector<Row> rows;
    for (const auto& p : policies) {
      const std::string what = "[" + s.name + "] " + p.label();
      auto rep = progress_.watch(what, budget, [&] { return run(s, p, budget); });
      rows.push_back(summarize(p.label(), std::move(rep), target));
      const auto& r = rows.back();
      progress_.line("  " + what + " done: final accuracy " + fmt(r.rep.final_accuracy()) + ", " + s.name +
                     " target " + fmt(target, 2) + ": " + tta_s(r.tta) + ", " + fmt(r.rep.throughput(), 0) +
                     " samples/s");
    }
    // Sequential SGD with as many samples as OSP processed (the accuracy goal's reference).
    const auto osp_it = std::find_if(rows.begin(), rows.end(), [&](const Row& r) { return r.label == "osp:" + std::to_string(S); });
    if (osp_it != rows.end()) {
      const std::uint64_t n = osp_it->samples;
      const std::string what = "[" + s.name + "] sequential, " + std::to_string(n) + " samples";
      auto rep = progress_.watch(what, budget, [&] { return sequential_samples(s, n); });
      Row r = summarize("sequential@osp-samples", std::move(rep), target);
      r.note = "no time limit; same samples as osp:" + std::to_string(S);
      progress_.line("  " + what + " done: final accuracy " + fmt(r.rep.final_accuracy()));
      rows.push_back(std::move(r));
    }
    // Speedup over BSP in time to target.
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
    if (!opt_.trace_dir.empty()) traces(s, policies);
    return rows;
  }

  void traces(const Scenario& s, const std::vector<PolicyId>& policies) const {
    fs::create_directories(opt_.trace_dir);
    for (const auto& p : policies) {
      if (p.kind == "sequential") continue;
      psync::Trace t(1 << 14);
      (void)progress_.watch("[" + s.name + "] trace " + p.label(), 2.0, [&] { return run(s, p, 2.0, &t); });
      std::string name = p.label();
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
    const double d = 100 * (osp->rep.final_accuracy() - seq->rep.final_accuracy());
    c.text = osp_l + " final accuracy within 0.5 points of sequential SGD on the same samples";
    c.measured = osp_l + " " + fmt(osp->rep.final_accuracy(), 4) + " vs sequential " +
                 fmt(seq->rep.final_accuracy(), 4) + " on " + std::to_string(seq->samples) + " samples (" +
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

void write_outputs(const Scenario& s, const std::vector<Row>& rows, const std::vector<Goal>& gs, const Options& o) {
  fs::create_directories(o.out);
  const fs::path base = fs::path(o.out) / s.name;
  const double budget = o.budget_s.value_or(s.budget_s);
  const double target = o.target.value_or(s.target);
  const auto workers = o.workers.value_or(s.workers);
  const unsigned cores = std::thread::hardware_concurrency();

  {  // CSV
    std::ofstream f(base.string() + ".csv");
    f << "scenario,policy,budget_s,wall_s,target,time_to_target_s,speedup_vs_bsp,speedup_is_lower_bound,final_accuracy,"
         "samples,throughput,compute_frac,wait_frac,comm_frac,held_frac,hidden_frac,staleness_mean,staleness_max,"
         "pushes,versions,comm_per_round_s,step_s\n";
    for (const auto& r : rows) {
      const auto st = r.rep.staleness();
      f << s.name << ',' << r.label << ',' << budget << ',' << json_number(r.rep.wall_s) << ',' << target << ','
        << (r.tta < 0 ? "" : json_number(r.tta)) << ',' << (std::isnan(r.speedup) ? "" : json_number(r.speedup)) << ','
        << (r.speedup_lower_bound ? 1 : 0) << ',' << json_number(r.rep.final_accuracy()) << ',' << r.samples << ','
        << json_number(r.rep.throughput()) << ',' << json_number(r.compute) << ',' << json_number(r.wait) << ','
        << json_number(r.comm) << ',' << json_number(r.held) << ',' << json_number(r.hidden) << ','
        << json_number(st.mean()) << ',' << st.max << ',' << r.pushes << ',' << r.rep.server.version << ','
        << json_number(r.comm_per_round) << ',' << json_number(r.step_s) << '\n';
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
      << ",\n  \"goals\": [";
    for (std::size_t i = 0; i < gs.size(); ++i)
      f << (i ? "," : "") << "\n    {\"goal\": " << json_string(gs[i].text) << ", \"measured\": " << json_string(gs[i].measured)
        << ", \"verdict\": " << json_string(gs[i].verdict) << "}";
    f << "\n  ],\n  \"policies\": [";
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const auto& r = rows[i];
      const auto st = r.rep.staleness();
      f << (i ? "," : "") << "\n    {\"policy\": " << json_string(r.label) << ", \"wall_s\": " << json_number(r.rep.wall_s)
        << ", \"time_to_target_s\": " << (r.tta < 0 ? "null" : json_number(r.tta))
        << ", \"speedup_vs_bsp\": " << json_number(r.speedup) << ", \"speedup_is_lower_bound\": "
        << (r.speedup_lower_bound ? "true" : "false") << ", \"final_accuracy\": " << json_number(r.rep.final_accuracy())
        << ", \"samples\": " << r.samples << ", \"throughput\": " << json_number(r.rep.throughput())
        << ", \"compute_frac\": " << json_number(r.compute) << ", \"wait_frac\": " << json_number(r.wait)
        << ", \"comm_frac\": " << json_number(r.comm) << ", \"held_frac\": " << json_number(r.held)
        << ", \"hidden_frac\": " << json_number(r.hidden) << ", \"staleness_mean\": " << json_number(st.mean())
        << ", \"staleness_max\": " << st.max << ", \"pushes\": " << r.pushes
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
  {  // markdown
    std::ofstream f(base.string() + ".md");
    f << "### Scenario `" << s.name << "`\n\n" << s.summary << ". Learning rate " << fmt(o.lr.value_or(s.lr), 3)
      << " for every policy. Budget " << fmt(budget, 1)
      << " s of wall clock per policy, target test accuracy " << fmt(target, 2) << " (full 10k test set).\n\n";
    f << "| policy | time to " << fmt(target, 2) << " (s) | speedup vs BSP | final acc | samples | samples/s | compute % | "
         "wait % | comm % | held % | hidden % | staleness mean / max |\n";
    f << "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for (const auto& r : rows) {
      const auto st = r.rep.staleness();
      const bool seq = r.label.rfind("sequential", 0) == 0;
      f << "| " << r.label << " | " << tta_str(r.tta) << " | " << speedup_str(r) << " | "
        << fmt(r.rep.final_accuracy(), 4) << " | " << r.samples << " | " << fmt(r.rep.throughput(), 0) << " | "
        << pct(r.compute) << " | " << pct(r.wait) << " | " << (seq ? "-" : pct(r.comm)) << " | "
        << (seq ? "-" : pct(r.held)) << " | " << (seq ? "-" : pct(r.hidden)) << " | "
        << (seq ? "-" : fmt(st.mean(), 2) + " / " + std::to_string(st.max)) << " |\n";
    }
    if (!gs.empty()) {
      f << "\n| goal | measured | verdict |\n|---|---|---|\n";
      for (const auto& g : gs) f << "| " << g.text << " | " << g.measured << " | " << g.verdict << " |\n";
    }
    f << "\nPercentages are means over workers of the share of each worker's wall time: compute (gradients, "
         "straggler stretch included), wait (compute blocked on the network or the policy), comm (push-to-model "
         "round trips less the time the server held the reply; for OSP/LOSP this runs beside compute), held (the "
         "server held the read for the policy). Hidden = 1 - wait / (comm + held). A `>=` speedup means BSP did not "
         "reach the target within its budget, so budget / time is a lower bound. `sequential@osp-samples` is sequential "
         "SGD run without a time limit on as many samples as OSP processed.\n\n";
    f << "Machine: " << cores << " hardware threads (`nproc`); " << workers
      << " worker threads + 1 server thread (+ OSP sender threads) share them, so compute is contended and "
         "throughput is not that of " << workers << " dedicated machines.\n"
      << "Build: `" << PSYNC_BUILD_FLAGS << "`. Date: " << now_utc() << ".\n"
      << "Command: `" << o.command_line << "`.\n"
      << "Plots: `" << (fs::path(o.out) / (s.name + "-accuracy.png")).string() << "` (test accuracy vs time), `"
      << (fs::path(o.out) / (s.name + "-time.png")).string() << "` (time split).\n";
  }
}

void print_table(const Scenario& s, const std::vector<Row>& rows, const std::vector<Goal>& gs, const Options& o) {
  const double target = o.target.value_or(s.target);
  std::printf("\n== %s == (budget %.1f s, target %.2f, build: %s, nproc %u)\n", s.name.c_str(),
              o.budget_s.value_or(s.budget_s), target, PSYNC_BUILD_FLAGS, std::thread::hardware_concurrency());
  std::printf("%-24s %11s %10s %8s %9s %9s %6s %6s %6s %6s %6s %11s\n", "policy", "t_target(s)", "vs BSP", "final",
              "samples", "samples/s", "comp%", "wait%", "comm%", "held%", "hid%", "stale m/max");
  for (const auto& r : rows) {
    const auto st = r.rep.staleness();
    std::printf("%-24s %11s %10s %8.4f %9llu %9.0f %6s %6s %6s %6s %6s %11s\n", r.label.c_str(), tta_str(r.tta).c_str(),
                speedup_str(r).c_str(), r.rep.final_accuracy(), static_cast<unsigned long long>(r.samples),
                r.rep.throughput(), pct(r.compute).c_str(), pct(r.wait).c_str(), pct(r.comm).c_str(),
                pct(r.held).c_str(), pct(r.hidden).c_str(), (fmt(st.mean(), 2) + "/" + std::to_string(st.max)).c_str());
  }
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
      if (opt.scenario != "all" && opt.scenario != s.name) continue;
      const auto rows = h.scenario(s);
      const auto gs = goals(s, rows, opt);
      print_table(s, rows, gs, opt);
      write_outputs(s, rows, gs, opt);
      progress.line("compare: wrote " + (fs::path(opt.out) / s.name).string() + ".{csv,json,md,-series.dat,-time.dat}");
    }
  } catch (const std::exception& e) {
    std::cerr << "compare_policies: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
