// Quick start: train softmax regression with 4 workers under BSP, all in this
// process, on synthetic data. Change `psync::Bsp` to `psync::Asp`,
// `psync::Ssp<3>` or `psync::Osp<20>` to switch the synchronization policy.
#include <psync/harness.hpp>
#include <psync/models.hpp>
#include <psync/psync.hpp>

#include <cstdio>

int main() {
  using Policy = psync::Bsp;

  psync::data::SyntheticOptions data_options;
  data_options.samples = 8192;
  data_options.dimension = 32;
  data_options.classes = 4;
  const auto all = psync::data::make_synthetic_classification(data_options);
  const auto train = all.subset(0, 6144);
  const auto test = all.subset(6144, 2048);

  psync::models::SoftmaxRegression model(train.dimension(), train.num_classes);

  psync::LocalOptions options;
  options.workers = 4;
  options.steps_per_worker = 300;
  options.learning_rate = 0.2f;
  options.batch_size = 32;

  const psync::RunReport report = psync::run_local(model, train, &test, options, Policy{});

  std::printf("policy %s: %.2f s, %.0f samples/s, test accuracy %.3f\n", report.policy.c_str(), report.wall_s,
              report.throughput(), report.final_accuracy());
  for (const auto& w : report.workers) {
    std::printf("  worker %u: %llu steps, compute %.3f s, waiting %.3f s\n", w.id,
                static_cast<unsigned long long>(w.steps), w.compute_s, w.wait_s);
  }
  return report.final_accuracy() > 0.8 ? 0 : 1;
}
