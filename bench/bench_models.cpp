// Gradient cost of each model on Fashion-MNIST-shaped data (784 features, 10 classes)
// at batch sizes 1, 16, 64 and 256: the compute side of every policy comparison. The
// Cnn is LeNet-5-like (models/cnn.hpp), whose step costs more per parameter.

#include "psync/data/dataset.hpp"
#include "psync/data/synthetic.hpp"
#include "psync/models/cnn.hpp"
#include "psync/models/linear.hpp"
#include "psync/models/mlp.hpp"
#include "psync/models/softmax.hpp"

#include <benchmark/benchmark.h>

#include <Eigen/Core>

#include <cstdint>

namespace {

constexpr Eigen::Index inputs = 784;
constexpr int classes = 10;

psync::data::Batch make_batch(Eigen::Index size, bool regression) {
  psync::data::SyntheticOptions o;
  o.samples = size;
  o.dimension = inputs;
  o.classes = classes;
  const auto d = regression ? psync::data::make_synthetic_regression(o) : psync::data::make_synthetic_classification(o);
  return psync::data::whole(d);
}

// Measures steady state: the first call, which sizes the workspaces, is outside the loop.
template <class Model>
void run_gradient(benchmark::State& state, Model model, bool regression) {
  const auto batch = make_batch(state.range(0), regression);
  Eigen::VectorXf g(model.dimension());
  model.gradient(batch, g);
  for (auto _ : state) {
    benchmark::DoNotOptimize(model.gradient(batch, g));
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
  state.counters["params"] = static_cast<double>(model.dimension());
}

void linear_gradient(benchmark::State& state) { run_gradient(state, psync::models::LinearRegression(inputs), true); }
void softmax_gradient(benchmark::State& state) {
  run_gradient(state, psync::models::SoftmaxRegression(inputs, classes), false);
}
void mlp_gradient(benchmark::State& state) {
  run_gradient(state, psync::models::Mlp({inputs, 256, 128, classes}), false);
}

void cnn_gradient(benchmark::State& state) { run_gradient(state, psync::models::Cnn(), false); }

}  // namespace

BENCHMARK(linear_gradient)->Arg(1)->Arg(16)->Arg(64)->Arg(256);
BENCHMARK(softmax_gradient)->Arg(1)->Arg(16)->Arg(64)->Arg(256);
BENCHMARK(mlp_gradient)->Arg(1)->Arg(16)->Arg(64)->Arg(256);
BENCHMARK(cnn_gradient)->Arg(1)->Arg(16)->Arg(64)->Arg(256);

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("psync_build_flags", PSYNC_BUILD_FLAGS);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
