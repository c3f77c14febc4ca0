#pragma once
/// @file
/// @brief Stale synchronous parallel (Ho et al. 2013): bounded staleness s.

#include "psync/concepts.hpp"

#include <cstdint>
#include <limits>
#include <string>

namespace psync {

/// @brief Template argument meaning "the bound is chosen at run time" (`Ssp<runtime_bound>{.staleness = 3}`).
inline constexpr std::uint32_t runtime_bound = std::numeric_limits<std::uint32_t>::max();

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

/// @brief SSP with the staleness bound chosen at run time (e.g. from a command line);
/// behaves exactly like `Ssp<s>` and has the same name, so the two interoperate.
template <>
struct Ssp<runtime_bound> {
  /// @brief The staleness bound s.
  std::uint32_t staleness = 0;
  static constexpr ServerMode server_mode = ServerMode::apply_on_arrival;
  static constexpr bool overlaps = false;
  static constexpr bool local_compensation = false;

  /// @brief A read at clock `c` is allowed once the slowest clock `m` is >= c - s.
  constexpr bool read_ready(std::uint64_t c, std::uint64_t m) const noexcept { return m + staleness >= c; }
  /// @brief Synchronous: compute waits for the answer to every push.
  constexpr bool compute_must_wait(std::uint32_t pending) const noexcept { return pending >= 1; }
  /// @brief "ssp:s".
  std::string name() const { return "ssp:" + std::to_string(staleness); }
};

}  // namespace psync
