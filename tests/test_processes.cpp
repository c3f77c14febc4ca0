// Real processes over loopback: psync-train servers and workers started with
// posix_spawn, each one bounded in time (killed and failed if it overruns), with
// stdout/stderr captured to files in a temporary directory. Covers the launch
// script under every policy, a worker killed mid-run, the server killed mid-run,
// a refused join, workers the server assigns ids to, and usage errors.
#include "catch.hpp"
#include "synthetic_task.hpp"
#include "tls_test_certs.hpp"

#include <psync/harness/replay.hpp>
#include <psync/models.hpp>
#include <psync/psync.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

#ifndef PSYNC_TRAIN_EXE
#error "PSYNC_TRAIN_EXE must name the psync-train binary (tests/CMakeLists.txt sets it)"
#endif
#ifndef PSYNC_LAUNCH_SCRIPT
#error "PSYNC_LAUNCH_SCRIPT must name scripts/launch_local.sh (tests/CMakeLists.txt sets it)"
#endif

namespace {

using namespace std::chrono_literals;
using Steady = std::chrono::steady_clock;
namespace fs = std::filesystem;

const std::string exe = PSYNC_TRAIN_EXE;

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

/// A fresh directory under $TMPDIR (or /tmp), removed at the end unless the test failed.
struct TempDir {
  fs::path path;
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/psync-processes.XXXXXX";
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    // Kept on failure so the captured output can be read.
    if (!std::uncaught_exceptions()) {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  }
};

/// One child process, its output in files. The destructor never leaves it running.
class Process {
 public:
  Process(std::vector<std::string> argv, const fs::path& out, const fs::path& err,
          std::vector<std::string> extra_env = {})
      : out_(out), err_(err) {
    // The children see no PSYNC_* from the test's own environment, only what we pass.
    std::vector<std::string> env;
    for (char** e = environ; *e; ++e) {
      if (std::strncmp(*e, "PSYNC_", 6) != 0) env.emplace_back(*e);
    }
    env.insert(env.end(), extra_env.begin(), extra_env.end());
    std::vector<char*> cargv, cenv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    for (auto& e : env) cenv.push_back(e.data());
    cenv.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int rc = ::posix_spawn(&pid_, cargv[0], &actions, nullptr, cargv.data(), cenv.data());
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) {
      pid_ = -1;
      FAIL("cannot start " << argv[0] << ": " << std::strerror(rc));
    }
  }

  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  ~Process() {
    if (status_ || pid_ <= 0) return;  // never kill(-1, ...)
    // SIGTERM first: the launch script's trap then stops the processes it started.
    ::kill(pid_, SIGTERM);
    if (!poll_until(Steady::now() + 3s)) {
      ::kill(pid_, SIGKILL);
      int st = 0;
      ::waitpid(pid_, &st, 0);
    }
  }

  pid_t pid() const noexcept { return pid_; }

  /// True while the child has not exited (reaps it if it has).
  bool running() {
    if (status_) return false;
    return !poll_until(Steady::now());
  }

  /// The exit code (128 + signal if killed by one) within `timeout`; a child that
  /// overruns is killed and the test fails, naming it.
  int wait(std::chrono::milliseconds timeout, const std::string& name) {
    if (!poll_until(Steady::now() + timeout)) {
      ::kill(pid_, SIGKILL);
      int st = 0;
      ::waitpid(pid_, &st, 0);
      status_ = st;
      FAIL(name << " still running after " << timeout.count() << " ms; killed it. stderr:\n" << read_file(err_));
    }
    return code();
  }

  void signal(int sig) {
    if (pid_ > 0 && !status_) ::kill(pid_, sig);
  }
  std::string out() const { return read_file(out_); }
  std::string err() const { return read_file(err_); }

 private:
  int code() const {
    if (WIFEXITED(*status_)) return WEXITSTATUS(*status_);
    if (WIFSIGNALED(*status_)) return 128 + WTERMSIG(*status_);
    return -1;
  }

  // Reaps the child if it exits before `deadline`; true if it has.
  bool poll_until(Steady::time_point deadline) {
    while (true) {
      int st = 0;
      const pid_t r = ::waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        status_ = st;
        return true;
      }
      if (r < 0) {  // not our child any more: treat as gone
        status_ = 0;
        return true;
      }
      if (Steady::now() >= deadline) return false;
      std::this_thread::sleep_for(5ms);
    }
  }

  pid_t pid_ = -1;
  std::optional<int> status_;
  fs::path out_, err_;
};

/// Polls `ready` every 10 ms until it holds or `timeout` passes.
bool wait_until(const std::function<bool()>& ready, std::chrono::milliseconds timeout) {
  const auto deadline = Steady::now() + timeout;
  while (!ready()) {
    if (Steady::now() >= deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

/// The number after `"key": ` in a flat JSON text; fails the test if absent.
double json_number(const std::string& json, const std::string& key) {
  const std::string tag = "\"" + key + "\": ";
  const auto at = json.find(tag);
  if (at == std::string::npos) FAIL("no \"" << key << "\" in:\n" << json);
  return std::strtod(json.c_str() + at + tag.size(), nullptr);
}

/// Starts a server on 127.0.0.1 port 0 and reads its port from stdout.
struct ServerProcess {
  std::unique_ptr<Process> process;
  std::string port;

  ServerProcess(const TempDir& dir, std::vector<std::string> args) {
    std::vector<std::string> argv{exe, "--role", "server", "--server", "127.0.0.1:0"};
    argv.insert(argv.end(), args.begin(), args.end());
    process = std::make_unique<Process>(argv, dir.path / "server.out", dir.path / "server.err");
    const std::string prefix = "psync-train: listening on 127.0.0.1:";
    const bool listening = wait_until(
        [&] {
          const std::string out = process->out();
          const auto at = out.find(prefix);
          if (at == std::string::npos) return false;
          const auto end = out.find('\n', at);
          if (end == std::string::npos) return false;
          port = out.substr(at + prefix.size(), end - at - prefix.size());
          return true;
        },
        10s);
    if (!listening) FAIL("the server printed no port within 10 s. stderr:\n" << process->err());
  }
  std::string address() const { return "127.0.0.1:" + port; }
};

std::unique_ptr<Process> start_worker(const TempDir& dir, const ServerProcess& server, int id,
                                      std::vector<std::string> args) {
  std::vector<std::string> argv{exe, "--role", "worker", "--server", server.address(), "--id", std::to_string(id)};
  argv.insert(argv.end(), args.begin(), args.end());
  const std::string name = "worker-" + std::to_string(id);
  return std::make_unique<Process>(argv, dir.path / (name + ".out"), dir.path / (name + ".err"));
}

/// The workers all exit 0, then the server, whose report (server.json in `dir`) shows
/// `steps` applied and no worker lost.
void expect_trained(const TempDir& dir, ServerProcess& server, std::vector<std::unique_ptr<Process>>& workers,
                    double steps) {
  INFO("server stderr:\n" << server.process->err());
  for (std::size_t w = 0; w < workers.size(); ++w) {
    INFO("worker " << w << " stderr:\n" << workers[w]->err());
    CHECK(workers[w]->wait(30s, "worker " + std::to_string(w)) == 0);
  }
  REQUIRE(server.process->wait(20s, "server") == 0);
  const std::string report = read_file(dir.path / "server.json");
  INFO(report);
  CHECK(json_number(report, "steps_applied") == steps);
  CHECK(json_number(report, "workers_lost") == 0);
}

using psync_test::synthetic;

/// Runs psync-train with each case's arguments: every one must exit 2 within 5 s with
/// its message on stderr.
void expect_usage_errors(const TempDir& dir,
                         const std::vector<std::pair<std::vector<std::string>, std::string>>& cases) {
  int i = 0;
  for (const auto& [args, message] : cases) {
    std::vector<std::string> argv{exe};
    argv.insert(argv.end(), args.begin(), args.end());
    const std::string name = "usage-" + std::to_string(i++);
    Process p(argv, dir.path / (name + ".out"), dir.path / (name + ".err"));
    const int code = p.wait(5s, name);
    INFO(name << ": " << p.err());
    CHECK(code == 2);
    CHECK(p.err().find(message) != std::string::npos);
  }
}

/// Two workers (ids 0 and 1) of the shard servers `shard0` and `shard1`, each with
/// `flags` and --metrics worker-W.json in `dir`: all four processes must exit 0.
void train_on_two_shards(ServerProcess& shard0, ServerProcess& shard1, const TempDir& dir,
                         const std::vector<std::string>& flags) {
  std::vector<std::unique_ptr<Process>> workers;
  for (int w = 0; w < 2; ++w) {
    const std::string name = "worker-" + std::to_string(w);
    std::vector<std::string> argv{exe, "--role", "worker", "--server", shard0.address() + "," + shard1.address(),
                                  "--id", std::to_string(w), "--metrics", (dir.path / (name + ".json")).string()};
    argv.insert(argv.end(), flags.begin(), flags.end());
    workers.push_back(std::make_unique<Process>(argv, dir.path / (name + ".out"), dir.path / (name + ".err")));
  }
  for (int w = 0; w < 2; ++w) {
    INFO("worker " << w << " stderr:\n" << workers[w]->err());
    REQUIRE(workers[w]->wait(30s, "sharded worker " + std::to_string(w)) == 0);
  }
  for (auto* s : {&shard0, &shard1}) {
    INFO("shard stderr:\n" << s->process->err());
    REQUIRE(s->process->wait(20s, "shard server") == 0);
  }
}

/// The text of `key`'s value in a psync-train report, up to the end of its line
/// (values may hold commas: "adam(0.9,0.999,1e-08)"); "(absent)" if there is none.
/// Reports print numbers with 9 significant digits: equal text is the same double.
std::string json_value(const std::string& json, const std::string& key) {
  const std::string tag = "\"" + key + "\": ";
  const auto at = json.find(tag);
  if (at == std::string::npos) return "(absent)";
  const auto start = at + tag.size();
  std::string value = json.substr(start, json.find('\n', start) - start);
  if (!value.empty() && value.back() == ',') value.pop_back();
  return value;
}

}  // namespace

TEST_CASE("launch_local.sh trains over TCP processes under every policy, as well as in-process",
          "[processes][launch]") {
  TempDir dir;
  const auto train = synthetic().subset(0, 5000);
  const auto test = synthetic().subset(5000, 1000);
  for (const std::string policy : {"bsp", "asp", "ssp:2", "dssp:1:3", "osp:10", "losp:10"}) {
    INFO("policy " << policy);
    const fs::path run = dir.path / ("run-" + policy.substr(0, policy.find(':')));
    const auto t0 = Steady::now();
    Process launch({"/bin/bash", PSYNC_LAUNCH_SCRIPT, "2", policy, "--data", "synthetic", "--steps", "200", "--batch",
                    "32", "--lr", "0.1", "--seed", "3", "--timeout-ms", "10000", "--quiet"},
                   dir.path / ("launch-" + run.filename().string() + ".out"),
                   dir.path / ("launch-" + run.filename().string() + ".err"),
                   {"PSYNC_TRAIN=" + exe, "PSYNC_RUN_DIR=" + run.string(), "PSYNC_LAUNCH_TIMEOUT=20"});
    const int code = launch.wait(25s, "launch_local.sh 2 " + policy);
    const double seconds = std::chrono::duration<double>(Steady::now() - t0).count();
    INFO("launch output:\n" << launch.out() << launch.err() << "server stderr:\n" << read_file(run / "server.err"));
    REQUIRE(code == 0);
    const std::string server = read_file(run / "server.json");
    const double accuracy = json_number(server, "final_test_accuracy");
    CHECK(json_number(server, "steps_applied") == 400);
    CHECK(json_number(server, "workers_lost") == 0);
    for (int w = 0; w < 2; ++w) {
      const std::string worker = read_file(run / ("worker-" + std::to_string(w) + ".json"));
      CHECK(worker.find("\"ok\": true") != std::string::npos);
      CHECK(json_number(worker, "steps_done") == 200);
    }

    // The same run in one process (threads) is the reference band.
    psync::LocalOptions o;
    o.workers = 2;
    o.steps_per_worker = 200;
    o.batch_size = 32;
    o.learning_rate = 0.1f;
    o.seed = 3;
    o.timeout = 10000ms;
    const psync::models::SoftmaxRegression model(train.dimension(), train.num_classes);
    const double reference = psync::with_policy(
        policy, [&](auto p) { return psync::run_local(model, train, &test, o, p).final_accuracy(); });
    INFO("processes: accuracy " << accuracy << " in " << seconds << " s; in-process: " << reference);
    CHECK(accuracy > 0.85);
    CHECK(accuracy >= reference - 0.05);
  }
}

TEST_CASE("A worker killed mid-run: the others finish and the server reports the loss", "[processes][faults]") {
  TempDir dir;
  const std::vector<std::string> common{"--workers", "3", "--policy", "bsp", "--data", "synthetic", "--timeout-ms",
                                        "10000"};
  auto with = [&](std::vector<std::string> more) {
    more.insert(more.begin(), common.begin(), common.end());
    return more;
  };
  ServerProcess server(dir, with({"--metrics", (dir.path / "server.json").string()}));
  std::vector<std::unique_ptr<Process>> workers;
  for (int w = 0; w < 3; ++w) {
    // 300 steps of at least 5 ms: about 1.5 s of training, killed after 0.4 s.
    workers.push_back(start_worker(dir, server, w, with({"--steps", "300", "--step-delay-ms", "5"})));
  }
  REQUIRE(wait_until([&] { return count(server.process->err(), " joined at clock") == 3; }, 10s));
  std::this_thread::sleep_for(400ms);
  REQUIRE(workers[1]->running());
  workers[1]->signal(SIGKILL);
  REQUIRE(workers[1]->wait(5s, "killed worker 1") == 128 + SIGKILL);

  INFO("server stderr:\n" << server.process->err());
  for (int w : {0, 2}) {
    INFO("worker " << w << " stderr:\n" << workers[w]->err());
    CHECK(workers[w]->wait(20s, "worker " + std::to_string(w)) == 0);
  }
  REQUIRE(server.process->wait(20s, "server") == 0);
  const std::string log = server.process->err();
  CHECK(log.find("worker 1: lost (disconnected)") != std::string::npos);
  const std::string report = read_file(dir.path / "server.json");
  INFO(report);
  CHECK(report.find("{\"id\": 1, ") != std::string::npos);
  CHECK(report.find("\"left\": \"disconnected\"") != std::string::npos);
  CHECK(json_number(report, "workers_lost") == 1);
  const double steps = json_number(report, "steps_applied");
  CHECK(steps >= 600);  // both survivors' steps
  CHECK(steps < 900);   // the killed one's were cut short
}

TEST_CASE("Workers started without --id are assigned 0, 1, 2 by the server and train", "[processes][ids]") {
  TempDir dir;
  const std::vector<std::string> common{"--workers", "3", "--policy", "bsp", "--data", "synthetic", "--steps", "100",
                                        "--timeout-ms", "10000"};
  auto with = [&](std::vector<std::string> more) {
    more.insert(more.begin(), common.begin(), common.end());
    return more;
  };
  ServerProcess server(dir, with({"--metrics", (dir.path / "server.json").string()}));
  std::vector<std::unique_ptr<Process>> workers;
  for (int w = 0; w < 3; ++w) {
    const std::string name = "anon-" + std::to_string(w);
    std::vector<std::string> argv{exe, "--role", "worker", "--server", server.address()};
    const auto args = with({"--metrics", (dir.path / (name + ".json")).string()});
    argv.insert(argv.end(), args.begin(), args.end());
    workers.push_back(std::make_unique<Process>(argv, dir.path / (name + ".out"), dir.path / (name + ".err")));
  }
  INFO("server stderr:\n" << server.process->err());
  std::vector<int> ids;
  for (int w = 0; w < 3; ++w) {
    INFO("worker " << w << " stderr:\n" << workers[w]->err());
    REQUIRE(workers[w]->wait(30s, "worker without --id " + std::to_string(w)) == 0);
    const std::string metrics = read_file(dir.path / ("anon-" + std::to_string(w) + ".json"));
    INFO(metrics);
    CHECK(metrics.find("\"ok\": true") != std::string::npos);
    CHECK(metrics.find("\"id_assigned\": true") != std::string::npos);
    CHECK(json_number(metrics, "steps_done") == 100);
    ids.push_back(static_cast<int>(json_number(metrics, "id")));
    CHECK(workers[w]->out().find("(id assigned by the server) connected to") != std::string::npos);
  }
  std::sort(ids.begin(), ids.end());
  CHECK(ids == std::vector<int>{0, 1, 2});
  REQUIRE(server.process->wait(20s, "server") == 0);
  const std::string report = read_file(dir.path / "server.json");
  INFO(report);
  for (int id = 0; id < 3; ++id) CHECK(count(report, "{\"id\": " + std::to_string(id) + ", ") == 1);
  CHECK(count(report, "{\"id\": ") == 3);
  CHECK(json_number(report, "steps_applied") == 300);
  CHECK(json_number(report, "workers_lost") == 0);
}

TEST_CASE("Workers with --codec push encoded updates the server decodes, and the run trains", "[processes][codec]") {
  // Two OSP workers over TCP: worker 0 pushes top-k 10% (error feedback), worker 1
  // dense; the server, given no codec, decodes each as it comes and applies every
  // step. Top-k 10% of n floats is 0.1n indices and values, 8 bytes each: a fifth of
  // the dense 4n bytes per push. Lost steps, a codec left unused or an undecodable
  // push would fail the counts, the ratio or the accuracy.
  TempDir dir;
  const std::vector<std::string> common{"--workers", "2", "--policy", "osp:4", "--data", "synthetic", "--steps", "200",
                                        "--lr", "0.2", "--timeout-ms", "10000"};
  auto with = [&](std::vector<std::string> more) {
    more.insert(more.begin(), common.begin(), common.end());
    return more;
  };
  ServerProcess server(dir, with({"--metrics", (dir.path / "server.json").string()}));
  std::vector<std::unique_ptr<Process>> workers;
  for (int w = 0; w < 2; ++w) {
    auto args = with({"--metrics", (dir.path / ("codec-" + std::to_string(w) + ".json")).string()});
    if (w == 0) args.insert(args.end(), {"--codec", "topk:0.1"});
    workers.push_back(start_worker(dir, server, w, args));
  }
  INFO("server stderr:\n" << server.process->err());
  double bytes_per_push[2] = {0, 0};
  for (int w = 0; w < 2; ++w) {
    INFO("worker " << w << " stderr:\n" << workers[w]->err());
    REQUIRE(workers[w]->wait(30s, "worker " + std::to_string(w)) == 0);
    CHECK((workers[w]->out().find("pushes encoded topk:0.1") != std::string::npos) == (w == 0));
    const std::string metrics = read_file(dir.path / ("codec-" + std::to_string(w) + ".json"));
    INFO(metrics);
    REQUIRE(json_number(metrics, "pushes") > 0);
    bytes_per_push[w] = json_number(metrics, "pushed_bytes") / json_number(metrics, "pushes");
  }
  CHECK(bytes_per_push[0] / bytes_per_push[1] == Approx(0.2).margin(0.01));
  REQUIRE(server.process->wait(20s, "server") == 0);
  const std::string report = read_file(dir.path / "server.json");
  INFO(report);
  CHECK(json_number(report, "steps_applied") == 400);
  CHECK(json_number(report, "workers_lost") == 0);
  CHECK(json_number(report, "final_test_accuracy") > 0.8);

  expect_usage_errors(
      dir, {
               {{"--role", "worker", "--server", "127.0.0.1:7000", "--id", "0", "--codec", "zip"},
                "--codec: unknown codec 'zip'"},
               {{"--role", "worker", "--server", "127.0.0.1:7000", "--id", "0", "--codec", "topk:2"}, "--codec"},
           });
}

TEST_CASE("--trace writes each process's timeline: a span per step, per round trip, per push applied",
          "[processes][trace]") {
  // Two OSP workers over TCP, each and the server with --trace: every worker's file
  // holds one compute span per step and one push+pull span per push (its metrics
  // count both), the server's one apply span per push it applied; every track is
  // named. A trace that missed or doubled an event fails a count.
  TempDir dir;
  const std::vector<std::string> common{"--workers", "2", "--policy", "osp:4", "--data", "synthetic", "--steps", "120",
                                        "--lr", "0.2", "--timeout-ms", "10000"};
  auto with = [&](std::vector<std::string> more) {
    more.insert(more.begin(), common.begin(), common.end());
    return more;
  };
  const auto path = [&](const std::string& name) { return (dir.path / name).string(); };
  ServerProcess server(dir, with({"--metrics", path("server.json"), "--trace", path("server.trace.json")}));
  std::vector<std::unique_ptr<Process>> workers;
  for (int w = 0; w < 2; ++w) {
    const std::string name = "traced-" + std::to_string(w);
    workers.push_back(
        start_worker(dir, server, w, with({"--metrics", path(name + ".json"), "--trace", path(name + ".trace.json")})));
  }
  INFO("server stderr:\n" << server.process->err());
  for (int w = 0; w < 2; ++w) {
    INFO("worker " << w << " stderr:\n" << workers[w]->err());
    REQUIRE(workers[w]->wait(30s, "worker " + std::to_string(w)) == 0);
    const std::string metrics = read_file(dir.path / ("traced-" + std::to_string(w) + ".json"));
    const std::string trace = read_file(dir.path / ("traced-" + std::to_string(w) + ".trace.json"));
    INFO(metrics);
    REQUIRE(trace.rfind("{\"traceEvents\":[", 0) == 0);
    CHECK(count(trace, "\"name\":\"compute\"") == 120);
    CHECK(json_number(metrics, "pushes") > 0);
    CHECK(static_cast<double>(count(trace, "\"name\":\"push+pull\"")) == json_number(metrics, "pushes"));
    CHECK(count(trace, "\"name\":\"worker " + std::to_string(w) + " compute\"") == 1);
    CHECK(count(trace, "\"name\":\"worker " + std::to_string(w) + " comm\"") == 1);
  }
  REQUIRE(server.process->wait(20s, "server") == 0);
  const std::string report = read_file(dir.path / "server.json");
  const std::string trace = read_file(dir.path / "server.trace.json");
  INFO(report);
  CHECK(json_number(report, "steps_applied") == 240);
  CHECK(static_cast<double>(count(trace, "\"name\":\"apply\"")) == json_number(report, "updates_applied"));
  CHECK(count(trace, "\"name\":\"server\"") == 1);

  expect_usage_errors(dir, {
                               {{"--role", "server", "--server", "127.0.0.1:0", "--trace", ""}, "--trace is empty"},
                               {{"--role", "server", "--server", "127.0.0.1:0", "--trace", path("no-such-dir/t.json")},
                                "--trace '" + path("no-such-dir/t.json") + "': cannot create"},
                           });
}

// The steps each worker had completed when it took each reply, read off its
// --trace file: a "push+pull" span ends at the boundary where the reply was taken,
// after the "compute" spans that ended before it (scripts/replay_rounds.py does the
// same for the bench tool).
std::vector<std::uint64_t> reply_boundaries(const std::string& trace) {
  std::vector<double> step_ends;
  std::vector<double> trip_ends;
  std::istringstream in(trace);
  for (std::string line; std::getline(in, line);) {
    const bool step = line.rfind("{\"name\":\"compute\",", 0) == 0;
    const bool trip = line.rfind("{\"name\":\"push+pull\",", 0) == 0;
    if (!step && !trip) continue;
    double ts = 0;
    double dur = 0;
    const auto at = line.find("\"ts\":");
    REQUIRE(at != std::string::npos);
    REQUIRE(std::sscanf(line.c_str() + at, "\"ts\":%lf,\"dur\":%lf", &ts, &dur) == 2);
    (step ? step_ends : trip_ends).push_back(ts + dur);
  }
  std::sort(step_ends.begin(), step_ends.end());
  std::sort(trip_ends.begin(), trip_ends.end());
  std::vector<std::uint64_t> b;
  for (const double t : trip_ends) {
    b.push_back(static_cast<std::uint64_t>(std::upper_bound(step_ends.begin(), step_ends.end(), t) - step_ends.begin()));
  }
  return b;
}

TEST_CASE("A traced OSP run over TCP, replayed through the cores in its order of events, gives its series exactly",
          "[processes][trace][replay]") {
  // Three processes over loopback TCP, timed by this host; the trajectory depends
  // only on which step boundary took which reply. psync::harness::replay_rounds
  // drives the cores through that order on one thread, with psync-train's data,
  // shards, batch order and initial model: every point of the server's series
  // (steps applied, accuracy) and the final model's test loss must come out the
  // same. Swapping the two workers' orders must change the final model (the check
  // can fail).
  TempDir dir;
  constexpr std::uint64_t seed = 3;
  const std::vector<std::string> common{"--workers", "2",     "--policy", "osp:6",
                                        "--data",    "synthetic", "--steps", "3000",
                                        "--lr",      "0.001", "--seed",   std::to_string(seed),
                                        "--timeout-ms", "10000"};
  auto with = [&](std::vector<std::string> more) {
    more.insert(more.begin(), common.begin(), common.end());
    return more;
  };
  const auto path = [&](const std::string& name) { return (dir.path / name).string(); };
  ServerProcess server(dir, with({"--metrics", path("server.json"), "--series-ms", "2", "--series-samples", "1000"}));
  std::vector<std::unique_ptr<Process>> workers;
  for (int w = 0; w < 2; ++w) {
    workers.push_back(start_worker(dir, server, w, with({"--trace", path("w" + std::to_string(w) + ".trace.json")})));
  }
  INFO("server stderr:\n" << server.process->err());
  psync::harness::ReplyBoundaries boundaries;
  for (int w = 0; w < 2; ++w) {
    INFO("worker " << w << " stderr:\n" << workers[w]->err());
    REQUIRE(workers[w]->wait(30s, "worker " + std::to_string(w)) == 0);
    boundaries.push_back(reply_boundaries(read_file(dir.path / ("w" + std::to_string(w) + ".trace.json"))));
    REQUIRE(boundaries.back().size() > 10);
  }
  REQUIRE(server.process->wait(20s, "server") == 0);
  const std::string report = read_file(dir.path / "server.json");
  std::map<std::uint64_t, double> series;  // steps applied -> accuracy
  {
    std::istringstream in(report);
    for (std::string line; std::getline(in, line);) {
      const auto at = line.find("{\"t\": ");
      if (at == std::string::npos) continue;
      double t = 0;
      double accuracy = 0;
      unsigned long long version = 0;
      unsigned long long steps = 0;
      REQUIRE(std::sscanf(line.c_str() + at, "{\"t\": %lf, \"version\": %llu, \"steps\": %llu, \"accuracy\": %lf", &t,
                          &version, &steps, &accuracy) == 4);
      series[steps] = accuracy;
    }
  }
  INFO(report);
  REQUIRE(series.size() >= 5);

  // psync-train's synthetic task: the first 5000 samples train, the last 1000 test.
  const auto& all = psync_test::synthetic();
  const auto train = all.subset(0, 5000);
  const psync::data::Batch test = psync::data::whole(all.subset(5000, 1000));
  const auto shards = psync::data::shard(train, 2, seed);
  const auto sources = [&](psync::PeerId w) {
    return [smp = psync::data::BatchSampler(shards[w], 64, psync::data::worker_seed(seed, w))]() mutable
               -> const psync::data::Batch& { return smp.next(); };
  };
  psync::models::SoftmaxRegression model(20, 4);
  model.initialize(seed);
  // The series' accuracies at their steps applied, and the last model.
  struct Replayed {
    std::map<std::uint64_t, double> series;
    psync::models::SoftmaxRegression last;
  };
  const auto replay = [&](const psync::harness::ReplyBoundaries& order) {
    Replayed out{{}, model};
    psync::harness::replay_rounds(
        model, sources, 0.001F, psync::Osp<6>{}, order,
        [&](const psync::harness::ReplayedRound& r, const psync::models::SoftmaxRegression& m) {
          out.last.parameters() = m.parameters();
          if (series.contains(r.steps_applied)) out.series[r.steps_applied] = out.last.accuracy(test);
        },
        psync::optim::parse_optimizer("sgd"));
    return out;
  };
  // The traces hold the last round trip too (the push of the last steps), so the
  // replay ends on the server's final model: its test loss (9 digits in the report)
  // tells a different trajectory apart where the saturated accuracy cannot.
  const Replayed same = replay(boundaries);
  INFO("replayed rounds: worker 0 " << boundaries[0].size() << ", worker 1 " << boundaries[1].size() << "; last steps applied "
                                    << (same.series.empty() ? 0 : same.series.rbegin()->first));
  CHECK(boundaries[0].back() == 3000);
  CHECK(boundaries[1].back() == 3000);
  CHECK(same.series.size() == series.size());
  for (const auto& [steps, accuracy] : series) {
    INFO("steps applied " << steps);
    REQUIRE(same.series.contains(steps));
    CHECK(same.series.at(steps) == Approx(accuracy).margin(1e-9));
  }
  CHECK(same.last.loss(test) == Approx(json_number(report, "final_test_loss")).epsilon(1e-7));
  CHECK(same.last.accuracy(test) == Approx(json_number(report, "final_test_accuracy")).margin(1e-9));
  // The workers' orders swapped: each still feasible, but the pushes hold other steps
  // (the host's timing makes the two orders differ).
  REQUIRE(boundaries[0] != boundaries[1]);
  const Replayed other = replay(psync::harness::ReplyBoundaries{boundaries[1], boundaries[0]});
  CHECK(other.last.loss(test) != Approx(json_number(report, "final_test_loss")).epsilon(1e-7));
}

TEST_CASE("Workers with --optimizer and --schedule run them, and say so; bad text is a usage error",
          "[processes][optimizer]") {
  // Two BSP workers: worker 0 runs Adam with a warm-up and cosine schedule, worker 1
  // the default SGD. Each says in its "connected" line which optimizer its worker core
  // holds (not the flag's text), and its metrics name it; the run still trains.
  TempDir dir;
  const std::vector<std::string> common{"--workers", "2", "--policy", "bsp", "--data", "synthetic", "--steps", "100",
                                        "--lr", "0.05", "--timeout-ms", "10000"};
  auto with = [&](std::vector<std::string> more) {
    more.insert(more.begin(), common.begin(), common.end());
    return more;
  };
  ServerProcess server(dir, with({"--metrics", (dir.path / "server.json").string()}));
  std::vector<std::unique_ptr<Process>> workers;
  for (int w = 0; w < 2; ++w) {
    auto args = with({"--metrics", (dir.path / ("optimizer-" + std::to_string(w) + ".json")).string()});
    if (w == 0) args.insert(args.end(), {"--optimizer", "adam", "--schedule", "warmup:10,cosine:90"});
    workers.push_back(start_worker(dir, server, w, args));
  }
  expect_trained(dir, server, workers, 200);
  const std::string adam = "adam(0.9,0.999,1e-08)";
  for (int w = 0; w < 2; ++w) {
    const std::string out = workers[w]->out();
    const std::string metrics = read_file(dir.path / ("optimizer-" + std::to_string(w) + ".json"));
    INFO("worker " << w << " stdout:\n" << out << "\nmetrics:\n" << metrics);
    if (w == 0) {
      CHECK(out.find("connected to " + server.address() + " (policy bsp, optimizer " + adam +
                     ", schedule warmup:10,cosine:90,") != std::string::npos);
      CHECK(metrics.find("\"optimizer\": \"" + adam + "\"") != std::string::npos);
      CHECK(metrics.find("\"schedule\": \"warmup:10,cosine:90\"") != std::string::npos);
    } else {
      CHECK(out.find("(policy bsp, optimizer sgd, shard of") != std::string::npos);
      CHECK(metrics.find("\"optimizer\": \"sgd\"") != std::string::npos);
      CHECK(metrics.find("\"schedule\": \"constant\"") != std::string::npos);
    }
  }
  CHECK(json_number(read_file(dir.path / "server.json"), "final_test_accuracy") > 0.7);

  expect_usage_errors(
      dir, {
               {{"--role", "worker", "--server", "127.0.0.1:7000", "--id", "0", "--optimizer", "bogus"},
                "--optimizer: optimizer 'bogus': unknown optimizer (expected sgd, momentum[:MU]"},
               {{"--role", "worker", "--server", "127.0.0.1:7000", "--id", "0", "--optimizer", "momentum:1.5"},
                "--optimizer: optimizer 'momentum:1.5'"},
               {{"--role", "worker", "--server", "127.0.0.1:7000", "--id", "0", "--schedule", "cosine:0"},
                "--schedule: schedule 'cosine:0'"},
               {{"--role", "server", "--server", "127.0.0.1:0", "--optimizer", "adam"},
                "--optimizer is a worker option (this is a server: for an optimizer on the server, give it --server-optimizer"},
           });
}

// The optimizer on the server (docs/optimizers.md#on-the-server): a psync-train server
// with --server-optimizer applies it to the combined gradient, and its workers, given
// --optimizer server, push gradients. Under BSP with two workers the runs are
// deterministic, so:
// - plain SGD on the server at a power-of-two rate is bit for bit SGD on the workers
//   (halving and 2^-k scaling are exact in float);
// - momentum on the server equals momentum on the workers up to rounding (the mean of
//   the workers' buffers is the server's buffer on the mean gradient), and is not SGD;
// - Adam works element by element, so two shard servers each running it on their
//   slice end with exactly the one server's model.
TEST_CASE("A server-side optimizer: --server-optimizer on the server, --optimizer server on the workers",
          "[processes][optimizer][server-optimizer]") {
  const std::vector<std::string> common{"--workers", "2", "--policy", "bsp", "--data", "synthetic", "--steps", "100",
                                        "--batch", "32", "--lr", "0.125", "--seed", "5", "--timeout-ms", "10000",
                                        "--quiet"};
  // One server and two workers; returns worker 0's metrics (the final model's figures
  // are the server's, which every worker of a BSP run ends with) and the server's.
  const auto run = [&](const std::vector<std::string>& server_flags, const std::vector<std::string>& worker_flags) {
    TempDir dir;
    std::vector<std::string> sargs = common;
    sargs.insert(sargs.end(), server_flags.begin(), server_flags.end());
    sargs.insert(sargs.end(), {"--metrics", (dir.path / "server.json").string()});
    ServerProcess server(dir, sargs);
    std::vector<std::unique_ptr<Process>> workers;
    for (int w = 0; w < 2; ++w) {
      std::vector<std::string> wargs = common;
      wargs.insert(wargs.end(), worker_flags.begin(), worker_flags.end());
      wargs.insert(wargs.end(), {"--metrics", (dir.path / ("worker-" + std::to_string(w) + ".json")).string()});
      workers.push_back(start_worker(dir, server, w, wargs));
    }
    expect_trained(dir, server, workers, 200);
    return std::pair{read_file(dir.path / "server.json"), read_file(dir.path / "worker-0.json")};
  };
  const std::vector<std::string> gradients{"--optimizer", "server"};

  SECTION("SGD on the server is SGD on the workers, bit for bit") {
    const auto [on_workers, w0] = run({}, {});
    const auto [on_server, w1] = run({"--server-optimizer", "sgd"}, gradients);
    INFO("workers' SGD:\n" << on_workers << "\nserver's SGD:\n" << on_server);
    CHECK(json_value(on_server, "optimizer") == "\"sgd\"");
    CHECK(json_value(on_server, "schedule") == "\"constant\"");
    CHECK(json_value(on_workers, "optimizer") == "null");
    CHECK(json_value(w1, "optimizer") == "\"on-server\"");
    CHECK(json_value(on_server, "final_test_loss") == json_value(on_workers, "final_test_loss"));
    CHECK(json_value(on_server, "final_test_accuracy") == json_value(on_workers, "final_test_accuracy"));
    CHECK(json_number(on_server, "final_test_accuracy") > 0.8);
  }
  SECTION("Momentum on the server: the workers' momentum up to rounding, not SGD") {
    const auto [sgd, w0] = run({}, {});
    const auto [on_workers, w1] = run({}, {"--optimizer", "momentum:0.9"});
    const auto [on_server, w2] = run({"--server-optimizer", "momentum:0.9", "--server-schedule", "step:0.5,50"},
                                     gradients);
    const auto [on_server_const, w3] = run({"--server-optimizer", "momentum:0.9"}, gradients);
    INFO("SGD:\n" << sgd << "\nworkers' momentum:\n" << on_workers << "\nserver's momentum:\n" << on_server_const);
    CHECK(json_value(on_server_const, "optimizer") == "\"momentum(0.9)\"");
    CHECK(json_value(on_server, "schedule") == "\"step:0.5,50\"");
    const double loss = json_number(on_server_const, "final_test_loss");
    CHECK(loss == Approx(json_number(on_workers, "final_test_loss")).epsilon(1e-4));
    CHECK(std::abs(loss - json_number(sgd, "final_test_loss")) > 1e-3);
    // The schedule reaches the server: halving the rate after 50 rounds changes the end.
    CHECK(std::abs(json_number(on_server, "final_test_loss") - loss) > 1e-4);
  }
  SECTION("Adam on two shard servers is Adam on one, bit for bit") {
    const auto [one, w0] = run({"--server-optimizer", "adam"}, gradients);
    CHECK(json_value(one, "optimizer") == "\"adam(0.9,0.999,1e-08)\"");
    TempDir d0, d1, dw;
    std::vector<std::string> s0 = common, s1 = common;
    s0.insert(s0.end(), {"--shard", "0/2", "--server-optimizer", "adam"});
    s1.insert(s1.end(), {"--shard", "1/2", "--server-optimizer", "adam"});
    ServerProcess shard0(d0, s0);
    ServerProcess shard1(d1, s1);
    std::vector<std::string> worker_flags = common;
    worker_flags.insert(worker_flags.end(), gradients.begin(), gradients.end());
    train_on_two_shards(shard0, shard1, dw, worker_flags);
    for (int w = 0; w < 2; ++w) {
      const std::string report = read_file(dw.path / ("worker-" + std::to_string(w) + ".json"));
      INFO(report << "\none server:\n" << one);
      CHECK(json_value(report, "final_test_loss") == json_value(one, "final_test_loss"));
      CHECK(json_value(report, "final_test_accuracy") == json_value(one, "final_test_accuracy"));
    }
  }
  SECTION("A worker that pushes updates to a server with an optimizer is refused at join, and the reverse") {
    for (const bool server_has_optimizer : {true, false}) {
      TempDir dir;
      std::vector<std::string> sargs{"--workers", "1", "--data", "synthetic", "--timeout-ms", "3000", "--quiet"};
      if (server_has_optimizer) sargs.insert(sargs.end(), {"--server-optimizer", "sgd"});
      ServerProcess server(dir, sargs);
      std::vector<std::string> wargs{"--workers", "1", "--data", "synthetic", "--timeout-ms", "3000", "--quiet"};
      if (!server_has_optimizer) wargs.insert(wargs.end(), gradients.begin(), gradients.end());
      auto worker = start_worker(dir, server, 0, wargs);
      const int code = worker->wait(15s, "refused worker");
      INFO("worker stderr:\n" << worker->err());
      CHECK(code != 0);
      CHECK(worker->err().find(server_has_optimizer ? "workers must push gradients"
                                                    : "pushes gradients for a server-side optimizer") !=
            std::string::npos);
      server.process->wait(15s, "server without its worker");
    }
  }
  SECTION("Usage errors name the flag") {
    TempDir dir;
    expect_usage_errors(
        dir, {
                 {{"--role", "server", "--server", "127.0.0.1:0", "--server-optimizer", "rmsprop"},
                  "--server-optimizer: optimizer 'rmsprop': unknown optimizer"},
                 {{"--role", "server", "--server", "127.0.0.1:0", "--server-schedule", "cosine:100"},
                  "--server-schedule needs --server-optimizer"},
                 {{"--role", "server", "--server", "127.0.0.1:0", "--server-optimizer", "adam", "--server-schedule",
                   "cosine:0"},
                  "--server-schedule: schedule 'cosine:0'"},
                 {{"--role", "worker", "--server", "127.0.0.1:7000", "--id", "0", "--server-optimizer", "adam"},
                  "--server-optimizer is a server option (this is a worker: give it --optimizer server"},
                 {{"--role", "server", "--server", "127.0.0.1:0", "--policy", "losp:4", "--server-optimizer", "sgd"},
                  "--policy losp:4 (LOSP's local compensation) cannot run with a server-side optimizer"},
                 {{"--role", "worker", "--server", "127.0.0.1:7000", "--id", "0", "--policy", "losp-uninstalled:4",
                   "--optimizer", "server"},
                  "--policy losp-uninstalled:4 (LOSP's local compensation) cannot run with a server-side optimizer "
                  "(--optimizer server)"},
             });
  }
}

TEST_CASE("The server killed mid-run: every worker fails within its deadline, naming the server",
          "[processes][faults]") {
  for (const std::string policy : {"bsp", "osp:5"}) {
    INFO("policy " << policy);
    TempDir dir;
    const std::vector<std::string> common{"--workers", "2", "--policy", policy, "--data", "synthetic",
                                          "--timeout-ms", "5000"};
    ServerProcess server(dir, common);
    std::vector<std::unique_ptr<Process>> workers;
    for (int w = 0; w < 2; ++w) {
      auto args = common;
      // 3000 steps of at least 5 ms: 15 s if nothing went wrong.
      args.insert(args.end(), {"--steps", "3000", "--step-delay-ms", "5",
                               "--metrics", (dir.path / ("worker-" + std::to_string(w) + ".json")).string()});
      workers.push_back(start_worker(dir, server, w, args));
    }
    REQUIRE(wait_until([&] { return count(server.process->err(), " joined at clock") == 2; }, 10s));
    std::this_thread::sleep_for(300ms);
    server.process->signal(SIGKILL);
    REQUIRE(server.process->wait(5s, "killed server") == 128 + SIGKILL);
    const auto killed = Steady::now();
    for (int w = 0; w < 2; ++w) {
      const int code = workers[w]->wait(12s, "worker " + std::to_string(w));  // 2 x timeout + slack
      const double seconds = std::chrono::duration<double>(Steady::now() - killed).count();
      const std::string err = workers[w]->err();
      INFO("worker " << w << " exit " << code << " after " << seconds << " s, stderr:\n" << err);
      CHECK(code == 1);
      CHECK(err.find("lost the server at " + server.address()) != std::string::npos);
      const std::string metrics = read_file(dir.path / ("worker-" + std::to_string(w) + ".json"));
      CHECK(metrics.find("\"ok\": false") != std::string::npos);
    }
  }
}

TEST_CASE("A worker whose model differs from the server's is refused with the reason", "[processes][faults]") {
  TempDir dir;
  ServerProcess server(dir, {"--workers", "1", "--data", "synthetic", "--timeout-ms", "1500"});
  auto worker = start_worker(dir, server, 0, {"--workers", "1", "--data", "synthetic", "--model", "mlp:8",
                                              "--timeout-ms", "1500"});
  const int code = worker->wait(10s, "worker 0");
  const std::string err = worker->err();
  INFO(err);
  CHECK(code == 1);
  CHECK(err.find(server.address()) != std::string::npos);
  CHECK(err.find("dimension") != std::string::npos);
  // No worker ever joined: the server gives up after its join timeout.
  CHECK(server.process->wait(10s, "server") == 1);
  CHECK(server.process->err().find("no worker joined") != std::string::npos);
}

TEST_CASE("Usage errors exit with code 2 and say what was wrong", "[processes][usage]") {
  TempDir dir;
  struct Case {
    std::vector<std::string> args;
    std::vector<std::string> env;
    std::string message;
  };
  const std::vector<Case> cases{
      {{"--role", "server", "--server", "127.0.0.1:0", "--policy", "nonsense"}, {}, "policy 'nonsense'"},
      {{"--role", "worker", "--server", "127.0.0.1:7000", "--id", "0", "--policy", "osp:0"}, {}, "at least 1"},
      {{"--role", "worker", "--id", "0"}, {}, "missing --server"},
      {{"--role", "server"}, {}, "missing --server"},
      {{"--server", "127.0.0.1:0"}, {}, "missing --role"},
      {{"--role", "server", "--server", "127.0.0.1:0"}, {"PSYNC_POLICY=ssp:x"}, "PSYNC_POLICY"},
      {{"--role", "worker", "--server", "127.0.0.1:0", "--id", "0"}, {}, "port"},
      {{"--role", "worker", "--server", "127.0.0.1:7000", "--id", "2", "--workers", "2"}, {}, "--id 2"},
      {{"--role", "server", "--server", "127.0.0.1:0", "--steps", "-5"}, {}, "--steps '-5'"},
      {{"--role", "server", "--server", "127.0.0.1:0", "--frobnicate"}, {}, "unknown argument '--frobnicate'"},
  };
  int i = 0;
  for (const auto& c : cases) {
    std::vector<std::string> argv{exe};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    const std::string name = "usage-" + std::to_string(i++);
    Process p(argv, dir.path / (name + ".out"), dir.path / (name + ".err"), c.env);
    const int code = p.wait(5s, name);
    const std::string err = p.err();
    INFO("case " << name << ": " << err);
    CHECK(code == 2);
    CHECK(err.find(c.message) != std::string::npos);
  }
  Process help({exe, "--help"}, dir.path / "help.out", dir.path / "help.err");
  CHECK(help.wait(5s, "--help") == 0);
  CHECK(help.out().find("--role server|worker") != std::string::npos);
  // A flag wins over its environment variable: the bad PSYNC_POLICY is never read,
  // so the server starts and fails at run time (no worker comes), not as a usage error.
  Process flags({exe, "--role", "server", "--server", "127.0.0.1:0", "--policy", "bsp", "--data", "synthetic",
                 "--timeout-ms", "300"},
                dir.path / "flags.out", dir.path / "flags.err", {"PSYNC_POLICY=nonsense"});
  CHECK(flags.wait(10s, "server with --policy over PSYNC_POLICY") == 1);
  CHECK(flags.err().find("no worker joined within 300 ms") != std::string::npos);
}

TEST_CASE("With --tls-cert/--tls-key and --tls-ca, workers train over TLS; one trusting another CA is refused",
          "[processes][tls]") {
  TempDir dir;
  SECTION("TLS flags of the other role, or half a pair, are usage errors naming the flag") {
    const std::vector<std::pair<std::vector<std::string>, std::string>> cases{
        {{"--role", "server", "--server", "127.0.0.1:0", "--tls-ca", "ca.pem"}, "--tls-ca is a worker option"},
        {{"--role", "worker", "--server", "127.0.0.1:7000", "--tls-cert", "c.pem"}, "--tls-cert is a server option"},
        {{"--role", "server", "--server", "127.0.0.1:0", "--tls-cert", "c.pem"}, "--tls-cert needs --tls-key"},
        {{"--role", "worker", "--server", "127.0.0.1:7000", "--tls-server-name", "x"}, "needs --tls-ca"},
    };
    for (const auto& [args, expected] : cases) {
      std::vector<std::string> argv{exe};
      argv.insert(argv.end(), args.begin(), args.end());
      Process p(argv, dir.path / "usage.out", dir.path / "usage.err");
      INFO(p.err());
      CHECK(p.wait(5s, expected) == 2);
      CHECK(p.err().find(expected) != std::string::npos);
    }
  }
#ifdef PSYNC_HAVE_TLS
  SECTION("the server and two workers train; a worker trusting another CA is refused") {
    const psync_test::TlsFiles tls;
    const std::vector<std::string> common{"--workers", "2", "--policy", "bsp", "--data", "synthetic", "--steps", "200",
                                          "--timeout-ms", "10000"};
    auto with = [&](std::vector<std::string> more) {
      more.insert(more.begin(), common.begin(), common.end());
      return more;
    };
    ServerProcess server(dir, with({"--tls-cert", tls.server_cert.string(), "--tls-key", tls.server_key.string(),
                                    "--metrics", (dir.path / "server.json").string()}));
    auto impostor = start_worker(dir, server, 0, with({"--tls-ca", tls.other_ca.string()}));
    const int impostor_code = impostor->wait(15s, "worker trusting another CA");
    INFO("refused worker stderr:\n" << impostor->err());
    CHECK(impostor_code == 1);
    CHECK(impostor->err().find("certificate verification failed") != std::string::npos);

    std::vector<std::unique_ptr<Process>> workers;
    for (int w = 0; w < 2; ++w) workers.push_back(start_worker(dir, server, w, with({"--tls-ca", tls.ca.string()})));
    expect_trained(dir, server, workers, 400);
  }
#endif
}

TEST_CASE("With --secret-file, only workers that know the secret train", "[processes][auth]") {
  TempDir dir;
  auto secret_file = [&](const std::string& name, const std::string& bytes, mode_t mode) {
    const fs::path p = dir.path / name;
    std::ofstream(p, std::ios::binary) << bytes;
    REQUIRE(::chmod(p.c_str(), mode) == 0);
    return p.string();
  };
  const std::string right = secret_file("secret", "0123456789abcdef0123456789abcdef\n", 0600);
  const std::string wrong = secret_file("wrong", "fedcba9876543210fedcba9876543210\n", 0600);
  const std::string shared = secret_file("shared", "0123456789abcdef0123456789abcdef\n", 0640);

  SECTION("a group-readable secret file is refused, naming the file and its mode") {
    for (const std::string role : {"server", "worker"}) {
      Process p({exe, "--role", role, "--server", "127.0.0.1:7000", "--id", "0", "--secret-file", shared},
                dir.path / (role + ".out"), dir.path / (role + ".err"));
      INFO(role << ": " << p.err());
      CHECK(p.wait(5s, role) == 2);
      CHECK(p.err().find(shared) != std::string::npos);
      CHECK(p.err().find("mode 0640") != std::string::npos);
    }
  }
  if (!psync::tcp_auth_available) {
    // A build without OpenSSL refuses the secret itself: exit 2, saying why.
    Process p({exe, "--role", "server", "--server", "127.0.0.1:0", "--data", "synthetic", "--secret-file", right},
              dir.path / "no-ssl.out", dir.path / "no-ssl.err");
    CHECK(p.wait(10s, "server without OpenSSL") == 2);
    CHECK(p.err().find("without OpenSSL") != std::string::npos);
    return;
  }
  SECTION("the server and two workers train; a worker with the wrong file is refused") {
    const std::vector<std::string> common{"--workers", "2", "--policy", "bsp", "--data", "synthetic", "--steps", "200",
                                          "--timeout-ms", "10000"};
    auto with = [&](std::vector<std::string> more) {
      more.insert(more.begin(), common.begin(), common.end());
      return more;
    };
    ServerProcess server(dir, with({"--secret-file", right, "--metrics", (dir.path / "server.json").string()}));
    // The impostor comes first, as worker 0; the real worker 0 still joins after it.
    auto impostor = start_worker(dir, server, 0, with({"--secret-file", wrong}));
    const int impostor_code = impostor->wait(10s, "worker with the wrong secret");
    const std::string impostor_err = impostor->err();
    INFO("impostor stderr:\n" << impostor_err);
    CHECK(impostor_code == 1);
    CHECK(impostor_err.find("authentication failed") != std::string::npos);
    CHECK(impostor_err.find("unauthenticated") != std::string::npos);

    std::vector<std::unique_ptr<Process>> workers;
    // One from the flag, one from the environment variable.
    workers.push_back(start_worker(dir, server, 0, with({"--secret-file", right})));
    {
      std::vector<std::string> argv{exe, "--role", "worker", "--server", server.address(), "--id", "1"};
      argv.insert(argv.end(), common.begin(), common.end());
      workers.push_back(std::make_unique<Process>(argv, dir.path / "worker-1.out", dir.path / "worker-1.err",
                                                  std::vector<std::string>{"PSYNC_SECRET_FILE=" + right}));
    }
    expect_trained(dir, server, workers, 400);
    CHECK(server.process->err().find("authentication failed") != std::string::npos);  // the impostor, logged
  }
}

// ---- checkpoints: the server killed and resumed, workers reconnecting ----

namespace {

/// A port on 127.0.0.1 that nothing listens on, below the kernel's ephemeral range:
/// while the server is down no outgoing connection (the workers' reconnection
/// attempts among them) can take it as its local port, so the restarted server can bind it.
std::string free_fixed_port() {
  int lo = 32768;
  {
    std::ifstream range("/proc/sys/net/ipv4/ip_local_port_range");
    int a = 0, b = 0;
    if (range >> a >> b && a > 2048) lo = a;
  }
  const int first = 1024 + static_cast<int>(::getpid() * 7919 % (lo - 1024));
  for (int i = 0; i < lo - 1024; ++i) {
    const int port = 1024 + (first - 1024 + i) % (lo - 1024);
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && ::listen(fd, 1) == 0;
    ::close(fd);
    if (ok) return std::to_string(port);
  }
  FAIL("no free port below " << lo);
  return {};
}

/// A psync-train server on a fixed address, started and waited for until it listens.
std::unique_ptr<Process> start_server_at(const TempDir& dir, const std::string& name, const std::string& address,
                                         std::vector<std::string> args) {
  std::vector<std::string> argv{exe, "--role", "server", "--server", address};
  argv.insert(argv.end(), args.begin(), args.end());
  auto p = std::make_unique<Process>(argv, dir.path / (name + ".out"), dir.path / (name + ".err"));
  if (!wait_until([&] { return p->out().find("listening on " + address) != std::string::npos || !p->running(); }, 10s) ||
      p->out().find("listening on " + address) == std::string::npos) {
    FAIL(name << " is not listening on " << address << ". stderr:\n" << p->err());
  }
  return p;
}

std::unique_ptr<Process> start_worker_at(const TempDir& dir, const std::string& address, int id,
                                         std::vector<std::string> args) {
  std::vector<std::string> argv{exe, "--role", "worker", "--server", address, "--id", std::to_string(id)};
  argv.insert(argv.end(), args.begin(), args.end());
  const std::string name = "worker-" + std::to_string(id);
  return std::make_unique<Process>(argv, dir.path / (name + ".out"), dir.path / (name + ".err"));
}

/// The "steps applied" figures of every "checkpoint ... written" line in a server log, in order.
std::vector<double> checkpoint_steps(const std::string& log) {
  std::vector<double> steps;
  const std::string tag = " steps applied, ";
  for (auto at = log.find("] checkpoint ckpt-"); at != std::string::npos; at = log.find("] checkpoint ckpt-", at + 1)) {
    const auto end = log.find(tag, at);
    const auto comma = log.rfind(", ", end);
    if (end == std::string::npos || comma == std::string::npos || comma < at) break;
    steps.push_back(std::strtod(log.c_str() + comma + 2, nullptr));
  }
  return steps;
}

struct ClusterResult {
  double accuracy = 0;
  double steps_applied = 0;
  double steps_done = 0;  // over the workers
  double pushes_lost = 0;
  double rejoins = 0;
};

/// Reads the final server report and the workers' reports (all must have exited 0).
ClusterResult read_cluster(const TempDir& dir, const std::string& server_json, int workers) {
  ClusterResult r;
  const std::string server = read_file(dir.path / server_json);
  INFO(server);
  r.accuracy = json_number(server, "final_test_accuracy");
  r.steps_applied = json_number(server, "steps_applied");
  for (int w = 0; w < workers; ++w) {
    const std::string worker = read_file(dir.path / ("worker-" + std::to_string(w) + ".json"));
    INFO(worker);
    CHECK(worker.find("\"ok\": true") != std::string::npos);
    r.steps_done += json_number(worker, "steps_done");
    r.pushes_lost += json_number(worker, "pushes_lost");
    r.rejoins += json_number(worker, "rejoins");
  }
  return r;
}

const std::vector<std::string> resume_common{"--workers", "2", "--policy", "bsp", "--data", "synthetic", "--batch", "32",
                                             "--lr", "0.1", "--seed", "3", "--timeout-ms", "10000"};

std::vector<std::string> resume_args(std::vector<std::string> more) {
  more.insert(more.begin(), resume_common.begin(), resume_common.end());
  return more;
}

/// 2 workers of `steps` steps, at least `delay_ms` each, that reconnect for up to 20 s.
std::vector<std::unique_ptr<Process>> start_reconnecting_workers(const TempDir& dir, const std::string& address,
                                                                 const std::string& steps, const std::string& delay_ms) {
  std::vector<std::unique_ptr<Process>> workers;
  for (int w = 0; w < 2; ++w) {
    workers.push_back(start_worker_at(
        dir, address, w,
        resume_args({"--steps", steps, "--step-delay-ms", delay_ms, "--reconnect-ms", "20000", "--metrics",
                     (dir.path / ("worker-" + std::to_string(w) + ".json")).string()})));
  }
  return workers;
}

/// Starts the server again on `address` with `server_args` and --resume, and requires
/// every worker to finish with exit 0 (bounded); returns the resumed server.
std::unique_ptr<Process> resume_until_workers_done(const TempDir& dir, const std::string& address,
                                                   std::vector<std::string> server_args,
                                                   std::vector<std::unique_ptr<Process>>& workers) {
  server_args.push_back("--resume");
  auto second = start_server_at(dir, "server-2", address, resume_args(std::move(server_args)));
  for (std::size_t w = 0; w < workers.size(); ++w) {
    INFO("worker " << w << " stderr:\n" << workers[w]->err());
    REQUIRE(workers[w]->wait(60s, "worker " + std::to_string(w)) == 0);
  }
  return second;
}

}  // namespace

TEST_CASE("The server killed with SIGKILL resumes from its last checkpoint; the workers reconnect and finish",
          "[processes][checkpoint]") {
  const std::string steps = "700", delay = "3";
  // The uninterrupted run: the reference accuracy, and the training rate.
  ClusterResult reference;
  double reference_s = 0;
  {
    TempDir dir;
    const std::string address = "127.0.0.1:" + free_fixed_port();
    auto server = start_server_at(dir, "server", address, resume_args({"--metrics", (dir.path / "server.json").string()}));
    const auto t0 = Steady::now();
    auto workers = start_reconnecting_workers(dir, address, steps, delay);
    for (int w = 0; w < 2; ++w) REQUIRE(workers[w]->wait(60s, "worker " + std::to_string(w)) == 0);
    REQUIRE(server->wait(20s, "server") == 0);
    reference_s = std::chrono::duration<double>(Steady::now() - t0).count();
    reference = read_cluster(dir, "server.json", 2);
    REQUIRE(reference.steps_applied == 1400);
  }

  TempDir dir;
  const fs::path ckpt = dir.path / "ckpt";
  const std::string address = "127.0.0.1:" + free_fixed_port();
  const std::vector<std::string> server_args{"--checkpoint", ckpt.string(), "--checkpoint-every", "0.2", "--metrics",
                                             (dir.path / "server.json").string()};
  auto first = start_server_at(dir, "server-1", address, resume_args(server_args));
  auto workers = start_reconnecting_workers(dir, address, steps, delay);
  REQUIRE(wait_until([&] { return count(first->err(), " joined at clock") == 2; }, 10s));
  // Watch the checkpoints as they are written, then kill at a random moment after the first.
  std::mt19937 rng(std::random_device{}());
  const auto kill_after = std::chrono::milliseconds(std::uniform_int_distribution<int>(200, 900)(rng));
  REQUIRE(wait_until([&] { return !checkpoint_steps(first->err()).empty(); }, 10s));
  const auto first_checkpoint = Steady::now();
  std::size_t seen = 0;
  Steady::time_point last_seen = first_checkpoint;
  wait_until(
      [&] {
        const std::size_t n = checkpoint_steps(first->err()).size();
        if (n != seen) {
          seen = n;
          last_seen = Steady::now();
        }
        return Steady::now() - first_checkpoint >= kill_after;
      },
      10s);
  REQUIRE(first->running());
  first->signal(SIGKILL);
  const auto killed = Steady::now();
  REQUIRE(first->wait(5s, "killed server") == 128 + SIGKILL);
  const std::string log1 = first->err();
  const std::vector<double> saved = checkpoint_steps(log1);
  REQUIRE(!saved.empty());

  std::this_thread::sleep_for(300ms);  // the workers are retrying meanwhile
  auto second = resume_until_workers_done(dir, address, server_args, workers);
  INFO("first server:\n" << log1 << "\nresumed server:\n" << second->err());
  REQUIRE(second->wait(20s, "resumed server") == 0);
  const std::string log2 = second->err();
  CHECK(log2.find("resumed from ") != std::string::npos);
  CHECK(count(log2, " returned at clock") == 2);
  const std::string report = read_file(dir.path / "server.json");
  const double resumed_steps = json_number(report, "resumed_steps");
  // The newest checkpoint the killed server logged, or one it wrote and was killed before logging.
  CHECK(resumed_steps >= saved.back());

  const ClusterResult r = read_cluster(dir, "server.json", 2);
  const double lost = r.steps_done - r.steps_applied;
  // BSP: one step a push, so every step lost is a push the server lost.
  CHECK(lost == r.pushes_lost);
  CHECK(r.rejoins == 2);
  // "At most one checkpoint interval": the rate of the killed server between its
  // checkpoints, times the time from its last checkpoint to the kill (as seen here,
  // polling its log every 10 ms), is what can be lost, plus one push per worker in flight.
  const double since_checkpoint_s = std::chrono::duration<double>(killed - last_seen).count();
  const double rate = saved.size() >= 2 ? (saved.back() - saved.front()) /
                                              std::chrono::duration<double>(last_seen - first_checkpoint).count()
                                        : reference.steps_applied / reference_s;
  std::printf(
      "kill -9 after %.0f ms of checkpoints (%zu logged): last logged at %.0f steps, seen %.0f ms before the kill;"
      " resumed from the checkpoint at %.0f steps; %.0f steps lost (%.0f pushes) = %.0f ms of training at %.0f"
      " steps/s (interval 200 ms)\n"
      "final accuracy resumed %.4f vs uninterrupted %.4f; %.0f of %.0f steps applied vs %.0f; the resumed server wrote"
      " %.0f checkpoints in %.3f s\n",
      std::chrono::duration<double, std::milli>(killed - first_checkpoint).count(), saved.size(), saved.back(),
      since_checkpoint_s * 1000, resumed_steps, lost, r.pushes_lost, rate > 0 ? 1000 * lost / rate : 0.0, rate, r.accuracy,
      reference.accuracy, r.steps_applied, r.steps_done, reference.steps_applied, json_number(report, "checkpoints_written"),
      json_number(report, "checkpoint_s"));
  // One interval of work as the killed server measured it: its largest gap between
  // two checkpoints, or the rate times the interval. Twice that, plus a push in flight
  // per worker, leaves room for the machine's load to change between the two.
  double interval_steps = rate * std::max(since_checkpoint_s, 0.2);
  for (std::size_t i = 1; i < saved.size(); ++i) interval_steps = std::max(interval_steps, saved[i] - saved[i - 1]);
  CHECK(lost >= 0);
  CHECK(lost <= 2 * interval_steps + 4);
  CHECK(r.accuracy > 0.85);
  CHECK(std::abs(r.accuracy - reference.accuracy) <= 0.03);
}

TEST_CASE("Resuming: a truncated newest checkpoint is skipped with its reason, the previous one is used",
          "[processes][checkpoint]") {
  TempDir dir;
  const fs::path ckpt = dir.path / "ckpt";
  const std::string address = "127.0.0.1:" + free_fixed_port();
  const std::vector<std::string> server_args{"--checkpoint", ckpt.string(), "--checkpoint-every", "0.1", "--metrics",
                                             (dir.path / "server.json").string()};
  {
    // Nothing to resume from: a clear error, exit 1, before any worker is needed.
    auto empty = start_server_at(dir, "server-empty", address, resume_args({"--checkpoint", ckpt.string(), "--resume"}));
    CHECK(empty->wait(10s, "server with an empty checkpoint directory") == 1);
    CHECK(empty->err().find("no checkpoint to resume from") != std::string::npos);
  }
  auto first = start_server_at(dir, "server-1", address, resume_args(server_args));
  auto workers = start_reconnecting_workers(dir, address, "500", "3");
  REQUIRE(wait_until([&] { return checkpoint_steps(first->err()).size() >= 3; }, 20s));
  first->signal(SIGKILL);
  REQUIRE(first->wait(5s, "killed server") == 128 + SIGKILL);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(ckpt)) {
    if (e.path().extension() == ".psync") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  REQUIRE(files.size() >= 2);
  const fs::path newest = files.back(), previous = files[files.size() - 2];
  fs::resize_file(newest, fs::file_size(newest) / 2);

  auto second = resume_until_workers_done(dir, address, server_args, workers);
  REQUIRE(second->wait(20s, "resumed server") == 0);
  const std::string log = second->err();
  INFO(log);
  CHECK(log.find("skipped checkpoint " + newest.string() + ": truncated: the file has ") != std::string::npos);
  CHECK(log.find("resumed from " + previous.string()) != std::string::npos);
  const ClusterResult r = read_cluster(dir, "server.json", 2);
  CHECK(r.accuracy > 0.85);
  // The resumed server wrote past the damaged file, never behind it.
  std::vector<fs::path> after;
  for (const auto& e : fs::directory_iterator(ckpt)) after.push_back(e.path().filename());
  std::sort(after.begin(), after.end());
  CHECK(after.back() > newest.filename());

  // Every file damaged: nothing to resume from, the reason given, exit 1.
  for (const auto& e : fs::directory_iterator(ckpt)) fs::resize_file(e.path(), 40);
  auto broken = start_server_at(dir, "server-broken", address, resume_args({"--checkpoint", ckpt.string(), "--resume"}));
  CHECK(broken->wait(10s, "server with only damaged checkpoints") == 1);
  CHECK(broken->err().find("no valid checkpoint to resume from") != std::string::npos);
  CHECK(broken->err().find("truncated") != std::string::npos);
}

TEST_CASE("The server stopped with SIGTERM writes a last checkpoint; resumed, it loses at most a push in flight",
          "[processes][checkpoint]") {
  TempDir dir;
  const fs::path ckpt = dir.path / "ckpt";
  const std::string address = "127.0.0.1:" + free_fixed_port();
  // Checkpoints only at the end: all that is kept is what SIGTERM wrote.
  const std::vector<std::string> server_args{"--checkpoint", ckpt.string(), "--checkpoint-every", "0", "--metrics",
                                             (dir.path / "server.json").string()};
  auto first = start_server_at(dir, "server-1", address, resume_args(server_args));
  auto workers = start_reconnecting_workers(dir, address, "500", "3");
  REQUIRE(wait_until([&] { return count(first->err(), " joined at clock") == 2; }, 10s));
  std::this_thread::sleep_for(700ms);
  first->signal(SIGTERM);
  CHECK(first->wait(10s, "stopped server") == 1);  // interrupted
  const std::string log1 = first->err();
  const std::vector<double> saved = checkpoint_steps(log1);
  REQUIRE(saved.size() == 1);
  auto second = resume_until_workers_done(dir, address, server_args, workers);
  INFO("first server:\n" << log1 << "\nresumed server:\n" << second->err());
  REQUIRE(second->wait(20s, "resumed server") == 0);
  const ClusterResult r = read_cluster(dir, "server.json", 2);
  const double lost = r.steps_done - r.steps_applied;
  std::printf("SIGTERM at %.0f steps applied: %.0f steps lost on resuming\n", saved.back(), lost);
  CHECK(lost == r.pushes_lost);
  CHECK(lost <= 2);  // at most a push per worker that was still on its way
  CHECK(r.accuracy > 0.85);
}

TEST_CASE("Checkpoint and reconnect flags: usage errors name the flag", "[processes][checkpoint][usage]") {
  TempDir dir;
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases{
      {{"--role", "server", "--server", "127.0.0.1:0", "--resume"}, "--resume needs --checkpoint"},
      {{"--role", "server", "--server", "127.0.0.1:0", "--checkpoint", "x", "--checkpoint-every", "-1"},
       "--checkpoint-every '-1'"},
      {{"--role", "server", "--server", "127.0.0.1:0", "--checkpoint", "x", "--checkpoint-keep", "0"},
       "--checkpoint-keep '0'"},
      {{"--role", "worker", "--server", "127.0.0.1:7000", "--id", "0", "--reconnect-ms", "soon"}, "--reconnect-ms 'soon'"},
  };
  expect_usage_errors(dir, cases);
}

TEST_CASE("--series-ms and --target: the server reports its accuracy series and the time to target from the start "
          "of training; workers stop after --seconds",
          "[processes][series]") {
  TempDir dir;
  const std::vector<std::string> common{"--workers", "2", "--policy", "bsp", "--data", "synthetic", "--steps",
                                        "100000000", "--batch", "16", "--lr", "0.05", "--timeout-ms", "10000"};
  auto with = [&](std::vector<std::string> more) {
    more.insert(more.begin(), common.begin(), common.end());
    return more;
  };
  const double target = 0.6;
  ServerProcess server(dir, with({"--metrics", (dir.path / "server.json").string(), "--series-ms", "50",
                                  "--series-samples", "500", "--target", "0.6"}));
  std::vector<std::unique_ptr<Process>> workers;
  for (int w = 0; w < 2; ++w) {
    workers.push_back(start_worker(dir, server, w,
                                   with({"--seconds", "1.5", "--metrics",
                                         (dir.path / ("w" + std::to_string(w) + ".json")).string()})));
  }
  INFO("server stderr:\n" << server.process->err());
  for (int w = 0; w < 2; ++w) {
    INFO("worker " << w << " stderr:\n" << workers[w]->err());
    REQUIRE(workers[w]->wait(30s, "worker " + std::to_string(w)) == 0);
    const std::string metrics = read_file(dir.path / ("w" + std::to_string(w) + ".json"));
    INFO(metrics);
    // --seconds ended the run, not --steps: from the first step to leaving took about 1.5 s.
    CHECK(json_number(metrics, "steps_done") < 1e8);
    CHECK(json_number(metrics, "wall_s") >= 1.5);
    CHECK(json_number(metrics, "wall_s") < 5);
  }
  REQUIRE(server.process->wait(20s, "server") == 0);
  const std::string report = read_file(dir.path / "server.json");
  INFO(report);
  const double started = json_number(report, "started_s");
  CHECK(started >= 0);
  CHECK(started < json_number(report, "wall_s"));
  // The series: every {"t": T, ..., "accuracy": A}, in order.
  std::vector<double> t, accuracy;
  for (std::size_t at = report.find("{\"t\": "); at != std::string::npos; at = report.find("{\"t\": ", at + 1)) {
    t.push_back(std::strtod(report.c_str() + at + 6, nullptr));
    const auto a = report.find("\"accuracy\": ", at);
    REQUIRE(a != std::string::npos);
    accuracy.push_back(std::strtod(report.c_str() + a + 12, nullptr));
  }
  REQUIRE(t.size() >= 10);  // about 1.5 s at one point per 50 ms (points with no new version are skipped)
  CHECK(t.front() == 0);    // the initial model, at the start of training
  CHECK(accuracy.front() < target);
  CHECK(std::is_sorted(t.begin(), t.end()));
  CHECK(t.back() < json_number(report, "wall_s") - started + 0.1);
  // time_to_target_s is the first point where the mean of the last 3 reached the target.
  double expected = -1;
  for (std::size_t i = 2; i < t.size() && expected < 0; ++i) {
    if ((accuracy[i] + accuracy[i - 1] + accuracy[i - 2]) / 3 >= target) expected = t[i];
  }
  REQUIRE(expected >= 0);  // synthetic data: the target is reached well within the run
  CHECK(json_number(report, "time_to_target_s") == Approx(expected).margin(1e-6));
  CHECK(server.process->out().find("time to 0.6 test accuracy (500 samples, mean of 3 points)") != std::string::npos);
}

TEST_CASE("Series and budget flags: usage errors name the flag", "[processes][series][usage]") {
  TempDir dir;
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases{
      {{"--role", "server", "--server", "127.0.0.1:0", "--target", "0.8"}, "--target needs --series-ms"},
      {{"--role", "server", "--server", "127.0.0.1:0", "--series-ms", "100", "--target", "1.5"}, "--target '1.5'"},
      {{"--role", "server", "--server", "127.0.0.1:0", "--seconds", "10"}, "--seconds is a worker option"},
      {{"--role", "worker", "--server", "127.0.0.1:7000", "--series-ms", "100"}, "--series-ms is a server option"},
      {{"--role", "worker", "--server", "127.0.0.1:7000", "--seconds", "-1"}, "--seconds '-1'"},
  };
  expect_usage_errors(dir, cases);
}

// Sharded servers (docs/processes.md#sharded-servers): two psync-train --shard i/2
// processes and two workers naming both. Under BSP with two workers the run is
// deterministic, so the workers' final model (each evaluates the model it
// reassembled from the shards) must score exactly what the unsharded server scores.
// With --codec topk (the workers'), each push is cut into one payload per shard that
// decodes to exactly its slice: the same holds against an unsharded run with the codec.
// With qsgd8 the worker's buckets restart at the slices (the transport's push_segments
// reach its encoder), so its stochastic rounding differs from the unsharded run's: that
// run is only checked to train.
TEST_CASE("Two shard servers and two workers under BSP end with the unsharded run's model", "[processes][sharding]") {
  const std::vector<std::string> common{"--workers", "2", "--policy", "bsp", "--data", "synthetic", "--steps", "100",
                                        "--batch", "32", "--lr", "0.1", "--seed", "3", "--timeout-ms", "10000",
                                        "--quiet"};
  auto with = [&](std::vector<std::string> more) {
    more.insert(more.begin(), common.begin(), common.end());
    return more;
  };
  const std::vector<std::string> codec = GENERATE(std::vector<std::string>{},
                                                  std::vector<std::string>{"--codec", "topk:0.05"},
                                                  std::vector<std::string>{"--codec", "qsgd8"});
  const bool exact = codec.empty() || codec[1] != "qsgd8";
  std::vector<std::string> worker_flags = common;
  worker_flags.insert(worker_flags.end(), codec.begin(), codec.end());
  INFO("worker flags: " << (codec.empty() ? std::string("(no codec)") : codec[1]));
  // The reference: one server.
  TempDir ref;
  ServerProcess server(ref, with({"--metrics", (ref.path / "server.json").string()}));
  std::vector<std::unique_ptr<Process>> ref_workers;
  for (int w = 0; w < 2; ++w) ref_workers.push_back(start_worker(ref, server, w, worker_flags));
  expect_trained(ref, server, ref_workers, 200);
  const std::string reference = read_file(ref.path / "server.json");

  // Two shards, each in its own directory (ServerProcess names its files server.*).
  TempDir d0, d1, dw;
  ServerProcess shard0(d0, with({"--shard", "0/2", "--metrics", (d0.path / "server.json").string()}));
  ServerProcess shard1(d1, with({"--shard", "1/2", "--metrics", (d1.path / "server.json").string()}));
  train_on_two_shards(shard0, shard1, dw, worker_flags);
  for (const auto* d : {&d0, &d1}) {
    const std::string report = read_file(d->path / "server.json");
    INFO(report);
    CHECK(json_number(report, "steps_applied") == 200);
    CHECK(json_number(report, "version") == 100);
    CHECK(json_number(report, "workers_lost") == 0);
    CHECK(json_number(report, "shards") == 2);
    CHECK(report.find("\"final_test_accuracy\": null") != std::string::npos);  // a slice is not evaluated
  }
  CHECK(read_file(d1.path / "server.json").find("\"shard\": \"1/2\"") != std::string::npos);
  for (int w = 0; w < 2; ++w) {
    const std::string report = read_file(dw.path / ("worker-" + std::to_string(w) + ".json"));
    INFO(report << "\nreference:\n" << reference);
    CHECK(json_number(report, "steps_done") == 100);
    // Printed with 9 significant digits: equal text is the same double from the same parameters.
    if (exact) {
      CHECK(json_value(report, "final_test_accuracy") == json_value(reference, "final_test_accuracy"));
      CHECK(json_value(report, "final_test_loss") == json_value(reference, "final_test_loss"));
    }
    CHECK(json_number(report, "final_test_accuracy") > 0.85);
  }

  if (!codec.empty()) {
    for (int w = 0; w < 2; ++w) {
      const std::string report = read_file(dw.path / ("worker-" + std::to_string(w) + ".json"));
      CHECK(report.find("\"codec\": \"" + codec[1] + "\"") != std::string::npos);
    }
    return;  // the launch script below runs without a codec
  }

  // The launch script's --shards: the same cluster, started by it.
  TempDir launched;
  const fs::path run = launched.path / "run";
  Process launch({"/bin/bash", PSYNC_LAUNCH_SCRIPT, "--shards", "2", "2", "bsp", "--data", "synthetic", "--steps", "100",
                  "--batch", "32", "--lr", "0.1", "--seed", "3", "--timeout-ms", "10000", "--quiet"},
                 launched.path / "launch.out", launched.path / "launch.err",
                 {"PSYNC_TRAIN=" + exe, "PSYNC_RUN_DIR=" + run.string(), "PSYNC_LAUNCH_TIMEOUT=20"});
  const int code = launch.wait(25s, "launch_local.sh --shards 2 2 bsp");
  INFO("launch output:\n" << launch.out() << launch.err());
  REQUIRE(code == 0);
  for (int k = 0; k < 2; ++k) CHECK(json_number(read_file(run / ("server-" + std::to_string(k) + ".json")), "steps_applied") == 200);
  for (int w = 0; w < 2; ++w) {
    const std::string report = read_file(run / ("worker-" + std::to_string(w) + ".json"));
    INFO(report);
    CHECK(json_value(report, "final_test_loss") == json_value(reference, "final_test_loss"));
  }
}

TEST_CASE("A shard server killed mid-run: every worker fails within its deadline, naming the shard",
          "[processes][sharding][faults]") {
  const std::vector<std::string> common{"--workers", "2", "--policy", "bsp", "--data", "synthetic", "--timeout-ms",
                                        "3000"};
  auto with = [&](std::vector<std::string> more) {
    more.insert(more.begin(), common.begin(), common.end());
    return more;
  };
  TempDir d0, d1, dw;
  ServerProcess shard0(d0, with({"--shard", "0/2"}));
  ServerProcess shard1(d1, with({"--shard", "1/2"}));
  std::vector<std::unique_ptr<Process>> workers;
  for (int w = 0; w < 2; ++w) {
    const std::string name = "worker-" + std::to_string(w);
    std::vector<std::string> argv{exe, "--role", "worker", "--server", shard0.address() + "," + shard1.address(),
                                  "--id", std::to_string(w), "--steps", "3000", "--step-delay-ms", "5"};
    argv.insert(argv.end(), common.begin(), common.end());
    workers.push_back(std::make_unique<Process>(argv, dw.path / (name + ".out"), dw.path / (name + ".err")));
  }
  REQUIRE(wait_until([&] { return count(shard1.process->err(), " joined at clock") == 2; }, 10s));
  shard1.process->signal(SIGKILL);
  REQUIRE(shard1.process->wait(5s, "killed shard 1") == 128 + SIGKILL);
  const auto killed = Steady::now();
  for (int w = 0; w < 2; ++w) {
    const int code = workers[w]->wait(8s, "worker " + std::to_string(w));  // 2 x timeout + slack
    const double seconds = std::chrono::duration<double>(Steady::now() - killed).count();
    const std::string err = workers[w]->err();
    INFO("worker " << w << " exit " << code << " after " << seconds << " s, stderr:\n" << err);
    CHECK(code == 1);
    CHECK(seconds < 6.0);  // the worker's reply deadline (2 x --timeout-ms)
    CHECK(err.find("shard 1 of 2 (" + shard1.address() + ")") != std::string::npos);
  }
  // The surviving shard sees both workers go and ends.
  CHECK(shard0.process->wait(10s, "shard 0") == 0);
}

TEST_CASE("Shard flags: usage errors name what was wrong", "[processes][sharding][usage]") {
  TempDir dir;
  const std::vector<std::string> server{"--role", "server", "--server", "127.0.0.1:0", "--shard"};
  auto shard = [&](const std::string& value) {
    auto a = server;
    a.push_back(value);
    return a;
  };
  expect_usage_errors(
      dir, {
               {shard("3/2"), "--shard shard index '3': expected an integer from 0 to 1"},
               {shard("0/0"), "--shard shard count '0': expected an integer from 1 to 1024"},
               {shard("x"), "--shard 'x': expected I/K"},
               {shard("1/x"), "--shard shard count 'x'"},
               {shard("/2"), "--shard shard index ''"},
               {{"--role", "worker", "--server", "127.0.0.1:7000", "--id", "0", "--shard", "0/2"},
                "--shard is a server option"},
               {{"--role", "worker", "--server", "127.0.0.1:7000,127.0.0.1:7001"}, "needs --id"},
               {{"--role", "worker", "--server", "127.0.0.1:7000,", "--id", "0"}, "expected HOST:PORT"},
               {{"--role", "worker", "--server", "127.0.0.1:7000,127.0.0.1:7001", "--id", "0", "--reconnect-ms", "100"},
                "--reconnect-ms is not supported with sharded servers"},
               {{"--role", "server", "--server", "127.0.0.1:0", "--shard", "0/2", "--checkpoint", "/tmp/x"},
                "--checkpoint does not apply to a shard server"},
           });
}
