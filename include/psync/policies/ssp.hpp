#pragma once
/// @file
/// @brief Stale synchronous parallel (Ho et al. 2013): bounded staleness s.

#include "psync/policies/bound.hpp"
#include "psync/policies/policy.hpp"

#include <cstdint>
#include <string>

namespace psync {

/// @brief SSP(s): a read at clock c must include every update stamped <= c-s-1
/// from every live worker, so it is held while the slowest clock is below c-s.
/// The server adds pushes as they arrive (`combine::Sum`): `Ssp<0>` reads like BSP
/// but takes P times BSP's step, since BSP averages each round.
template <std::uint32_t S>
struct Ssp {
  /// @brief Each push is added on arrival.
  using Combiner = combine::Sum;
  /// @brief The global model is installed as it comes.
  using Install = install::Global;

  /// @brief `Ssp<s>` for a compile-time s.
  constexpr Ssp() noexcept requires(S != runtime_bound) = default;
  /// @brief `Ssp<runtime_bound>(s)`: the bound chosen at run time.
  constexpr explicit Ssp(std::uint32_t s) noexcept requires(S == runtime_bound) : bound_(s) {}

  /// @brief The staleness bound s.
  constexpr std::uint32_t staleness() const noexcept { return bound_.get(); }
  /// @brief A read at clock c is answered once the slowest clock is >= c - s.
  constexpr bool read_ready(const ReadQuery& q) const noexcept { return q.min_clock + staleness() >= q.clock; }
  /// @brief One step, then wait for the reply to its push.
  constexpr bool compute_may_continue(const StepCounts& c) const noexcept { return c.uninstalled == 0; }
  /// @brief "ssp:s".
  std::string name() const { return "ssp:" + std::to_string(staleness()); }

 private:
  [[no_unique_address]] detail::Bound<S> bound_;
};

}  // namespace psync
