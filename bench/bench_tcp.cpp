// TCP over loopback, two parts.
//
// 1. Transport only (Google Benchmark): an echo server hands every buffer straight
//    back. push (worker -> server, one way), pull (a Pull answered by a Model) and
//    push+pull (a Push answered by a Model in the same buffer), 1K to 10M floats,
//    one worker and four. Compare with iperf3 the same day (docs/wire-protocol.md).
// 2. Real server path (own timing, after part 1): a real `psync::Server<Flat, Asp>`
//    over `TcpServer` sums each push into the model and replies with the model; one
//    worker at 1K, 1M and 10M floats, then four workers at 1M floats (ASP and BSP),
//    reported as per-worker round-trip time and aggregate payload GB/s. When the
//    library has `ServerOptions::share_replies`, each case runs interleaved with the
//    per-reply copy restored (`share_replies = false`, the server before snapshots)
//    and with shared snapshots, and prints the ratio and the model copies per round.
//
// Run: bench_tcp --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//      bench_tcp --real-server=only [--reps=5]   (part 2 alone)
//      bench_tcp --real-server=off               (part 1 alone)

#include <psync/core/server.hpp>
#include <psync/policies/asp.hpp>
#include <psync/policies/bsp.hpp>
#include <psync/transport/tcp.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <latch>
#include <memory>
#include <optional>
#include <stdexcept>
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
  state.SetLabel("transport only");
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
  state.SetLabel("transport only");
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
  state.SetLabel("transport only");
}

void sizes(benchmark::internal::Benchmark* b) {
  for (std::int64_t n : {1'000, 100'000, 1'000'000, 10'000'000}) b->Arg(n);
  b->ArgName("floats")->Unit(benchmark::kMicrosecond);
}

BENCHMARK(push)->Apply(sizes)->UseManualTime();
BENCHMARK(pull)->Apply(sizes)->UseRealTime();
BENCHMARK(push_pull)->Apply(sizes)->UseRealTime();
BENCHMARK(push_pull)->Arg(1'000'000)->ArgName("floats")->Threads(4)->UseRealTime()->Unit(benchmark::kMicrosecond);


// ---- part 2: the real server path ----

// The smallest ParameterSet: the server needs nothing else.
struct Flat {
  Eigen::VectorXf w;
  Eigen::VectorXf& parameters() { return w; }
  const Eigen::VectorXf& parameters() const { return w; }
};

// Sets `share_replies` where the library has it; false on a library built before it.
template <class O>
bool set_share_replies(O& o, bool share) {
  if constexpr (requires { o.share_replies; }) {
    o.share_replies = share;
    return true;
  } else {
    (void)o;
    (void)share;
    return false;
  }
}

struct RealRun;
template <class R>
void read_copy_counts(const R& report, RealRun& run);

struct RealRun {
  std::vector<double> rtt_s;  // every timed round trip of every worker
  double wall_s = 0;          // first timed push to last timed reply, all workers
  std::uint64_t rounds = 0;   // timed round trips, all workers
  std::uint64_t versions = 0, replies = 0, copies = 0;
  bool counted = false;       // the report has the reply/copy counters
};

// The server's reply and copy counters, where the library reports them.
template <class R>
void read_copy_counts(const R& report, RealRun& run) {
  if constexpr (requires { report.model_copies; }) {
    run.counted = true;
    run.replies = report.model_replies;
    run.copies = report.model_copies;
  } else {
    (void)report;
    (void)run;
  }
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

msg::Model expect_model(psync::Tcp& t, const char* what) {
  auto e = t.receive(Clock::now() + 30s);
  if (!e) throw std::runtime_error(std::string("real server: no reply to the ") + what + " within 30 s");
  if (auto* err = std::get_if<msg::Error>(&e->message)) throw std::runtime_error("real server refused the " + std::string(what) + ": " + err->text);
  if (!std::holds_alternative<msg::Model>(e->message)) {
    throw std::runtime_error(std::string("real server: unexpected '") + std::string(psync::message_name(e->message)) +
                             "' after the " + what);
  }
  return std::move(std::get<msg::Model>(e->message));
}

// One server, `workers` workers, each `warmup + rounds` push/reply round trips of
// n floats (zeros: the sum and the checks cost what they always cost, and the reply
// can go straight back out as the next push, so the worker allocates nothing).
template <class Policy>
RealRun real_server_run(Eigen::Index n, psync::PeerId workers, int warmup, int rounds, bool share) {
  psync::ServerOptions so;
  so.expected_workers = workers;
  so.join_timeout = 30s;
  so.peer_timeout = 600s;
  set_share_replies(so, share);
  psync::Server<Flat, Policy> server(Flat{Eigen::VectorXf::Zero(n)}, so);
  psync::TcpServer transport(server_options());
  auto served = std::async(std::launch::async, [&] { return server.run(transport); });

  std::vector<std::vector<double>> rtts(workers);
  std::vector<Clock::time_point> first(workers), last(workers);
  std::vector<std::exception_ptr> errors(workers);
  std::latch ready(static_cast<std::ptrdiff_t>(workers));
  std::vector<std::thread> threads;
  for (psync::PeerId id = 0; id < workers; ++id) {
    threads.emplace_back([&, id] {
      try {
        psync::Tcp ep("127.0.0.1", transport.port(), id, worker_options());
        ep.send(server_peer, msg::Join{id, static_cast<std::uint64_t>(n), Policy{}.name()});
        msg::Model m = expect_model(ep, "join");
        Eigen::VectorXf buffer = std::move(m.parameters);
        std::uint64_t version = m.version, clock = m.min_clock;
        ready.arrive_and_wait();
        rtts[id].reserve(static_cast<std::size_t>(rounds));
        for (int r = 0; r < warmup + rounds; ++r) {
          const auto t0 = Clock::now();
          if (r == warmup) first[id] = t0;
          ep.send(server_peer, msg::Push{clock++, version, 1, std::move(buffer)});
          m = expect_model(ep, "push");
          const auto t1 = Clock::now();
          if (r >= warmup) rtts[id].push_back(std::chrono::duration<double>(t1 - t0).count());
          last[id] = t1;
          buffer = std::move(m.parameters);
          version = m.version;
        }
        ep.send(server_peer, msg::Leave{msg::LeaveReason::finished});
      } catch (...) {
        errors[id] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  if (served.wait_for(30s) != std::future_status::ready) {
    server.stop();
    if (served.wait_for(30s) != std::future_status::ready) {
      std::fprintf(stderr, "real server did not stop within 60 s\n");
      std::abort();
    }
  }
  const psync::ServerReport report = served.get();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
  RealRun run;
  for (auto& v : rtts) run.rtt_s.insert(run.rtt_s.end(), v.begin(), v.end());
  run.rounds = run.rtt_s.size();
  run.wall_s = std::chrono::duration<double>(*std::max_element(last.begin(), last.end()) -
                                             *std::min_element(first.begin(), first.end()))
                   .count();
  run.versions = report.version;
  read_copy_counts(report, run);
  return run;
}

struct Summary {
  double rtt_ms = 0;    // median of the repetitions' median round trips
  double gbps = 0;      // median of the repetitions' aggregate payload rates (both ways)
  double copies_per_reply = -1;
  double replies_per_version = 0;
};

// `reps` runs of each mode, interleaved (copy, shared, copy, shared, ...).
template <class Policy>
std::vector<Summary> real_server_case(Eigen::Index n, psync::PeerId workers, int warmup, int rounds, int reps,
                                      const std::vector<bool>& modes) {
  std::vector<std::vector<double>> rtt(modes.size()), gbps(modes.size());
  std::vector<Summary> out(modes.size());
  for (int r = 0; r < reps; ++r) {
    for (std::size_t k = 0; k < modes.size(); ++k) {
      const RealRun run = real_server_run<Policy>(n, workers, warmup, rounds, modes[k]);
      rtt[k].push_back(median(run.rtt_s) * 1e3);
      gbps[k].push_back(static_cast<double>(run.rounds) * 2.0 * 4.0 * static_cast<double>(n) / run.wall_s / 1e9);
      if (run.counted && run.replies > 0) {
        out[k].copies_per_reply = static_cast<double>(run.copies) / static_cast<double>(run.replies);
        out[k].replies_per_version = run.versions ? static_cast<double>(run.replies) / static_cast<double>(run.versions) : 0;
      }
    }
  }
  for (std::size_t k = 0; k < modes.size(); ++k) {
    out[k].rtt_ms = median(rtt[k]);
    out[k].gbps = median(gbps[k]);
  }
  return out;
}

template <class Policy>
void real_server_row(Eigen::Index n, psync::PeerId workers, int warmup, int rounds, int reps, bool comparable) {
  const std::vector<bool> modes = comparable ? std::vector<bool>{false, true} : std::vector<bool>{true};
  const auto s = real_server_case<Policy>(n, workers, warmup, rounds, reps, modes);
  const std::string policy = Policy{}.name();
  auto copies = [&](const Summary& x) {
    if (x.copies_per_reply < 0) return std::string("-");
    char b[64];
    // A round is one reply to each worker.
    std::snprintf(b, sizeof b, "%.2f", x.copies_per_reply * static_cast<double>(workers));
    return std::string(b);
  };
  if (comparable) {
    const Summary& before = s[0];
    const Summary& after = s[1];
    std::string saved = "-";
    if (before.copies_per_reply >= 0 && after.copies_per_reply >= 0) {
      char b[64];
      std::snprintf(b, sizeof b, "%.2f", (before.copies_per_reply - after.copies_per_reply) * static_cast<double>(workers));
      saved = b;
    }
    std::printf("| %-4s | %7u | %10lld | %9.3f | %9.3f | %5.2fx | %7.2f | %7.2f | %6s | %6s | %6s |\n", policy.c_str(),
                workers, static_cast<long long>(n), before.rtt_ms, after.rtt_ms, before.rtt_ms / after.rtt_ms, before.gbps,
                after.gbps, copies(before).c_str(), copies(after).c_str(), saved.c_str());
  } else {
    std::printf("| %-4s | %7u | %10lld | %9.3f | %7.2f | %6s |\n", policy.c_str(), workers, static_cast<long long>(n),
                s[0].rtt_ms, s[0].gbps, copies(s[0]).c_str());
  }
  std::fflush(stdout);
}

void real_server_table(int reps) {
  psync::ServerOptions probe;
  const bool comparable = set_share_replies(probe, true);
  std::printf("\nReal server path: psync::Server<Flat, P> over TcpServer, loopback; sum each push, reply with the model.\n");
  std::printf("RTT: median push->reply round trip per worker (median of %d runs); GB/s: payload both ways, all workers, "
              "over the timed wall time.\n", reps);
  if (comparable) {
    std::printf("before = share_replies=false (the model copied into every reply), after = shared snapshots; runs interleaved.\n");
    std::printf("copies/round = model copies the server made per round of one reply to each worker; saved = before - after.\n\n");
    std::printf("| pol  | workers |     floats | before ms |  after ms | ratio | before GB/s | after GB/s | copies/round before | after | saved |\n");
    std::printf("|------|--------:|-----------:|----------:|----------:|------:|--------:|--------:|-------:|-------:|-------:|\n");
  } else {
    std::printf("(this library has no share_replies option: one mode, as built)\n\n");
    std::printf("| pol  | workers |     floats |    RTT ms |    GB/s | copies/round |\n");
    std::printf("|------|--------:|-----------:|----------:|--------:|-------:|\n");
  }
  real_server_row<psync::Asp>(1'000, 1, 200, 2000, reps, comparable);
  real_server_row<psync::Asp>(1'000'000, 1, 5, 60, reps, comparable);
  real_server_row<psync::Asp>(10'000'000, 1, 2, 12, reps, comparable);
  real_server_row<psync::Asp>(1'000'000, 4, 5, 40, reps, comparable);
  real_server_row<psync::Bsp>(1'000'000, 4, 5, 40, reps, comparable);
}

}  // namespace

int main(int argc, char** argv) {
#ifdef PSYNC_BUILD_FLAGS
  benchmark::AddCustomContext("psync_build", PSYNC_BUILD_FLAGS);
#endif
  benchmark::AddCustomContext("socket_buffer_bytes", std::to_string(socket_buffer_bytes()));
  // Our own flags, taken out before Google Benchmark sees the rest.
  std::string real = "on";
  int reps = 5;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--real-server=", 14) == 0) {
      real = argv[i] + 14;
    } else if (std::strncmp(argv[i], "--reps=", 7) == 0) {
      reps = std::atoi(argv[i] + 7);
    } else {
      argv[kept++] = argv[i];
    }
  }
  argc = kept;
  if ((real != "on" && real != "off" && real != "only") || reps < 1) {
    std::fprintf(stderr, "usage: bench_tcp [--real-server=on|off|only] [--reps=N>=1] [Google Benchmark flags]\n");
    return 2;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (real != "only") benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  if (real != "off") {
    try {
      real_server_table(reps);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "real server path: %s\n", e.what());
      return 1;
    }
  }
  return 0;
}
