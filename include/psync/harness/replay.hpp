#pragma once
/// @file
/// @brief Replays a run's order of events through the real cores, with no clock.
///
/// A cluster's trajectory is set by the order of its events, not by their times:
/// at which of its step boundaries each worker took each reply (and so which steps
/// each of its pushes held). `replay_rounds` drives one `ServerCore` and the
/// `WorkerCore`s through a recorded order on one thread. Given the order of a real
/// run (psync-train --trace; `scripts/replay_rounds.py` extracts it), it reproduces
/// that run's server models exactly; given another order (the same steps spread
/// evenly over the rounds, say), it shows what the order alone does to learning.

#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/core/server_core.hpp"
#include "psync/core/types.hpp"
#include "psync/core/worker_core.hpp"
#include "psync/harness/local_cluster.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace psync::harness {

/// @brief A run's order of events: `boundaries[w][r]` is the number of steps worker w
/// had completed when it took the reply to its (r + 1)-th push (`psync::Worker` takes
/// a reply at a step boundary and pushes there). Non-decreasing per worker.
using ReplyBoundaries = std::vector<std::vector<std::uint64_t>>;

/// @brief The state after a replayed round: `round` (1-based; 0 is after the joins),
/// the server's steps applied and version.
struct ReplayedRound {
  std::size_t round = 0;
  std::uint64_t steps_applied = 0;
  std::uint64_t version = 0;
};

/// @brief Replays `boundaries` (one row per worker): worker w starts from `model`, draws
/// its batches from `batches_for(w)`, takes SGD steps with `optimizer` at
/// `learning_rate`; in round r every worker steps until its boundary `r` (its push of
/// that round left at the previous boundary), the server takes the pushes in worker
/// order, and each worker takes its reply, then pushes. A worker whose row has ended
/// finishes and leaves (rows differ in length when the last worker's final rounds
/// were closed without the ones that had left). `on_round(const ReplayedRound&, const
/// M& server_model)` is called after the joins and after each round.
///
/// Meant for policies that answer every push once its round has been decided (BSP,
/// OSP, LOSP; ASP, SSP and DSSP answer each push at once and replay as well). Throws
/// `ConfigError` naming the round and the worker if the order cannot be replayed: a
/// boundary before the steps already taken, a gate that stays closed before the
/// boundary, or no reply at the boundary.
template <Model M, SyncPolicy P, optim::WorkerRule O = optim::Sgd, class BatchesFor, class OnRound>
void replay_rounds(const M& model, BatchesFor&& batches_for, float learning_rate, P policy,
                   const ReplyBoundaries& boundaries, OnRound&& on_round, O optimizer = {}) {
  const auto workers = static_cast<PeerId>(boundaries.size());
  if (workers == 0) throw ConfigError("replay_rounds: no workers (boundaries is empty)");
  std::size_t rounds = 0;
  for (const auto& b : boundaries) rounds = std::max(rounds, b.size());

  const Clock::time_point now{};  // no clock: the order is the input
  ServerCoreOptions so;
  so.expected_workers = workers;
  so.join_timeout = std::chrono::hours(24);
  so.peer_timeout = std::chrono::hours(24);
  ServerCore<M, P> server(model, so, policy, now);
  using Core = WorkerCore<M, P, O>;
  using Batches = std::decay_t<std::invoke_result_t<BatchesFor&, PeerId>>;
  std::vector<std::unique_ptr<Core>> cores;
  std::vector<Batches> batches;
  for (PeerId w = 0; w < workers; ++w) {
    cores.push_back(std::make_unique<Core>(model, w, learning_rate, policy, optimizer));
    batches.push_back(batches_for(w));
  }
  std::vector<std::pair<PeerId, Message>> to_server;
  std::vector<std::vector<Message>> to_worker(workers);
  const auto flush = [&](PeerId w) {
    while (auto t = cores[w]->poll_transmit()) to_server.emplace_back(w, std::move(t->message));
  };
  const auto serve = [&] {
    for (auto& [w, m] : to_server) server.on_message(w, std::move(m), now);
    to_server.clear();
    while (auto t = server.poll_transmit()) {
      if (t->to >= workers) throw ConfigError("replay_rounds: the server answered unknown worker " + std::to_string(t->to));
      to_worker[t->to].push_back(std::move(t->message));
    }
  };
  const auto where = [](std::size_t r, PeerId w) {
    return "replay_rounds: round " + std::to_string(r) + ", worker " + std::to_string(w) + ": ";
  };
  const auto take = [&](PeerId w, std::size_t r) {
    if (to_worker[w].empty()) throw ConfigError(where(r, w) + "no reply at its boundary (the order cannot be replayed)");
    for (auto& m : to_worker[w]) cores[w]->on_message(std::move(m), now);
    to_worker[w].clear();
    flush(w);
  };
  const auto report = [&](std::size_t r) {
    on_round(ReplayedRound{r, server.report().steps_applied, server.version()}, std::as_const(server.model()));
  };

  for (PeerId w = 0; w < workers; ++w) {
    cores[w]->start(now);
    flush(w);
  }
  serve();
  for (PeerId w = 0; w < workers; ++w) take(w, 0);
  report(0);
  std::vector<std::uint64_t> done(workers, 0);
  for (std::size_t r = 0; r < rounds; ++r) {
    for (PeerId w = 0; w < workers; ++w) {
      if (r == boundaries[w].size()) {
        // Its last reply taken: it leaves (psync::Worker's finish), and the server's
        // rounds go on without it, as they did in the run.
        cores[w]->finish(now);
        flush(w);
      }
      if (r >= boundaries[w].size()) continue;
      const std::uint64_t until = boundaries[w][r];
      if (until < done[w]) {
        throw ConfigError(where(r + 1, w) + "boundary " + std::to_string(until) + " is before the " +
                          std::to_string(done[w]) + " steps already taken");
      }
      Core& core = *cores[w];
      while (done[w] < until) {
        if (!core.begin_step(now)) {
          throw ConfigError(where(r + 1, w) + "the gate is closed after " + std::to_string(done[w]) +
                            " steps, before its boundary " + std::to_string(until));
        }
        const auto& batch = batches[w]();
        core.model().gradient(batch, core.gradient());
        core.end_step(detail::samples_in(batch), std::numeric_limits<double>::quiet_NaN(), now);
        ++done[w];
        flush(w);
      }
    }
    serve();
    for (PeerId w = 0; w < workers; ++w) {
      if (r < boundaries[w].size()) take(w, r + 1);
    }
    report(r + 1);
  }
}

}  // namespace psync::harness
