#pragma once
/// @file
/// @brief Dynamic stale synchronous parallel (Zhao, An, Liu, Chen, ICDCS 2019):
/// the staleness bound moves within [Lo, Hi] from the workers' recent iteration times.

#include "psync/policies/bound.hpp"
#include "psync/policies/policy.hpp"

#include <chrono>
#include <cstdint>
#include <string>
#include <map>

namespace psync {

/// @brief DSSP(Lo, Hi): SSP whose bound is Lo, extended for a fast reader by as
/// many iterations (at most Hi - Lo) as it is predicted to finish before the
/// slowest worker's next push, so it keeps computing instead of waiting for a
/// worker that is about to catch up anyway. Pushes are added on arrival.
///
/// The server learns each worker's iteration time from the interval between its
/// pushes (exponential moving average, weight 1/2 on the newest). Until it has two
/// pushes from both the reader and the slowest worker, the bound is Lo. `Dssp<s, s>`
/// is `Ssp<s>`; a read never sees a gap above Hi.
template <std::uint32_t Lo, std::uint32_t Hi>
class Dssp {
 public:
  /// @brief Each push is added on arrival.
  using Combiner = combine::Sum;
  /// @brief The global model is installed as it comes.
  using Install = install::Global;

  /// @brief `Dssp<Lo, Hi>` with compile-time bounds.
  Dssp() requires(Lo != runtime_bound && Hi != runtime_bound)
  {
    static_assert(Lo <= Hi, "DSSP needs Lo <= Hi");
  }
  /// @brief `Dssp<runtime_bound, runtime_bound>(lo, hi)`; throws nothing, clamps hi up to lo.
  Dssp(std::uint32_t lo, std::uint32_t hi) requires(Lo == runtime_bound && Hi == runtime_bound)
      : lo_(lo), hi_(hi < lo ? lo : hi) {}

  /// @brief The lower bound.
  std::uint32_t low() const noexcept { return lo_.get(); }
  /// @brief The upper bound.
  std::uint32_t high() const noexcept { return hi_.get(); }

  /// @brief Learns `worker`'s iteration time from its accepted pushes.
  void observe_push(PeerId worker, std::uint64_t clock_after, Clock::time_point now) {
    auto& s = stats_[worker];
    if (s.pushes > 0) {
      const double dt = std::chrono::duration<double>(now - s.last).count();
      s.interval = s.pushes == 1 ? dt : 0.5 * s.interval + 0.5 * dt;
    }
    s.last = now;
    s.clock = clock_after;
    ++s.pushes;
  }

  /// @brief Answered if the gap c - min_clock is at most Lo, or at most Lo + r where
  /// r (<= Hi - Lo) counts the reader's iterations predicted to end before the
  /// slowest worker's next push.
  bool read_ready(const ReadQuery& q) const noexcept {
    const std::uint64_t gap = q.clock > q.min_clock ? q.clock - q.min_clock : 0;
    if (gap <= low()) return true;
    if (gap > high()) return false;
    return gap - low() <= extra_iterations(q);
  }
  /// @brief One step, then wait for the reply to its push.
  constexpr bool compute_may_continue(const StepCounts& s) const noexcept { return s.uninstalled == 0; }
  /// @brief "dssp:Lo:Hi".
  std::string name() const { return "dssp:" + std::to_string(low()) + ":" + std::to_string(high()); }

 private:
  struct Stats {
    Clock::time_point last{};
    double interval = 0;  // seconds between pushes
    std::uint64_t clock = 0;
    std::uint64_t pushes = 0;
  };

  std::uint64_t extra_iterations(const ReadQuery& q) const noexcept {
    const auto reader = stats_.find(q.reader);
    if (reader == stats_.end() || reader->second.pushes < 2) return 0;
    const Stats* slowest = nullptr;
    for (const auto& [id, s] : stats_) {
      if (s.pushes >= 2 && s.clock == q.min_clock) slowest = &s;
    }
    if (!slowest) return 0;
    const double reader_interval = reader->second.interval;
    if (!(reader_interval > 0)) return high() - low();
    const double until_slowest =
        std::chrono::duration<double>(slowest->last - q.now).count() + slowest->interval;
    if (!(until_slowest > 0)) return 0;
    const double r = until_slowest / reader_interval;
    const double cap = static_cast<double>(high() - low());
    return static_cast<std::uint64_t>(r < cap ? r : cap);
  }

  [[no_unique_address]] detail::Bound<Lo> lo_;
  [[no_unique_address]] detail::Bound<Hi> hi_;
  std::map<PeerId, Stats> stats_;
};

}  // namespace psync
