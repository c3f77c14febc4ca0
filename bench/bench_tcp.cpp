// TCP transport throughput and latency over loopback: push (worker -> server, one
// way), pull (a Pull answered by a Model) and push+pull (a Push answered by a Model
// in the same buffer, which is how the real server recycles buffers), for 1K to 10M
// floats, with one worker and with four. The echo server runs on its own thread.
//
// Run: bench_tcp --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
// Compare with iperf3 on the same machine the same day (see docs/wire-protocol.md).

#include <psync/transport/tcp.hpp>

#include <benchmark/benchmark.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using psync::Clock;
using psync::server_peer;
namespace msg = psync::msg;

// SO_SNDBUF/SO_RCVBUF for every connection, from PSYNC_TCP_SOCKET_BUFFER (0 = kernel autotuning).
int socket_buffer_bytes() {
  const char* v = std::getenv("PSYNC_TCP_SOCKET_BUFFER");
  return v ? std::atoi(v) : 0;
}

psync::TcpServerOptions server_options() {
  psync::TcpServerOptions o;
  o.socket_buffer_bytes = socket_buffer_bytes();
  return o;
}

psync::TcpOptions worker_options() {
  psync::TcpOptions o;
  o.socket_buffer_bytes = socket_buffer_bytes();
  return o;
}

// Answers every Push and Pull with a Model carrying the very buffer it received.
class EchoServer {
 public:
  EchoServer() : thread_([this] { run(); }) {}
  EchoServer(const EchoServer&) = delete;
  EchoServer& operator=(const EchoServer&) = delete;
  ~EchoServer() {
    stop_ = true;
    thread_.join();
  }

  std::uint16_t port() const { return server_.port(); }
  /// When the last push was taken off the server's receive queue.
  Clock::time_point last_push_arrival() const { return Clock::time_point(Clock::duration(last_push_.load())); }

 private:
  void run() {
    while (!stop_) {
      auto e = server_.receive(Clock::now() + 50ms);
      if (!e) continue;
      try {
        if (auto* p = std::get_if<msg::Push>(&e->message)) {
          last_push_.store(Clock::now().time_since_epoch().count());
          server_.send(e->from, msg::Model{p->clock + 1, 0, 0, std::move(p->update)});
        } else if (auto* q = std::get_if<msg::Pull>(&e->message)) {
          server_.send(e->from, msg::Model{q->clock, 0, 0, std::move(q->buffer)});
        }
      } catch (const psync::TransportError&) {
        // the worker left; nothing to answer
      }
    }
  }

  psync::TcpServer server_{server_options()};
  std::atomic<bool> stop_{false};
  std::atomic<Clock::rep> last_push_{0};
  std::thread thread_;  // last: starts after everything it uses
};

struct Cluster {
  explicit Cluster(psync::PeerId workers) {
    for (psync::PeerId id = 0; id < workers; ++id) {
      endpoints.emplace_back("127.0.0.1", echo.port(), id, worker_options());
      endpoints.back().send(server_peer, msg::Join{id, 0, "asp"});
    }
  }
  EchoServer echo;
  std::vector<psync::Tcp> endpoints;
};

Cluster& one_worker() {
  static Cluster c(1);
  return c;
}

Cluster& four_workers() {
  static Cluster c(4);
  return c;
}

// The next Model for this worker; nullopt (and the benchmark skipped) if none in 10 s.
std::optional<Eigen::VectorXf> await_model(benchmark::State& state, psync::Tcp& w) {
  auto e = w.receive(Clock::now() + 10s);
  if (!e || !std::holds_alternative<msg::Model>(e->message)) {
    state.SkipWithError("no model from the echo server within 10 s");
    return std::nullopt;
  }
  return std::move(std::get<msg::Model>(e->message).parameters);
}

void push(benchmark::State& state) {
  Cluster& c = one_worker();
  psync::Tcp& w = c.endpoints[0];
  const auto n = static_cast<Eigen::Index>(state.range(0));
  Eigen::VectorXf v = Eigen::VectorXf::Ones(n);
  for (auto _ : state) {
    const auto start = Clock::now();
    w.send(server_peer, msg::Push{0, 0, 1, std::move(v)});
    auto back = await_model(state, w);  // the buffer comes back (untimed) so nothing is allocated
    if (!back) break;
    state.SetIterationTime(std::chrono::duration<double>(c.echo.last_push_arrival() - start).count());
    v = std::move(*back);
  }
  state.SetBytesProcessed(state.iterations() * n * 4);
}

void pull(benchmark::State& state) {
  psync::Tcp& w = one_worker().endpoints[0];
  const auto n = static_cast<Eigen::Index>(state.range(0));
  Eigen::VectorXf v = Eigen::VectorXf::Ones(n);
  for (auto _ : state) {
    w.send(server_peer, msg::Pull{0, std::move(v)});  // only the size travels
    auto back = await_model(state, w);
    if (!back) break;
    v = std::move(*back);
  }
  state.SetBytesProcessed(state.iterations() * n * 4);
}

void push_pull(benchmark::State& state) {
  Cluster& c = state.threads() == 1 ? one_worker() : four_workers();
  psync::Tcp& w = c.endpoints[static_cast<std::size_t>(state.thread_index())];
  const auto n = static_cast<Eigen::Index>(state.range(0));
  Eigen::VectorXf v = Eigen::VectorXf::Ones(n);
  for (auto _ : state) {
    w.send(server_peer, msg::Push{0, 0, 1, std::move(v)});
    auto back = await_model(state, w);
    if (!back) break;
    v = std::move(*back);
  }
  state.SetBytesProcessed(state.iterations() * n * 4 * 2);
}

void sizes(benchmark::internal::Benchmark* b) {
  for (std::int64_t n : {1'000, 100'000, 1'000'000, 10'000'000}) b->Arg(n);
  b->ArgName("floats")->Unit(benchmark::kMicrosecond);
}

BENCHMARK(push)->Apply(sizes)->UseManualTime();
BENCHMARK(pull)->Apply(sizes)->UseRealTime();
BENCHMARK(push_pull)->Apply(sizes)->UseRealTime();
BENCHMARK(push_pull)->Arg(1'000'000)->ArgName("floats")->Threads(4)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace

int main(int argc, char** argv) {
#ifdef PSYNC_BUILD_FLAGS
  benchmark::AddCustomContext("psync_build", PSYNC_BUILD_FLAGS);
#endif
  benchmark::AddCustomContext("socket_buffer_bytes", std::to_string(socket_buffer_bytes()));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
