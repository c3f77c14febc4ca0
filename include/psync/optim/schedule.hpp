#pragma once
/// @file
/// @brief Learning-rate schedules: pure functions of the step count (0 for the first
/// step). Constant, step decay, cosine, and a linear warm-up that composes with any
/// of them:
/// @code
///   psync::optim::Warmup warm(100, psync::optim::Cosine(0.1f, 900));  // 100 steps up, then cosine
///   float lr = warm(step);
/// @endcode
/// Each schedule checks its hyper-parameters when constructed (`ConfigError` naming
/// the bad value). `optim::Schedule` type-erases any of them for the worker and
/// server options; an empty one means "the constant learning rate of the options".

#include "psync/core/error.hpp"
#include "psync/detail/config.hpp"

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <functional>
#include <numbers>
#include <string>
#include <type_traits>
#include <utility>

namespace psync::optim {

/// @brief A learning-rate schedule: `s(step)` is the rate of step `step` (0-based).
template <class S>
concept LrSchedule = std::copy_constructible<S> && requires(const S& s, std::uint64_t step) {
  { s(step) } -> std::convertible_to<float>;
};

/// @brief Any schedule, type-erased (empty: the options' constant learning rate).
using Schedule = std::function<float(std::uint64_t)>;

namespace detail {

/// Throws `ConfigError` unless `lr` is positive and finite.
PSYNC_DECL void check_rate(const char* who, const char* what, double lr);

}  // namespace detail

/// @brief The same rate at every step.
struct Constant {
  /// @brief Rate `lr` (> 0, finite).
  explicit Constant(float lr) : lr(lr) { detail::check_rate("constant schedule", "learning rate", lr); }
  /// @brief `lr`.
  float operator()(std::uint64_t) const noexcept { return lr; }
  float lr;  ///< the rate
};

/// @brief Step decay: `lr * gamma^floor(step / every)` (the OSP authors decay 10x,
/// gamma = 0.1, every 50 epochs).
struct StepDecay {
  /// @brief Rate `lr` (> 0), multiplied by `gamma` (in (0, 1]) every `every` (> 0) steps.
  StepDecay(float lr, float gamma, std::uint64_t every) : lr(lr), gamma(gamma), every(every) {
    detail::check_rate("step decay schedule", "learning rate", lr);
    if (!(gamma > 0 && gamma <= 1)) {
      throw ConfigError("step decay schedule: gamma must be in (0, 1], got " + std::to_string(gamma));
    }
    if (every == 0) throw ConfigError("step decay schedule: the decay interval ('every') must be at least 1 step, got 0");
  }
  /// @brief `lr * gamma^floor(step / every)`.
  float operator()(std::uint64_t step) const {
    return static_cast<float>(static_cast<double>(lr) * std::pow(static_cast<double>(gamma), static_cast<double>(step / every)));
  }
  float lr;             ///< the initial rate
  float gamma;          ///< the factor applied at each decay
  std::uint64_t every;  ///< steps between two decays
};

/// @brief Cosine annealing from `lr` to `min_lr` over `steps` steps, then `min_lr`:
/// `min_lr + (lr - min_lr) * (1 + cos(pi * min(step, steps) / steps)) / 2`.
struct Cosine {
  /// @brief From `lr` (> 0) down to `min_lr` (in [0, lr]) over `steps` (> 0) steps.
  Cosine(float lr, std::uint64_t steps, float min_lr = 0.0f) : lr(lr), min_lr(min_lr), steps(steps) {
    detail::check_rate("cosine schedule", "learning rate", lr);
    if (!(min_lr >= 0 && min_lr <= lr)) {
      throw ConfigError("cosine schedule: min_lr must be in [0, lr], got " + std::to_string(min_lr));
    }
    if (steps == 0) throw ConfigError("cosine schedule: the number of steps must be at least 1, got 0");
  }
  /// @brief The annealed rate.
  float operator()(std::uint64_t step) const {
    const double t = static_cast<double>(std::min(step, steps)) / static_cast<double>(steps);
    return static_cast<float>(min_lr + (static_cast<double>(lr) - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * t)));
  }
  float lr;             ///< the initial rate
  float min_lr;         ///< the final rate
  std::uint64_t steps;  ///< steps to anneal over
};

/// @brief Linear warm-up over `steps` steps to schedule `after`, which then runs from
/// its own step 0: `after(0) * (step + 1) / steps` for step < steps, else
/// `after(step - steps)`. `Warmup(w, Constant(lr))` is the plain warm-up.
template <LrSchedule S>
struct Warmup {
  /// @brief `steps` (> 0) steps of warm-up, then `after`.
  Warmup(std::uint64_t steps, S after) : steps(steps), after(std::move(after)) {
    if (steps == 0) throw ConfigError("warm-up schedule: the number of warm-up steps must be at least 1, got 0");
  }
  /// @brief The warmed-up rate.
  float operator()(std::uint64_t step) const {
    if (step >= steps) return static_cast<float>(after(step - steps));
    return static_cast<float>(static_cast<double>(after(0)) * static_cast<double>(step + 1) / static_cast<double>(steps));
  }
  std::uint64_t steps;  ///< warm-up steps
  S after;              ///< the schedule after the warm-up
};

static_assert(LrSchedule<Constant> && LrSchedule<StepDecay> && LrSchedule<Cosine> && LrSchedule<Warmup<Cosine>>);

/// @brief The rate of step `step`: `schedule(step)` if there is one, `fallback` otherwise.
/// Throws `ConfigError` naming `who()` and the step if the rate is negative or not finite
/// (0 is allowed: a cosine schedule ends there). `who` is called only then: nothing is
/// allocated per step.
template <class Who>
  requires std::convertible_to<std::invoke_result_t<Who&>, std::string>
float rate_at(const Schedule& schedule, float fallback, std::uint64_t step, Who&& who) {
  if (!schedule) return fallback;
  const float lr = schedule(step);
  if (!(lr >= 0) || !std::isfinite(lr)) {
    throw ConfigError(std::string(who()) + ": the learning-rate schedule gave " + std::to_string(lr) + " at step " +
                      std::to_string(step) + " (must be >= 0 and finite)");
  }
  return lr;
}

}  // namespace psync::optim

#if PSYNC_HEADER_ONLY
#include "psync/impl/schedule.ipp"
#endif
