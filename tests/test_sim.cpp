// Virtual time: the same cores as a real cluster, driven by events on one thread.
// Checked against arithmetic that can be done by hand (a round costs a step plus
// two latencies; two flows share a NIC fairly), against the policies' rules (BSP
// is averaged SGD, LOSP installs every unreflected update, OSP hides latency), for
// determinism (same seed, bit-identical run), at 2 to 256 workers, against a real
// threaded BSP run (same parameters), and for bounded memory and early stops.
#include "catch.hpp"
#include "synthetic_task.hpp"
#include "toy_model.hpp"

#include <psync/harness/local_cluster.hpp>
#include <psync/harness/time_to_target.hpp>
#include <psync/models/softmax.hpp>
#include <psync/policies/asp.hpp>
#include <psync/policies/bsp.hpp>
#include <psync/policies/osp.hpp>
#include <psync/policies/ssp.hpp>
#include <psync/sim/simulator.hpp>

#include <chrono>
#include <cmath>
#include <vector>

using namespace std::chrono_literals;
using psync_test::Quadratic;
using psync_test::Target;

namespace {

constexpr Eigen::Index dim = 4;

// Worker w pulls towards (w + 1) * 1.
struct Sources {
  std::vector<Target> targets;
  explicit Sources(std::uint32_t workers) {
    for (std::uint32_t w = 0; w < workers; ++w) targets.push_back(Target{Eigen::VectorXf::Constant(dim, float(w + 1))});
  }
  auto operator()(psync::PeerId w) const {
    const Target* t = &targets[w];
    return [t]() -> const Target& { return *t; };
  }
};

psync::Evaluation loss_only(const Quadratic& m) {
  return psync::Evaluation{m.loss(Target{Eigen::VectorXf::Zero(dim)}), -1};
}

template <class P>
psync::RunReport run(const psync::sim::SimOptions& o, P policy = {}) {
  return psync::sim::simulate(Quadratic(dim), Sources(o.workers), o, policy, loss_only);
}

}  // namespace

TEST_CASE("A fair-shared NIC splits its bandwidth between concurrent transfers", "[sim][network]") {
  psync::sim::SharedLink link(1e6);  // 1 MB/s
  link.add(1, 1e6, 0, 0);
  link.add(2, 1e6, 0, 0);
  // FIFO would finish the first at 1 s; fair share finishes both at 2 s.
  REQUIRE(link.next_finish() == 2'000'000'000);
  std::vector<std::uint64_t> done;
  link.finish_until(1'000'000'000, done);
  REQUIRE(done.empty());
  link.add(3, 0.25e6, 0, 1'000'000'000);  // a third joins: each gets a third
  REQUIRE(link.next_finish() == 1'750'000'000);
  link.finish_until(1'750'000'000, done);
  REQUIRE(done == std::vector<std::uint64_t>{3});
  // A flow capped by its own link leaves the rest to the others.
  psync::sim::SharedLink capped(1e6);
  capped.add(1, 1e5, 1e5, 0);  // 0.1 MB/s link: 1 s
  capped.add(2, 9e5, 0, 0);    // gets the other 0.9 MB/s: 1 s
  REQUIRE(std::llabs(capped.next_finish() - 1'000'000'000) < 1000);
}

TEST_CASE("A FIFO NIC (the Emulated transport's model) sends one transfer at a time", "[sim][network]") {
  psync::sim::SharedLink link(1e6, psync::sim::Sharing::fifo);
  link.add(1, 1e6, 0, 0);
  link.add(2, 1e6, 0, 0);
  REQUIRE(link.next_finish() == 1'000'000'000);
  std::vector<std::uint64_t> done;
  link.finish_until(1'000'000'000, done);
  REQUIRE(done == std::vector<std::uint64_t>{1});
  REQUIRE(link.next_finish() == 2'000'000'000);
  // The head is capped by its own link; the NIC does not serve the next one meanwhile.
  psync::sim::SharedLink capped(1e6, psync::sim::Sharing::fifo);
  capped.add(1, 1e5, 1e5, 0);
  capped.add(2, 1e5, 0, 0);
  REQUIRE(capped.next_finish() == 1'000'000'000);
  capped.finish_until(1'000'000'000, done);
  REQUIRE(capped.next_finish() == 1'100'000'000);
}

TEST_CASE("BSP rounds cost a step plus two latencies, and BSP is averaged SGD", "[sim][bsp]") {
  psync::sim::SimOptions o;
  o.workers = 3;
  o.steps_per_worker = 50;
  o.learning_rate = 0.1f;
  o.compute.step_s = 1e-3;
  o.network.worker_link.latency = 2ms;
  const auto r = run<psync::Bsp>(o);
  // Join round trip (2 latencies), then per step: compute, push, reply (2 latencies), then the Leave.
  const double expected = 2 * 2e-3 + 50 * (1e-3 + 2 * 2e-3) + 2e-3;
  REQUIRE(r.wall_s == Approx(expected).epsilon(1e-6));
  Eigen::VectorXf x = Eigen::VectorXf::Zero(dim);
  for (int s = 0; s < 50; ++s) {
    Eigen::VectorXf g = Eigen::VectorXf::Zero(dim);
    for (int w = 0; w < 3; ++w) g += x - Eigen::VectorXf::Constant(dim, float(w + 1));
    x -= 0.1f * g / 3.0f;
  }
  REQUIRE((r.parameters - x).cwiseAbs().maxCoeff() < 1e-5f);
  REQUIRE(r.server.steps_applied == 150);
}

TEST_CASE("OSP takes communication off the critical path; BSP pays it every step", "[sim][osp]") {
  psync::sim::SimOptions o;
  o.workers = 4;
  o.steps_per_worker = 200;
  o.compute.step_s = 1e-3;
  o.network.worker_link.latency = 5ms;  // a round trip is 10 steps
  const auto bsp = run<psync::Bsp>(o);
  const auto osp = run<psync::Osp<20>>(o);
  // BSP: 200 * (1 + 10) ms. OSP with S = 20 > 10: compute never blocks, about 200 ms.
  REQUIRE(bsp.wall_s > 2.0);
  REQUIRE(osp.wall_s < 0.25);
  for (const auto& w : osp.workers) {
    REQUIRE(w.wait_s < 0.02);
    REQUIRE(w.steps_per_push.max > 5);
  }
  // With S below the round trip, the gate closes: S = 4 unsent steps per 10-step round trip.
  const auto tight = run<psync::Osp<4>>(o);
  REQUIRE(tight.wall_s > 0.3);
  REQUIRE(tight.steps_per_push().max == 4);
}

TEST_CASE("LOSP in virtual time: the model computed on at step k holds all k updates", "[sim][losp]") {
  // One worker, constant gradient -1, lr 1: the parameter at step k must be exactly k.
  struct Counter {
    using Batch = int;
    Eigen::VectorXf x = Eigen::VectorXf::Zero(1);
    std::vector<float>* seen = nullptr;
    Eigen::Ref<const Eigen::VectorXf> parameters() const { return x; }
    Eigen::Ref<Eigen::VectorXf> parameters() { return x; }
    double loss(const Batch&) const { return 0; }
    void gradient(const Batch&, Eigen::Ref<Eigen::VectorXf> g) const {
      seen->push_back(x[0]);
      g.setConstant(-1);
    }
  };
  for (int compensated = 0; compensated < 2; ++compensated) {
    std::vector<float> seen;
    Counter model;
    model.seen = &seen;
    psync::sim::SimOptions o;
    o.workers = 1;
    o.steps_per_worker = 80;
    o.learning_rate = 1;
    o.compute.step_s = 1e-3;
    o.network.worker_link.latency = 2ms;
    static const int batch = 0;
    const auto sources = [](psync::PeerId) { return []() -> const int& { return batch; }; };
    const auto none = [](const Counter&) { return psync::Evaluation{0, -1}; };
    if (compensated) {
      psync::sim::simulate(model, sources, o, psync::Losp<20>{}, none);
    } else {
      psync::sim::simulate(model, sources, o, psync::Osp<20>{}, none);
    }
    REQUIRE(seen.size() == 80);
    float max_lag = 0;
    for (std::size_t k = 0; k < seen.size(); ++k) max_lag = std::max(max_lag, static_cast<float>(k) - seen[k]);
    if (compensated) {
      REQUIRE(max_lag == 0);
    } else {
      REQUIRE(max_lag > 0);
      REQUIRE(max_lag <= 40);
    }
  }
}

TEST_CASE("Same seed, same run, bit for bit; another seed, another run", "[sim][determinism]") {
  psync::sim::SimOptions o;
  o.workers = 5;
  o.steps_per_worker = 100;
  o.compute.step_s = 1e-3;
  o.compute.slowdown = {2.0};
  o.compute.random_probability = 0.2;
  o.compute.random_factor = 3;
  o.network.worker_link = {1e7, 1ms, 500us};
  o.network.server_nic_bytes_per_s = 2e7;
  o.snapshot_interval_s = 0.01;
  const auto a = run<psync::Ssp<2>>(o);
  const auto b = run<psync::Ssp<2>>(o);
  REQUIRE(a.wall_s == b.wall_s);
  REQUIRE(a.parameters == b.parameters);
  REQUIRE(a.series.size() == b.series.size());
  for (std::size_t i = 0; i < a.series.size(); ++i) {
    REQUIRE(a.series[i].seconds == b.series[i].seconds);
    REQUIRE(a.series[i].train_loss == b.series[i].train_loss);
  }
  o.seed = 2;
  o.network.seed = 2;
  const auto c = run<psync::Ssp<2>>(o);
  REQUIRE(c.wall_s != a.wall_s);
}

TEMPLATE_TEST_CASE("Hundreds of workers in virtual time", "[sim][scale]", psync::Bsp, psync::Asp, psync::Osp<8>) {
  for (std::uint32_t workers : {2u, 4u, 8u, 32u, 256u}) {
    psync::sim::SimOptions o;
    o.workers = workers;
    o.steps_per_worker = 20;
    o.compute.step_s = 1e-3;
    o.compute.slowdown = {3.0};
    o.network.worker_link = {1.25e8, 100us, 0us};
    o.network.server_nic_bytes_per_s = 1.25e8;
    const auto r = run<TestType>(o);
    REQUIRE(r.workers.size() == workers);
    std::uint64_t steps = 0;
    for (const auto& w : r.workers) steps += w.steps;
    REQUIRE(steps == 20ull * workers);
    REQUIRE(r.server.steps_applied == steps);
  }
}

TEST_CASE("A long run holds O(P) models: snapshots are evaluated, not kept", "[sim][memory]") {
  psync::sim::SimOptions o;
  o.workers = 6;
  o.steps_per_worker = 400;
  o.compute.step_s = 1e-3;
  o.compute.slowdown = {2.0};
  o.network.worker_link = {1e6, 1ms, 0us};
  o.snapshot_interval_s = 1e-3;  // hundreds of snapshots
  psync::sim::SimStats stats;
  std::size_t evaluated = 0;
  const auto r = psync::sim::simulate(Quadratic(dim), Sources(o.workers), o, psync::Osp<4>{},
                                      [&](const Quadratic& m) {
                                        ++evaluated;
                                        return loss_only(m);
                                      },
                                      &stats);
  REQUIRE(r.series.size() > 200);
  REQUIRE(evaluated == r.series.size());
  // Every worker has at most one push and one reply travelling at a time.
  REQUIRE(stats.peak_in_flight >= o.workers);
  REQUIRE(stats.peak_in_flight <= 2 * o.workers);
  REQUIRE(stats.steps == 6u * 400u);
  REQUIRE(stats.gradient_s > 0);
  REQUIRE(stats.evaluate_s > 0);
  REQUIRE(stats.real_s >= stats.gradient_s + stats.evaluate_s);
  REQUIRE(stats.overhead() >= 1.0);
  psync::sim::SimStats twice = stats;
  twice += stats;
  REQUIRE(twice.steps == 2 * stats.steps);
  REQUIRE(twice.gradient_s == 2 * stats.gradient_s);
  REQUIRE(twice.peak_in_flight == stats.peak_in_flight);
}

// Under BSP the round barrier fixes the order of everything, so threads in real
// time and events in virtual time must compute the same model; with 2 workers the
// round's sum a + b is the same float whichever push arrives first.
TEST_CASE("BSP: a real threaded run and a virtual run reach the same parameters", "[sim][validation]") {
  const auto& data = psync_test::synthetic();
  const psync::models::SoftmaxRegression model(data.dimension(), data.num_classes);
  const std::uint64_t seed = 3;
  const std::uint64_t steps = 150;

  psync::LocalOptions lo;
  lo.workers = 2;
  lo.learning_rate = 0.2f;
  lo.batch_size = 32;
  lo.steps_per_worker = steps;
  lo.seed = seed;
  lo.snapshot_interval = 0ms;
  const auto real = psync::run_local(model, data, nullptr, lo, psync::Bsp{});

  // The batch sources run_local documents for its dataset overload.
  const auto shards = psync::data::shard(data, 2, seed);
  const auto sources = [&](psync::PeerId w) {
    return [smp = psync::data::BatchSampler(shards[w], 32, psync::data::worker_seed(seed, w))]() mutable
               -> const psync::data::Batch& { return smp.next(); };
  };
  psync::sim::SimOptions o;
  o.workers = 2;
  o.learning_rate = 0.2f;
  o.steps_per_worker = steps;
  o.compute.step_s = 1e-3;
  o.compute.slowdown = {3.0};
  o.network.worker_link = {1e6, 2ms, 1ms};
  const auto virt = psync::sim::simulate(model, sources, o, psync::Bsp{},
                                         [](const psync::models::SoftmaxRegression&) { return psync::Evaluation{}; });
  REQUIRE(real.server.steps_applied == 2 * steps);
  REQUIRE(virt.server.steps_applied == 2 * steps);
  REQUIRE(real.parameters.size() == virt.parameters.size());
  REQUIRE(real.parameters == virt.parameters);
  // And the run moved: not two copies of the initial model.
  REQUIRE((virt.parameters - model.parameters()).norm() > 0.1f);
}

TEMPLATE_TEST_CASE("stop_when ends a run at the snapshot that asks it to", "[sim][stop]", psync::Bsp, psync::Osp<8>) {
  psync::sim::SimOptions o;
  o.workers = 4;
  o.steps_per_worker = 2000;
  o.compute.step_s = 1e-3;
  o.compute.slowdown = {2.0};
  o.network.worker_link = {1e6, 1ms, 0us};
  o.snapshot_interval_s = 0.01;
  const auto full = run<TestType>(o);
  double asked_at = -1;
  o.stop_when = [&](const std::vector<psync::SeriesPoint>& s) {
    if (s.back().seconds < 0.3) return false;
    asked_at = s.back().seconds;
    return true;
  };
  const auto stopped = run<TestType>(o);
  REQUIRE(asked_at == Approx(0.3).margin(0.011));
  REQUIRE(full.wall_s > 2.0);
  // Everyone leaves within a step (2 ms for the straggler) and a round trip of the stop.
  REQUIRE(stopped.wall_s >= asked_at);
  REQUIRE(stopped.wall_s < asked_at + 0.05);
  // Up to the stop, the run is the same run.
  for (std::size_t i = 0; i + 1 < stopped.series.size() && stopped.series[i].seconds <= asked_at; ++i) {
    REQUIRE(stopped.series[i].seconds == full.series[i].seconds);
    REQUIRE(stopped.series[i].train_loss == full.series[i].train_loss);
  }
}

TEST_CASE("run_until_target stops once the target is reached and held", "[sim][harness]") {
  psync::sim::SimOptions o;
  o.workers = 3;
  o.learning_rate = 0.05f;
  o.steps_per_worker = 100000;
  o.compute.step_s = 1e-3;
  o.network.worker_link = {1e7, 1ms, 0us};
  // "Accuracy" rises towards 1 as the model nears the workers' mean target (2).
  const auto evaluate = [](const Quadratic& m) {
    const double d = (m.parameters().array() - 2.0f).matrix().norm();
    return psync::Evaluation{d, std::exp(-d)};
  };
  psync::harness::TargetRun run;
  run.cap_s = 100;
  run.snapshot_s = 0.01;
  run.target = 0.9;
  psync::sim::SimStats stats;
  const auto r = psync::harness::run_until_target(Quadratic(dim), psync::Bsp{}, Sources(3), o, evaluate, run, &stats);
  const double t = r.time_to_accuracy(0.9);
  REQUIRE(t > 0);
  const double held = psync::harness::held_until(t, run.snapshot_s);
  REQUIRE(held == Approx(t + std::max(0.04, 0.1 * t)));
  // Stopped at the first snapshot at or after `held`, plus at most a round to leave.
  REQUIRE(r.wall_s >= held);
  REQUIRE(r.wall_s < held + run.snapshot_s + 0.01);
  REQUIRE(r.series.back().test_accuracy >= 0.85);
  REQUIRE(stats.steps == r.server.steps_applied);
  // A target never reached runs to the cap.
  run.target = 2.0;
  run.cap_s = 0.5;
  const auto capped = psync::harness::run_until_target(Quadratic(dim), psync::Bsp{}, Sources(3), o, evaluate, run);
  REQUIRE(capped.time_to_accuracy(2.0) < 0);
  REQUIRE(capped.wall_s >= 0.5);
  REQUIRE(capped.wall_s < 0.52);
}

TEST_CASE("Median time to target counts a miss as infinitely late", "[sim][harness]") {
  REQUIRE(psync::harness::median_time({3.0, 1.0, 2.0}) == 2.0);
  REQUIRE(psync::harness::median_time({1.0, -1.0, 2.0}) == 2.0);
  REQUIRE(psync::harness::median_time({1.0, -1.0, -1.0}) < 0);
  REQUIRE(psync::harness::median_time({1.0, 3.0}) == 2.0);
  REQUIRE(psync::harness::median_time({}) < 0);
}

TEST_CASE("Steps vary lognormally by step_cv around the median step, seeded", "[sim][spread]") {
  psync::sim::SimOptions o;
  o.workers = 1;
  o.steps_per_worker = 4000;
  o.compute.step_s = 1e-3;
  const auto fixed = run<psync::Asp>(o);
  REQUIRE(fixed.workers[0].compute_s == Approx(4.0).epsilon(1e-9));
  o.compute.step_cv = 0.2;
  const auto spread = run<psync::Asp>(o);
  // A lognormal with median 1 and cv 0.2 has mean sqrt(1.04) = 1.0198; over 4,000
  // steps the mean's standard error is 0.3%.
  REQUIRE(spread.workers[0].compute_s / 4000 == Approx(1e-3 * std::sqrt(1.04)).epsilon(0.006));
  REQUIRE(run<psync::Asp>(o).parameters == spread.parameters);
  REQUIRE(run<psync::Asp>(o).wall_s == spread.wall_s);
  o.compute.step_cv = -0.1;
  REQUIRE_THROWS_AS(run<psync::Asp>(o), psync::ConfigError);
}

TEST_CASE("Steps that vary break the lockstep of identical workers on a shared NIC", "[sim][spread]") {
  // Two identical ASP workers whose pushes take longer than a step on the server NIC:
  // without variation they push at the same instant forever and each transfer takes
  // twice as long as alone; real workers drift apart.
  psync::sim::SimOptions o;
  o.workers = 2;
  o.steps_per_worker = 2000;
  o.compute.step_s = 1e-3;
  o.network.server_nic_bytes_per_s = 2e4;
  const auto lockstep = run<psync::Asp>(o);
  o.compute.step_cv = 0.05;
  const auto drifting = run<psync::Asp>(o);
  INFO("samples/s in lockstep " << lockstep.throughput() << ", with 5% spread " << drifting.throughput());
  REQUIRE(drifting.throughput() > 1.1 * lockstep.throughput());
}

namespace {

// Worker w pulls towards a vector of `n` floats, each its own (w + 1 + i / n).
struct WideSources {
  std::vector<Target> targets;
  WideSources(std::uint32_t workers, Eigen::Index n) {
    for (std::uint32_t w = 0; w < workers; ++w) {
      targets.push_back(Target{Eigen::VectorXf::LinSpaced(n, float(w + 1), float(w + 2))});
    }
  }
  auto operator()(psync::PeerId w) const {
    const Target* t = &targets[w];
    return [t]() -> const Target& { return *t; };
  }
};

// What a push or a model reply of `n` floats costs on the (virtual) wire.
double dense_message_bytes(Eigen::Index n) {
  return static_cast<double>(psync::emulated_header_bytes + static_cast<std::size_t>(n) * sizeof(float));
}

template <class P>
psync::RunReport run_wide(const psync::sim::SimOptions& o, Eigen::Index n, P policy = {}) {
  const auto none = [](const Quadratic&) { return psync::Evaluation{-1, -1}; };
  return psync::sim::simulate(Quadratic(n), WideSources(o.workers, n), o, policy, none);
}

}  // namespace

TEST_CASE("Sharded servers in virtual time: BSP computes the same model for any K", "[sim][shards]") {
  psync::sim::SimOptions o;
  o.workers = 3;
  o.steps_per_worker = 40;
  o.learning_rate = 0.1f;
  o.compute.step_s = 1e-3;
  o.compute.step_cv = 0.1;
  o.network.worker_link.latency = 1ms;
  o.network.server_nic_bytes_per_s = 1e6;
  const auto one = run_wide<psync::Bsp>(o, 101);
  for (std::uint32_t k : {2u, 3u, 4u}) {
    o.shards = k;
    const auto sharded = run_wide<psync::Bsp>(o, 101);
    INFO("K = " << k);
    REQUIRE(sharded.parameters == one.parameters);  // bit for bit: each shard averages the same rounds
    REQUIRE(sharded.server.steps_applied == one.server.steps_applied);
    REQUIRE(sharded.server.version == one.server.version);
  }
  o.shards = 102;  // more shards than parameters
  REQUIRE_THROWS_AS(run_wide<psync::Bsp>(o, 101), psync::ConfigError);
}

TEST_CASE("Sharded servers in virtual time: K NICs carry a round K times faster", "[sim][shards]") {
  // Communication-bound BSP: 4 workers push and pull 100,000 floats (400 kB) through
  // a 100 MB/s server NIC; worker links are 1 GB/s. One shard: a round moves 1.6 MB
  // each way through one NIC, 16 ms each way; four shards move 400 kB each, 4 ms.
  psync::sim::SimOptions o;
  o.workers = 4;
  o.steps_per_worker = 20;
  o.compute.step_s = 1e-4;
  o.network.server_nic_bytes_per_s = 1e8;
  o.network.worker_link.bandwidth_bytes_per_s = 1e9;
  const auto one = run_wide<psync::Bsp>(o, 100000);
  o.shards = 4;
  const auto four = run_wide<psync::Bsp>(o, 100000);
  INFO("K=1 " << one.wall_s << " s, K=4 " << four.wall_s << " s");
  REQUIRE(one.wall_s == Approx(20 * (1e-4 + 2 * 0.016)).epsilon(0.05));
  REQUIRE(four.wall_s == Approx(20 * (1e-4 + 2 * 0.004)).epsilon(0.1));
  REQUIRE(four.parameters == one.parameters);
  // When each worker's own link is the bottleneck, more shards do not help: its K
  // slices share it. 10 MB/s links: 40 ms a push, whatever K.
  o.network.worker_link.bandwidth_bytes_per_s = 1e7;
  o.shards = 1;
  const auto slow_links = run_wide<psync::Bsp>(o, 100000);
  o.shards = 4;
  const auto slow_links4 = run_wide<psync::Bsp>(o, 100000);
  REQUIRE(slow_links4.wall_s == Approx(slow_links.wall_s).epsilon(0.05));
}

TEMPLATE_TEST_CASE("Sharded servers in virtual time: every policy runs and keeps its bound", "[sim][shards]", psync::Asp,
                   psync::Ssp<2>, psync::Osp<6>) {
  psync::sim::SimOptions o;
  o.workers = 4;
  o.steps_per_worker = 60;
  o.compute.step_s = 1e-3;
  o.compute.slowdown = {3.0};
  o.compute.step_cv = 0.2;
  o.network.worker_link = {1e7, 1ms, 500us};
  o.network.server_nic_bytes_per_s = 2e7;
  o.shards = 3;
  const auto r = run_wide<TestType>(o, 50);
  REQUIRE(r.server.steps_applied == 4 * 60);
  if constexpr (std::is_same_v<TestType, psync::Ssp<2>>) REQUIRE(r.clock_staleness().max <= 2);
  // Every worker pulls towards its own target; the model ends between them.
  REQUIRE(r.parameters.allFinite());
  const auto again = run_wide<TestType>(o, 50);
  REQUIRE(again.parameters == r.parameters);
}

TEST_CASE("A shared host: more runnable jobs than cores slow each one down", "[sim][host]") {
  // Four ASP workers, 1 ms steps, an instant network: alone, 100 steps take 0.1 s.
  psync::sim::SimOptions o;
  o.workers = 4;
  o.steps_per_worker = 100;
  o.compute.step_s = 1e-3;
  const auto own_cores = run<psync::Asp>(o);
  REQUIRE(own_cores.wall_s == Approx(0.1).epsilon(1e-3));
  // On 2 shared cores each step runs at half a core: 2 ms; on 3 cores at 3/4: 4/3 ms.
  o.host.cores = 2;
  const auto two = run<psync::Asp>(o);
  REQUIRE(two.wall_s == Approx(0.2).epsilon(1e-3));
  for (const auto& w : two.workers) REQUIRE(w.compute_s == Approx(0.2).epsilon(1e-3));  // a step's duration, as a real clock sees it
  o.host.cores = 3;
  REQUIRE(run<psync::Asp>(o).wall_s == Approx(0.4 / 3).epsilon(1e-3));
  // No job runs on more than one core: 8 cores for 4 workers is no faster than 4.
  o.host.cores = 8;
  REQUIRE(run<psync::Asp>(o).wall_s == Approx(0.1).epsilon(1e-3));
  // The math does not change, only time: the same parameters as with cores of their own.
  REQUIRE(two.parameters == own_cores.parameters);
}

TEST_CASE("A shared host: communication's CPU is taken from compute", "[sim][host]") {
  // One ASP worker on one core with an instant network. Each push and each reply
  // cost s_per_byte per byte at the sender and again at the receiver; the core never
  // idles (the reply is instant), so the run lasts its total work: 100 steps of 1 ms
  // plus, per step, two 4,000-byte messages charged twice each.
  constexpr Eigen::Index n = 1000;
  psync::sim::SimOptions o;
  o.workers = 1;
  o.steps_per_worker = 100;
  o.compute.step_s = 1e-3;
  const double message = dense_message_bytes(n);
  const auto alone = run_wide<psync::Asp>(o, n);
  o.host.cores = 1;
  o.host.s_per_byte = 0.25e-3 / message;  // each end of each message: 0.25 ms
  const auto shared = run_wide<psync::Asp>(o, n);
  INFO("own core " << alone.wall_s << " s, shared " << shared.wall_s << " s");
  REQUIRE(alone.wall_s == Approx(0.1).epsilon(0.01));
  REQUIRE(shared.wall_s == Approx(0.2).epsilon(0.02));  // + join and leave, a few hundred bytes
  REQUIRE(shared.parameters == alone.parameters);
  // Same options, same run, bit for bit.
  const auto again = run_wide<psync::Asp>(o, n);
  REQUIRE(again.wall_s == shared.wall_s);
  REQUIRE(again.parameters == shared.parameters);
  // A message is delivered once both ends' CPU work is done: one BSP worker on two
  // cores, 1 ms per end of each message, waits 1 ms for its push (both ends at once)
  // and 1 ms for the reply: 3 ms a step.
  o.workers = 1;
  o.steps_per_worker = 50;
  o.host.cores = 2;
  o.host.s_per_byte = 1e-3 / message;
  REQUIRE(run_wide<psync::Bsp>(o, n).wall_s == Approx(50 * 3e-3).epsilon(0.02));
  // Communication costs compute only where compute is shared.
  o.host.cores = 0;
  REQUIRE_THROWS_AS(run_wide<psync::Asp>(o, n), psync::ConfigError);
  o.host.cores = -1;
  o.host.s_per_byte = 0;
  REQUIRE_THROWS_AS(run_wide<psync::Asp>(o, n), psync::ConfigError);
}

TEST_CASE("A shared host: OSP's overlap costs compute when the cores are shared", "[sim][host]") {
  // Two OSP workers on two cores: alone they never wait, so every step is compute.
  // With communication charged to the same cores, their steps stretch; BSP's workers
  // wait out each round trip anyway, and here the messages' CPU fits in its latency.
  constexpr Eigen::Index n = 1000;
  psync::sim::SimOptions o;
  o.workers = 2;
  o.steps_per_worker = 200;
  o.compute.step_s = 1e-3;
  o.network.worker_link.latency = 2ms;
  o.host.cores = 2;
  const double message = dense_message_bytes(n);
  const auto osp_free = run_wide<psync::Osp<20>>(o, n);
  const auto bsp_free = run_wide<psync::Bsp>(o, n);
  o.host.s_per_byte = 0.5e-3 / message;
  const auto osp = run_wide<psync::Osp<20>>(o, n);
  const auto bsp = run_wide<psync::Bsp>(o, n);
  INFO("OSP " << osp_free.wall_s << " -> " << osp.wall_s << " s, BSP " << bsp_free.wall_s << " -> " << bsp.wall_s << " s");
  REQUIRE(osp.wall_s > 1.5 * osp_free.wall_s);
  REQUIRE(bsp.wall_s < 1.2 * bsp_free.wall_s);
}

TEST_CASE("Replies taken at step ends, as psync's Worker takes them, push one step later", "[sim][replies]") {
  // Two OSP workers whose replies land mid-step. Taken at once (a dedicated thread),
  // the next push leaves then, and the step that was running goes out one push later,
  // computed on the model before the install: its push is two versions stale. Taken at
  // the step's end (Worker::run), the push holds that step: one version.
  psync::sim::SimOptions o;
  o.workers = 2;
  o.steps_per_worker = 400;
  o.compute.step_s = 1e-3;
  o.network.worker_link.latency = std::chrono::microseconds(2250);
  const auto staleness = [](const psync::RunReport& r) { return r.version_staleness().mean(); };
  const auto arrival = run<psync::Osp<20>>(o);
  o.replies = psync::sim::Replies::at_step_end;
  const auto step_end = run<psync::Osp<20>>(o);
  INFO("version staleness: on arrival " << staleness(arrival) << ", at step end " << staleness(step_end));
  REQUIRE(staleness(arrival) == Approx(2).margin(0.05));
  REQUIRE(staleness(step_end) == Approx(1).margin(0.05));
  // BSP workers wait for every reply, so nothing is ever held: the same run either way.
  o.replies = psync::sim::Replies::on_arrival;
  const auto bsp = run<psync::Bsp>(o);
  o.replies = psync::sim::Replies::at_step_end;
  const auto bsp_end = run<psync::Bsp>(o);
  REQUIRE(bsp_end.wall_s == bsp.wall_s);
  REQUIRE(bsp_end.parameters == bsp.parameters);
}
