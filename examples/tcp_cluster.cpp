// A cluster of separate processes over TCP, from code rather than psync-train:
//   tcp_cluster                          this process serves on a free port and starts
//                                        two worker processes of this program
//   tcp_cluster server PORT WORKERS      serve WORKERS workers on PORT (0: a free one)
//   tcp_cluster worker HOST PORT ID      one worker, id 0..WORKERS-1
// Every process builds the same synthetic data from the same seed; each worker draws
// its own batches. Change `Policy` to switch the synchronization policy.
#include <psync/models.hpp>
#include <psync/tcp.hpp>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace {

using Policy = psync::Osp<8>;
using Model = psync::models::SoftmaxRegression;

psync::data::Dataset make_data() {
  psync::data::SyntheticOptions o;  // the same seed in every process: the same data
  o.samples = 6000;
  o.dimension = 16;
  o.classes = 4;
  return psync::data::make_synthetic_classification(o);
}

/// Serves `workers` workers on `port`; `on_listening(port)` runs once the port is bound.
int serve(std::uint16_t port, std::uint32_t workers, const std::function<void(std::uint16_t)>& on_listening = {}) {
  const auto data = make_data();
  psync::TcpServerOptions to;
  to.address = "127.0.0.1";
  to.port = port;
  psync::TcpServer endpoint(to);
  std::printf("server: listening on 127.0.0.1:%u, %u workers, %s\n", endpoint.port(), workers,
              Policy{}.name().c_str());
  std::fflush(stdout);
  if (on_listening) on_listening(endpoint.port());
  psync::ServerOptions so;
  so.expected_workers = workers;
  so.join_timeout = std::chrono::seconds(30);
  psync::Server<Model, Policy> server(Model(data.dimension(), data.num_classes), so);
  const psync::ServerReport r = server.run(endpoint);
  const double acc = server.model().accuracy(psync::data::whole(data));
  std::printf("server: %llu updates covering %llu steps, accuracy %.3f\n",
              static_cast<unsigned long long>(r.updates_applied), static_cast<unsigned long long>(r.steps_applied), acc);
  return acc > 0.8 ? 0 : 1;
}

int work(const std::string& host, std::uint16_t port, psync::PeerId id) {
  const auto data = make_data();
  psync::WorkerOptions wo;
  wo.learning_rate = 0.2f;
  wo.max_steps = 400;
  psync::Worker<Model, psync::Tcp, Policy> worker(Model(data.dimension(), data.num_classes),
                                                  psync::Tcp(host, port, id), wo);
  psync::data::BatchSampler batches(data, 32, 100 + id);
  const psync::WorkerReport r = worker.run([&]() -> const psync::data::Batch& { return batches.next(); });
  std::printf("worker %u: %llu steps in %llu pushes, %.2f s\n", id, static_cast<unsigned long long>(r.steps),
              static_cast<unsigned long long>(r.pushes), r.wall_s);
  return 0;
}

/// Starts `argv` as a child process; returns its pid.
pid_t spawn(std::vector<std::string> args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  if (const int rc = posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), environ); rc != 0) {
    throw std::runtime_error("cannot start a worker process: " + std::string(std::strerror(rc)));
  }
  return pid;
}

/// Waits for `pid` until `deadline`; kills it past the deadline. Returns its exit code (-1: killed or crashed).
int reap(pid_t pid, std::chrono::steady_clock::time_point deadline) {
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

int main(int argc, char** argv) try {
  const std::vector<std::string> a(argv + 1, argv + argc);
  if (a.size() == 3 && a[0] == "server") return serve(std::stoi(a[1]), std::stoul(a[2]));
  if (a.size() == 4 && a[0] == "worker") return work(a[1], std::stoi(a[2]), std::stoul(a[3]));
  if (!a.empty()) {
    std::fprintf(stderr, "usage: %s [server PORT WORKERS | worker HOST PORT ID]\n", argv[0]);
    return 2;
  }
  // No arguments: serve here, and start two worker processes once the port is known.
  std::vector<pid_t> children;
  const int served = serve(0, 2, [&](std::uint16_t port) {
    for (int id = 0; id < 2; ++id) {
      children.push_back(spawn({argv[0], "worker", "127.0.0.1", std::to_string(port), std::to_string(id)}));
    }
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  int failed = 0;
  for (const pid_t pid : children) failed += reap(pid, deadline) != 0;
  if (failed) std::fprintf(stderr, "tcp_cluster: %d worker process(es) failed\n", failed);
  return served != 0 || failed ? 1 : 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "tcp_cluster: %s\n", e.what());
  return 1;
}
