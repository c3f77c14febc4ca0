// Aggregate push+pull throughput against K = 1, 2, 4 server shards, each shard its own
// process, over loopback TCP (issue 9).
//
// What runs: this program spawns itself K times as shard servers (`shards --serve
// I/K ...`): each is a real `psync::Server<psync::ParameterSlice, P>` over a
// `psync::TcpServer` holding slice I of an N-float model (`psync::ShardLayout`), the
// same server class, transport and slicing psync-train's `--role server --shard I/K`
// runs (tools/psync_train/server_role.cpp, serve_shard), minus the data loading and
// the progress lines. The parent then runs W worker threads, each a `psync::Sharded<
// psync::Tcp>` over one connection per shard (as psync-train's worker of sharded
// servers builds it), doing warmup + rounds push->reply round trips of the whole
// model: the push is cut into K slices, the reply reassembled from K answers. Each
// worker times its own round trips (steady clock around send + receive); a run's
// aggregate rate is the payload both ways of all timed round trips over the wall time
// from the first timed push to the last timed reply. K = 1 uses the same Sharded
// adapter over one shard, so the columns differ only by the split.
//
// Why self-spawning rather than psync-train: the model size is exact (1M or 10M
// floats; psync-train's is whatever --model and --data make it), and the shard
// processes do nothing but serve (no dataset in memory, no evaluation), so what is
// measured is the server and transport path alone.
//
// The K values run interleaved (K=1, K=2, K=4, K=1, ...) for --reps repetitions and
// every figure is the median over them. On a machine with fewer cores than K shard
// processes + workers, all of them share the same cores: the table is not K
// machines' scaling. Differences between K there mix the cost of the split (K
// messages per push and per reply, reassembly) with how the processes share the
// cores (one shard process is one server loop and one I/O thread for every worker;
// K processes spread that over the cores the workers also need).
//
// Run: shards [--reps=5] [--floats=1000000,10000000] [--workers=4] [--policies=asp,bsp]

// Boost 1.74's Asio needs <utility> first under C++20.
#include <utility>

#include <psync/core/server.hpp>
#include <psync/core/sharding.hpp>
#include <psync/policies/asp.hpp>
#include <psync/policies/bsp.hpp>
#include <psync/transport/sharded.hpp>
#include <psync/transport/tcp.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <latch>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace {

using namespace std::chrono_literals;
using psync::Clock;
using psync::server_peer;
namespace msg = psync::msg;

// ---- the shard server process (--serve I/K) ----

template <class P>
int serve(std::uint32_t index, std::uint32_t count, Eigen::Index n, std::uint32_t workers) {
  const psync::ShardLayout layout(n, count);
  psync::ServerOptions so;
  so.expected_workers = workers;
  so.join_timeout = 60s;
  so.peer_timeout = 600s;
  psync::Server<psync::ParameterSlice, P> server(
      psync::ParameterSlice(Eigen::VectorXf::Zero(layout.size(index))), so);
  psync::TcpServerOptions to;
  to.address = "127.0.0.1";
  to.limits.expected_dimension = static_cast<std::uint64_t>(layout.size(index));
  to.frame_timeout = 60s;
  psync::TcpServer transport(to);
  std::printf("port %u\n", static_cast<unsigned>(transport.port()));
  std::fflush(stdout);
  const psync::ServerReport r = server.run(transport);
  transport.close();
  std::printf("shard %u/%u done: version %llu, %llu updates\n", index, count,
              static_cast<unsigned long long>(r.version), static_cast<unsigned long long>(r.updates_applied));
  return 0;
}

// ---- the parent: shard processes ----

struct Child {
  pid_t pid = -1;
  int out = -1;  // read end of its stdout
  std::string text;
};

// Reads from `c.out` into `c.text` until it holds a line, EOF, or the deadline; false at the deadline.
bool read_until(Child& c, Clock::time_point deadline, bool until_eof) {
  char buf[512];
  while (true) {
    if (!until_eof && c.text.find('\n') != std::string::npos) return true;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{c.out, POLLIN, 0};
    const int rc = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
    if (rc < 0 && errno != EINTR) throw std::runtime_error(std::string("poll: ") + std::strerror(errno));
    if (rc <= 0) continue;
    const ssize_t got = ::read(c.out, buf, sizeof buf);
    if (got < 0 && errno != EINTR) throw std::runtime_error(std::string("read: ") + std::strerror(errno));
    if (got == 0) return true;  // EOF
    if (got > 0) c.text.append(buf, static_cast<std::size_t>(got));
  }
}

Child spawn_shard(const std::vector<std::string>& args) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  Child c;
  const int rc = ::posix_spawn(&c.pid, "/proc/self/exe", &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    throw std::runtime_error(std::string("posix_spawn of a shard server: ") + std::strerror(rc));
  }
  c.out = fds[0];
  return c;
}

// Reads `c`'s output to EOF and waits for it to exit, both within the deadline, else
// kills it; returns a problem, or "".
std::string reap(Child& c, Clock::time_point deadline) {
  if (c.pid < 0) return "";
  const bool eof = read_until(c, deadline, true);  // EOF: it has closed its stdout, i.e. it is exiting
  if (c.out >= 0) ::close(c.out);
  c.out = -1;
  int status = 0;
  while (true) {
    const pid_t r = ::waitpid(c.pid, &status, WNOHANG);
    if (r == c.pid) break;
    if (r < 0) return std::string("waitpid: ") + std::strerror(errno);
    if (!eof || Clock::now() >= deadline) {
      ::kill(c.pid, SIGKILL);
      ::waitpid(c.pid, &status, 0);
      c.pid = -1;
      return "did not exit within its deadline (killed)";
    }
    // Between its EOF and its exit status: poll waitpid, bounded by the deadline.
    std::this_thread::sleep_for(1ms);
  }
  c.pid = -1;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return "";
  return WIFEXITED(status) ? "exited " + std::to_string(WEXITSTATUS(status))
                           : "died on signal " + std::to_string(WTERMSIG(status));
}

// ---- the parent: one run ----

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

struct Run {
  std::vector<double> worker_rtt_ms;  // each worker's median round trip
  double gbps = 0;                    // payload both ways, all workers, over the timed wall time
};

msg::Model expect_model(psync::Sharded<psync::Tcp>& t, const char* what) {
  auto e = t.receive(Clock::now() + 60s);
  if (!e) throw std::runtime_error(std::string("no reply to the ") + what + " within 60 s");
  if (auto* err = std::get_if<msg::Error>(&e->message)) throw std::runtime_error(std::string("the ") + what + " was refused: " + err->text);
  if (!std::holds_alternative<msg::Model>(e->message)) {
    throw std::runtime_error(std::string("unexpected '") + std::string(psync::message_name(e->message)) + "' after the " + what);
  }
  return std::move(std::get<msg::Model>(e->message));
}

template <class P>
Run run(const std::string& policy, std::uint32_t k, Eigen::Index n, std::uint32_t workers, int warmup, int rounds) {
  const psync::ShardLayout layout(n, k);
  std::vector<Child> children;
  std::string error;
  std::vector<std::vector<double>> rtts(workers);
  std::vector<Clock::time_point> first(workers), last(workers);
  std::vector<std::exception_ptr> errors(workers);
  try {
    std::vector<std::uint16_t> ports;
    for (std::uint32_t i = 0; i < k; ++i) {
      children.push_back(spawn_shard({"shards", "--serve=" + std::to_string(i) + "/" + std::to_string(k),
                                      "--floats=" + std::to_string(n), "--policies=" + policy,
                                      "--workers=" + std::to_string(workers)}));
      Child& c = children.back();
      if (!read_until(c, Clock::now() + 30s, false) || c.text.rfind("port ", 0) != 0) {
        throw std::runtime_error("shard " + std::to_string(i) + "/" + std::to_string(k) +
                                 " printed no port within 30 s (got '" + c.text + "')");
      }
      ports.push_back(static_cast<std::uint16_t>(std::stoul(c.text.substr(5))));
    }
    std::latch ready(static_cast<std::ptrdiff_t>(workers));
    std::vector<std::thread> threads;
    for (psync::PeerId id = 0; id < workers; ++id) {
      threads.emplace_back([&, id] {
        bool arrived = false;
        try {
          std::vector<psync::Tcp> eps;
          std::vector<std::string> names;
          for (std::uint32_t i = 0; i < k; ++i) {
            psync::TcpOptions o;
            o.connect_timeout = 30s;
            o.frame_timeout = 60s;
            o.limits.expected_dimension = static_cast<std::uint64_t>(layout.size(i));
            eps.emplace_back("127.0.0.1", ports[i], id, o);
            names.push_back("127.0.0.1:" + std::to_string(ports[i]));
          }
          psync::ShardedOptions sho;
          sho.equal_versions = psync::shard_versions_agree<P>;
          psync::Sharded<psync::Tcp> t(std::move(eps), std::move(names), n, sho);
          t.send(server_peer, msg::Join{id, static_cast<std::uint64_t>(n), P{}.name()});
          msg::Model m = expect_model(t, "join");
          Eigen::VectorXf buffer = std::move(m.parameters);
          std::uint64_t version = m.version, clock = m.min_clock;
          arrived = true;
          ready.arrive_and_wait();
          rtts[id].reserve(static_cast<std::size_t>(rounds));
          for (int r = 0; r < warmup + rounds; ++r) {
            const auto t0 = Clock::now();
            if (r == warmup) first[id] = t0;
            t.send(server_peer, msg::Push{clock++, version, 1, std::move(buffer)});
            m = expect_model(t, "push");
            const auto t1 = Clock::now();
            if (r >= warmup) rtts[id].push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
            last[id] = t1;
            buffer = std::move(m.parameters);
            version = m.version;
          }
          t.send(server_peer, msg::Leave{msg::LeaveReason::finished});
        } catch (...) {
          errors[id] = std::current_exception();
          if (!arrived) ready.count_down();  // the others must not wait for this one
        }
      });
    }
    for (auto& th : threads) th.join();
    for (auto& e : errors) {
      if (e) std::rethrow_exception(e);
    }
  } catch (const std::exception& e) {
    error = e.what();
    for (auto& c : children) {
      if (c.pid > 0) ::kill(c.pid, SIGTERM);
    }
  }
  // Every shard must have applied every push of every worker (its last line says how many).
  const std::string applied = ", " + std::to_string(workers * static_cast<std::uint64_t>(warmup + rounds)) + " updates\n";
  for (std::size_t i = 0; i < children.size(); ++i) {
    const std::string shard = "shard " + std::to_string(i) + "/" + std::to_string(k);
    const std::string problem = reap(children[i], Clock::now() + 30s);
    if (!problem.empty() && error.empty()) error = shard + " " + problem;
    if (error.empty() && children[i].text.find(shard + " done") == std::string::npos) error = shard + " printed no summary";
    if (error.empty() && children[i].text.find(applied) == std::string::npos) {
      error = shard + " did not apply all " + applied.substr(2, applied.size() - 3) + ": it said '" + children[i].text + "'";
    }
  }
  if (!error.empty()) throw std::runtime_error(policy + ", K=" + std::to_string(k) + ": " + error);
  Run out;
  std::uint64_t timed = 0;
  for (auto& v : rtts) {
    out.worker_rtt_ms.push_back(median(v));
    timed += v.size();
  }
  const double wall = std::chrono::duration<double>(*std::max_element(last.begin(), last.end()) -
                                                    *std::min_element(first.begin(), first.end()))
                          .count();
  out.gbps = static_cast<double>(timed) * 2.0 * 4.0 * static_cast<double>(n) / wall / 1e9;
  return out;
}

std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= s.size()) {
    const std::size_t comma = s.find(',', start);
    out.push_back(s.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "shards: %s\nusage: shards [--reps=N>=1] [--floats=N,N,...] [--workers=N] [--policies=asp,bsp] "
               "[--shards=1,2,4]\n",
               why.c_str());
  std::exit(2);
}

template <class P>
void table_rows(const std::string& policy, const std::vector<std::uint32_t>& ks, Eigen::Index n,
                std::uint32_t workers, int reps) {
  // Enough round trips for a stable median, few enough for a busy 2-core machine.
  const int rounds = n >= 5'000'000 ? 8 : 30;
  const int warmup = n >= 5'000'000 ? 2 : 4;
  std::vector<std::vector<std::vector<double>>> rtt(ks.size(), std::vector<std::vector<double>>(workers));
  std::vector<std::vector<double>> gbps(ks.size());
  for (int r = 0; r < reps; ++r) {
    for (std::size_t j = 0; j < ks.size(); ++j) {  // interleaved: K=1, 2, 4, 1, 2, 4, ...
      const Run x = run<P>(policy, ks[j], n, workers, warmup, rounds);
      for (std::uint32_t w = 0; w < workers; ++w) rtt[j][w].push_back(x.worker_rtt_ms[w]);
      gbps[j].push_back(x.gbps);
    }
  }
  for (std::size_t j = 0; j < ks.size(); ++j) {
    std::string per;
    std::vector<double> meds;
    for (std::uint32_t w = 0; w < workers; ++w) {
      meds.push_back(median(rtt[j][w]));
      char b[32];
      std::snprintf(b, sizeof b, "%s%.2f", w ? " / " : "", meds.back());
      per += b;
    }
    const auto [lo, hi] = std::minmax_element(gbps[j].begin(), gbps[j].end());
    std::printf("| %-4s | %9lld | %2u | %-37s | %6.3f | %5.3f-%5.3f |\n", policy.c_str(), static_cast<long long>(n),
                ks[j], per.c_str(), median(gbps[j]), *lo, *hi);
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  std::string serve_spec;
  std::vector<std::string> policies{"asp", "bsp"};
  std::vector<Eigen::Index> floats{1'000'000};
  std::vector<std::uint32_t> ks{1, 2, 4};
  std::uint32_t workers = 4;
  int reps = 5;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      const auto value = [&](const char* flag) -> std::optional<std::string> {
        const std::string f = std::string(flag) + "=";
        if (a.rfind(f, 0) == 0) return a.substr(f.size());
        return std::nullopt;
      };
      if (auto v = value("--serve")) {
        serve_spec = *v;
      } else if (auto v = value("--policies")) {
        policies = split(*v);
      } else if (auto v = value("--floats")) {
        floats.clear();
        for (const auto& s : split(*v)) floats.push_back(std::stoll(s));
      } else if (auto v = value("--shards")) {
        ks.clear();
        for (const auto& s : split(*v)) ks.push_back(static_cast<std::uint32_t>(std::stoul(s)));
      } else if (auto v = value("--workers")) {
        workers = static_cast<std::uint32_t>(std::stoul(*v));
      } else if (auto v = value("--reps")) {
        reps = std::stoi(*v);
      } else {
        usage("unknown argument '" + a + "'");
      }
    }
  } catch (const std::logic_error&) {
    usage("a value is not a number");
  }
  if (reps < 1 || workers < 1 || floats.empty() || ks.empty()) usage("--reps, --workers, --floats and --shards need values >= 1");
  for (const auto& p : policies) {
    if (p != "asp" && p != "bsp") usage("policy '" + p + "': expected asp or bsp");
  }
  for (const auto n : floats) {
    for (const auto k : ks) {
      if (k < 1 || n < static_cast<Eigen::Index>(k)) usage("--floats and --shards: each shard needs at least one float");
    }
  }

  if (!serve_spec.empty()) {  // a shard server process
    const auto slash = serve_spec.find('/');
    if (slash == std::string::npos || policies.size() != 1 || floats.size() != 1) usage("--serve=I/K with one policy and one size");
    const auto index = static_cast<std::uint32_t>(std::stoul(serve_spec.substr(0, slash)));
    const auto count = static_cast<std::uint32_t>(std::stoul(serve_spec.substr(slash + 1)));
    if (count < 1 || index >= count) usage("--serve=I/K needs 0 <= I < K");
    try {
      return policies[0] == "asp" ? serve<psync::Asp>(index, count, floats[0], workers)
                                  : serve<psync::Bsp>(index, count, floats[0], workers);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "shards: shard server %s: %s\n", serve_spec.c_str(), e.what());
      return 1;
    }
  }

  const unsigned cores = std::thread::hardware_concurrency();
  std::printf("Push+pull through Sharded<Tcp> against K shard server processes (Server<ParameterSlice, P> over "
              "TcpServer), loopback, %u workers (threads of this process), K interleaved, %d repetitions.\n",
              workers, reps);
  std::printf("RTT: each worker's own median push->reply round trip (median over the repetitions), workers 0..%u; "
              "GB/s: payload both ways, all workers, over the timed wall time (median, and min-max over the "
              "repetitions).\n",
              workers - 1);
  std::printf("Machine: %u hardware threads; load average at start %s.", cores, loadavg().c_str());
  if (cores < workers + 4) {
    std::printf("\nWith fewer cores than shard processes + workers, every shard process shares the same cores with "
                "the workers and the other shards: this is not K machines' scaling. Differences between K here mix "
                "the cost of the split (K messages each way per round trip, reassembly) with how the processes "
                "share the cores (one shard process has one server loop and one I/O thread for all workers).");
  }
  std::printf("\n\n| pol  |    floats |  K | RTT ms per worker                     |   GB/s | GB/s range  |\n");
  std::printf("|------|----------:|---:|---------------------------------------|-------:|-------------|\n");
  try {
    for (const auto n : floats) {
      for (const auto& p : policies) {
        if (p == "asp") {
          table_rows<psync::Asp>(p, ks, n, workers, reps);
        } else {
          table_rows<psync::Bsp>(p, ks, n, workers, reps);
        }
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "shards: %s\n", e.what());
    return 1;
  }
  std::printf("\nLoad average at the end: %s.\n", loadavg().c_str());
  return 0;
}
