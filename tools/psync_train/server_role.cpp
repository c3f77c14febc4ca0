// psync-train's server role (see server_role.hpp).

// Boost 1.74's Asio needs <utility> first under C++20.
#include <utility>

#include "server_role.hpp"

#include "report.hpp"
#include "task.hpp"

#include <psync/core/server.hpp>
#include <psync/core/sharding.hpp>
#include <psync/core/trace.hpp>
#include <psync/data/dataset.hpp>
#include <psync/optim/any.hpp>
#include <psync/optim/parse.hpp>
#include <psync/policies/parse.hpp>
#include <psync/transport/any.hpp>
#include <psync/transport/tcp.hpp>
#ifdef PSYNC_TRAIN_WITH_MPI
#include <psync/transport/mpi.hpp>
#endif

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <type_traits>
#include <vector>

namespace psync_train {

namespace {

/// Test samples the server evaluates for each progress line.
constexpr Eigen::Index progress_samples = 1000;

// SIGINT/SIGTERM ask the running server to stop (a relaxed atomic store, safe in a
// handler); the handler resets itself, so a second signal ends the process.
std::atomic<void*> g_stop_target{nullptr};
std::atomic<void (*)(void*)> g_stop_fn{nullptr};
volatile std::sig_atomic_t g_signal = 0;

extern "C" void on_stop_signal(int sig) {
  g_signal = sig;
  auto* fn = g_stop_fn.load();
  if (fn) fn(g_stop_target.load());
}

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

/// While it lives, SIGINT/SIGTERM call `server.stop()`.
template <class S>
class StopOnSignal {
 public:
  explicit StopOnSignal(S& server) {
    g_stop_target.store(&server);
    g_stop_fn.store([](void* target) { static_cast<S*>(target)->stop(); });
    install_stop_handlers();
  }
  ~StopOnSignal() {
    g_stop_fn.store(nullptr);
    g_stop_target.store(nullptr);
  }
  StopOnSignal(const StopOnSignal&) = delete;
  StopOnSignal& operator=(const StopOnSignal&) = delete;
};

/// Workers that left other than by finishing (dropped, timed out, disconnected).
std::size_t lost_peers(const psync::ServerReport& report) {
  std::size_t lost = 0;
  for (const auto& p : report.peers) {
    if (p.left_known && p.left != psync::msg::LeaveReason::finished) ++lost;
  }
  return lost;
}

/// The --series-ms copies evaluated on the first `samples` test samples, in seconds
/// from the start of training: copies from before it are dropped but the last, which
/// is the initial model at second 0. Empty if training never started.
template <class M>
std::vector<psync::SeriesPoint> evaluate_series(const psync::ServerReport& report, M& eval_model,
                                               const psync::data::Dataset& test, Eigen::Index samples) {
  std::vector<psync::SeriesPoint> out;
  if (report.started_s < 0) return out;
  const psync::data::Batch subset = psync::data::whole(test, std::min(samples, test.size()));
  std::size_t first = 0;
  while (first + 1 < report.snapshots.size() && report.snapshots[first + 1].seconds <= report.started_s) ++first;
  for (std::size_t i = first; i < report.snapshots.size(); ++i) {
    const auto& snap = report.snapshots[i];
    eval_model.parameters() = snap.parameters;
    psync::SeriesPoint p;
    p.seconds = std::max(0.0, snap.seconds - report.started_s);
    p.version = snap.version;
    p.steps = snap.steps;
    p.train_loss = std::nan("");
    p.test_accuracy = eval_model.accuracy(subset);
    out.push_back(p);
  }
  return out;
}

/// ", optimizer NAME" for the server's line when it runs one (--server-optimizer).
std::string optimizer_text(const Config& c) {
  if (c.server_optimizer.empty()) return "";
  return ", optimizer " + server_optimizer_name(c) +
         (c.server_schedule.empty() ? "" : ", schedule " + c.server_schedule);
}

/// The options every server of this process has, whole or shard: the cluster's size,
/// the deadlines, the log, and the rate of its optimizer `O` if it runs one.
template <class O>
psync::ServerOptions server_options(const Config& c) {
  psync::ServerOptions so;
  so.expected_workers = c.workers;
  so.join_timeout = c.timeout;
  so.peer_timeout = c.timeout;
  so.log = c.quiet ? nullptr : &std::cerr;
  if constexpr (!std::is_same_v<O, psync::optim::None>) {
    so.optimizer_schedule = psync::optim::parse_schedule(c.server_schedule, c.lr);
  }
  return so;
}

/// Calls `f(optimizer)` with the server's optimizer: `optim::None` (the server adds
/// the workers' updates) without --server-optimizer, else the `optim::Any` it names.
/// A compensated policy (LOSP) is never instantiated with one: parse() refuses it.
template <class P, class F>
int with_server_optimizer(const Config& c, F&& f) {
  if (c.server_optimizer.empty()) return f(psync::optim::None{});
  if constexpr (psync::installs_global<P>) {
    return f(psync::optim::parse_optimizer(c.server_optimizer));
  } else {
    throw std::logic_error("--server-optimizer with a compensated policy got past the command line's check");
  }
}

/// Serves over the endpoint `open(dimension)` returns (a `psync::TcpServer` or a
/// `psync::Mpi`); `where(transport)` is what the "listening on" line names.
template <class M, class P, class O, class Open, class Where>
int serve(const Config& c, M model, P policy, O optimizer, const psync::data::Dataset& test, Open open, Where where_of) {
  // Copies made before serving, so evaluation never allocates or first-touches memory mid-run.
  const psync::data::Batch probe = psync::data::whole(test, progress_samples);
  const psync::data::Batch full_test = psync::data::whole(test);
  M eval_model = model;

  if (!c.checkpoint.empty()) {  // fail before listening, not at the first checkpoint
    std::error_code ec;
    std::filesystem::create_directories(c.checkpoint, ec);
    if (ec || ::access(c.checkpoint.c_str(), W_OK | X_OK) != 0) {
      throw std::runtime_error("--checkpoint '" + c.checkpoint + "': cannot write there: " +
                               (ec ? ec.message() : std::string(std::strerror(errno))));
    }
  }

  auto transport = open(static_cast<std::uint64_t>(model.parameters().size()));
  const std::string where = where_of(transport);
  std::cout << program << ": listening on " << where << std::endl;
  if (!c.quiet) {
    std::cout << program << ": server: policy " << policy.name() << optimizer_text(c) << ", model " << c.model << " ("
              << model.parameters().size() << " parameters), data " << c.data << ", waiting for " << c.workers
              << " worker(s)" << std::endl;
  }

  psync::ServerOptions so = server_options<O>(c);
  std::optional<psync::Trace> trace;
  if (!c.trace.empty()) so.trace = &trace.emplace();
  so.checkpoint_dir = c.checkpoint;
  so.checkpoint_every = c.checkpoint_every;
  so.checkpoint_keep = c.checkpoint_keep;
  so.resume = c.resume;
  if (c.series_every.count() > 0) {
    // Each point keeps a copy of the model until the run ends: at most 1 GiB of them.
    const auto model_bytes = static_cast<std::size_t>(model.parameters().size()) * sizeof(float) + 1;
    so.snapshot_interval = c.series_every;
    so.max_snapshots = std::max<std::size_t>(16, (std::size_t{1} << 30) / model_bytes);
  }
  double last_seconds = 0;
  std::uint64_t last_steps = 0;
  if (!c.quiet) {
    so.on_progress = [&](const psync::ServerProgress& p) {
      eval_model.parameters() = p.parameters;
      const double loss = eval_model.loss(probe);
      const double accuracy = eval_model.accuracy(probe);
      const double dt = p.seconds - last_seconds;
      const double rate = dt > 0 ? static_cast<double>(p.steps_applied - last_steps) / dt : 0.0;
      last_seconds = p.seconds;
      last_steps = p.steps_applied;
      char line[256];
      std::snprintf(line, sizeof line,
                    "%s: [%7.1fs] version %llu, steps %llu, live workers %zu, test loss %.4f, accuracy %.4f "
                    "(%lld samples), %.0f steps/s",
                    program, p.seconds, static_cast<unsigned long long>(p.version),
                    static_cast<unsigned long long>(p.steps_applied), p.live_workers, loss, accuracy,
                    static_cast<long long>(probe.size()), rate);
      std::cout << line << std::endl;
    };
  }

  psync::Server<M, P, O> server(std::move(model), so, policy, std::move(optimizer));
  const StopOnSignal stop_on_signal(server);

  // Through a view of one type: Server::run is compiled once per policy and model, not per transport too.
  psync::AnyTransport endpoint(std::ref(transport));
  const CpuTimes cpu_start = cpu_times();
  psync::ServerReport report = server.run(endpoint);
  transport.close();  // flushes the last replies (bounded)
  const CpuTimes cpu = cpu_times().since(cpu_start);
  if (trace) {
    trace->name_track(psync::server_track, "server");
    trace->write_json(c.trace);
  }
  if constexpr (requires { transport.failures(); }) {
    for (const std::string& f : transport.failures()) std::cerr << program << ": " << f << std::endl;
  }

  eval_model.parameters() = server.model().parameters();
  const double final_loss = eval_model.loss(full_test);
  const double final_accuracy = eval_model.accuracy(full_test);
  const std::size_t lost = lost_peers(report);
  {
    char line[320];
    std::snprintf(line, sizeof line,
                  "%s: server done in %.2f s: version %llu, %llu updates covering %llu steps from %zu worker(s) "
                  "(%zu lost); final test accuracy %.4f, loss %.4f on %lld samples",
                  program, report.wall_s, static_cast<unsigned long long>(report.version),
                  static_cast<unsigned long long>(report.updates_applied),
                  static_cast<unsigned long long>(report.steps_applied), report.peers.size(), lost, final_accuracy,
                  final_loss, static_cast<long long>(full_test.size()));
    std::cout << line << std::endl;
  }
  if (!c.checkpoint.empty()) {
    std::cout << program << ": " << report.checkpoints_written << " checkpoint(s) written to " << c.checkpoint << " in "
              << report.checkpoint_s << " s (" << report.checkpoint_failures << " failed)"
              << (report.resumed_path.empty() ? std::string()
                                              : "; resumed from " + report.resumed_path + " (" +
                                                    std::to_string(report.resumed_steps) + " steps applied)")
              << std::endl;
  }

  ServerSummary summary;
  summary.cpu = cpu;
  if (c.series_every.count() > 0) summary.series = evaluate_series(report, eval_model, test, c.series_samples);
  if (c.target) summary.time_to_target_s = psync::time_to_accuracy(summary.series, *c.target);
  if (c.target && !c.quiet) {
    std::cout << program << ": time to " << *c.target << " test accuracy ("
              << std::min<Eigen::Index>(c.series_samples, test.size()) << " samples, mean of 3 points): "
              << (summary.time_to_target_s >= 0 ? std::to_string(summary.time_to_target_s) + " s"
                                                : std::string("not reached"))
              << std::endl;
  }
  summary.listening = where;
  summary.interrupted = g_signal != 0;
  summary.final_test_accuracy = final_accuracy;
  summary.final_test_loss = final_loss;
  summary.test_samples = full_test.size();
  summary.workers_lost = lost;
  write_server_metrics(c, summary, report);
  if (g_signal != 0) {
    std::cerr << program << ": server interrupted by signal " << g_signal << std::endl;
    return exit_failure;
  }
  return exit_ok;
}

/// The TCP listener of a (shard) server holding `dimension` floats.
psync::TcpServer open_tcp(const Config& c, std::uint64_t dimension) {
  psync::TcpServerOptions to;
  to.address = c.host;
  to.port = c.port;
  to.limits.expected_dimension = dimension;
  to.frame_timeout = c.timeout;
  to.secret = c.secret;
  to.tls.cert_file = c.tls_cert;
  to.tls.key_file = c.tls_key;
  return psync::TcpServer(to);
}

/// --shard I/K (or --transport mpi --shards K on rank I): serves slice I of the model
/// (the same initial model as an unsharded server, cut by `psync::ShardLayout`) over
/// the endpoint `open(slice size)` returns, named by `where_of(endpoint)`. A slice
/// cannot be evaluated: the shard reports versions and steps, the workers report the
/// assembled model (worker_role.cpp).
template <class P, class O, class Open, class Where>
int serve_shard(const Config& c, Eigen::Ref<const Eigen::VectorXf> full, P policy, O optimizer, Open open,
                Where where_of) {
  const psync::ShardLayout layout(full.size(), c.shard_count);
  const std::uint32_t i = *c.shard_index;
  psync::ParameterSlice slice = psync::ParameterSlice::of(full, layout, i);
  const std::string shard = std::to_string(i) + "/" + std::to_string(c.shard_count);

  auto transport = open(static_cast<std::uint64_t>(layout.size(i)));
  const std::string where = where_of(transport);
  std::cout << program << ": listening on " << where << std::endl;
  if (!c.quiet) {
    std::cout << program << ": shard " << shard << ": parameters " << layout.offset(i) << " to "
              << layout.offset(i) + layout.size(i) << " of " << layout.dimension() << " (model " << c.model
              << "), policy " << policy.name() << optimizer_text(c) << ", waiting for " << c.workers << " worker(s)"
              << std::endl;
  }
  psync::ServerOptions so = server_options<O>(c);
  std::optional<psync::Trace> trace;
  if (!c.trace.empty()) so.trace = &trace.emplace();
  if (!c.quiet) {
    so.on_progress = [&](const psync::ServerProgress& p) {
      char line[200];
      std::snprintf(line, sizeof line, "%s: shard %s [%7.1fs] version %llu, steps %llu, live workers %zu", program,
                    shard.c_str(), p.seconds, static_cast<unsigned long long>(p.version),
                    static_cast<unsigned long long>(p.steps_applied), p.live_workers);
      std::cout << line << std::endl;
    };
  }
  // A server-side optimizer works element by element: each shard runs it on its slice,
  // with its own state, and the shards together make the unsharded server's update.
  psync::Server<psync::ParameterSlice, P, O> server(std::move(slice), so, policy, std::move(optimizer));
  const StopOnSignal stop_on_signal(server);
  psync::AnyTransport endpoint(std::ref(transport));  // one Server::run per policy, as in serve()
  const CpuTimes cpu_start = cpu_times();
  const psync::ServerReport report = server.run(endpoint);
  transport.close();  // flushes the last replies (bounded)
  const CpuTimes cpu = cpu_times().since(cpu_start);
  if (trace) {
    trace->name_track(psync::server_track, "server shard " + shard);
    trace->write_json(c.trace);
  }
  if constexpr (requires { transport.failures(); }) {
    for (const std::string& f : transport.failures()) std::cerr << program << ": " << f << std::endl;
  }

  const std::size_t lost = lost_peers(report);
  char line[320];
  std::snprintf(line, sizeof line,
                "%s: shard %s done in %.2f s: version %llu, %llu updates covering %llu steps from %zu worker(s) "
                "(%zu lost)",
                program, shard.c_str(), report.wall_s, static_cast<unsigned long long>(report.version),
                static_cast<unsigned long long>(report.updates_applied),
                static_cast<unsigned long long>(report.steps_applied), report.peers.size(), lost);
  std::cout << line << std::endl;
  ServerSummary summary;
  summary.cpu = cpu;
  summary.listening = where;
  summary.interrupted = g_signal != 0;
  summary.final_test_accuracy = std::nan("");  // a slice has no accuracy: null in the JSON
  summary.final_test_loss = std::nan("");
  summary.workers_lost = lost;
  write_server_metrics(c, summary, report);
  if (g_signal != 0) {
    std::cerr << program << ": shard " << shard << " interrupted by signal " << g_signal << std::endl;
    return exit_failure;
  }
  return exit_ok;
}

}  // namespace

int run_server(const Config& c) {
  TrainTest data = load_data(c);
  const Eigen::Index inputs = data.test.dimension();
  const int classes = data.test.num_classes;
  return psync::with_policy(c.policy, [&](auto policy) {
    return with_server_optimizer<decltype(policy)>(c, [&](auto optimizer) {
      return with_model(c, inputs, classes, [&](auto model) {
#ifdef PSYNC_TRAIN_WITH_MPI
        if (c.transport == "mpi") {
          // Ranks 0..K-1 serve (--shards K); Server::run tells the endpoint its dimension.
          const auto open = [&c](std::uint64_t) {
            psync::MpiOptions o;
            o.servers = static_cast<int>(c.shard_count);
            return psync::Mpi(o);
          };
          const auto where = [](const psync::Mpi& t) {
            return "MPI rank " + std::to_string(t.rank()) + " of " + std::to_string(t.size()) + " (" +
                   std::to_string(t.workers()) + " worker ranks)";
          };
          if (c.shard_index) return serve_shard(c, model.parameters(), policy, optimizer, open, where);
          return serve(c, std::move(model), policy, optimizer, data.test, open, where);
        }
#endif
        const auto open = [&c](std::uint64_t dimension) { return open_tcp(c, dimension); };
        const auto where = [&c](const psync::TcpServer& t) { return host_port(c.host, t.port()); };
        if (c.shard_index) return serve_shard(c, model.parameters(), policy, optimizer, open, where);
        return serve(c, std::move(model), policy, optimizer, data.test, open, where);
      });
    });
  });
}

}  // namespace psync_train
