// Compare the synchronization policies on the same model, data and network:
// softmax regression on Fashion-MNIST, 4 workers, emulated 1 Gbit/s links with
// 1 ms latency, worker 0 twice as slow. Prints one row per policy.
// (The full harness with time-to-accuracy, plots and traces is bench/compare_policies.)
//
// Learning rates: BSP and OSP average each round's pushes, ASP and SSP add every
// push, so at one rate the latter step P times further per round. Each policy runs
// at base_rate * its combiner's scale relative to averaging, so one round moves the
// model equally far under every policy.
#include <psync/data/fashion_mnist.hpp>
#include <psync/harness.hpp>
#include <psync/models.hpp>
#include <psync/psync.hpp>

#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>

namespace {

/// The rate at which one round moves the model as far as a round of an averaging
/// policy at `base`: `base` for BSP/OSP, base / P for ASP/SSP.
template <class Policy>
float rate_for(float base, std::uint32_t workers) {
  return static_cast<float>(base * psync::combine::RoundAverage::step_scale(workers) /
                            Policy::Combiner::step_scale(workers));
}

template <class Policy, class M>
void row(const M& model, const psync::data::TrainTest& data, psync::LocalOptions options, float base_rate) {
  options.learning_rate = rate_for<Policy>(base_rate, options.workers);
  const psync::RunReport r = psync::run_local(model, data.train, &data.test, options, Policy{});
  double compute = 0, wait = 0, wall = 0;
  for (const auto& w : r.workers) {
    compute += w.compute_s;
    wait += w.wait_s;
    wall += w.wall_s;
  }
  // Clock staleness (reader's clock - slowest clock) means the same under every policy;
  // version staleness counts pushes under ASP/SSP but rounds under BSP/OSP.
  const auto staleness = r.clock_staleness();
  std::printf("%-8s %7.4f %8.2f %10.0f %9.3f %9.0f%% %9.0f%% %8.2f %5llu\n", r.policy.c_str(),
              static_cast<double>(options.learning_rate), r.wall_s, r.throughput(), r.final_accuracy(),
              100 * compute / wall, 100 * wait / wall, staleness.mean(),
              static_cast<unsigned long long>(staleness.max));
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::filesystem::path dir = argc > 1 ? argv[1] : psync::data::default_fashion_mnist_dir;
    const auto data = psync::data::load_fashion_mnist(dir);
    const psync::models::SoftmaxRegression model(data.train.dimension(), data.train.num_classes);

    psync::LocalOptions options;
    options.workers = 4;
    options.steps_per_worker = 400;
    options.batch_size = 64;
    const float base_rate = 0.1f;  // BSP/OSP's; ASP/SSP run at base_rate / workers
    options.snapshot_interval = std::chrono::milliseconds(0);  // evaluate the final model only
    options.network.worker_link.bandwidth_bytes_per_s = 125e6;     // 1 Gbit/s
    options.network.worker_link.latency = std::chrono::milliseconds(1);
    options.network.server_nic_bytes_per_s = 125e6;
    options.stragglers = {psync::Straggler{2.0}};

    std::printf("softmax regression on Fashion-MNIST, %u workers x %llu steps, batch %lld, "
                "lr %.2f per averaged round\n",
                options.workers, static_cast<unsigned long long>(options.steps_per_worker),
                static_cast<long long>(options.batch_size), static_cast<double>(base_rate));
    std::printf("network: 1 Gbit/s links, 1 ms latency, shared 1 Gbit/s server NIC; worker 0 is 2x slower\n\n");
    std::printf("%-8s %7s %8s %10s %9s %10s %10s %8s %5s\n", "policy", "lr", "wall s", "samples/s", "accuracy",
                "computing", "waiting", "stale", "max");
    row<psync::Bsp>(model, data, options, base_rate);
    row<psync::Asp>(model, data, options, base_rate);
    row<psync::Ssp<3>>(model, data, options, base_rate);
    row<psync::Osp<20>>(model, data, options, base_rate);
    row<psync::Losp<20>>(model, data, options, base_rate);
    std::printf("\nsame number of local steps for every policy; wall time is what synchronization cost.\n"
                "lr: BSP and OSP average each round, ASP and SSP add every push, so ASP/SSP run at lr / %u\n"
                "and one round moves the model as far under every policy. stale: clocks behind the slowest worker.\n",
                options.workers);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "compare_policies: %s\n", e.what());
    return 1;
  }
}
