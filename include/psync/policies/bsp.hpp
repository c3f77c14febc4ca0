#pragma once
/// @file
/// @brief Bulk synchronous parallel.

#include "psync/policies/policy.hpp"

#include <string>

namespace psync {

/// @brief BSP: each worker computes one step, pushes, and waits for the model of
/// the next round; the server applies the mean of each round's pushes once every
/// live worker has pushed it.
struct Bsp {
  /// @brief Rounds are averaged.
  using Combiner = combine::RoundAverage;
  /// @brief The global model is installed as it comes.
  using Install = install::Global;

  /// @brief A read at clock c waits until the slowest clock reaches c (round c-1 is applied).
  constexpr bool read_ready(const ReadQuery& q) const noexcept { return q.min_clock >= q.clock; }
  /// @brief One step, then wait for its round's model.
  constexpr bool compute_may_continue(const StepCounts& s) const noexcept { return s.uninstalled == 0; }
  /// @brief "bsp".
  std::string name() const { return "bsp"; }
};

}  // namespace psync
