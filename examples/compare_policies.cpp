// Compare the four synchronization policies on the same model, data and network:
// softmax regression on Fashion-MNIST, 4 workers, emulated 1 Gbit/s links with
// 1 ms latency, worker 0 twice as slow. Prints one row per policy.
// (The full harness with time-to-accuracy, plots and traces is bench/compare_policies.)
#include <psync/psync.hpp>

#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>

namespace {

template <class Policy, class M>
void row(const M& model, const psync::data::TrainTest& data, const psync::LocalOptions& options) {
  const psync::RunReport r = psync::run_local(model, data.train, &data.test, options, Policy{});
  double compute = 0, wait = 0, wall = 0;
  for (const auto& w : r.workers) {
    compute += w.compute_s;
    wait += w.wait_s;
    wall += w.wall_s;
  }
  const auto staleness = r.staleness();
  std::printf("%-8s %8.2f %10.0f %9.3f %9.0f%% %9.0f%% %8.2f %5llu\n", r.policy.c_str(), r.wall_s, r.throughput(),
              r.final_accuracy(), 100 * compute / wall, 100 * wait / wall, staleness.mean(),
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
    options.learning_rate = 0.1f;
    options.snapshot_interval = std::chrono::milliseconds(0);  // evaluate the final model only
    options.network.worker_link.bandwidth_bytes_per_s = 125e6;     // 1 Gbit/s
    options.network.worker_link.latency = std::chrono::milliseconds(1);
    options.network.server_nic_bytes_per_s = 125e6;
    options.stragglers = {psync::Straggler{2.0}};

    std::printf("softmax regression on Fashion-MNIST, %u workers x %llu steps, batch %lld, lr %.2f\n",
                options.workers, static_cast<unsigned long long>(options.steps_per_worker),
                static_cast<long long>(options.batch_size), static_cast<double>(options.learning_rate));
    std::printf("network: 1 Gbit/s links, 1 ms latency, shared 1 Gbit/s server NIC; worker 0 is 2x slower\n\n");
    std::printf("%-8s %8s %10s %9s %10s %10s %8s %5s\n", "policy", "wall s", "samples/s", "accuracy", "computing",
                "waiting", "stale", "max");
    row<psync::Bsp>(model, data, options);
    row<psync::Asp>(model, data, options);
    row<psync::Ssp<3>>(model, data, options);
    row<psync::Osp<20>>(model, data, options);
    row<psync::Losp<20>>(model, data, options);
    std::printf("\nsame number of local steps for every policy; wall time is what synchronization cost.\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "compare_policies: %s\n", e.what());
    return 1;
  }
}
