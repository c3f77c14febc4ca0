#pragma once
/// @file
/// @brief Asynchronous parallel.

#include "psync/policies/policy.hpp"

#include <string>

namespace psync {

/// @brief ASP: every push is added to the model on arrival and every read is
/// answered at once; a worker waits only for its own round trip.
struct Asp {
  /// @brief Each push is added on arrival.
  using Combiner = combine::Sum;
  /// @brief The global model is installed as it comes.
  using Install = install::Global;

  /// @brief Always: ASP is SSP with unbounded staleness.
  constexpr bool read_ready(const ReadQuery&) const noexcept { return true; }
  /// @brief One step, then wait for the reply to its push.
  constexpr bool compute_may_continue(const StepCounts& s) const noexcept { return s.uninstalled == 0; }
  /// @brief "asp".
  std::string name() const { return "asp"; }
};

}  // namespace psync
