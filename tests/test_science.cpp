// The qualitative results psync exists to show, in virtual time (deterministic,
// independent of this machine's load): softmax regression on a Fashion-MNIST
// subset, 4 workers, a given step cost. Under a slow network with stragglers OSP
// and LOSP reach the target before SSP, and SSP before BSP; on a free network every
// policy computes within 10% of ASP's throughput. Learning rates follow the
// combination rule: the base rate for averaging policies, base/P for summing ones.
#include "catch.hpp"

#include <psync/data/dataset.hpp>
#include <psync/data/idx.hpp>
#include <psync/models/softmax.hpp>
#include <psync/policies/asp.hpp>
#include <psync/policies/bsp.hpp>
#include <psync/policies/osp.hpp>
#include <psync/policies/ssp.hpp>
#include <psync/sim/simulator.hpp>

#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

using namespace std::chrono_literals;

namespace {

constexpr std::uint32_t workers = 4;
constexpr double target = 0.78;

struct Task {
  psync::data::Dataset train;
  std::vector<psync::data::Dataset> shards;
  psync::data::Batch eval_train;
  psync::data::Batch test;
  psync::models::SoftmaxRegression model{784, 10};

  Task() {
    const auto all = psync::data::load_fashion_mnist(PSYNC_FASHION_MNIST_DIR);
    train = all.train.subset(0, 12000);
    shards = psync::data::shard(train, static_cast<int>(workers), 7);
    eval_train = psync::data::whole(train, 1000);
    test = psync::data::whole(all.test, 2000);
  }

  template <class P>
  psync::RunReport run(const psync::sim::SimOptions& o, P policy) const {
    const auto sources = [this](psync::PeerId w) {
      return [s = psync::data::BatchSampler(shards[w], 32, 100 + w)]() mutable -> const psync::data::Batch& {
        return s.next();
      };
    };
    const auto evaluate = [this](const psync::models::SoftmaxRegression& m) {
      return psync::Evaluation{m.loss(eval_train), m.accuracy(test)};
    };
    psync::sim::SimOptions scaled = o;
    if (std::is_same_v<typename P::Combiner, psync::combine::Sum>) {
      scaled.learning_rate = static_cast<float>(o.learning_rate * psync::combine::RoundAverage::step_scale(workers));
    }
    return psync::sim::simulate(model, sources, scaled, policy, evaluate);
  }
};

const Task& task() {
  static const Task t;
  return t;
}

}  // namespace

TEST_CASE("Slow network and stragglers: OSP/LOSP before SSP before BSP", "[science]") {
  psync::sim::SimOptions o;
  o.workers = workers;
  o.learning_rate = 0.4f;
  o.steps_per_worker = 100000;
  o.budget_s = 6;
  o.compute.step_s = 2e-3;
  o.compute.slowdown = {1.5};
  o.compute.random_probability = 0.1;
  o.compute.random_factor = 8;
  o.network.worker_link = {1.25e8, 3ms, 1ms};  // 1 Gbit/s, 3 ms one way
  o.network.server_nic_bytes_per_s = 1.25e8;
  o.snapshot_interval_s = 0.1;
  std::map<std::string, double> tta;
  const auto record = [&](const psync::RunReport& r) {
    tta[r.policy] = r.time_to_accuracy(target);
    std::printf("science slow-network %-8s time to %.2f: %6.2f s (virtual), final %.4f, steps/push max %llu\n",
                r.policy.c_str(), target, tta[r.policy], r.final_accuracy(),
                static_cast<unsigned long long>(r.steps_per_push().max));
  };
  record(task().run(o, psync::Bsp{}));
  record(task().run(o, psync::Ssp<3>{}));
  record(task().run(o, psync::Osp<20>{}));
  record(task().run(o, psync::Losp<20>{}));
  for (const auto& [policy, t] : tta) {
    INFO(policy);
    REQUIRE(t > 0);  // every policy gets there within the budget
  }
  REQUIRE(tta["osp:20"] < tta["ssp:3"]);
  REQUIRE(tta["losp:20"] < tta["ssp:3"]);
  REQUIRE(tta["ssp:3"] < tta["bsp"]);
}

TEST_CASE("Free network: every policy's throughput within 10% of ASP's", "[science]") {
  psync::sim::SimOptions o;
  o.workers = workers;
  o.learning_rate = 0.4f;
  o.steps_per_worker = 300;
  o.compute.step_s = 2e-3;
  o.snapshot_interval_s = 10;  // throughput only
  std::map<std::string, double> throughput;
  const auto record = [&](const psync::RunReport& r) {
    throughput[r.policy] = r.throughput();
    std::printf("science free-network %-8s %.0f samples/s (virtual)\n", r.policy.c_str(), r.throughput());
  };
  record(task().run(o, psync::Asp{}));
  record(task().run(o, psync::Bsp{}));
  record(task().run(o, psync::Ssp<3>{}));
  record(task().run(o, psync::Osp<20>{}));
  record(task().run(o, psync::Losp<20>{}));
  for (const auto& [policy, t] : throughput) {
    INFO(policy);
    REQUIRE(t >= 0.9 * throughput["asp"]);
  }
}
