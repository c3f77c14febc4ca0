#pragma once
/// @file
/// @brief Asynchronous parallel.

#include "psync/concepts.hpp"

#include <cstdint>
#include <string>

namespace psync {

/// @brief ASP: every push is applied on arrival and every read is answered at once;
/// a worker never waits for another (only for its own round trip).
struct Asp {
  static constexpr ServerMode server_mode = ServerMode::apply_on_arrival;
  static constexpr bool overlaps = false;
  static constexpr bool local_compensation = false;

  /// @brief Always: ASP is SSP with infinite staleness.
  constexpr bool read_ready(std::uint64_t, std::uint64_t) const noexcept { return true; }
  /// @brief Synchronous round trip: compute waits for its own pull.
  constexpr bool compute_must_wait(std::uint32_t pending) const noexcept { return pending >= 1; }
  /// @brief "asp".
  std::string name() const { return "asp"; }
};

}  // namespace psync
