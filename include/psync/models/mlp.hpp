#pragma once
/// @file
/// @brief Multi-layer perceptron classifier: ReLU hidden layers, softmax cross-entropy output.

#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/data/dataset.hpp"
#include "psync/models/softmax.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace psync::models {

/// @brief Fully connected network, e.g. {784, 256, 128, 10}: ReLU after every hidden layer,
/// softmax cross-entropy on the last, mean loss over the batch.
///
/// Parameters are one vector holding, layer by layer, W_l (outputs x inputs,
/// column-major) then b_l. The const methods use mutable workspaces (activations,
/// deltas, GEMM buffers, sized for the largest batch seen and at most
/// detail::max_chunk columns), so one instance must not be used by two threads at once:
/// each worker uses its own copy. Copies get their own workspaces.
class Mlp {
 public:
  /// @brief The batch type the model trains on.
  using Batch = psync::data::Batch;

  /// @brief Network with the given layer widths (inputs first, classes last), initialized as by initialize(0).
  ///
  /// Throws ConfigError unless there are at least two widths, all >= 1, and >= 2 classes.
  explicit Mlp(std::vector<Eigen::Index> layers) : layers_(std::move(layers)) {
    if (layers_.size() < 2)
      throw ConfigError("psync: Mlp needs at least 2 layer widths (inputs and classes), got " +
                        std::to_string(layers_.size()));
    for (std::size_t l = 0; l < layers_.size(); ++l)
      if (layers_[l] < 1)
        throw ConfigError("psync: Mlp layer " + std::to_string(l) + " has width " + std::to_string(layers_[l]) +
                          "; widths must be >= 1");
    if (layers_.back() < 2)
      throw ConfigError("psync: Mlp needs >= 2 output classes, got " + std::to_string(layers_.back()));
    Eigen::Index offset = 0;
    for (std::size_t l = 0; l + 1 < layers_.size(); ++l) {
      offsets_.push_back(offset);
      offset += layers_[l + 1] * (layers_[l] + 1);
    }
    params_.resize(offset);
    const std::size_t depth = offsets_.size();
    activations_.resize(depth);
    deltas_.resize(depth - 1);
    forward_.resize(depth);
    weight_grad_.resize(depth);
    backward_.resize(depth);
    initialize(0);
  }

  /// @brief All parameters, layer by layer (W_l column-major, then b_l).
  Eigen::Ref<const Eigen::VectorXf> parameters() const { return params_; }
  /// @brief All parameters, writable.
  Eigen::Ref<Eigen::VectorXf> parameters() { return params_; }
  /// @brief Parameter count.
  Eigen::Index dimension() const noexcept { return params_.size(); }
  /// @brief Layer widths, inputs first, classes last.
  const std::vector<Eigen::Index>& layers() const noexcept { return layers_; }
  /// @brief Features per sample.
  Eigen::Index inputs() const noexcept { return layers_.front(); }
  /// @brief Number of classes.
  int classes() const noexcept { return static_cast<int>(layers_.back()); }
  /// @brief Number of weight layers (layers().size() - 1).
  std::size_t depth() const noexcept { return offsets_.size(); }

  /// @brief Weights of layer `l` (layers()[l+1] x layers()[l]), a view into parameters().
  Eigen::Map<const Eigen::MatrixXf> weights(std::size_t l) const {
    return {params_.data() + offsets_[l], layers_[l + 1], layers_[l]};
  }
  /// @brief Writable weight view of layer `l`.
  Eigen::Map<Eigen::MatrixXf> weights(std::size_t l) { return {params_.data() + offsets_[l], layers_[l + 1], layers_[l]}; }
  /// @brief Bias of layer `l` (layers()[l+1] entries), a view into parameters().
  Eigen::Map<const Eigen::VectorXf> bias(std::size_t l) const {
    return {params_.data() + offsets_[l] + layers_[l + 1] * layers_[l], layers_[l + 1]};
  }
  /// @brief Writable bias view of layer `l`.
  Eigen::Map<Eigen::VectorXf> bias(std::size_t l) {
    return {params_.data() + offsets_[l] + layers_[l + 1] * layers_[l], layers_[l + 1]};
  }

  /// @brief Deterministic random weights from `seed`, zero biases.
  ///
  /// He initialization, N(0, 2 / fan_in), for layers followed by a ReLU keeps the
  /// activation variance steady through the depth; Glorot, N(0, 2 / (fan_in + fan_out)),
  /// for the output layer, which feeds the softmax directly.
  void initialize(std::uint64_t seed) {
    data::detail::Rng rng(seed);
    for (std::size_t l = 0; l < depth(); ++l) {
      const double fan_in = static_cast<double>(layers_[l]);
      const double fan_out = static_cast<double>(layers_[l + 1]);
      const double sd = l + 1 < depth() ? std::sqrt(2.0 / fan_in) : std::sqrt(2.0 / (fan_in + fan_out));
      auto w = weights(l);
      for (Eigen::Index j = 0; j < w.cols(); ++j)
        for (Eigen::Index i = 0; i < w.rows(); ++i) w(i, j) = static_cast<float>(sd * rng.normal());
      bias(l).setZero();
    }
  }

  /// @brief Mean cross-entropy over the batch.
  double loss(const Batch& batch) const { return pass(batch, nullptr, nullptr); }

  /// @brief Writes the gradient of the mean loss into `g` (size dimension()) and returns the mean loss.
  double gradient(const Batch& batch, Eigen::Ref<Eigen::VectorXf> g) const {
    if (g.size() != dimension())
      throw ConfigError("psync: Mlp::gradient needs a vector of " + std::to_string(dimension()) +
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
  void reserve(Eigen::Index width) const {
    if (activations_.front().cols() >= width) return;
    for (std::size_t l = 0; l < depth(); ++l) activations_[l].resize(layers_[l + 1], width);
    for (std::size_t l = 0; l + 1 < depth(); ++l) deltas_[l].resize(layers_[l + 1], width);
  }

  // One chunked pass serves loss, gradient (g != nullptr) and accuracy (correct != nullptr).
  double pass(const Batch& batch, Eigen::Ref<Eigen::VectorXf>* g, Eigen::Index* correct) const {
    detail::check_classification_batch(batch, inputs(), classes(), "Mlp");
    const Eigen::Index n = batch.size();
    const Eigen::Index width = std::min(n, detail::max_chunk);
    reserve(width);
    const float scale = 1.0f / static_cast<float>(n);
    const std::size_t last = depth() - 1;
    double total = 0.0;
    for (Eigen::Index first = 0; first < n; first += width) {
      const Eigen::Index m = std::min(width, n - first);
      const auto x = batch.features.middleCols(first, m);
      const auto labels = batch.labels.segment(first, m);

      // activations_[l] holds layer l's output: ReLU(W x + b) for hidden layers, logits for the last.
      for (std::size_t l = 0; l <= last; ++l) {
        auto out = activations_[l].leftCols(m);
        if (l == 0) forward_[l].run<detail::Op::none, detail::Op::none>(out, weights(l), x, false);
        else forward_[l].run<detail::Op::none, detail::Op::none>(out, weights(l), activations_[l - 1].leftCols(m), false);
        out.colwise() += bias(l);
        if (l < last) out = out.cwiseMax(0.0f);
      }
      auto logits = activations_[last].leftCols(m);
      if (correct != nullptr) {
        *correct += detail::count_correct(logits, labels);
        continue;
      }
      total += detail::softmax_cross_entropy(logits, labels, scale, g != nullptr);
      if (g == nullptr) continue;

      // Backward: delta of layer l is d(scale * loss)/d(pre-activation of layer l).
      const bool accumulate = first > 0;
      for (std::size_t l = last + 1; l-- > 0;) {
        auto delta = l == last ? activations_[last].leftCols(m) : deltas_[l].leftCols(m);
        Eigen::Map<Eigen::MatrixXf> gw(g->data() + offsets_[l], layers_[l + 1], layers_[l]);
        auto gb = g->segment(offsets_[l] + layers_[l + 1] * layers_[l], layers_[l + 1]);
        if (l == 0) weight_grad_[l].run<detail::Op::none, detail::Op::transpose>(gw, delta, x, accumulate);
        else
          weight_grad_[l].run<detail::Op::none, detail::Op::transpose>(gw, delta, activations_[l - 1].leftCols(m),
                                                                       accumulate);
        if (accumulate) gb.noalias() += delta.rowwise().sum();
        else gb.noalias() = delta.rowwise().sum();
        if (l == 0) break;
        auto below = deltas_[l - 1].leftCols(m);
        backward_[l].run<detail::Op::transpose, detail::Op::none>(below, weights(l), delta, false);
        // ReLU passes gradient only where its output was positive.
        below = (activations_[l - 1].leftCols(m).array() > 0.0f).select(below, 0.0f);
      }
    }
    return total / static_cast<double>(n);
  }

  std::vector<Eigen::Index> layers_;
  std::vector<Eigen::Index> offsets_;  // start of W_l in params_
  Eigen::VectorXf params_;
  mutable std::vector<Eigen::MatrixXf> activations_;
  mutable std::vector<Eigen::MatrixXf> deltas_;
  mutable std::vector<detail::Gemm> forward_;
  mutable std::vector<detail::Gemm> weight_grad_;
  mutable std::vector<detail::Gemm> backward_;
};

static_assert(psync::Model<Mlp>);

}  // namespace psync::models
