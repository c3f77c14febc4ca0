// psync-train's worker role (see worker_role.hpp).

// Boost 1.74's Asio needs <utility> first under C++20.
#include <utility>

#include "worker_role.hpp"

#include "report.hpp"
#include "task.hpp"

#include <psync/core/worker.hpp>
#include <psync/data/dataset.hpp>
#include <psync/policies/parse.hpp>
#include <psync/transport/tcp.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <thread>

namespace psync_train {

namespace {

/// Set once the worker's connection is up, so a transport error says "lost" rather than "cannot reach".
bool g_worker_connected = false;

template <class M, class P>
int train(const Config& c, M model, P policy, psync::data::Dataset train) {
  const std::uint32_t id = *c.id;
  psync::data::Dataset mine;
  {
    auto shards = psync::data::shard(train, static_cast<int>(c.workers), c.seed);
    mine = std::move(shards[id]);
    train = psync::data::Dataset{};  // only this worker's shard stays in memory
  }
  psync::data::BatchSampler sampler(mine, c.batch, c.seed * 7919 + id + 1);

  psync::TcpOptions to;
  to.connect_timeout = c.timeout;
  to.frame_timeout = c.timeout;
  to.limits.expected_dimension = static_cast<std::uint64_t>(model.parameters().size());
  to.secret = c.secret;
  const auto connect = [&c, id, to](std::chrono::milliseconds within) {
    psync::TcpOptions o = to;
    o.connect_timeout = within;
    return psync::Tcp(c.host, c.port, id, o);
  };
  psync::Tcp transport = connect(c.timeout);
  g_worker_connected = true;

  psync::WorkerOptions wo;  // the worker's id is its transport's (`id` above)
  wo.learning_rate = c.lr;
  wo.max_steps = c.steps;
  // Longer than the server's peer timeout: a worker waiting on a silent peer is
  // answered once the server has dropped that peer, before its own deadline.
  wo.reply_timeout = 2 * c.timeout;
  wo.reconnect_timeout = c.reconnect;  // each attempt below is short; Worker backs off between them
  psync::Worker<M, psync::Tcp, P> worker(std::move(model), std::move(transport), wo, policy);
  if (c.reconnect.count() > 0) worker.reconnect_with([&] { return connect(std::chrono::milliseconds(500)); });
  if (!c.quiet) {
    std::cout << program << ": worker " << id << " connected to " << c.server << " (policy " << policy.name()
              << ", shard of " << mine.size() << " samples)" << std::endl;
  }
  const auto delay = c.step_delay;
  const psync::WorkerReport r = worker.run([&]() -> const psync::data::Batch& {
    if (delay.count() > 0) std::this_thread::sleep_for(delay);
    return sampler.next();
  });
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
  write_worker_metrics(c, &r, "");
  return exit_ok;
}

}  // namespace

bool worker_connected() { return g_worker_connected; }

int run_worker(const Config& c) {
  TrainTest data = load_data(c);
  const Eigen::Index inputs = data.train.dimension();
  const int classes = data.train.num_classes;
  return psync::with_policy(c.policy, [&](auto policy) {
    return with_model(c, inputs, classes,
                      [&](auto model) { return train(c, std::move(model), policy, std::move(data.train)); });
  });
}

}  // namespace psync_train
