#pragma once
/// @file
/// @brief A training worker: computes gradients on its shard and talks to the
/// server as its synchronization policy says.

#include "psync/compress/codec.hpp"
#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/core/log.hpp"
#include "psync/core/message.hpp"
#include "psync/core/metrics.hpp"
#include "psync/core/server.hpp"
#include "psync/core/trace.hpp"
#include "psync/core/worker_core.hpp"
#include "psync/optim/optimizer.hpp"
#include "psync/optim/schedule.hpp"

#include <Eigen/Core>

#include <chrono>
#include <cmath>
#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>

namespace psync {

/// @brief Makes a worker slower than its hardware: each step is stretched to
/// `slowdown` times its measured compute time (the worker really sleeps), and with
/// probability `random_probability` a step is stretched by `random_factor` instead.
struct Straggler {
  double slowdown = 1.0;
  double random_probability = 0.0;
  double random_factor = 1.0;
  std::uint64_t seed = 0;
};

/// @brief What `WorkerOptions::on_step` is told after each local step.
struct StepInfo {
  std::uint64_t step = 0;           ///< this worker's step just taken, 0-based (the schedule's argument)
  double loss = 0;                  ///< the batch's loss, NaN if the model's `gradient` does not return it
  float learning_rate = 0;          ///< the rate this step used
  std::uint64_t clock = 0;          ///< this worker's clock (pushes sent, from its join clock on)
  std::uint64_t min_clock = 0;      ///< the slowest live clock the server reported with the last model
  std::uint64_t version = 0;        ///< version of the installed global model
};

/// @brief How a worker runs. Its id is its transport's `self()`.
struct WorkerOptions {
  /// @brief SGD learning rate; an update is -learning_rate * gradient. Under
  /// `combine::Sum` (ASP, SSP) every push moves the model by its full update, under
  /// `combine::RoundAverage` (BSP, OSP) by 1/P of it: tune the rate per policy.
  float learning_rate = 0.05f;
  /// @brief Learning rate by step (0-based, this worker's steps), e.g.
  /// `optim::Warmup(100, optim::Cosine(0.1f, 900))`; empty: the constant `learning_rate`.
  /// Called on the worker's thread, once per step.
  optim::Schedule learning_rate_schedule;
  /// @brief Called on the worker's thread after each local step (after its push, if
  /// one left), with the step, loss, rate and clocks; empty: nothing is called. Keep it
  /// short: it runs on the compute path. What it throws ends `run`.
  std::function<void(const StepInfo&)> on_step;
  /// @brief How pushes are encoded (docs/compression.md): `compress::parse_codec("topk:0.01")`,
  /// "fp16", "qsgd8"; the default "none" pushes dense float32 as always.
  compress::Codec codec{};
  /// @brief Seeds the codec's random draws (qsgd8), mixed with the worker's id.
  std::uint64_t codec_seed = 1;
  /// @brief Stop after this many local steps.
  std::uint64_t max_steps = 1000;
  /// @brief Also stop once this much time has passed since the first step (0: no budget).
  std::chrono::milliseconds time_budget{0};
  /// @brief Longest wait for any answer from the server before `TimeoutError`.
  std::chrono::milliseconds reply_timeout{60000};
  /// @brief Optional emulated slowness.
  Straggler straggler;
  /// @brief Optional timeline recorder (not owned).
  Trace* trace = nullptr;
  /// @brief When the connection to the server is lost (or the server says it is
  /// stopping), keep trying to reconnect for this long, then rejoin under the same id
  /// and continue from the clock in the join reply (0: never; the loss is an error,
  /// as without it). Needs `Worker::reconnect_with`.
  std::chrono::milliseconds reconnect_timeout{0};
  /// @brief First pause between two connection attempts; it doubles up to `reconnect_backoff_max`.
  std::chrono::milliseconds reconnect_backoff{100};
  /// @brief Longest pause between two connection attempts.
  std::chrono::milliseconds reconnect_backoff_max{2000};
};

/// @brief A worker training model type `M` over transport `T` under policy `P`: a
/// thin driver that runs a `WorkerCore` on the calling thread.
///
/// Each step it hands the core what arrived, asks it whether compute may go on,
/// computes the gradient and sends what the core queued. Every transport's `send`
/// only hands the message over, so a push travels while the next steps compute:
/// that is OSP's overlap, with no sender thread. Replies are taken at step
/// boundaries (where OSP installs models anyway) and at once while compute is
/// blocked; the next push therefore leaves at the end of the step during which the
/// reply arrived, at most one step later than with a dedicated sender thread.
///
/// By default a lost server ends `run` with an error. With
/// `WorkerOptions::reconnect_timeout` and a connect function (`reconnect_with`), the
/// worker instead reconnects with exponential backoff, rejoins under its id
/// (`WorkerCore::rejoin`) and goes on from the clock the server kept for it: a server
/// restarted from a checkpoint takes it back, and steps the server lost are not redone.
///
/// `O` is the optimizer that turns gradients into updates (`optim::Sgd` by default;
/// `optim::Momentum`, `optim::Adam`, or `optim::OnServer` to push gradients to a server
/// that runs the optimizer), at `WorkerOptions::learning_rate_schedule`'s rate.
template <Model M, Transport T, SyncPolicy P, optim::WorkerRule O = optim::Sgd>
class Worker {
 public:
  /// @brief The batch type `run`'s batch source must return.
  using Batch = typename M::Batch;

  /// @brief A worker starting from `model` (the server's model replaces its parameters
  /// at join), identified by `transport.self()`.
  Worker(M model, T transport, WorkerOptions options, P policy = {}, O optimizer = {})
      : transport_(std::move(transport)),
        options_(std::move(options)),
        core_(std::move(model), transport_.self(), options_.learning_rate, std::move(policy), std::move(optimizer),
              options_.learning_rate_schedule) {
    if (options_.max_steps == 0) throw ConfigError(who() + ": max_steps is 0");
    if (!(options_.straggler.slowdown >= 1.0) || !(options_.straggler.random_factor >= 1.0)) {
      throw ConfigError(who() + ": straggler factors must be >= 1");
    }
    rng_.seed(options_.straggler.seed ^ (0x9E3779B97F4A7C15ull * (core_.id() + 1)));
    if (options_.codec.encoding != Encoding::dense) {
      // Sharded servers: the push is cut into their slices (qsgd8's buckets restart at each).
      std::vector<std::uint64_t> segments;
      if constexpr (requires { transport_.push_segments(); }) segments = transport_.push_segments();
      core_.use_codec(options_.codec, options_.codec_seed * 0xD1B54A32D192ED03ull + core_.id() + 1, std::move(segments));
    }
  }

  /// @brief The local model (after `run`, the last global model installed).
  const M& model() const noexcept { return core_.model(); }
  /// @brief The transport endpoint.
  T& transport() noexcept { return transport_; }
  /// @brief The protocol state (clock, step counts, last min clock).
  const WorkerCore<M, P, O>& core() const noexcept { return core_; }

  /// @brief How to open a new connection when the current one is lost: returns a
  /// connected transport with the same `self()`, or throws `TransportError` (the
  /// attempt is retried with backoff until `WorkerOptions::reconnect_timeout`).
  void reconnect_with(std::function<T()> connect) { connect_ = std::move(connect); }

  /// @brief Joins, trains until `max_steps` or the time budget, pushes what is
  /// left, and leaves. `next_batch()` returns the next `const Batch&`.
  /// Throws `TimeoutError`, `TransportError` or `ProtocolError` naming this worker.
  template <class NextBatch>
    requires std::invocable<NextBatch&> &&
             std::convertible_to<std::invoke_result_t<NextBatch&>, const Batch&>
  WorkerReport run(NextBatch&& next_batch) {
    if (options_.reconnect_timeout.count() > 0 && !connect_) {
      throw ConfigError(who() + ": reconnect_timeout is set but no connect function (Worker::reconnect_with)");
    }
    core_.start(Clock::now());
    exchange([&] { flush(); });
    {
      const auto deadline = Clock::now() + options_.reply_timeout;
      while (!core_.joined()) exchange([&] { receive_one(deadline, "join"); });
    }
    start_ = Clock::now();
    while (!out_of_budget()) {
      exchange([&] {
        while (auto env = transport_.try_receive()) deliver(std::move(*env));
        flush();
      });
      if (!core_.begin_step(Clock::now())) {
        const auto t0 = Clock::now();
        const auto deadline = t0 + options_.reply_timeout;
        do {
          exchange([&] {
            receive_one(deadline, core_.rejoining() ? "rejoining" : "push");
            flush();
          });
        } while (!core_.begin_step(Clock::now()));
        const auto t1 = Clock::now();
        wait_s_ += seconds(t1 - t0);
        if (options_.trace) options_.trace->span(worker_track(core_.id()), "wait", t0, t1);
      }
      const Batch& batch = next_batch();
      const double loss = compute_gradient(batch);
      core_.end_step(static_cast<std::uint64_t>(batch_size(batch)), loss, Clock::now());
      exchange([&] { flush(); });
      if (options_.on_step) {
        options_.on_step(StepInfo{core_.report().steps - 1, loss, core_.learning_rate(), core_.clock(),
                                  core_.last_min_clock(), core_.version()});
      }
    }
    core_.finish(Clock::now());
    exchange([&] { flush(); });
    const auto deadline = Clock::now() + options_.reply_timeout;
    while (!core_.finished()) {
      exchange([&] {
        receive_one(deadline, "the last push");
        flush();
      });
    }
    WorkerReport report = core_.report();
    report.wall_s = seconds(Clock::now() - start_);
    report.compute_s = compute_s_;
    report.wait_s = wait_s_;
    report.reconnect_s = reconnect_s_;
    return report;
  }

 private:
  static double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

  std::string who() const { return "worker " + std::to_string(core_.id()); }

  bool out_of_budget() const {
    if (core_.report().steps >= options_.max_steps) return true;
    return options_.time_budget.count() > 0 && Clock::now() - start_ >= options_.time_budget;
  }

  void flush() {
    while (auto t = core_.poll_transmit()) transport_.send(t->to, std::move(t->message));
  }

  bool may_reconnect() const noexcept { return options_.reconnect_timeout.count() > 0 && connect_; }

  /// Runs one exchange with the server. When reconnecting is on, a lost (or stopping)
  /// server is reconnected and the exchange is not retried: the caller's loop asks
  /// the core again, and its wait restarts from the reconnection.
  template <class F>
  void exchange(F&& f) {
    try {
      f();
      if (id_in_use_since_ && core_.joined() && !core_.rejoining()) id_in_use_since_.reset();
    } catch (const TransportError& e) {
      if (!may_reconnect()) throw;
      reconnect(e.what());
    } catch (const ServerStoppingError& e) {
      if (!may_reconnect()) throw;
      reconnect(e.what());
    } catch (const IdInUseError& e) {
      // Our id is held by another connection, most likely our own stale one (a restart
      // after a half-open drop): it goes when keepalive or the server's peer timeout
      // finds it dead, so the join is retried within the reconnect budget.
      if (!may_reconnect()) throw;
      const auto now = Clock::now();
      if (!id_in_use_since_) {
        id_in_use_since_ = now;
        id_in_use_pause_ = options_.reconnect_backoff;
      }
      if (now + id_in_use_pause_ >= *id_in_use_since_ + options_.reconnect_timeout) {
        throw IdInUseError(std::string(e.what()) + " (join retried for " +
                           std::to_string(options_.reconnect_timeout.count()) + " ms)");
      }
      psync::log(LogLevel::warning, std::string(e.what()) + "; retrying the join in " +
                                        std::to_string(id_in_use_pause_.count()) + " ms");
      std::this_thread::sleep_for(id_in_use_pause_);
      id_in_use_pause_ = std::min(2 * id_in_use_pause_, std::max(options_.reconnect_backoff_max, options_.reconnect_backoff));
      reconnect(e.what());
    }
  }

  /// Connects again with exponential backoff until `reconnect_timeout`, then rejoins.
  void reconnect(const std::string& why) {
    const auto lost = Clock::now();
    const auto give_up = lost + options_.reconnect_timeout;
    const std::string budget = std::to_string(options_.reconnect_timeout.count()) + " ms";
    psync::log(LogLevel::warning, who() + ": lost the server (" + why + "); reconnecting for up to " + budget);
    auto pause = options_.reconnect_backoff;
    std::string last;
    for (int attempt = 1;; ++attempt) {
      try {
        T fresh = connect_();
        if (fresh.self() != core_.id()) {
          throw ConfigError(who() + ": the reconnect function returned an endpoint for peer " +
                            std::to_string(fresh.self()));
        }
        if constexpr (std::is_move_assignable_v<T>) {
          transport_ = std::move(fresh);
        } else {
          throw ConfigError(who() + ": this transport cannot be replaced, so the worker cannot reconnect");
        }
        core_.rejoin(Clock::now());
        flush();
        reconnected_at_ = Clock::now();
        reconnect_s_ += seconds(reconnected_at_ - lost);
        psync::log(LogLevel::info, who() + ": reconnected after " +
                                       std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                          reconnected_at_ - lost)
                                                          .count()) +
                                       " ms (attempt " + std::to_string(attempt) + "), rejoining at clock " +
                                       std::to_string(core_.clock()));
        return;
      } catch (const TransportError& e) {
        last = e.what();
      }
      if (Clock::now() + pause >= give_up) {
        throw TransportError(who() + ": lost the server (" + why + ") and could not reconnect within " + budget + " (" +
                             std::to_string(attempt) + " attempts; last: " + last + ")");
      }
      std::this_thread::sleep_for(pause);
      pause = std::min(2 * pause, std::max(options_.reconnect_backoff_max, options_.reconnect_backoff));
    }
  }

  /// Hands one message to the core; traces the round trip it may end.
  void deliver(Envelope&& env) {
    const std::uint64_t replies = core_.report().clock_staleness.count;
    const auto sent = core_.sent_at();
    const bool was_waiting = core_.awaiting_reply();
    const std::uint64_t lost = core_.report().pushes_lost;
    const std::uint64_t rejoins = core_.report().rejoins;
    core_.on_message(std::move(env.message), Clock::now());
    if (core_.report().rejoins != rejoins) {
      const std::uint64_t now_lost = core_.report().pushes_lost - lost;
      psync::log(LogLevel::info, who() + ": rejoined at clock " + std::to_string(core_.clock()) +
                                     (now_lost ? " (the server had lost " + std::to_string(now_lost) + " of our pushes)"
                                               : " (nothing lost)"));
    }
    if (options_.trace && was_waiting && core_.report().clock_staleness.count > replies) {
      options_.trace->span(worker_track(core_.id()) + 1, "push+pull", sent, Clock::now());
    }
  }

  void receive_one(Clock::time_point deadline, const char* what) {
    // A wait that began before a reconnection counts from it.
    if (reconnected_at_ != Clock::time_point{}) deadline = std::max(deadline, reconnected_at_ + options_.reply_timeout);
    auto env = transport_.receive(deadline);
    if (!env) {
      throw TimeoutError(who() + ": no model from the server within " + std::to_string(options_.reply_timeout.count()) +
                         " ms after " + what + " (policy " + core_.policy().name() + ", clock " +
                         std::to_string(core_.clock()) + ")");
    }
    deliver(std::move(*env));
  }

  /// One SGD step's gradient into the core's buffer, stretched if this worker is a straggler.
  /// Returns the batch loss when the model's `gradient` returns it, NaN otherwise.
  double compute_gradient(const Batch& batch) {
    const auto t0 = Clock::now();
    double loss = std::numeric_limits<double>::quiet_NaN();
    const M& model = core_.model();
    if constexpr (std::is_convertible_v<decltype(model.gradient(batch, core_.gradient())), double>) {
      loss = model.gradient(batch, core_.gradient());
    } else {
      model.gradient(batch, core_.gradient());
    }
    double factor = options_.straggler.slowdown;
    if (options_.straggler.random_probability > 0 &&
        std::uniform_real_distribution<double>(0.0, 1.0)(rng_) < options_.straggler.random_probability) {
      factor = options_.straggler.random_factor;
    }
    if (factor > 1.0) std::this_thread::sleep_for((Clock::now() - t0) * (factor - 1.0));
    const auto t1 = Clock::now();
    if (options_.trace) options_.trace->span(worker_track(core_.id()), "compute", t0, t1);
    compute_s_ += seconds(t1 - t0);
    return loss;
  }

  template <class B>
  static Eigen::Index batch_size(const B& b) {
    if constexpr (requires { b.size(); }) {
      return static_cast<Eigen::Index>(b.size());
    } else {
      return 1;
    }
  }

  T transport_;
  WorkerOptions options_;
  WorkerCore<M, P, O> core_;
  std::function<T()> connect_;
  Clock::time_point reconnected_at_{};
  std::optional<Clock::time_point> id_in_use_since_;  // first join refused as duplicate_worker, until one succeeds
  std::chrono::milliseconds id_in_use_pause_{0};
  double reconnect_s_ = 0;
  Clock::time_point start_{};
  double compute_s_ = 0;
  double wait_s_ = 0;
  std::mt19937_64 rng_;
};

}  // namespace psync
