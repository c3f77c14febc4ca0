#pragma once
/// @file
/// @brief A training worker: computes gradients on its shard and talks to the
/// server as its synchronization policy says.

#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/core/message.hpp"
#include "psync/core/metrics.hpp"
#include "psync/core/server.hpp"
#include "psync/core/trace.hpp"

#include <Eigen/Core>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

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

/// @brief How a worker runs.
struct WorkerOptions {
  /// @brief This worker's id (0..N-1); must match its transport's `self()`.
  PeerId id = 0;
  /// @brief SGD learning rate; an update is -learning_rate * gradient.
  float learning_rate = 0.05f;
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
};

/// @brief A worker training model type `M` over transport `T` under policy `P`.
///
/// Synchronous policies (BSP, ASP, SSP) compute a step, push it and wait for the
/// model the server sends back. OSP computes on the calling thread while a
/// background sender pushes the accumulated update and pulls the next model; the
/// model is installed at the next step boundary and compute waits only when the
/// policy's threshold of pending steps is reached.
template <Model M, Transport T, SyncPolicy P>
class Worker {
 public:
  /// @brief The batch type `run`'s batch source must return.
  using Batch = typename M::Batch;

  /// @brief A worker starting from `model` (the server's model replaces its parameters at join).
  Worker(M model, T transport, WorkerOptions options, P policy = {})
      : model_(std::move(model)), transport_(std::move(transport)), options_(options), policy_(policy) {
    if (!(options_.learning_rate > 0) || !std::isfinite(options_.learning_rate)) {
      throw ConfigError("worker " + std::to_string(options_.id) + ": learning rate must be positive and finite");
    }
    if (options_.max_steps == 0) throw ConfigError("worker " + std::to_string(options_.id) + ": max_steps is 0");
    if (!(options_.straggler.slowdown >= 1.0) || !(options_.straggler.random_factor >= 1.0)) {
      throw ConfigError("worker " + std::to_string(options_.id) + ": straggler factors must be >= 1");
    }
    const auto n = model_.parameters().size();
    grad_ = Eigen::VectorXf::Zero(n);
    rng_.seed(options_.straggler.seed ^ (0x9E3779B97F4A7C15ull * (options_.id + 1)));
  }

  /// @brief The local model (after `run`, the last global model installed).
  const M& model() const noexcept { return model_; }
  /// @brief The transport endpoint.
  T& transport() noexcept { return transport_; }

  /// @brief Joins, trains until `max_steps` or the time budget, pushes what is
  /// left, and leaves. `next_batch()` returns the next `const Batch&`.
  /// Throws `TimeoutError`, `TransportError` or `ProtocolError` naming this worker.
  template <class NextBatch>
    requires std::invocable<NextBatch&> &&
             std::convertible_to<std::invoke_result_t<NextBatch&>, const Batch&>
  WorkerReport run(NextBatch&& next_batch) {
    report_ = WorkerReport{};
    report_.id = options_.id;
    join();
    start_ = Clock::now();
    if constexpr (P::overlaps) {
      run_overlapped(next_batch);
    } else {
      run_synchronous(next_batch);
    }
    report_.wall_s = seconds(Clock::now() - start_);
    try {
      transport_.send(server_peer, msg::Leave{msg::LeaveReason::finished});
    } catch (const TransportError&) {
      // The server is gone already; all our updates were acknowledged, so nothing is lost.
    }
    return report_;
  }

 private:
  static double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

  std::string who() const { return "worker " + std::to_string(options_.id); }

  bool out_of_budget() const {
    if (report_.steps >= options_.max_steps) return true;
    return options_.time_budget.count() > 0 && Clock::now() - start_ >= options_.time_budget;
  }

  void join() {
    msg::Join j;
    j.worker = options_.id;
    j.dimension = static_cast<std::uint64_t>(model_.parameters().size());
    j.policy = policy_.name();
    transport_.send(server_peer, std::move(j));
    msg::Model m = await_model("join");
    model_.parameters() = m.parameters;
    version_ = m.version;
    update_ = std::move(m.parameters);
  }

  /// Waits for the server's next model; every other outcome is an error naming its cause.
  msg::Model await_model(const char* what) {
    const auto deadline = Clock::now() + options_.reply_timeout;
    while (true) {
      auto env = transport_.receive(deadline);
      if (!env) {
        throw TimeoutError(who() + ": no model from the server within " +
                           std::to_string(options_.reply_timeout.count()) + " ms after " + what + " (policy " +
                           policy_.name() + ", clock " + std::to_string(clock_) + ")");
      }
      if (auto* m = std::get_if<msg::Model>(&env->message)) {
        if (m->parameters.size() != grad_.size()) {
          throw ProtocolError(who() + ": server sent " + std::to_string(m->parameters.size()) +
                              " parameters, model has " + std::to_string(grad_.size()));
        }
        return std::move(*m);
      }
      if (auto* e = std::get_if<msg::Error>(&env->message)) {
        throw ProtocolError(who() + ": server refused " + what + ": " + std::string(error_code_name(e->code)) + ": " +
                            e->text);
      }
      if (std::holds_alternative<msg::Leave>(env->message)) {
        throw TransportError(who() + ": lost the server while waiting for a model after " + what);
      }
      throw ProtocolError(who() + ": unexpected '" + std::string(message_name(env->message)) +
                          "' message from the server");
    }
  }

  /// One SGD step's gradient into `grad_`, stretched if this worker is a straggler.
  double compute_gradient(const Batch& batch) {
    const auto t0 = Clock::now();
    double loss;
    if constexpr (std::is_convertible_v<decltype(model_.gradient(batch, grad_)), double>) {
      loss = model_.gradient(batch, grad_);
    } else {
      model_.gradient(batch, grad_);
      loss = model_.loss(batch);
    }
    double factor = options_.straggler.slowdown;
    if (options_.straggler.random_probability > 0 &&
        std::uniform_real_distribution<double>(0.0, 1.0)(rng_) < options_.straggler.random_probability) {
      factor = options_.straggler.random_factor;
    }
    if (factor > 1.0) std::this_thread::sleep_for((Clock::now() - t0) * (factor - 1.0));
    const auto t1 = Clock::now();
    if (options_.trace) options_.trace->span(worker_track(options_.id), "compute", t0, t1);
    report_.compute_s += seconds(t1 - t0);
    report_.last_loss = loss;
    ++report_.steps;
    report_.samples += static_cast<std::uint64_t>(batch_size(batch));
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

  void account_round_trip(Clock::time_point sent, Clock::time_point received, std::uint64_t held_ns) {
    const double total = seconds(received - sent);
    const double held = std::min(total, static_cast<double>(held_ns) * 1e-9);
    report_.held_s += held;
    report_.comm_s += total - held;
    if (options_.trace) options_.trace->span(worker_track(options_.id) + 1, "push+pull", sent, received);
  }

  template <class NextBatch>
  void run_synchronous(NextBatch& next_batch) {
    while (!out_of_budget()) {
      compute_gradient(next_batch());
      update_ = grad_ * -options_.learning_rate;
      const auto sent = Clock::now();
      transport_.send(server_peer, msg::Push{clock_, version_, 1, std::move(update_)});
      ++clock_;
      ++report_.pushes;
      msg::Model m = await_model("push");
      const auto received = Clock::now();
      account_round_trip(sent, received, m.held_ns);
      report_.wait_s += seconds(received - sent);
      if (options_.trace) options_.trace->span(worker_track(options_.id), "wait", sent, received);
      model_.parameters() = m.parameters;
      version_ = m.version;
      ++report_.installs;
      update_ = std::move(m.parameters);
    }
  }

  // ---- OSP: compute on this thread, communicate on a background sender ----

  struct Shared {
    std::mutex mutex;
    std::condition_variable changed;
    Eigen::VectorXf accumulated;  ///< sum of local updates not yet taken by the sender
    std::uint32_t accumulated_steps = 0;
    std::uint64_t accumulated_base = 0;
    std::optional<msg::Model> inbox;  ///< newest model not yet installed
    std::uint32_t inbox_steps = 0;    ///< steps the push answered by `inbox` carried
    std::vector<Eigen::VectorXf> pool;  ///< zeroed buffers for the sender's next swap
    bool finishing = false;
    std::exception_ptr error;
  };

  template <class NextBatch>
  void run_overlapped(NextBatch& next_batch) {
    Shared s;
    s.accumulated = Eigen::VectorXf::Zero(grad_.size());
    s.pool.push_back(std::move(update_));
    s.pool.back().setZero();
    s.pool.push_back(Eigen::VectorXf::Zero(grad_.size()));
    std::uint32_t pending = 0;  // local steps not yet reflected in an installed global model
    std::thread sender([&] { sender_loop(s); });
    try {
      while (!out_of_budget()) {
        std::unique_lock lock(s.mutex);
        if (s.error) break;
        if (policy_.compute_must_wait(pending)) {
          const auto t0 = Clock::now();
          const auto deadline = t0 + options_.reply_timeout * 2;
          if (!s.changed.wait_until(lock, deadline, [&] { return s.inbox.has_value() || s.error; })) {
            throw TimeoutError(who() + ": compute blocked on " + std::to_string(pending) +
                               " pending steps and no model arrived within " +
                               std::to_string(2 * options_.reply_timeout.count()) + " ms");
          }
          const auto t1 = Clock::now();
          report_.wait_s += seconds(t1 - t0);
          if (options_.trace) options_.trace->span(worker_track(options_.id), "wait", t0, t1);
          if (s.error) break;
        }
        if (s.inbox) pending -= install(s, lock);
        lock.unlock();

        compute_gradient(next_batch());
        grad_ *= -options_.learning_rate;
        model_.parameters() += grad_;
        ++pending;
        {
          std::lock_guard g(s.mutex);
          if (s.accumulated_steps == 0) s.accumulated_base = version_;
          s.accumulated += grad_;
          ++s.accumulated_steps;
        }
        s.changed.notify_all();
      }
    } catch (...) {
      {
        std::lock_guard g(s.mutex);
        s.finishing = true;
      }
      s.changed.notify_all();
      sender.join();
      throw;
    }
    {
      std::lock_guard g(s.mutex);
      s.finishing = true;
    }
    s.changed.notify_all();
    sender.join();
    if (s.error) std::rethrow_exception(s.error);
    // The sender flushed every remaining step; install the last model it brought.
    std::unique_lock lock(s.mutex);
    if (s.inbox) install(s, lock);
  }

  /// Installs the inbox model (compensated with local updates if the policy says so);
  /// returns how many pending steps it covered.
  std::uint32_t install(Shared& s, std::unique_lock<std::mutex>&) {
    msg::Model& m = *s.inbox;
    if constexpr (P::local_compensation) {
      model_.parameters() = m.parameters + s.accumulated;
    } else {
      model_.parameters() = m.parameters;
    }
    version_ = m.version;
    ++report_.installs;
    m.parameters.setZero();
    s.pool.push_back(std::move(m.parameters));
    s.inbox.reset();
    return s.inbox_steps;
  }

  void sender_loop(Shared& s) {
    try {
      while (true) {
        Eigen::VectorXf payload;
        std::uint32_t steps = 0;
        std::uint64_t base = 0;
        {
          std::unique_lock lock(s.mutex);
          s.changed.wait(lock, [&] { return s.accumulated_steps > 0 || s.finishing; });
          if (s.accumulated_steps == 0) return;  // finishing with nothing left to push
          if (s.pool.empty()) s.pool.push_back(Eigen::VectorXf::Zero(s.accumulated.size()));
          payload = std::move(s.pool.back());
          s.pool.pop_back();
          std::swap(payload, s.accumulated);
          steps = s.accumulated_steps;
          base = s.accumulated_base;
          s.accumulated_steps = 0;
        }
        const auto sent = Clock::now();
        transport_.send(server_peer, msg::Push{clock_, base, steps, std::move(payload)});
        ++clock_;
        ++report_.pushes;
        msg::Model m = await_model("push");
        account_round_trip(sent, Clock::now(), m.held_ns);
        {
          std::lock_guard g(s.mutex);
          if (s.inbox) {
            // Compute has not installed the previous model yet: the newer one
            // supersedes it and covers both pushes' steps.
            Eigen::VectorXf older = std::move(s.inbox->parameters);
            older.setZero();
            s.pool.push_back(std::move(older));
            s.inbox = std::move(m);
            s.inbox_steps += steps;
          } else {
            s.inbox = std::move(m);
            s.inbox_steps = steps;
          }
        }
        s.changed.notify_all();
      }
    } catch (...) {
      {
        std::lock_guard g(s.mutex);
        s.error = std::current_exception();
      }
      s.changed.notify_all();
    }
  }

  M model_;
  T transport_;
  WorkerOptions options_;
  [[no_unique_address]] P policy_;
  Eigen::VectorXf grad_;
  Eigen::VectorXf update_;
  std::uint64_t clock_ = 0;
  std::uint64_t version_ = 0;
  Clock::time_point start_{};
  WorkerReport report_;
  std::mt19937_64 rng_;
};

}  // namespace psync
