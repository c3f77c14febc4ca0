#pragma once
/// @file
/// @brief The concepts psync's class templates require: ParameterSet, Model,
/// Transport and SyncPolicy. A type that does not model one is reported where it
/// is used as a template argument.

#include "psync/core/message.hpp"

#include <Eigen/Core>

#include <chrono>
#include <concepts>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

namespace psync {

/// @brief Clock used for every deadline in psync.
using Clock = std::chrono::steady_clock;

/// @brief Something with one contiguous float parameter vector: all the server needs.
/// Writable access is checked through `data()`: Eigen's `Ref<VectorXf>` converting
/// constructor is unconstrained, so convertibility alone would accept a read-only view.
template <class M>
concept ParameterSet = std::copy_constructible<M> && requires(M& m, const M& cm) {
  { cm.parameters() } -> std::convertible_to<Eigen::Ref<const Eigen::VectorXf>>;
  { m.parameters() } -> std::convertible_to<Eigen::Ref<Eigen::VectorXf>>;
  { m.parameters().data() } -> std::same_as<float*>;
};

/// @brief A trainable model: parameters, a loss and an analytic gradient for a batch.
///
/// `gradient(batch, g)` writes the gradient of the mean loss over the batch into `g`
/// (already sized to the parameter count) and must not allocate in steady state.
template <class M>
concept Model = ParameterSet<M> && requires { typename M::Batch; } &&
    requires(const M& cm, const typename M::Batch& b, Eigen::Ref<Eigen::VectorXf> g) {
      { cm.loss(b) } -> std::convertible_to<double>;
      cm.gradient(b, g);
    };

/// @brief Moves typed messages between peers.
///
/// - `self()` is this endpoint's peer id (`server_peer` for the server).
/// - `send(to, message)` hands the message over (moved); throws `TransportError`
///   if the peer is unknown or gone.
/// - `receive(deadline)` blocks until a message arrives or the deadline passes
///   (then returns `std::nullopt`); `try_receive()` never blocks.
/// - A lost peer is reported as a `msg::Leave{disconnected}` from that peer.
template <class T>
concept Transport = requires(T& t, PeerId to, Message&& m, Clock::time_point deadline) {
  { t.self() } -> std::convertible_to<PeerId>;
  t.send(to, std::move(m));
  { t.receive(deadline) } -> std::same_as<std::optional<Envelope>>;
  { t.try_receive() } -> std::same_as<std::optional<Envelope>>;
};

/// @brief What the server knows when it decides whether a read may be answered.
struct ReadQuery {
  PeerId reader = 0;             ///< the worker asking
  std::uint64_t clock = 0;       ///< the reader's clock (its pushes so far)
  std::uint64_t min_clock = 0;   ///< the slowest live worker's clock
  Clock::time_point now{};       ///< the time of the decision (virtual or real)
};

/// @brief A worker's local steps, counted three ways, when it decides whether compute may go on.
struct StepCounts {
  std::uint32_t unsent = 0;       ///< local steps not yet taken by the sender (the reference OSP gate's `it_count`)
  std::uint32_t in_flight = 0;    ///< steps in the push awaiting its reply
  std::uint32_t uninstalled = 0;  ///< local steps not yet reflected in the installed global model
};

/// @brief A synchronization policy: the decisions, and nothing else. The cores
/// call these hooks and never ask which policy they run.
///
/// - `read_ready(q)` (server): may a read at `q.clock` be answered now?
/// - `typename P::Combiner` (server): how pushes become model versions
///   (`combine::Sum`, `combine::RoundAverage`, or a type of the same shape).
/// - `compute_may_continue(counts)` (worker): may the next local step start?
///   A worker pushes whenever it has unsent steps and no push in flight, so
///   "continue while `uninstalled == 0`" is a synchronous round trip per step.
/// - `typename P::Install` (worker): what is installed when a global model arrives
///   (`install::Global`, `install::Compensated`, or a type of the same shape).
/// - `name()`: the run-time spelling, e.g. "ssp:3", accepted by `parse_policy`;
///   server and workers must agree on it.
///
/// Optional: `observe_push(worker, clock, now)` (server), called for every accepted
/// push before any read is decided, for policies that learn from timing (DSSP).
template <class P>
concept SyncPolicy = std::copy_constructible<P> && requires {
  typename P::Combiner;
  typename P::Install;
} && requires(const P& p, const ReadQuery& q, const StepCounts& s) {
  { p.read_ready(q) } -> std::same_as<bool>;
  { p.compute_may_continue(s) } -> std::same_as<bool>;
  { p.name() } -> std::convertible_to<std::string>;
};

namespace detail {

/// Calls the policy's optional `observe_push` hook.
template <class P>
void observe_push(P& policy, PeerId worker, std::uint64_t clock, Clock::time_point now) {
  if constexpr (requires { policy.observe_push(worker, clock, now); }) policy.observe_push(worker, clock, now);
}

}  // namespace detail

}  // namespace psync
