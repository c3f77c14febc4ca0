#pragma once
/// @file
/// @brief Multinomial logistic (softmax) regression with cross-entropy loss.

#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/data/dataset.hpp"
#include "psync/detail/gemm.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>

namespace psync::models {


/// @brief Softmax regression: logits W x + b (W is classes x inputs), mean cross-entropy loss.
///
/// Parameters are one vector: W column-major, then b. The const methods use mutable
/// workspaces (sized for the largest batch seen, at most detail::max_chunk columns), so
/// one instance must not be used by two threads at once: each worker uses its own copy.
class SoftmaxRegression {
 public:
  /// @brief The batch type the model trains on.
  using Batch = psync::data::Batch;

  /// @brief Model for `inputs` features and `classes` classes, parameters zero; throws ConfigError on bad sizes.
  SoftmaxRegression(Eigen::Index inputs, int classes) : inputs_(inputs), classes_(classes) {
    if (inputs < 1) throw ConfigError("psync: SoftmaxRegression needs inputs >= 1, got " + std::to_string(inputs));
    if (classes < 2)
      throw ConfigError("psync: SoftmaxRegression needs classes >= 2, got " + std::to_string(classes));
    params_.setZero(inputs * classes + classes);
  }

  /// @brief All parameters (W column-major, then b).
  Eigen::Ref<const Eigen::VectorXf> parameters() const { return params_; }
  /// @brief All parameters, writable.
  Eigen::Ref<Eigen::VectorXf> parameters() { return params_; }
  /// @brief Parameter count: classes * (inputs + 1).
  Eigen::Index dimension() const noexcept { return params_.size(); }
  /// @brief Features per sample.
  Eigen::Index inputs() const noexcept { return inputs_; }
  /// @brief Number of classes.
  int classes() const noexcept { return classes_; }

  /// @brief Weight matrix W (classes x inputs), a view into parameters().
  Eigen::Map<const Eigen::MatrixXf> weights() const { return {params_.data(), classes_, inputs_}; }
  /// @brief Writable weight matrix view.
  Eigen::Map<Eigen::MatrixXf> weights() { return {params_.data(), classes_, inputs_}; }
  /// @brief Bias vector b (classes), a view into parameters().
  Eigen::Map<const Eigen::VectorXf> bias() const { return {params_.data() + classes_ * inputs_, classes_}; }
  /// @brief Writable bias view.
  Eigen::Map<Eigen::VectorXf> bias() { return {params_.data() + classes_ * inputs_, classes_}; }

  /// @brief Sets every parameter to zero (the loss is convex, so no symmetry to break); `seed` is unused.
  void initialize(std::uint64_t /*seed*/) { params_.setZero(); }

  /// @brief Mean cross-entropy over the batch.
  double loss(const Batch& batch) const { return pass(batch, nullptr, nullptr); }

  /// @brief Writes the gradient of the mean loss into `g` (size dimension()) and returns the mean loss.
  double gradient(const Batch& batch, Eigen::Ref<Eigen::VectorXf> g) const {
    if (g.size() != dimension())
      throw ConfigError("psync: SoftmaxRegression::gradient needs a vector of " + std::to_string(dimension()) +
                        " entries, got " + std::to_string(g.size()));
    return pass(batch, &g, nullptr);
  }

  /// @brief Fraction of the batch whose most probable class is the label.
  double accuracy(const Batch& batch) const {
    Eigen::Index correct = 0;
    pass(batch, nullptr, &correct);
    return static_cast<double>(correct) / static_cast<double>(batch.size());
  }

 private:
  // One chunked forward pass serves loss, gradient (g != nullptr) and accuracy (correct != nullptr).
  double pass(const Batch& batch, Eigen::Ref<Eigen::VectorXf>* g, Eigen::Index* correct) const {
    detail::check_classification_batch(batch, inputs_, classes_, "SoftmaxRegression");
    const Eigen::Index n = batch.size();
    const Eigen::Index width = std::min(n, detail::max_chunk);
    if (logits_.cols() < width) logits_.resize(classes_, width);
    const float scale = 1.0f / static_cast<float>(n);
    double total = 0.0;
    for (Eigen::Index first = 0; first < n; first += width) {
      const Eigen::Index m = std::min(width, n - first);
      const auto x = batch.features.middleCols(first, m);
      const auto labels = batch.labels.segment(first, m);
      auto z = logits_.leftCols(m);
      forward_.run<detail::Op::none, detail::Op::none>(z, weights(), x, false);
      z.colwise() += bias();
      if (correct != nullptr) {
        *correct += detail::count_correct(z, labels);
        continue;
      }
      total += detail::softmax_cross_entropy(z, labels, scale, g != nullptr);
      if (g != nullptr) {
        Eigen::Map<Eigen::MatrixXf> gw(g->data(), classes_, inputs_);
        auto gb = g->segment(classes_ * inputs_, classes_);
        weight_grad_.run<detail::Op::none, detail::Op::transpose>(gw, z, x, first > 0);
        if (first == 0) gb.noalias() = z.rowwise().sum();
        else gb.noalias() += z.rowwise().sum();
      }
    }
    return total / static_cast<double>(n);
  }

  Eigen::Index inputs_;
  int classes_;
  Eigen::VectorXf params_;
  mutable Eigen::MatrixXf logits_;
  mutable detail::Gemm forward_;
  mutable detail::Gemm weight_grad_;
};

static_assert(psync::Model<SoftmaxRegression>);

}  // namespace psync::models
