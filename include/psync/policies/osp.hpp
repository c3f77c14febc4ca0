#pragma once
/// @file
/// @brief Overlap synchronous parallel (Wang, Guo, Li, ICPP 2019), with optional
/// local compensation (LOSP, JSAC 2021).

#include "psync/concepts.hpp"
#include "psync/policies/ssp.hpp"

#include <cstdint>
#include <string>

namespace psync {

/// @brief OSP(S): compute never waits for the network. Local SGD steps continue
/// while a background sender pushes the accumulated update and pulls the new
/// model; the model is installed at the next step boundary. Compute blocks only
/// when S local steps are pending (not yet reflected in an installed model).
/// The server is a per-round barrier that applies the average of the round.
///
/// With `LocalCompensation`, the installed model is w_global + (updates made since
/// the last push was taken) instead of plain w_global.
///
/// The authors' reference code uses S = 20.
template <std::uint32_t S, bool LocalCompensation = false>
struct Osp {
  static_assert(S >= 1, "OSP's stale threshold S must be at least 1");
  /// @brief The stale threshold S.
  static constexpr std::uint32_t threshold = S;
  static constexpr ServerMode server_mode = ServerMode::round_barrier;
  static constexpr bool overlaps = true;
  static constexpr bool local_compensation = LocalCompensation;

  /// @brief Round barrier: the read after round c-1 waits for all pushes of it.
  constexpr bool read_ready(std::uint64_t c, std::uint64_t m) const noexcept { return m >= c; }
  /// @brief Compute blocks only at S pending local steps.
  constexpr bool compute_must_wait(std::uint32_t pending) const noexcept { return pending >= S; }
  /// @brief "osp:S" or "losp:S".
  std::string name() const { return (LocalCompensation ? "losp:" : "osp:") + std::to_string(S); }
};

/// @brief OSP with the stale threshold chosen at run time; behaves exactly like
/// `Osp<S>` and has the same name, so the two interoperate.
template <bool LocalCompensation>
struct Osp<runtime_bound, LocalCompensation> {
  /// @brief The stale threshold S (at least 1).
  std::uint32_t threshold = 20;
  static constexpr ServerMode server_mode = ServerMode::round_barrier;
  static constexpr bool overlaps = true;
  static constexpr bool local_compensation = LocalCompensation;

  /// @brief Round barrier: the read after round c-1 waits for all pushes of it.
  constexpr bool read_ready(std::uint64_t c, std::uint64_t m) const noexcept { return m >= c; }
  /// @brief Compute blocks only at S pending local steps (S = 0 is treated as 1).
  constexpr bool compute_must_wait(std::uint32_t pending) const noexcept {
    return pending >= (threshold == 0 ? 1u : threshold);
  }
  /// @brief "osp:S" or "losp:S".
  std::string name() const { return (LocalCompensation ? "losp:" : "osp:") + std::to_string(threshold); }
};

/// @brief OSP with local compensation.
template <std::uint32_t S>
using Losp = Osp<S, true>;

}  // namespace psync
