#pragma once
/// @file
/// @brief A policy's integer bound, fixed at compile time (`Ssp<3>`) or chosen at
/// run time (`Ssp<runtime_bound>(3)`), behind one interface.

#include <cstdint>
#include <limits>

namespace psync {

/// @brief Template argument meaning "the bound is chosen at run time": `Ssp<runtime_bound>(3)`
/// behaves and is named exactly like `Ssp<3>`. Such a policy has no default constructor, so a
/// forgotten bound is a compile error, never a silent 0.
inline constexpr std::uint32_t runtime_bound = std::numeric_limits<std::uint32_t>::max();

namespace detail {

/// A bound known at compile time: stores nothing.
template <std::uint32_t V>
struct Bound {
  constexpr Bound() noexcept = default;
  constexpr std::uint32_t get() const noexcept { return V; }
};

/// A bound chosen at run time.
template <>
struct Bound<runtime_bound> {
  constexpr explicit Bound(std::uint32_t v) noexcept : value(v) {}
  constexpr std::uint32_t get() const noexcept { return value; }
  std::uint32_t value;
};

}  // namespace detail
}  // namespace psync
