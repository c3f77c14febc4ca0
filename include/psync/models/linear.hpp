#pragma once
/// @file
/// @brief Linear regression y ~ w . x + b with the squared loss 0.5 (w . x + b - y)^2.

#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/data/dataset.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <string>

namespace psync::models {

/// @brief Linear regression with mean squared loss 0.5 (w . x + b - y)^2 over a batch.
///
/// Parameters are one vector: w (inputs entries), then b. The const methods use a
/// mutable residual buffer, so one instance must not be used by two threads at once:
/// each worker uses its own copy.
class LinearRegression {
 public:
  /// @brief The batch type the model trains on.
  using Batch = psync::data::Batch;

  /// @brief Model for `inputs` features, parameters zero; throws ConfigError if `inputs` < 1.
  explicit LinearRegression(Eigen::Index inputs) : inputs_(inputs) {
    if (inputs < 1) throw ConfigError("psync: LinearRegression needs inputs >= 1, got " + std::to_string(inputs));
    params_.setZero(inputs + 1);
  }

  /// @brief All parameters (w, then b).
  Eigen::Ref<const Eigen::VectorXf> parameters() const { return params_; }
  /// @brief All parameters, writable.
  Eigen::Ref<Eigen::VectorXf> parameters() { return params_; }
  /// @brief Parameter count: inputs + 1.
  Eigen::Index dimension() const noexcept { return params_.size(); }
  /// @brief Features per sample.
  Eigen::Index inputs() const noexcept { return inputs_; }

  /// @brief Weight vector w, a view into parameters().
  Eigen::Map<const Eigen::VectorXf> weights() const { return {params_.data(), inputs_}; }
  /// @brief Writable weight view.
  Eigen::Map<Eigen::VectorXf> weights() { return {params_.data(), inputs_}; }
  /// @brief Bias b.
  float bias() const noexcept { return params_[inputs_]; }

  /// @brief Sets every parameter to zero (the loss is convex); `seed` is unused.
  void initialize(std::uint64_t /*seed*/) { params_.setZero(); }

  /// @brief Mean of 0.5 (w . x + b - y)^2 over the batch.
  double loss(const Batch& batch) const { return pass(batch, nullptr); }

  /// @brief Writes the gradient of the mean loss into `g` (size dimension()) and returns the mean loss.
  double gradient(const Batch& batch, Eigen::Ref<Eigen::VectorXf> g) const {
    if (g.size() != dimension())
      throw ConfigError("psync: LinearRegression::gradient needs a vector of " + std::to_string(dimension()) +
                        " entries, got " + std::to_string(g.size()));
    return pass(batch, &g);
  }

 private:
  double pass(const Batch& batch, Eigen::Ref<Eigen::VectorXf>* g) const {
    if (batch.features.rows() != inputs_)
      throw ConfigError("psync: LinearRegression expects " + std::to_string(inputs_) +
                        " features per sample, the batch has " + std::to_string(batch.features.rows()));
    if (batch.size() == 0) throw ConfigError("psync: LinearRegression was given an empty batch");
    if (batch.targets.size() != batch.size())
      throw ConfigError("psync: LinearRegression needs one target per sample: batch has " +
                        std::to_string(batch.size()) + " samples and " + std::to_string(batch.targets.size()) +
                        " targets");
    const Eigen::Index n = batch.size();
    // Chunks bound the residual buffer for huge evaluation batches.
    const Eigen::Index width = std::min<Eigen::Index>(n, 4096);
    if (residual_.size() < width) residual_.resize(width);
    const float scale = 1.0f / static_cast<float>(n);
    if (g != nullptr) g->setZero();
    double total = 0.0;
    for (Eigen::Index first = 0; first < n; first += width) {
      const Eigen::Index m = std::min(width, n - first);
      const auto x = batch.features.middleCols(first, m);
      auto r = residual_.head(m);
      r.noalias() = x.transpose() * weights();
      r.array() += bias() - batch.targets.segment(first, m).array();
      total += 0.5 * static_cast<double>(r.squaredNorm());
      if (g != nullptr) {
        r *= scale;
        g->head(inputs_).noalias() += x * r;
        (*g)[inputs_] += r.sum();
      }
    }
    return total / static_cast<double>(n);
  }

  Eigen::Index inputs_;
  Eigen::VectorXf params_;
  mutable Eigen::VectorXf residual_;
};

static_assert(psync::Model<LinearRegression>);

}  // namespace psync::models
