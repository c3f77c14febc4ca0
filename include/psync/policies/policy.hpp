#pragma once
/// @file
/// @brief What a synchronization policy is: the `SyncPolicy` concept and the two
/// queries its hooks answer. The standard library only: a policy header includes
/// this, not Eigen, so code that only names or parses policies stays light. The
/// combination and install rules a policy names are declared here and defined,
/// with the Eigen code they run, in policies/rules.hpp (included by the cores).

#include "psync/core/types.hpp"

#include <concepts>
#include <cstdint>
#include <string>
#include <type_traits>

namespace psync {

namespace combine {
struct Sum;
struct RoundAverage;
}  // namespace combine

namespace install {
struct Global;
struct Compensated;
}  // namespace install

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

/// @brief True when `P` installs the global model as it arrives (`install::Global`):
/// every policy but LOSP's local compensation, the ones a server-side optimizer
/// (`optim::OnServer` workers) can run with.
template <class P>
inline constexpr bool installs_global = std::is_same_v<typename P::Install, install::Global>;

namespace detail {

/// Calls the policy's optional `observe_push` hook.
template <class P>
void observe_push(P& policy, PeerId worker, std::uint64_t clock, Clock::time_point now) {
  if constexpr (requires { policy.observe_push(worker, clock, now); }) policy.observe_push(worker, clock, now);
}

}  // namespace detail

}  // namespace psync
