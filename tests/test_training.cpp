// Real models on real data through run_local: BSP is exactly averaged SGD, every
// policy converges, and softmax on Fashion-MNIST reaches 0.80 test accuracy.
#include "catch.hpp"
#include "synthetic_task.hpp"

#include <psync/data/idx.hpp>
#include <psync/harness/local_cluster.hpp>
#include <psync/models/mlp.hpp>
#include <psync/models/softmax.hpp>
#include <psync/policies/asp.hpp>
#include <psync/policies/bsp.hpp>
#include <psync/policies/dssp.hpp>
#include <psync/policies/osp.hpp>
#include <psync/policies/ssp.hpp>

#include <cmath>
#include <type_traits>

#include <vector>

using psync_test::synthetic;

TEST_CASE("BSP with N workers equals sequential SGD on the concatenated batches with averaged updates",
          "[training][bsp]") {
  const auto& data = synthetic();
  const psync::models::SoftmaxRegression prototype(data.dimension(), data.num_classes);
  psync::LocalOptions o;
  o.workers = 3;
  o.steps_per_worker = 40;
  o.batch_size = 16;
  o.learning_rate = 0.3f;
  o.seed = 5;
  const auto report = psync::run_local(prototype, data, nullptr, o, psync::Bsp{});

  // Replay: same shards, same per-worker batch order (run_local's documented seeding),
  // gradients of every worker on the same global model, averaged.
  const auto shards = psync::data::shard(data, 3, o.seed);
  std::vector<psync::data::BatchSampler> samplers;
  for (std::size_t w = 0; w < 3; ++w) samplers.emplace_back(shards[w], o.batch_size, psync::data::worker_seed(o.seed, w));
  psync::models::SoftmaxRegression m = prototype;
  Eigen::VectorXf g(m.dimension()), sum(m.dimension());
  for (std::uint64_t step = 0; step < o.steps_per_worker; ++step) {
    sum.setZero();
    for (auto& s : samplers) {
      m.gradient(s.next(), g);
      sum += -o.learning_rate * g;
    }
    m.parameters() += sum / 3.0f;
  }
  REQUIRE(report.parameters.size() == m.dimension());
  REQUIRE((report.parameters - m.parameters()).cwiseAbs().maxCoeff() < 1e-5f);
  REQUIRE(report.server.version == o.steps_per_worker);
  // The default codec ("none") pushes dense float32: 4 bytes a float, nothing else.
  for (const auto& w : report.workers) {
    REQUIRE(w.pushed_bytes == w.pushes * 4 * static_cast<std::uint64_t>(prototype.dimension()));
  }
}

TEMPLATE_TEST_CASE("Every policy trains softmax regression on the synthetic task", "[training]", psync::Bsp,
                   psync::Asp, psync::Ssp<3>, (psync::Dssp<2, 6>), psync::Osp<20>, psync::Losp<20>) {
  const auto& data = synthetic();
  const auto train = data.subset(0, 5000);
  const auto test = data.subset(5000, 1000);
  const psync::models::SoftmaxRegression prototype(data.dimension(), data.num_classes);
  psync::LocalOptions o;
  o.workers = 4;
  o.steps_per_worker = 400;
  o.batch_size = 32;
  o.learning_rate = 0.1f;
  const auto report = psync::run_local(prototype, train, &test, o, TestType{});
  const auto first = report.series.front();
  const auto last = report.series.back();
  INFO(report.policy << ": loss " << first.train_loss << " -> " << last.train_loss << ", accuracy "
                     << last.test_accuracy);
  REQUIRE(first.train_loss == Approx(std::log(4.0)).epsilon(0.01));  // uniform prediction at the start
  REQUIRE(last.train_loss < 0.6);
  REQUIRE(last.test_accuracy > 0.85);
  std::uint64_t steps = 0;
  for (const auto& w : report.workers) steps += w.steps;
  REQUIRE(steps == 1600);
  REQUIRE(report.server.steps_applied == steps);
  if constexpr (std::is_same_v<TestType, psync::Ssp<3>>) REQUIRE(report.clock_staleness().max <= 3);
  if constexpr (std::is_same_v<TestType, psync::Dssp<2, 6>>) REQUIRE(report.clock_staleness().max <= 6);
  if constexpr (std::is_same_v<TestType, psync::Bsp>) {
    REQUIRE(report.clock_staleness().max == 0);
    REQUIRE(report.steps_per_push().max == 1);
  }
}

TEST_CASE("MLP under OSP over an emulated network with a straggler still learns", "[training][osp]") {
  const auto& data = synthetic();
  const auto train = data.subset(0, 5000);
  const auto test = data.subset(5000, 1000);
  psync::models::Mlp prototype({data.dimension(), 32, data.num_classes});
  prototype.initialize(3);
  psync::LocalOptions o;
  o.workers = 3;
  o.steps_per_worker = 300;
  o.batch_size = 32;
  o.learning_rate = 0.1f;
  o.network.worker_link.latency = std::chrono::microseconds(500);
  o.network.worker_link.bandwidth_bytes_per_s = 50e6;
  o.stragglers = {psync::Straggler{2.0}};
  const auto report = psync::run_local(prototype, train, &test, o, psync::Osp<10>{});
  REQUIRE(report.final_accuracy() > 0.85);
  for (const auto& w : report.workers) {
    REQUIRE(w.pushes < w.steps);  // several local steps ride on one push
    REQUIRE(w.comm_s > 0);
  }
}

TEST_CASE("Softmax regression on Fashion-MNIST reaches 0.80 test accuracy", "[training][fashion-mnist]") {
  const auto data = psync::data::load_fashion_mnist(PSYNC_FASHION_MNIST_DIR);
  REQUIRE(data.train.size() == 60000);
  const psync::models::SoftmaxRegression prototype(data.train.dimension(), data.train.num_classes);
  psync::LocalOptions o;
  // BSP, so the result does not depend on how the threads are scheduled: under ASP,
  // four workers on a loaded 2-core machine trained on staler models and ended below
  // 0.80 now and then (0.78). BSP averages the 4 workers' gradients each round:
  // 1000 rounds of 256 samples, about 4.3 epochs. It scores 0.820 on every run
  // (0.809 after 600 rounds, 0.816 and 0.820 at rates 0.07 and 0.15).
  o.workers = 4;
  o.steps_per_worker = 1000;
  o.batch_size = 64;
  o.learning_rate = 0.1f;
  o.snapshot_interval = std::chrono::milliseconds(0);
  const auto report = psync::run_local(prototype, data.train, &data.test, o, psync::Bsp{});
  INFO("final test accuracy " << report.final_accuracy());
  REQUIRE(report.final_accuracy() >= 0.80);
}
