#pragma once
/// @file
/// @brief Optimizers: what turns a gradient into the update added to the model.
/// SGD, momentum (heavy ball or Nesterov) and Adam, each in place and without
/// allocating per step (state is sized by `reset(dimension)` or at first use).
///
/// Where one runs is the user's choice (docs/optimizers.md):
/// - **worker-side** (default): `Worker<M, T, P, O>` / `WorkerCore<M, P, O>` apply `O`
///   to each local gradient and push the update, as plain SGD always did;
/// - **server-side**: the workers run `optim::OnServer` (they push gradients) and
///   `Server<M, P, O>` / `ServerCore<M, P, O>` applies `O` to the combined gradient.
///
/// Conventions (PyTorch's): momentum `v = mu v + g`, update `-lr v` (Nesterov:
/// `-lr (g + mu v)`); Adam `m = b1 m + (1-b1) g`, `v = b2 v + (1-b2) g^2`,
/// update `-lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)`, t counting from 1.

#include "psync/core/error.hpp"
#include "psync/detail/config.hpp"

#include <Eigen/Core>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace psync::optim {

/// @brief Turns a gradient into an update, in place: `apply(g, lr)` reads the gradient
/// in `g` and leaves there the update to *add* to the parameters (SGD: `-lr * g`).
/// `reset(n)` sizes and zeroes the state for `n` parameters; `name()` spells the
/// optimizer and its hyper-parameters ("momentum(0.9)"), so two configurations can be
/// told apart (a checkpoint refuses another one).
///
/// Optional, for checkpoints of a server-side optimizer: `save(std::vector<std::byte>&)`
/// appends the state, `restore(StateReader&)` reads it back (throws `ConfigError` if it
/// does not fit). Without them a server with this optimizer refuses to checkpoint.
template <class O>
concept Optimizer = std::copy_constructible<O> && requires(O& o, const O& co, Eigen::Ref<Eigen::VectorXf> g, float lr) {
  { co.name() } -> std::convertible_to<std::string>;
  o.reset(Eigen::Index{});
  o.apply(g, lr);
};

/// @brief The worker-side marker of a server-side optimizer: the worker pushes the sum
/// of its gradients (no learning rate), and its own model takes plain SGD steps at the
/// worker's learning rate (schedule) between installs. The server must run an optimizer
/// (`ServerCore<M, P, O>`); the join's policy string carries `gradient_suffix` so a
/// mismatch is refused. LOSP's compensated install is refused with it (`ConfigError`).
struct OnServer {
  /// @brief "on-server".
  static std::string name() { return "on-server"; }
};

/// @brief Appended to the policy name in a gradient-pushing worker's `Join` (and
/// expected by a server with an optimizer): "bsp" becomes "bsp+gradients".
inline constexpr const char* gradient_suffix = "+gradients";

/// @brief The server-side default: no optimizer, pushes are updates and are added as they are.
struct None {};

/// @brief What a worker can run: an `Optimizer`, or `OnServer`.
template <class O>
concept WorkerRule = Optimizer<O> || std::same_as<O, OnServer>;

/// @brief Reads an optimizer's saved state; every read is bounds-checked (`ConfigError`).
class StateReader {
 public:
  /// @brief Reads from `bytes`.
  explicit StateReader(std::span<const std::byte> bytes) : bytes_(bytes) {}
  /// @brief One little-endian u64.
  std::uint64_t u64();
  /// @brief A string saved by `put_string`.
  std::string string();
  /// @brief A float vector saved by `put_floats`, into `out`, which must have `expected` floats.
  void floats(Eigen::VectorXf& out, Eigen::Index expected);
  /// @brief Bytes not read yet.
  std::size_t left() const noexcept { return bytes_.size() - at_; }

 private:
  [[noreturn]] void fail(const std::string& what) const;
  void take(void* to, std::size_t n);
  std::span<const std::byte> bytes_;
  std::size_t at_ = 0;
};

/// @brief Appends a u64 (host order; checkpoints are little-endian files on the platforms psync builds on).
PSYNC_DECL void put_u64(std::vector<std::byte>& out, std::uint64_t v);
/// @brief Appends a length-prefixed string.
PSYNC_DECL void put_string(std::vector<std::byte>& out, const std::string& s);
/// @brief Appends a length-prefixed float vector.
PSYNC_DECL void put_floats(std::vector<std::byte>& out, const Eigen::VectorXf& v);

namespace detail {

/// "%g" of a hyper-parameter, for names.
PSYNC_DECL std::string num(double v);

/// Throws `ConfigError` unless `v` is in [0, 1).
PSYNC_DECL void check_unit(const char* who, const char* what, double v);

/// Sizes `state` for `g` at first use; a different size later is a misuse.
PSYNC_DECL void fit(Eigen::VectorXf& state, Eigen::Index n, const char* who);

}  // namespace detail

/// @brief Plain SGD: update `-lr * g`. Stateless.
struct Sgd {
  /// @brief "sgd".
  static std::string name() { return "sgd"; }
  /// @brief Nothing to size.
  void reset(Eigen::Index) {}
  /// @brief `g *= -lr`.
  void apply(Eigen::Ref<Eigen::VectorXf> g, float lr) const { g *= -lr; }
  /// @brief Nothing to save.
  void save(std::vector<std::byte>&) const {}
  /// @brief Nothing to restore.
  void restore(StateReader&) {}
};

/// @brief SGD with momentum `mu`: `v = mu v + g`, update `-lr v`; with `nesterov`,
/// update `-lr (g + mu v)` (the look-ahead).
class Momentum {
 public:
  /// @brief Momentum `mu` in [0, 1); `nesterov` for the look-ahead variant.
  explicit Momentum(float mu = 0.9f, bool nesterov = false);
  /// @brief "momentum(mu)" or "nesterov(mu)".
  std::string name() const { return std::string(nesterov_ ? "nesterov(" : "momentum(") + detail::num(mu_) + ")"; }
  /// @brief Zeroes the velocity for `n` parameters.
  void reset(Eigen::Index n) { v_ = Eigen::VectorXf::Zero(n); }
  /// @brief One step: `g` in, the update out.
  void apply(Eigen::Ref<Eigen::VectorXf> g, float lr);
  /// @brief The velocity.
  const Eigen::VectorXf& velocity() const noexcept { return v_; }
  /// @brief Appends the velocity.
  void save(std::vector<std::byte>& out) const { put_floats(out, v_); }
  /// @brief Reads the velocity back (its size must be the current one, if sized).
  void restore(StateReader& in);

 private:
  float mu_;
  bool nesterov_;
  Eigen::VectorXf v_;
};

/// @brief Adam (Kingma and Ba, 2015) with bias correction.
class Adam {
 public:
  /// @brief `beta1`, `beta2` in [0, 1); `eps` > 0.
  explicit Adam(float beta1 = 0.9f, float beta2 = 0.999f, float eps = 1e-8f);
  /// @brief "adam(beta1,beta2,eps)".
  std::string name() const { return "adam(" + detail::num(b1_) + "," + detail::num(b2_) + "," + detail::num(eps_) + ")"; }
  /// @brief Zeroes both moments and the step count for `n` parameters.
  void reset(Eigen::Index n);
  /// @brief One step: `g` in, the update out.
  void apply(Eigen::Ref<Eigen::VectorXf> g, float lr);
  /// @brief Steps taken (t).
  std::uint64_t steps() const noexcept { return t_; }
  /// @brief Appends t and both moments.
  void save(std::vector<std::byte>& out) const;
  /// @brief Reads t and both moments back.
  void restore(StateReader& in);

 private:
  float b1_, b2_, eps_;
  Eigen::VectorXf m_, v_;
  std::uint64_t t_ = 0;
};

static_assert(Optimizer<Sgd> && Optimizer<Momentum> && Optimizer<Adam>);
static_assert(WorkerRule<OnServer> && !Optimizer<OnServer> && !Optimizer<None>);

}  // namespace psync::optim

#if PSYNC_HEADER_ONLY
#include "psync/impl/optimizer.ipp"
#endif
