#pragma once
// A tiny model for cluster tests: loss 0.5 * ||x - target||^2 per batch, so every
// step is cheap and the exact trajectory is easy to compute by hand.
#include <Eigen/Core>

#include <cstdint>

namespace psync_test {

struct Target {
  Eigen::VectorXf target;
  Eigen::Index size() const { return 1; }
};

class Quadratic {
 public:
  using Batch = Target;
  explicit Quadratic(Eigen::Index n) : x_(Eigen::VectorXf::Zero(n)) {}
  Eigen::Ref<const Eigen::VectorXf> parameters() const { return x_; }
  Eigen::Ref<Eigen::VectorXf> parameters() { return x_; }
  double loss(const Batch& b) const { return 0.5 * (x_ - b.target).squaredNorm(); }
  double gradient(const Batch& b, Eigen::Ref<Eigen::VectorXf> g) const {
    g = x_ - b.target;
    return 0.5 * g.squaredNorm();
  }

 private:
  Eigen::VectorXf x_;
};

}  // namespace psync_test
