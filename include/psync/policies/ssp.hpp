#pragma once
/// @file
/// @brief Stale synchronous parallel (Ho et al. 2013): bounded staleness s.

#include "psync/concepts.hpp"

#include <cstdint>
#include <string>

namespace psync {

/// @brief SSP(s): a read at clock c must include every update stamped <= c-s-1
/// from every live worker, so it is held while the slowest clock is below c-s.
/// The server applies pushes as they arrive. `Ssp<0>` reads like BSP but applies
/// updates one by one; `Bsp` averages whole rounds.
template <std::uint32_t S>
struct Ssp {
  /// @brief The staleness bound s.
  static constexpr std::uint32_t staleness = S;
  static constexpr ServerMode server_mode = ServerMode::apply_on_arrival;
  static constexpr bool overlaps = false;
  static constexpr bool local_compensation = false;

  /// @brief A read at clock `c` is allowed once the slowest clock `m` is >= c - s.
  constexpr bool read_ready(std::uint64_t c, std::uint64_t m) const noexcept { return m + S >= c; }
  /// @brief Synchronous: compute waits for the answer to every push.
  constexpr bool compute_must_wait(std::uint32_t pending) const noexcept { return pending >= 1; }
  /// @brief "ssp:S".
  std::string name() const { return "ssp:" + std::to_string(S); }
};

}  // namespace psync
