#pragma once
/// @file
/// @brief `optim::Any`: one of the built-in optimizers, chosen at run time, as one
/// type. A worker declared `Worker<M, T, P, optim::Any>` runs SGD, momentum, Nesterov
/// or Adam as its options say, so a program that lets the user choose (a command-line
/// flag, `optim::parse_optimizer`) instantiates one worker type instead of one per
/// optimizer. A `std::variant`, no virtual calls and nothing allocated per step: each
/// `apply` is the wrapped optimizer's, bit for bit.

#include "psync/core/error.hpp"
#include "psync/detail/config.hpp"
#include "psync/optim/optimizer.hpp"

#include <Eigen/Core>

#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace psync::optim {

/// @brief `Sgd`, `Momentum` (heavy ball or Nesterov) or `Adam`, chosen at run time;
/// an `Optimizer` whose every call is the held optimizer's. Default: `Sgd`.
///
/// `save` writes the held optimizer's `name()` before its state, and `restore` refuses
/// (`ConfigError`, naming both) state saved by another optimizer or other
/// hyper-parameters: momentum's velocity is not Adam's moments.
class Any {
 public:
  /// @brief The held optimizer's type.
  using Variant = std::variant<Sgd, Momentum, Adam>;

  /// @brief Plain SGD.
  Any() = default;
  /// @brief Holds `o` (implicit, so `Any a = Momentum(0.9f)` reads as it should).
  Any(Sgd o) : held_(std::move(o)) {}  // NOLINT(google-explicit-constructor)
  /// @brief Holds `o`.
  Any(Momentum o) : held_(std::move(o)) {}  // NOLINT(google-explicit-constructor)
  /// @brief Holds `o`.
  Any(Adam o) : held_(std::move(o)) {}  // NOLINT(google-explicit-constructor)

  /// @brief The held optimizer's name: "sgd", "momentum(0.9)", "nesterov(0.9)", "adam(0.9,0.999,1e-08)".
  std::string name() const;
  /// @brief Sizes and zeroes the held optimizer's state for `n` parameters.
  void reset(Eigen::Index n);
  /// @brief The held optimizer's step: `g` in, the update to add out.
  void apply(Eigen::Ref<Eigen::VectorXf> g, float lr);
  /// @brief Appends the held optimizer's name, then its state.
  void save(std::vector<std::byte>& out) const;
  /// @brief Reads state written by `save` of an `Any` holding the same optimizer
  /// (same name); anything else is a `ConfigError` naming both.
  void restore(StateReader& in);

  /// @brief The held optimizer if it is an `O`, else nullptr.
  template <class O>
  const O* get_if() const noexcept {
    return std::get_if<O>(&held_);
  }
  /// @brief The variant itself (to `std::visit` it).
  const Variant& held() const noexcept { return held_; }

 private:
  Variant held_;
};

static_assert(Optimizer<Any> && WorkerRule<Any>);

}  // namespace psync::optim

#if PSYNC_HEADER_ONLY
#include "psync/impl/optim_any.ipp"
#endif
