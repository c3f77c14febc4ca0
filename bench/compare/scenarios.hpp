// compare_policies: the scenarios (data, model, workers, network, stragglers,
// budgets) every policy is compared under.
#pragma once

#include <psync/core/worker.hpp>
#include <psync/models/cnn.hpp>
#include <psync/optim/parse.hpp>
#include <psync/transport/emulated.hpp>

#include <Eigen/Core>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace compare {

struct Scenario {
  std::string name;
  std::string summary;
  // The model every policy trains: "mlp" (psync::models::Mlp 784-256-128-10) or "cnn"
  // (psync::models::Cnn, LeNet-5-like). The harness dispatches on it once per scenario.
  std::string model = "mlp";
  std::uint32_t workers = 4;
  std::uint32_t shards = 1;     // server shards (virtual time), each with its own NIC
  std::string codec = "none";   // how workers encode pushes (virtual time; psync::compress::parse_codec)
  std::string optimizer = "sgd";      // every worker's optimizer (psync::optim::parse_optimizer's text)
  std::string schedule = "constant";  // every worker's rate schedule from its policy's rate (parse_schedule)
  Eigen::Index batch = 64;
  // The base learning rate: sequential SGD's and, under --lr-rule scaled (the
  // default), BSP's and OSP's, with ASP/SSP/DSSP at lr / workers. 0.15 was chosen
  // when every policy ran at one rate (--lr-rule same): ASP, which adds every
  // worker's update unaveraged onto models a few versions stale, collapsed at 0.2
  // with 4 workers on Fashion-MNIST while 0.15 kept every policy stable, and 0.1
  // slowed all of them so few reached the target within the budget.
  float lr = 0.15f;
  bool emulate = true;
  double gbps = 1.0;            // each worker link and the server NIC (each direction), Gbit/s
  double latency_ms = 1.0;      // one-way, per link
  double slow_worker = 1.0;     // slowdown of worker 0
  double random_p = 0.0;        // others: probability of a random slow step
  double random_factor = 1.0;   // ... and its factor
  double target = 0.85;
  unsigned osp = 20;
  unsigned ssp = 3;
  // Per policy; with snapshot evaluation the default run takes about 3-4 minutes.
  double budget_s = 20;
  // Virtual time: the most virtual seconds a policy may run (runs stop earlier once
  // they reach the target, see psync::harness::run_until_target), and the --quick cap.
  double virtual_budget_s = 600;
  double quick_budget_s = 60;
  // Virtual seconds between evaluations (the same for every policy, so the 3-point
  // window of time_to_accuracy spans the same time for all).
  double snapshot_s = 0.25;

  psync::NetworkSpec network() const {
    psync::NetworkSpec n;
    if (!emulate) return n;
    n.worker_link.bandwidth_bytes_per_s = gbps * 125e6;
    n.worker_link.latency = std::chrono::microseconds(static_cast<long long>(latency_ms * 1e3));
    n.server_nic_bytes_per_s = gbps * 125e6;
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

inline std::vector<Scenario> scenarios() {
  Scenario paper;
  paper.name = "paper-like";
  paper.summary =
      "Fashion-MNIST, MLP 784-256-128-10, 4 workers, batch 64; emulated 1 Gbit/s links, 1 ms latency, "
      "server NIC shared at 1 Gbit/s; worker 0 2x slower; OSP S=20, SSP s=3";
  paper.slow_worker = 2.0;

  // paper-like with more workers.
  const auto wider = [&paper](std::uint32_t workers, const char* note) {
    Scenario w = paper;
    w.name = "paper-like-p" + std::to_string(workers);
    w.workers = workers;
    w.summary = "as paper-like, with " + std::to_string(workers) +
                " workers (MLP 784-256-128-10, batch 64, 1 Gbit/s links and NIC, 1 ms latency, worker 0 2x slower, "
                "OSP S=20, SSP s=3" + note + ")";
    return w;
  };
  const Scenario paper8 = wider(8, "");
  const Scenario paper32 = wider(32, "; virtual time only");

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

  // paper-like with the convolutional network: a step costs several times the MLP's
  // while the model is a quarter of its size, so each round's communication is a much
  // smaller share of the time (the compute-to-communication ratio OSP is about).
  Scenario cnn = paper;
  cnn.name = "cnn-paper-like";
  cnn.model = "cnn";
  cnn.summary = "as paper-like, with the CNN (psync::models::Cnn, LeNet-5-like, " +
                std::to_string(psync::models::Cnn().dimension()) +
                " parameters) instead of the MLP: Fashion-MNIST, 4 workers, batch 64, 1 Gbit/s links and NIC, 1 ms "
                "latency, worker 0 2x slower, OSP S=20, SSP s=3; virtual time only";
  // The rate bench/cnn_sequential trains the Cnn at (0.9071 after 16 epochs); at 0.1
  // sequential SGD passes 0.85 early in its second epoch.
  cnn.lr = 0.1f;
  // A CNN step costs several MLP steps, so evaluations (2,000 test images each) are
  // spaced further apart to keep their share of the real cost down.
  cnn.snapshot_s = 0.5;
  return {paper, paper8, paper32, fast, heavy, cnn};
}

// A summary line's description of what the command line changed in a scenario.
inline std::string describe_overrides(const Scenario& base, const Scenario& s) {
  std::string d;
  const auto add = [&](const std::string& t) { d += (d.empty() ? "" : ", ") + t; };
  const auto num = [](double v) {
    std::string t = std::to_string(v);
    t.erase(t.find_last_not_of('0') + 1);
    if (!t.empty() && t.back() == '.') t.pop_back();
    return t;
  };
  if (s.workers != base.workers) add(std::to_string(s.workers) + " workers");
  if (s.shards != base.shards) add(std::to_string(s.shards) + " server shards, each with its own NIC");
  if (s.codec != base.codec) add("pushes encoded " + s.codec);
  // The sequential SGD references stay plain SGD at a constant rate: say so where they differ.
  if (s.optimizer != base.optimizer) add("workers' optimizer " + psync::optim::parse_optimizer(s.optimizer).name() + " (sequential references: sgd)");
  if (s.schedule != base.schedule) add("workers' schedule " + s.schedule + " (sequential references: constant)");
  if (s.gbps != base.gbps) add(num(s.gbps) + " Gbit/s links and NIC");
  if (s.latency_ms != base.latency_ms) add(num(s.latency_ms) + " ms latency");
  if (s.slow_worker != base.slow_worker) add(s.slow_worker == 1.0 ? "no straggler" : "worker 0 " + num(s.slow_worker) + "x slower");
  return d.empty() ? d : " [overridden: " + d + "]";
}

}  // namespace compare
