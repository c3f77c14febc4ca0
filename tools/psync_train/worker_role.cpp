// psync-train's worker role (see worker_role.hpp).

// Boost 1.74's Asio needs <utility> first under C++20.
#include <utility>

#include "worker_role.hpp"

#include "report.hpp"
#include "task.hpp"

#include <psync/core/trace.hpp>
#include <psync/core/worker.hpp>
#include <psync/data/dataset.hpp>
#include <psync/optim/parse.hpp>
#include <psync/policies/parse.hpp>
#include <psync/transport/any.hpp>
#include <psync/transport/sharded.hpp>
#include <psync/transport/tcp.hpp>
#ifdef PSYNC_TRAIN_WITH_MPI
#include <psync/transport/mpi.hpp>
#endif

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace psync_train {

namespace {

/// Set once the worker's connection is up, so a transport error says "lost" rather than "cannot reach".
bool g_worker_connected = false;
/// This worker's id once known: --id, or the id the server assigned at join.
std::optional<std::uint32_t> g_worker_id;

/// Throws unless `id` picks one of the --workers shards.
void check_shard(const Config& c, std::uint32_t id) {
  if (id >= c.workers) {
    throw std::runtime_error("the server assigned worker id " + std::to_string(id) + ", which is not below --workers " +
                             std::to_string(c.workers) + " (more workers joined than --workers says)");
  }
}

/// Trains over the endpoint `open(id, within, dimension)` returns (`open_endpoint`: TCP,
/// connected within the deadline, MPI, the rank's endpoint, or either sharded).
/// `test`: when given (a worker of sharded servers), the last global model is evaluated
/// on it and reported, since no shard holds the whole model.
/// `rule`: the worker's `optim::Any` (--optimizer), or `optim::OnServer` (--optimizer
/// server: it pushes gradients to the server's optimizer).
template <class M, class P, class O, class Open>
int train_worker(const Config& c, M model, P policy, O rule, psync::data::Dataset train, Open open,
                 const psync::data::Dataset* test = nullptr) {
  // Without --id the shard is picked once the join reply has told us our id.
  g_worker_id = c.id;
  psync::data::Dataset mine;
  std::optional<psync::data::BatchSampler> sampler;
  const auto take_shard = [&](std::uint32_t id) {
    {
      auto shards = psync::data::shard(train, static_cast<int>(c.workers), c.seed);
      mine = std::move(shards[id]);
      train = psync::data::Dataset{};  // only this worker's shard stays in memory
    }
    sampler.emplace(mine, c.batch, psync::data::worker_seed(c.seed, id));
  };
  if (c.id) take_shard(*c.id);

  const auto connect = [&open, dimension = static_cast<std::uint64_t>(model.parameters().size())](
                           std::uint32_t id, std::chrono::milliseconds within) { return open(id, within, dimension); };
  using T = decltype(connect(0u, c.timeout));
  T transport = connect(c.id.value_or(psync::any_worker), c.timeout);
  g_worker_connected = true;

  psync::WorkerOptions wo;  // the worker's id is its transport's (--id, or the server's choice at join)
  wo.learning_rate = c.lr;
  wo.codec = c.codec;
  wo.codec_seed = c.seed;
  wo.max_steps = c.steps;
  wo.time_budget = c.seconds;
  // Longer than the server's peer timeout: a worker waiting on a silent peer is
  // answered once the server has dropped that peer, before its own deadline.
  wo.reply_timeout = 2 * c.timeout;
  wo.reconnect_timeout = c.reconnect;  // each attempt below is short; Worker backs off between them
  if (!c.schedule.empty()) wo.learning_rate_schedule = psync::optim::parse_schedule(c.schedule, c.lr);
  std::optional<psync::Trace> trace;
  if (!c.trace.empty()) wo.trace = &trace.emplace();
  psync::Worker<M, T, P, O> worker(std::move(model), std::move(transport), wo, policy, std::move(rule));
  // A reconnection keeps the id: an assigned one is what the worker rejoins under.
  if (c.reconnect.count() > 0) {
    worker.reconnect_with([&] { return connect(worker.core().id(), std::chrono::milliseconds(500)); });
  }
  const auto say_connected = [&](std::uint32_t id, const char* how) {
    if (c.quiet) return;
    std::cout << program << ": worker " << id << how << " connected to " << c.server << " (policy " << policy.name()
              << ", optimizer " << worker.core().optimizer().name() << (c.schedule.empty() ? "" : ", schedule " + c.schedule)
              << ", shard of " << mine.size() << " samples"
              << (c.codec.encoding == psync::Encoding::dense ? "" : ", pushes encoded " + c.codec.name()) << ")" << std::endl;
  };
  if (c.id) say_connected(*c.id, "");
  const auto delay = c.step_delay;
  // run() asks for the first batch only after the join reply: the id is known by then.
  const CpuTimes cpu_start = cpu_times();
  const psync::WorkerReport r = worker.run([&]() -> const psync::data::Batch& {
    if (!sampler) {
      const std::uint32_t id = worker.core().id();
      g_worker_id = id;
      check_shard(c, id);
      take_shard(id);
      say_connected(id, " (id assigned by the server)");
    }
    if (delay.count() > 0) std::this_thread::sleep_for(delay);
    return sampler->next();
  });
  const CpuTimes cpu = cpu_times().since(cpu_start);  // Worker::run's, not the final evaluation's
  if (trace) {  // the tracks local_cluster names, under this worker's id
    const std::uint32_t id = worker.core().id();
    trace->name_track(psync::worker_track(id), "worker " + std::to_string(id) + " compute");
    trace->name_track(psync::worker_track(id) + 1, "worker " + std::to_string(id) + " comm");
    trace->write_json(c.trace);
  }
  const std::uint32_t id = worker.core().id();
  g_worker_id = id;
  if (!c.quiet) {
    char line[320];
    std::snprintf(line, sizeof line,
                  "%s: worker %u done: %llu steps, %llu pushes in %.2f s (compute %.2f s, wait %.2f s, comm %.2f s, "
                  "held %.2f s), last batch loss %.4f",
                  program, id, static_cast<unsigned long long>(r.steps), static_cast<unsigned long long>(r.pushes),
                  r.wall_s, r.compute_s, r.wait_s, r.comm_s, r.held_s, r.last_loss);
    std::cout << line << std::endl;
    if (r.rejoins > 0) {
      std::cout << program << ": worker " << id << " rejoined " << r.rejoins << " time(s) after " << r.reconnect_s
                << " s reconnecting; the server had lost " << r.pushes_lost << " of its pushes (" << r.steps_discarded
                << " unsent or in-flight steps dropped)" << std::endl;
    }
  }
  if (test) {
    // The worker's model is the last global model, reassembled from every shard.
    const psync::data::Batch all = psync::data::whole(*test);
    FinalEvaluation e{worker.model().accuracy(all), worker.model().loss(all), all.size()};
    if (!c.quiet) {
      char line[200];
      std::snprintf(line, sizeof line, "%s: worker %u: final test accuracy %.4f, loss %.4f on %lld samples", program,
                    id, e.test_accuracy, e.test_loss, static_cast<long long>(e.test_samples));
      std::cout << line << std::endl;
    }
    write_worker_metrics(c, id, &r, "", &e, cpu);
    return exit_ok;
  }
  write_worker_metrics(c, id, &r, "", nullptr, cpu);
  return exit_ok;
}

/// The endpoint of worker `id` (or any_worker), connected within `within`, for a model of
/// `dimension` floats: chosen by --transport and the shard flags, behind one type, so the
/// worker below is compiled once per policy and model instead of once per transport too.
template <class P>
psync::AnyTransport open_endpoint(const Config& c, std::uint32_t id, std::chrono::milliseconds within,
                                  std::uint64_t dimension) {
#ifdef PSYNC_TRAIN_WITH_MPI
  if (c.transport == "mpi" && c.shard_count > 1) {
    // One endpoint per server rank 0..K-1, each expecting its slice's size.
    const psync::ShardLayout layout(static_cast<Eigen::Index>(dimension), c.shard_count);
    std::vector<std::uint64_t> sizes;
    std::vector<std::string> names;
    for (std::uint32_t i = 0; i < layout.shards(); ++i) {
      sizes.push_back(static_cast<std::uint64_t>(layout.size(i)));
      names.push_back("MPI rank " + std::to_string(i));
    }
    psync::MpiOptions o;
    o.servers = static_cast<int>(c.shard_count);
    psync::ShardedOptions so;
    so.equal_versions = psync::shard_versions_agree<P>;
    return psync::Sharded<psync::Mpi>(psync::mpi_shard_endpoints(o, sizes), std::move(names), layout.dimension(), so);
  }
  if (c.transport == "mpi") {
    psync::MpiOptions o;
    o.limits.expected_dimension = dimension;
    return psync::Mpi(o);
  }
#endif
  if (c.shard_servers.size() > 1) {
    // One connection per shard, each expecting its slice's size; the policy decides
    // whether the shards' versions must agree.
    const psync::ShardLayout layout(static_cast<Eigen::Index>(dimension),
                                    static_cast<std::uint32_t>(c.shard_servers.size()));
    std::vector<psync::Tcp> shards;
    std::vector<std::string> names;
    for (std::uint32_t i = 0; i < layout.shards(); ++i) {
      const auto& [host, port] = c.shard_servers[i];
      psync::TcpOptions o;
      o.connect_timeout = within;
      o.frame_timeout = c.timeout;
      o.limits.expected_dimension = static_cast<std::uint64_t>(layout.size(i));
      o.secret = c.secret;
      o.tls.ca_file = c.tls_ca;
      o.tls.server_name = c.tls_server_name;
      names.push_back(host_port(host, port));
      try {
        shards.emplace_back(host, port, id, o);
      } catch (const psync::TransportError& e) {
        throw psync::TransportError("shard " + std::to_string(i) + " of " + std::to_string(layout.shards()) + " (" +
                                    names.back() + "): " + e.what());
      }
    }
    psync::ShardedOptions so;
    so.equal_versions = psync::shard_versions_agree<P>;
    return psync::Sharded<psync::Tcp>(std::move(shards), std::move(names), layout.dimension(), so);
  }
  psync::TcpOptions o;
  o.connect_timeout = within;
  o.frame_timeout = c.timeout;
  o.limits.expected_dimension = dimension;
  o.secret = c.secret;
  o.tls.ca_file = c.tls_ca;
  o.tls.server_name = c.tls_server_name;
  return psync::Tcp(c.host, c.port, id, o);
}

}  // namespace

bool worker_connected() { return g_worker_connected; }

std::optional<std::uint32_t> worker_id() { return g_worker_id; }

int run_worker(const Config& c) {
  g_worker_id = c.id;
  TrainTest data = load_data(c);
  const Eigen::Index inputs = data.train.dimension();
  const int classes = data.train.num_classes;
  // Workers of sharded servers evaluate the assembled model themselves: no shard holds it.
  bool sharded = c.shard_servers.size() > 1;
#ifdef PSYNC_TRAIN_WITH_MPI
  sharded = sharded || (c.transport == "mpi" && c.shard_count > 1);
#endif
  return psync::with_policy(c.policy, [&](auto policy) {
    return with_model(c, inputs, classes, [&](auto model) {
      using P = decltype(policy);
      const auto open = [&c](std::uint32_t id, std::chrono::milliseconds within, std::uint64_t dimension) {
        return open_endpoint<P>(c, id, within, dimension);
      };
      const psync::data::Dataset* test = sharded ? &data.test : nullptr;
      if (c.pushes_gradients()) {
        // A compensated policy (LOSP) is never instantiated with it: parse() refuses it.
        if constexpr (psync::installs_global<P>) {
          return train_worker(c, std::move(model), policy, psync::optim::OnServer{}, std::move(data.train), open, test);
        } else {
          throw std::logic_error("--optimizer server with a compensated policy got past the command line's check");
        }
      }
      // optim::Any whatever --optimizer says: one Worker type, not one per optimizer.
      return train_worker(c, std::move(model), policy, psync::optim::parse_optimizer(c.optimizer),
                          std::move(data.train), open, test);
    });
  });
}

}  // namespace psync_train
