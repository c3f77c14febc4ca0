#pragma once
/// @file
/// @brief Overlap synchronous parallel (Wang, Guo, Li, ICPP 2019), with optional
/// local compensation (LOSP, JSAC 2021).

#include "psync/policies/bound.hpp"
#include "psync/policies/policy.hpp"

#include <cstdint>
#include <string>

namespace psync {

/// @brief Which count of local steps OSP's stale threshold S bounds.
enum class OspGate {
  /// @brief Steps not yet taken by the sender, as the authors' reference code
  /// (`while it_count >= Stale_Threshold`): up to S steps accumulate while a push
  /// of up to S more is in flight. The default.
  unsent,
  /// @brief Steps not yet reflected in an installed global model (in flight
  /// included): stricter, fits about half as many steps into a slow round.
  uninstalled,
};

/// @brief OSP(S): compute never waits for the network. Local SGD steps go on
/// while the accumulated update is pushed and the next model pulled; the model
/// is installed at the next step boundary. Compute blocks only when S steps are
/// counted by `Gate`. The server is a per-round barrier applying each round's mean.
///
/// `Install` is `install::Global` (OSP) or `install::Compensated` (LOSP: the
/// installed model is global + every local update not yet reflected in it).
/// The authors' reference code uses S = 20.
template <std::uint32_t S, class Install_ = install::Global, OspGate Gate = OspGate::unsent>
struct Osp {
  static_assert(S >= 1, "OSP's stale threshold S must be at least 1");
  /// @brief Rounds are averaged.
  using Combiner = combine::RoundAverage;
  /// @brief What is installed when a model arrives.
  using Install = Install_;

  /// @brief `Osp<S>` for a compile-time S.
  constexpr Osp() noexcept requires(S != runtime_bound) = default;
  /// @brief `Osp<runtime_bound>(S)`: the threshold chosen at run time (0 is taken as 1).
  constexpr explicit Osp(std::uint32_t threshold) noexcept requires(S == runtime_bound)
      : bound_(threshold == 0 ? 1 : threshold) {}

  /// @brief The stale threshold S.
  constexpr std::uint32_t threshold() const noexcept { return bound_.get(); }
  /// @brief Round barrier: the read after round c-1 waits for every push of it.
  constexpr bool read_ready(const ReadQuery& q) const noexcept { return q.min_clock >= q.clock; }
  /// @brief Compute goes on while fewer than S steps are counted by the gate.
  constexpr bool compute_may_continue(const StepCounts& s) const noexcept {
    return (Gate == OspGate::unsent ? s.unsent : s.uninstalled) < threshold();
  }
  /// @brief "osp:S", "losp:S", or with the uninstalled gate "osp-uninstalled:S" / "losp-uninstalled:S".
  std::string name() const {
    std::string n = std::is_same_v<Install, install::Compensated> ? "losp" : "osp";
    if (Gate == OspGate::uninstalled) n += "-uninstalled";
    return n + ":" + std::to_string(threshold());
  }

 private:
  [[no_unique_address]] detail::Bound<S> bound_;
};

/// @brief OSP with local compensation (LOSP).
template <std::uint32_t S>
using Losp = Osp<S, install::Compensated>;

/// @brief OSP whose threshold bounds the steps not yet installed (the stricter gate).
template <std::uint32_t S, class Install = install::Global>
using OspUninstalled = Osp<S, Install, OspGate::uninstalled>;

}  // namespace psync
