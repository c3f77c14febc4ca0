#pragma once
/// @file
/// @brief Bulk synchronous parallel.

#include "psync/concepts.hpp"

#include <cstdint>
#include <string>

namespace psync {

/// @brief BSP: each worker computes one step, pushes, and blocks until every live
/// worker has pushed the same clock; the server applies the round's average.
struct Bsp {
  static constexpr ServerMode server_mode = ServerMode::round_barrier;
  static constexpr bool overlaps = false;
  static constexpr bool local_compensation = false;

  /// @brief A read at clock `c` waits until the slowest clock `m` reaches c.
  constexpr bool read_ready(std::uint64_t c, std::uint64_t m) const noexcept { return m >= c; }
  /// @brief Synchronous: compute waits for the answer to every push.
  constexpr bool compute_must_wait(std::uint32_t pending) const noexcept { return pending >= 1; }
  /// @brief "bsp".
  std::string name() const { return "bsp"; }
};

}  // namespace psync
