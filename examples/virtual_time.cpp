// Virtual time: which policy reaches a target accuracy first on *your* network,
// answered on one core in seconds. psync::sim runs the real server and worker
// cores and the real gradients on the real data, and models only time: a step
// costs what you say (or what calibrate_step measures), the server NIC is shared
// fairly between transfers, links have a bandwidth and a latency. Same seed, same
// answer, on any machine. Change the network or the worker count and rerun.
#include <psync/harness/time_to_target.hpp>
#include <psync/models.hpp>
#include <psync/psync.hpp>
#include <psync/sim/simulator.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

// usage: virtual_time [TARGET_ACCURACY] [LEARNING_RATE]
int main(int argc, char** argv) {
  using namespace std::chrono_literals;
  const double target = argc > 1 ? std::atof(argv[1]) : 0.85;
  const float lr = argc > 2 ? static_cast<float>(std::atof(argv[2])) : 0.05f;
  if (!(target > 0 && target < 1) || !(lr > 0)) {
    std::fprintf(stderr, "usage: virtual_time [TARGET_ACCURACY in (0,1)] [LEARNING_RATE > 0]\n");
    return 2;
  }
  psync::data::SyntheticOptions data_options;
  data_options.samples = 12000;
  data_options.dimension = 64;
  data_options.classes = 8;
  data_options.noise = 3.0f;
  const auto all = psync::data::make_synthetic_classification(data_options);
  const auto train = all.subset(0, 10000);
  const psync::data::Batch test = psync::data::whole(all.subset(10000, 2000));
  const psync::models::SoftmaxRegression model(train.dimension(), train.num_classes);

  constexpr std::uint32_t workers = 8;
  const std::uint64_t seed = 1;
  const auto shards = psync::data::shard(train, static_cast<int>(workers), seed);
  // Worker w's batches: a fresh sampler each run, so every policy sees the same data.
  const auto batches_for = [&](psync::PeerId w) {
    return [sampler = psync::data::BatchSampler(shards[w], 32, psync::data::worker_seed(seed, w))]() mutable
               -> const psync::data::Batch& { return sampler.next(); };
  };
  const auto evaluate = [&](const psync::models::SoftmaxRegression& m) {
    return psync::Evaluation{m.loss(test), m.accuracy(test)};
  };

  psync::sim::SimOptions options;
  options.workers = workers;
  options.steps_per_worker = 1'000'000;  // run_until_target stops the run, at the latest at run.cap_s
  options.compute.step_s = 2e-3;          // a step costs 2 ms (or measure it: sim::calibrate_step)
  options.compute.slowdown = {3.0};       // worker 0 is 3x slower
  options.network.worker_link = {12.5e6, 2ms, 0us};  // 100 Mbit/s links, 2 ms latency
  options.network.server_nic_bytes_per_s = 12.5e6;   // the server's NIC, shared fairly

  psync::harness::TargetRun run;
  run.target = target;
  run.cap_s = 300;
  run.snapshot_s = 0.01;

  std::printf("%u workers, 100 Mbit/s, worker 0 3x slower: virtual seconds to %.2f test accuracy\n", workers,
              run.target);
  const auto report = [&](const psync::RunReport& r, float lr) {
    const double t = r.time_to_accuracy(run.target);
    if (t < 0) {
      std::printf("  %-8s lr %.3f  not reached in %.0f s", r.policy.c_str(), lr, r.wall_s);
    } else {
      std::printf("  %-8s lr %.3f  %7.2f s", r.policy.c_str(), lr, t);
    }
    std::printf("  (final accuracy %.3f, %llu local steps applied)\n", r.final_accuracy(),
                static_cast<unsigned long long>(r.server.steps_applied));
  };
  // BSP and OSP average a round's pushes; ASP adds every push, so it runs at lr / P.
  options.learning_rate = lr;
  report(psync::harness::run_until_target(model, psync::Bsp{}, batches_for, options, evaluate, run), lr);
  report(psync::harness::run_until_target(model, psync::Osp<20>{}, batches_for, options, evaluate, run), lr);
  report(psync::harness::run_until_target(model, psync::Losp<20>{}, batches_for, options, evaluate, run), lr);
  options.learning_rate = lr / workers;
  report(psync::harness::run_until_target(model, psync::Asp{}, batches_for, options, evaluate, run), lr / workers);
  return 0;
}
