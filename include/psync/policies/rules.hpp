#pragma once
/// @file
/// @brief The building blocks a policy is made of: how the server combines
/// pushes (`combine::`) and what a worker installs when a global model arrives
/// (`install::`). A policy names one of each; the cores call them without
/// knowing which.
///
/// Combination rules (the step size differs by a factor of P between them, so
/// tune learning rates per rule):
/// - `combine::Sum`: each push is added to the model when it arrives; P workers
///   each pushing -lr*g move the model by P*lr*mean(g) per "round" (ASP, SSP, DSSP).
/// - `combine::RoundAverage`: the pushes of round r are summed and the model moves
///   by (1/n)*sum once every live worker has passed round r, n the pushes in the
///   round (BSP, OSP): lr*mean(g) per round, like sequential SGD on a P-times
///   larger batch.
///
/// With a server-side optimizer the pushes are gradients and the server core passes
/// an `apply(model, delta)` to the overloads that take one: the combiner hands it
/// what it would have added (one push under `Sum`, the round's mean under
/// `RoundAverage`), and `apply` turns that into the update and adds it. Without one
/// the rules add as they always did.

#include "psync/core/error.hpp"

#include <Eigen/Core>

#include <cstdint>
#include <string>

namespace psync {

/// @brief What a combination rule did to the model.
struct Applied {
  std::uint64_t versions = 0;  ///< new model versions made
  std::uint64_t updates = 0;   ///< pushes folded into the model
  std::uint64_t steps = 0;     ///< local SGD steps those pushes covered
};

/// @brief A combiner's pending state, as a checkpoint stores it: the round
/// `RoundAverage` has open (`Sum` has none: empty sum, zero counts).
struct OpenRound {
  Eigen::VectorXf sum;       ///< sum of the open round's pushes; empty for `Sum`
  std::uint64_t pushes = 0;  ///< pushes in the open round
  std::uint64_t steps = 0;   ///< local SGD steps those pushes covered
  std::uint64_t round = 0;   ///< index of the open round
};

namespace combine {

/// @brief Adds every push to the model on arrival: one push, one version.
struct Sum {
  /// @brief "sum": the rule's name in reports.
  static constexpr const char* name = "sum";
  /// @brief Learning-rate factor relative to sequential SGD: each push moves the model by the full update.
  static constexpr double step_scale(std::uint32_t /*workers*/) noexcept { return 1.0; }

  /// @brief Nothing to allocate.
  void reset(Eigen::Index) {}
  /// @brief `model += update`.
  Applied add(Eigen::Ref<Eigen::VectorXf> model, const Eigen::VectorXf& update, std::uint32_t steps) {
    model += update;
    return {1, 1, steps};
  }
  /// @brief `apply(model, update)`: the server's optimizer makes each push its own step.
  template <class Apply>
  Applied add(Eigen::Ref<Eigen::VectorXf> model, Eigen::VectorXf& update, std::uint32_t steps, Apply&& apply) {
    apply(model, update);
    return {1, 1, steps};
  }
  /// @brief Nothing is ever pending.
  template <class Apply>
  Applied advance(Eigen::Ref<Eigen::VectorXf>, std::uint64_t /*min_clock*/, Apply&&) {
    return {};
  }
  /// @brief Nothing is ever pending.
  template <class Apply>
  Applied flush(Eigen::Ref<Eigen::VectorXf>, Apply&&) {
    return {};
  }
  /// @brief Nothing is ever pending.
  Applied advance(Eigen::Ref<Eigen::VectorXf>, std::uint64_t /*min_clock*/) { return {}; }
  /// @brief Nothing is ever pending.
  Applied flush(Eigen::Ref<Eigen::VectorXf>) { return {}; }
  /// @brief Nothing is pending: an empty round.
  void save(OpenRound& out) const {
    out.sum.resize(0);
    out.pushes = out.steps = out.round = 0;
  }
  /// @brief Accepts only an empty round (one from an averaging policy does not fit: `ConfigError`).
  void restore(const OpenRound& r, Eigen::Index /*dimension*/) {
    if (r.sum.size() != 0 || r.pushes != 0 || r.steps != 0 || r.round != 0) {
      throw ConfigError("sum combiner: the checkpoint holds an open round (" + std::to_string(r.pushes) +
                        " pushes, round " + std::to_string(r.round) + "): it was written by an averaging policy");
    }
  }
};

/// @brief Sums the pushes of round r and applies their mean once every live
/// worker's clock has passed r: one round, one version.
struct RoundAverage {
 private:
  static void add_to(Eigen::Ref<Eigen::VectorXf> model, Eigen::VectorXf& delta) { model += delta; }

 public:
  /// @brief "average": the rule's name in reports.
  static constexpr const char* name = "average";
  /// @brief Learning-rate factor relative to sequential SGD: a round moves the model by the mean of P updates.
  static constexpr double step_scale(std::uint32_t workers) noexcept { return workers ? 1.0 / workers : 1.0; }

  /// @brief Allocates the round's sum once.
  void reset(Eigen::Index dimension) {
    sum_ = Eigen::VectorXf::Zero(dimension);
    pushes_ = steps_ = round_ = 0;
  }
  /// @brief Adds to the open round; nothing is applied yet.
  Applied add(Eigen::Ref<Eigen::VectorXf>, const Eigen::VectorXf& update, std::uint32_t steps) {
    sum_ += update;
    ++pushes_;
    steps_ += steps;
    return {};
  }
  /// @brief Adds to the open round (the optimizer runs when the round closes, on its mean).
  template <class Apply>
  Applied add(Eigen::Ref<Eigen::VectorXf> model, const Eigen::VectorXf& update, std::uint32_t steps, Apply&&) {
    return add(model, update, steps);
  }
  /// @brief Closes every round r < `min_clock` (every live worker has pushed it).
  Applied advance(Eigen::Ref<Eigen::VectorXf> model, std::uint64_t min_clock) {
    return advance(model, min_clock, add_to);
  }
  /// @brief Closes every round r < `min_clock`, each with one `apply(model, mean)`.
  template <class Apply>
  Applied advance(Eigen::Ref<Eigen::VectorXf> model, std::uint64_t min_clock, Apply&& apply) {
    Applied a;
    while (min_clock > round_) {
      const Applied r = flush(model, apply);
      a.versions += r.versions;
      a.updates += r.updates;
      a.steps += r.steps;
      ++round_;
    }
    return a;
  }
  /// @brief Applies a round that will not complete (everyone left): accepted pushes are never lost.
  Applied flush(Eigen::Ref<Eigen::VectorXf> model) { return flush(model, add_to); }
  /// @brief Applies the open round, if it has pushes, with `apply(model, mean)`.
  template <class Apply>
  Applied flush(Eigen::Ref<Eigen::VectorXf> model, Apply&& apply) {
    if (pushes_ == 0) return {};
    // The mean in place, then added: the same float operations as model += sum / n.
    sum_ /= static_cast<float>(pushes_);
    apply(model, sum_);
    sum_.setZero();
    const Applied a{1, pushes_, steps_};
    pushes_ = steps_ = 0;
    return a;
  }
  /// @brief The round now open.
  std::uint64_t round() const noexcept { return round_; }
  /// @brief Copies the open round into `out` (reusing `out.sum`'s storage when it has the size).
  void save(OpenRound& out) const {
    out.sum = sum_;
    out.pushes = pushes_;
    out.steps = steps_;
    out.round = round_;
  }
  /// @brief Reopens a checkpointed round; an empty sum with no pushes is a zero sum.
  /// Throws `ConfigError` if the sum's size is not `dimension`.
  void restore(const OpenRound& r, Eigen::Index dimension) {
    if (r.sum.size() == 0 && r.pushes == 0) {
      sum_ = Eigen::VectorXf::Zero(dimension);
    } else if (r.sum.size() != dimension) {
      throw ConfigError("average combiner: the checkpoint's round sum has " + std::to_string(r.sum.size()) +
                        " floats, the model has " + std::to_string(dimension));
    } else {
      sum_ = r.sum;
    }
    pushes_ = r.pushes;
    steps_ = r.steps;
    round_ = r.round;
  }

 private:
  Eigen::VectorXf sum_;
  std::uint64_t pushes_ = 0;
  std::uint64_t steps_ = 0;
  std::uint64_t round_ = 0;
};

}  // namespace combine

namespace install {

/// @brief Installs the global model as it came: local steps not yet reflected in it are dropped from the model
/// (they still reach the server through the pushes).
struct Global {
  /// @brief "global".
  static constexpr const char* name = "global";
  /// @brief Nothing to allocate.
  void reset(Eigen::Index) {}
  /// @brief A reply arrived; nothing to remember.
  void on_reply(const Eigen::VectorXf& /*unsent*/) {}
  /// @brief A local step was taken; nothing to remember.
  void on_local_update(const Eigen::VectorXf& /*update*/) {}
  /// @brief `model = global`.
  void install(Eigen::Ref<Eigen::VectorXf> model, const Eigen::VectorXf& global) { model = global; }
};

/// @brief LOSP's local compensation (JSAC 2021): installs global + every local
/// update not yet reflected in it: the push still in flight plus the steps taken
/// since it was sent.
///
/// Only one push is ever in flight, and a reply reflects the push it answers. So
/// when a reply arrives the unreflected updates are exactly the unsent ones, and
/// every later step adds to them; the next push (which takes the unsent steps)
/// changes nothing, because what it carries is still unreflected.
struct Compensated {
  /// @brief "compensated".
  static constexpr const char* name = "compensated";
  /// @brief Allocates the unreflected sum once.
  void reset(Eigen::Index dimension) { unreflected_ = Eigen::VectorXf::Zero(dimension); }
  /// @brief The reply reflects everything pushed so far: what is left is the unsent sum.
  void on_reply(const Eigen::VectorXf& unsent) { unreflected_ = unsent; }
  /// @brief One more local update not in any global model yet.
  void on_local_update(const Eigen::VectorXf& update) { unreflected_ += update; }
  /// @brief `model = global + unreflected`.
  void install(Eigen::Ref<Eigen::VectorXf> model, const Eigen::VectorXf& global) { model = global + unreflected_; }

 private:
  Eigen::VectorXf unreflected_;
};

}  // namespace install

}  // namespace psync
