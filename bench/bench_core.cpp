// Core micro-benchmarks: how the server applies an update (Eigen `+=`, as in
// Server::on_push) against a plain loop; a push+pull round trip through a real
// in-process Server<_, Asp> from a raw endpoint (buffer recycled, as workers do);
// and each model's gradient per batch size.
//
// Run: bench_core --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <psync/core/server.hpp>
#include <psync/data/dataset.hpp>
#include <psync/models/mlp.hpp>
#include <psync/models/softmax.hpp>
#include <psync/policies/asp.hpp>
#include <psync/transport/in_process.hpp>

#include <benchmark/benchmark.h>

#include <pthread.h>
#include <sched.h>

#include <chrono>
#include <future>
#include <string>
#include <thread>
#include <vector>

#ifndef PSYNC_BUILD_FLAGS
#define PSYNC_BUILD_FLAGS "unknown"
#endif

namespace {

using namespace std::chrono_literals;
namespace msg = psync::msg;

// ---------------------------------------------------------------- apply

void BM_ApplyEigen(benchmark::State& state) {
  const auto n = static_cast<Eigen::Index>(state.range(0));
  Eigen::VectorXf params = Eigen::VectorXf::Random(n);
  const Eigen::VectorXf update = Eigen::VectorXf::Random(n) * 1e-6f;
  for (auto _ : state) {
    params += update;  // what Server::on_push does under ASP/SSP
    benchmark::DoNotOptimize(params.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * n * 3 * 4);
}

void BM_ApplyRawLoop(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  std::vector<float> a(n, 1.0f), b(n, 1e-6f);
  for (auto _ : state) {
    float* pa = a.data();
    const float* pb = b.data();
    for (std::size_t i = 0; i < n; ++i) pa[i] += pb[i];
    benchmark::DoNotOptimize(a.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(n) * 3 * 4);
}

// Both, interleaved in one loop so they see the same machine state; the counter
// eigen_over_raw is Eigen's time divided by the raw loop's (1.0 = equal).
void BM_ApplyRatio(benchmark::State& state) {
  const auto n = static_cast<Eigen::Index>(state.range(0));
  Eigen::VectorXf params = Eigen::VectorXf::Random(n);
  const Eigen::VectorXf update = Eigen::VectorXf::Random(n) * 1e-6f;
  std::vector<float> a(static_cast<std::size_t>(n), 1.0f), b(static_cast<std::size_t>(n), 1e-6f);
  double eigen_ns = 0, raw_ns = 0;
  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    params += update;
    benchmark::DoNotOptimize(params.data());
    benchmark::ClobberMemory();
    auto t1 = std::chrono::steady_clock::now();
    float* pa = a.data();
    const float* pb = b.data();
    for (std::size_t i = 0; i < a.size(); ++i) pa[i] += pb[i];
    benchmark::DoNotOptimize(a.data());
    benchmark::ClobberMemory();
    auto t2 = std::chrono::steady_clock::now();
    eigen_ns += std::chrono::duration<double, std::nano>(t1 - t0).count();
    raw_ns += std::chrono::duration<double, std::nano>(t2 - t1).count();
  }
  const double it = static_cast<double>(state.iterations());
  state.counters["eigen_ns"] = eigen_ns / it;
  state.counters["raw_ns"] = raw_ns / it;
  state.counters["eigen_over_raw"] = raw_ns > 0 ? eigen_ns / raw_ns : 0;
}

// ---------------------------------------------------------------- real server round trip

// The server only needs the parameters.
struct Params {
  Eigen::VectorXf p;
  Eigen::Ref<const Eigen::VectorXf> parameters() const { return p; }
  Eigen::Ref<Eigen::VectorXf> parameters() { return p; }
};
static_assert(psync::ParameterSet<Params>);

// Where the two threads of a round trip run.
enum class Placement {
  unpinned,  // wherever the scheduler puts them (what a user gets)
  same_cpu,  // both pinned to CPU 0: a hop is a context switch, no cross-core wake-up
  split,     // worker on CPU 0, server on CPU 1: every hop wakes the other core
};

bool pin_to(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof(set), &set) == 0;
}

void unpin() {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c = 0; c < CPU_SETSIZE; ++c) CPU_SET(c, &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

// One worker (a raw in-process endpoint, no Worker class) against a real
// Server<Params, Asp>: Join once, then Push -> Model, the Model's buffer becoming
// the next Push's update. Measures one full round trip: two mailbox hops, the
// server's checks and apply (params += update), its copy of the model into the
// reply, and the worker writing its next update.
void server_push_pull(benchmark::State& state, Placement where) {
  const auto n = static_cast<Eigen::Index>(state.range(0));
  const bool two_cpus = std::thread::hardware_concurrency() >= 2;
  if (where == Placement::split && !two_cpus) {
    state.SkipWithError("needs 2 CPUs");
    return;
  }
  psync::InProcessHub hub;
  psync::ServerOptions so;
  so.expected_workers = 1;
  psync::Server<Params, psync::Asp> server(Params{Eigen::VectorXf::Zero(n)}, so);
  auto server_ep = hub.endpoint(psync::server_peer);
  auto worker = hub.endpoint(0);
  auto served = std::async(std::launch::async, [&] {
    if (where != Placement::unpinned) pin_to(where == Placement::split ? 1 : 0);
    return server.run(server_ep);
  });
  if (where != Placement::unpinned) pin_to(0);

  auto await_model = [&]() -> msg::Model {
    auto env = worker.receive(psync::Clock::now() + 10s);
    if (!env) throw std::runtime_error("bench_core: no reply from the server");
    auto* m = std::get_if<msg::Model>(&env->message);
    if (!m) {
      const auto* e = std::get_if<msg::Error>(&env->message);
      throw std::runtime_error("bench_core: unexpected reply" + (e ? ": " + e->text : std::string()));
    }
    return std::move(*m);
  };
  worker.send(psync::server_peer, msg::Join{0, static_cast<std::uint64_t>(n), "asp"});
  // The next push's vector: the one the reply handed back (a shared reply carries the
  // model in a snapshot and returns the push's vector as `spare`), or a new one.
  const auto take_buffer = [n](msg::Model& r) {
    if (r.spare.size() == n) return std::move(r.spare);
    if (r.parameters.size() == n) return std::move(r.parameters);
    return Eigen::VectorXf(n);
  };
  msg::Model m = await_model();
  Eigen::VectorXf buffer = take_buffer(m);
  std::uint64_t clock = 0, version = m.version;
  for (auto _ : state) {
    // The reply handed this buffer back; write the next update over it,
    // as a worker's gradient step does (sending the model as an update would double
    // it every push until the server refuses the infinity).
    buffer.setConstant(1e-7f);
    worker.send(psync::server_peer, msg::Push{clock++, version, 1, std::move(buffer)});
    m = await_model();
    version = m.version;
    buffer = take_buffer(m);
  }
  worker.send(psync::server_peer, msg::Leave{msg::LeaveReason::finished});
  served.get();
  unpin();
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * n * 2 * 4);
}

void BM_ServerPushPull(benchmark::State& state) { server_push_pull(state, Placement::unpinned); }
void BM_ServerPushPullSameCpu(benchmark::State& state) { server_push_pull(state, Placement::same_cpu); }
void BM_ServerPushPullSplit(benchmark::State& state) { server_push_pull(state, Placement::split); }

// ---------------------------------------------------------------- gradients

psync::data::Batch random_batch(Eigen::Index n) {
  psync::data::Batch b;
  b.features = (Eigen::MatrixXf::Random(784, n).array() + 1.0f) * 0.5f;  // pixels in [0, 1]
  b.labels.resize(n);
  for (Eigen::Index i = 0; i < n; ++i) b.labels[i] = static_cast<int>(i % 10);
  return b;
}

template <class M>
void gradient_bench(benchmark::State& state, const M& model) {
  const auto n = static_cast<Eigen::Index>(state.range(0));
  const auto batch = random_batch(n);
  Eigen::VectorXf g = Eigen::VectorXf::Zero(model.parameters().size());
  (void)model.gradient(batch, g);  // sizes the model's scratch buffers
  for (auto _ : state) {
    benchmark::DoNotOptimize(model.gradient(batch, g));
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * n);
  state.counters["parameters"] = static_cast<double>(model.parameters().size());
}

void BM_GradientSoftmax(benchmark::State& state) {
  gradient_bench(state, psync::models::SoftmaxRegression(784, 10));
}

void BM_GradientMlp(benchmark::State& state) {
  psync::models::Mlp m({784, 256, 128, 10});
  m.initialize(1);
  gradient_bench(state, m);
}

}  // namespace

BENCHMARK(BM_ApplyEigen)->Arg(1 << 10)->Arg(100'000)->Arg(1'000'000)->Arg(10'000'000);
BENCHMARK(BM_ApplyRawLoop)->Arg(1 << 10)->Arg(100'000)->Arg(1'000'000)->Arg(10'000'000);
BENCHMARK(BM_ApplyRatio)->Arg(1 << 10)->Arg(100'000)->Arg(1'000'000)->Arg(10'000'000);
BENCHMARK(BM_ServerPushPull)->Arg(1 << 10)->Arg(100'000)->Arg(1'000'000)->UseRealTime();
BENCHMARK(BM_ServerPushPullSameCpu)->Arg(1 << 10)->UseRealTime();
BENCHMARK(BM_ServerPushPullSplit)->Arg(1 << 10)->UseRealTime();
BENCHMARK(BM_GradientSoftmax)->Arg(1)->Arg(16)->Arg(64)->Arg(256);
BENCHMARK(BM_GradientMlp)->Arg(1)->Arg(16)->Arg(64)->Arg(256);

int main(int argc, char** argv) {
  benchmark::AddCustomContext("psync_build_flags", PSYNC_BUILD_FLAGS);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
