#pragma once
/// @file
/// @brief A small convolutional classifier, LeNet-5-like: two 5x5 convolutions, each
/// followed by ReLU and 2x2 max pooling, then ReLU dense layers and a softmax output.

#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/data/dataset.hpp"
#include "psync/models/softmax.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace psync::models {

/// @brief The layer sizes of a `Cnn`.
struct CnnShape {
  Eigen::Index side = 28;               ///< input images are side x side, one channel, row-major
  Eigen::Index conv1 = 6;               ///< channels of the first convolution (5x5, padding 2)
  Eigen::Index conv2 = 16;              ///< channels of the second convolution (5x5, no padding)
  std::vector<Eigen::Index> hidden{120, 84};  ///< widths of the dense ReLU layers
  int classes = 10;
};

/// @brief LeNet-5-like network for single-channel square images (Fashion-MNIST by default):
///
///     input side x side -> conv 5x5, conv1 channels, padding 2 -> ReLU -> max pool 2x2
///       -> conv 5x5, conv2 channels -> ReLU -> max pool 2x2 -> dense hidden[0] -> ReLU
///       -> ... -> dense classes -> softmax cross-entropy (mean over the batch)
///
/// With the defaults: 28x28 -> 6x28x28 -> 6x14x14 -> 16x10x10 -> 16x5x5 = 400 -> 120 -> 84
/// -> 10, 61,706 parameters. A sample's features are its pixels, row after row.
///
/// Convolutions run as im2col and one GEMM per layer over the whole chunk of the batch
/// (at most `max_chunk` samples at a time), so the arithmetic is Eigen's matrix product.
/// Parameters are one vector: conv1 weights (channels x 25, column-major) and biases,
/// conv2 weights (channels x conv1*25) and biases, then each dense layer's W
/// (outputs x inputs, column-major) and b. The const methods use mutable workspaces
/// sized on first use (at most `max_chunk` samples), so after a warm-up batch of the
/// largest size, `gradient`, `loss` and `accuracy` allocate nothing; one instance must
/// not be used by two threads at once (each worker uses its own copy).
class Cnn {
 public:
  /// @brief The batch type the model trains on.
  using Batch = psync::data::Batch;
  /// @brief Samples processed at a time (the workspaces hold this many).
  static constexpr Eigen::Index max_chunk = 128;
  /// @brief Convolution kernels are k x k.
  static constexpr Eigen::Index k = 5;

  /// @brief The network for `shape`, initialized as by initialize(0). Throws ConfigError
  /// unless the sizes fit: side even, side / 2 - 4 even and at least 2, channels and
  /// widths at least 1, at least 2 classes.
  explicit Cnn(CnnShape shape = {}) : shape_(std::move(shape)) {
    const auto& s = shape_;
    if (s.side < 8 || s.side % 2 != 0 || (s.side / 2 - (k - 1)) < 2 || (s.side / 2 - (k - 1)) % 2 != 0)
      throw ConfigError("psync: Cnn needs an even image side with side/2 - 4 even and >= 2 (e.g. 28), got " +
                        std::to_string(s.side));
    if (s.conv1 < 1 || s.conv2 < 1)
      throw ConfigError("psync: Cnn convolution channels must be >= 1, got " + std::to_string(s.conv1) + " and " +
                        std::to_string(s.conv2));
    for (auto h : s.hidden)
      if (h < 1) throw ConfigError("psync: Cnn dense widths must be >= 1, got " + std::to_string(h));
    if (s.classes < 2) throw ConfigError("psync: Cnn needs >= 2 classes, got " + std::to_string(s.classes));
    h1_ = s.side;             // conv1 keeps the size (padding 2)
    p1_ = h1_ / 2;            // after pool 1
    h2_ = p1_ - (k - 1);      // conv2, no padding
    p2_ = h2_ / 2;            // after pool 2
    dense_.push_back(s.conv2 * p2_ * p2_);
    for (auto h : s.hidden) dense_.push_back(h);
    dense_.push_back(s.classes);
    Eigen::Index offset = 0;
    w1_ = offset;
    offset += s.conv1 * k * k + s.conv1;
    w2_ = offset;
    offset += s.conv2 * s.conv1 * k * k + s.conv2;
    for (std::size_t l = 0; l + 1 < dense_.size(); ++l) {
      dense_offsets_.push_back(offset);
      offset += dense_[l + 1] * (dense_[l] + 1);
    }
    params_.resize(offset);
    build_im2col_tables();
    const std::size_t depth = dense_offsets_.size();
    activations_.resize(depth);
    deltas_.resize(depth);
    dense_forward_.resize(depth);
    dense_weight_grad_.resize(depth);
    dense_backward_.resize(depth);
    initialize(0);
  }

  /// @brief All parameters (layout in the class comment).
  Eigen::Ref<const Eigen::VectorXf> parameters() const { return params_; }
  /// @brief All parameters, writable.
  Eigen::Ref<Eigen::VectorXf> parameters() { return params_; }
  /// @brief Parameter count.
  Eigen::Index dimension() const noexcept { return params_.size(); }
  /// @brief The layer sizes.
  const CnnShape& shape() const noexcept { return shape_; }
  /// @brief Features per sample (side x side).
  Eigen::Index inputs() const noexcept { return shape_.side * shape_.side; }
  /// @brief Number of classes.
  int classes() const noexcept { return shape_.classes; }

  /// @brief Deterministic random weights from `seed`, zero biases: He, N(0, 2 / fan_in),
  /// for every layer followed by a ReLU; Glorot, N(0, 2 / (fan_in + fan_out)), for the output.
  void initialize(std::uint64_t seed) {
    data::detail::Rng rng(seed);
    const auto fill = [&](Eigen::Index at, Eigen::Index count, double sd) {
      for (Eigen::Index i = 0; i < count; ++i) params_[at + i] = static_cast<float>(sd * rng.normal());
    };
    params_.setZero();
    fill(w1_, shape_.conv1 * k * k, std::sqrt(2.0 / static_cast<double>(k * k)));
    fill(w2_, shape_.conv2 * shape_.conv1 * k * k, std::sqrt(2.0 / static_cast<double>(shape_.conv1 * k * k)));
    for (std::size_t l = 0; l < dense_offsets_.size(); ++l) {
      const double in = static_cast<double>(dense_[l]), out = static_cast<double>(dense_[l + 1]);
      const bool last = l + 1 == dense_offsets_.size();
      fill(dense_offsets_[l], dense_[l + 1] * dense_[l], last ? std::sqrt(2.0 / (in + out)) : std::sqrt(2.0 / in));
    }
  }

  /// @brief Mean cross-entropy over the batch.
  double loss(const Batch& batch) const { return pass(batch, nullptr, nullptr); }

  /// @brief Writes the gradient of the mean loss into `g` (size dimension()) and returns the mean loss.
  double gradient(const Batch& batch, Eigen::Ref<Eigen::VectorXf> g) const {
    if (g.size() != dimension())
      throw ConfigError("psync: Cnn::gradient needs a vector of " + std::to_string(dimension()) + " entries, got " +
                        std::to_string(g.size()));
    return pass(batch, &g, nullptr);
  }

  /// @brief Fraction of the batch whose most probable class is the label.
  double accuracy(const Batch& batch) const {
    Eigen::Index correct = 0;
    pass(batch, nullptr, &correct);
    return static_cast<double>(correct) / static_cast<double>(batch.size());
  }

 private:
  using Map = Eigen::Map<Eigen::MatrixXf>;
  using ConstMap = Eigen::Map<const Eigen::MatrixXf>;

  ConstMap conv1_w() const { return {params_.data() + w1_, shape_.conv1, k * k}; }
  ConstMap conv2_w() const { return {params_.data() + w2_, shape_.conv2, shape_.conv1 * k * k}; }
  ConstMap dense_w(std::size_t l) const { return {params_.data() + dense_offsets_[l], dense_[l + 1], dense_[l]}; }
  Eigen::Map<const Eigen::VectorXf> conv1_b() const { return {params_.data() + w1_ + shape_.conv1 * k * k, shape_.conv1}; }
  Eigen::Map<const Eigen::VectorXf> conv2_b() const {
    return {params_.data() + w2_ + shape_.conv2 * shape_.conv1 * k * k, shape_.conv2};
  }
  Eigen::Map<const Eigen::VectorXf> dense_b(std::size_t l) const {
    return {params_.data() + dense_offsets_[l] + dense_[l + 1] * dense_[l], dense_[l + 1]};
  }

  // For each output position q = (oy, ox) of one sample, then each im2col row
  // r = (c, ky, kx) (entry q * rows + r): the offset of the input pixel within the
  // sample's column (c * H * W + y * W + x), or -1 where the kernel covers padding.
  static std::vector<std::int32_t> im2col_table(Eigen::Index channels, Eigen::Index in, Eigen::Index out,
                                                Eigen::Index pad) {
    std::vector<std::int32_t> t(static_cast<std::size_t>(channels * k * k * out * out));
    std::size_t i = 0;
    for (Eigen::Index oy = 0; oy < out; ++oy)
      for (Eigen::Index ox = 0; ox < out; ++ox)
        for (Eigen::Index c = 0; c < channels; ++c)
          for (Eigen::Index ky = 0; ky < k; ++ky)
            for (Eigen::Index kx = 0; kx < k; ++kx) {
              const Eigen::Index y = oy + ky - pad, x = ox + kx - pad;
              t[i++] = (y < 0 || y >= in || x < 0 || x >= in) ? -1 : static_cast<std::int32_t>(c * in * in + y * in + x);
            }
    return t;
  }

  void build_im2col_tables() {
    table1_ = im2col_table(1, shape_.side, h1_, 2);
    table2_ = im2col_table(shape_.conv1, p1_, h2_, 0);
  }

  // cols (rows x m * out^2): column s * out^2 + q holds sample s's patch at output q.
  static void im2col(const float* input, Eigen::Index sample_stride, Eigen::Index m, Eigen::Index rows,
                     Eigen::Index positions, const std::vector<std::int32_t>& table, Map cols) {
    for (Eigen::Index s = 0; s < m; ++s) {
      const float* in = input + s * sample_stride;
      for (Eigen::Index q = 0; q < positions; ++q) {
        float* col = cols.data() + (s * positions + q) * rows;
        const std::int32_t* t = table.data() + q * rows;
        for (Eigen::Index r = 0; r < rows; ++r) col[r] = t[r] < 0 ? 0.0f : in[t[r]];
      }
    }
  }

  // The transpose of im2col: adds each patch entry back onto its input pixel.
  static void col2im(const ConstMap& cols, Eigen::Index m, Eigen::Index rows, Eigen::Index positions,
                     const std::vector<std::int32_t>& table, float* input, Eigen::Index sample_stride) {
    for (Eigen::Index s = 0; s < m; ++s) {
      float* in = input + s * sample_stride;
      for (Eigen::Index q = 0; q < positions; ++q) {
        const float* col = cols.data() + (s * positions + q) * rows;
        const std::int32_t* t = table.data() + q * rows;
        for (Eigen::Index r = 0; r < rows; ++r)
          if (t[r] >= 0) in[t[r]] += col[r];
      }
    }
  }

  // 2x2 max pooling of conv (channels x m * side^2, ReLU applied) into pooled
  // (channels * (side/2)^2 x m, one column per sample); `arg` keeps, for each pooled
  // entry, the index in conv's storage it came from.
  static void pool(const Map& conv, Eigen::Index channels, Eigen::Index side, Eigen::Index m, Map pooled,
                   Eigen::Map<Eigen::Matrix<std::int32_t, Eigen::Dynamic, Eigen::Dynamic>> arg) {
    const Eigen::Index half = side / 2, area = side * side;
    for (Eigen::Index s = 0; s < m; ++s)
      for (Eigen::Index c = 0; c < channels; ++c)
        for (Eigen::Index py = 0; py < half; ++py)
          for (Eigen::Index px = 0; px < half; ++px) {
            // The first of the window unless another is larger (so a NaN still has a source).
            Eigen::Index best = c + channels * (s * area + 2 * py * side + 2 * px);
            float top = conv.data()[best];
            for (Eigen::Index dy = 0; dy < 2; ++dy)
              for (Eigen::Index dx = 0; dx < 2; ++dx) {
                const Eigen::Index at = c + channels * (s * area + (2 * py + dy) * side + 2 * px + dx);
                if (conv.data()[at] > top) top = conv.data()[at], best = at;
              }
            const Eigen::Index row = c * half * half + py * half + px;
            pooled(row, s) = top;
            arg(row, s) = static_cast<std::int32_t>(best);
          }
  }

  void reserve(Eigen::Index width) const {
    if (width_ >= width) return;
    width_ = width;
    const auto& s = shape_;
    cols1_.resize(k * k, width * h1_ * h1_);
    conv1_.resize(s.conv1, width * h1_ * h1_);
    pool1_.resize(s.conv1 * p1_ * p1_, width);
    arg1_.resize(s.conv1 * p1_ * p1_, width);
    cols2_.resize(s.conv1 * k * k, width * h2_ * h2_);
    conv2_.resize(s.conv2, width * h2_ * h2_);
    pool2_.resize(dense_.front(), width);
    arg2_.resize(dense_.front(), width);
    dpool1_.resize(s.conv1 * p1_ * p1_, width);
    dpool2_.resize(dense_.front(), width);
    for (std::size_t l = 0; l < dense_offsets_.size(); ++l) {
      activations_[l].resize(dense_[l + 1], width);
      deltas_[l].resize(dense_[l + 1], width);
    }
  }

  double pass(const Batch& batch, Eigen::Ref<Eigen::VectorXf>* g, Eigen::Index* correct) const {
    detail::check_classification_batch(batch, inputs(), classes(), "Cnn");
    const Eigen::Index n = batch.size();
    const Eigen::Index width = std::min(n, max_chunk);
    reserve(width);
    const float scale = 1.0f / static_cast<float>(n);
    const std::size_t last = dense_offsets_.size() - 1;
    const Eigen::Index c1 = shape_.conv1, c2 = shape_.conv2;
    const Eigen::Index a1 = h1_ * h1_, a2 = h2_ * h2_;
    double total = 0.0;
    if (g != nullptr) g->setZero();
    for (Eigen::Index first = 0; first < n; first += width) {
      const Eigen::Index m = std::min(width, n - first);
      const auto labels = batch.labels.segment(first, m);
      Map cols1(cols1_.data(), k * k, m * a1), conv1(conv1_.data(), c1, m * a1);
      Map pool1(pool1_.data(), c1 * p1_ * p1_, m), cols2(cols2_.data(), c1 * k * k, m * a2);
      Map conv2(conv2_.data(), c2, m * a2), pool2(pool2_.data(), dense_.front(), m);
      Eigen::Map<Eigen::Matrix<std::int32_t, Eigen::Dynamic, Eigen::Dynamic>> arg1(arg1_.data(), c1 * p1_ * p1_, m),
          arg2(arg2_.data(), dense_.front(), m);

      // Convolutions: im2col, one GEMM, bias, ReLU, pool.
      im2col(batch.features.data() + first * inputs(), inputs(), m, k * k, a1, table1_, cols1);
      conv1_gemm_.run<detail::Op::none, detail::Op::none>(conv1, conv1_w(), cols1, false);
      conv1.colwise() += conv1_b();
      conv1 = conv1.cwiseMax(0.0f);
      pool(conv1, c1, h1_, m, pool1, arg1);
      im2col(pool1.data(), c1 * p1_ * p1_, m, c1 * k * k, a2, table2_, cols2);
      conv2_gemm_.run<detail::Op::none, detail::Op::none>(conv2, conv2_w(), cols2, false);
      conv2.colwise() += conv2_b();
      conv2 = conv2.cwiseMax(0.0f);
      pool(conv2, c2, h2_, m, pool2, arg2);

      // Dense layers.
      for (std::size_t l = 0; l <= last; ++l) {
        auto out = activations_[l].leftCols(m);
        if (l == 0) dense_forward_[l].run<detail::Op::none, detail::Op::none>(out, dense_w(l), pool2, false);
        else
          dense_forward_[l].run<detail::Op::none, detail::Op::none>(out, dense_w(l), activations_[l - 1].leftCols(m),
                                                                    false);
        out.colwise() += dense_b(l);
        if (l < last) out = out.cwiseMax(0.0f);
      }
      auto logits = activations_[last].leftCols(m);
      if (correct != nullptr) {
        *correct += detail::count_correct(logits, labels);
        continue;
      }
      total += detail::softmax_cross_entropy(logits, labels, scale, g != nullptr);
      if (g == nullptr) continue;

      // Backward through the dense layers: delta = d(scale * loss)/d(pre-activation).
      Map dpool2(dpool2_.data(), dense_.front(), m);
      for (std::size_t l = last + 1; l-- > 0;) {
        auto delta = l == last ? activations_[last].leftCols(m) : deltas_[l].leftCols(m);
        Map gw(g->data() + dense_offsets_[l], dense_[l + 1], dense_[l]);
        auto gb = g->segment(dense_offsets_[l] + dense_[l + 1] * dense_[l], dense_[l + 1]);
        if (l == 0) dense_weight_grad_[l].run<detail::Op::none, detail::Op::transpose>(gw, delta, pool2, true);
        else
          dense_weight_grad_[l].run<detail::Op::none, detail::Op::transpose>(gw, delta, activations_[l - 1].leftCols(m),
                                                                             true);
        gb.noalias() += delta.rowwise().sum();
        if (l == 0) {
          dense_backward_[l].run<detail::Op::transpose, detail::Op::none>(dpool2, dense_w(l), delta, false);
          break;
        }
        auto below = deltas_[l - 1].leftCols(m);
        dense_backward_[l].run<detail::Op::transpose, detail::Op::none>(below, dense_w(l), delta, false);
        below = (activations_[l - 1].leftCols(m).array() > 0.0f).select(below, 0.0f);
      }

      // Pool 2 and ReLU backward: the gradient goes to the entry each max came from, if positive.
      unpool(dpool2, arg2, conv2);
      // conv2: weights and bias, then the gradient of its input patches, folded back by col2im.
      Map gw2(g->data() + w2_, c2, c1 * k * k);
      conv2_wgrad_.run<detail::Op::none, detail::Op::transpose>(gw2, conv2, cols2, true);
      g->segment(w2_ + c2 * c1 * k * k, c2).noalias() += conv2.rowwise().sum();
      conv2_back_.run<detail::Op::transpose, detail::Op::none>(cols2, conv2_w(), conv2, false);
      Map dpool1(dpool1_.data(), c1 * p1_ * p1_, m);
      dpool1.setZero();
      col2im(ConstMap(cols2.data(), c1 * k * k, m * a2), m, c1 * k * k, a2, table2_, dpool1.data(), c1 * p1_ * p1_);
      unpool(dpool1, arg1, conv1);
      Map gw1(g->data() + w1_, c1, k * k);
      conv1_wgrad_.run<detail::Op::none, detail::Op::transpose>(gw1, conv1, cols1, true);
      g->segment(w1_ + c1 * k * k, c1).noalias() += conv1.rowwise().sum();
    }
    return total / static_cast<double>(n);
  }

  // Overwrites `conv` (the pooled layer's ReLU output) with its gradient: each pooled
  // entry's gradient goes to the conv entry its max came from, where that was positive
  // (ReLU passes nothing where it output 0); every other entry gets 0. The 2x2 windows
  // do not overlap, so each conv entry receives from at most one pooled entry.
  static void unpool(Map dpooled, const Eigen::Map<Eigen::Matrix<std::int32_t, Eigen::Dynamic, Eigen::Dynamic>>& arg,
                     Map conv) {
    float* out = conv.data();
    for (Eigen::Index s = 0; s < dpooled.cols(); ++s)
      for (Eigen::Index r = 0; r < dpooled.rows(); ++r)
        if (!(out[arg(r, s)] > 0.0f)) dpooled(r, s) = 0.0f;
    conv.setZero();
    for (Eigen::Index s = 0; s < dpooled.cols(); ++s)
      for (Eigen::Index r = 0; r < dpooled.rows(); ++r) out[arg(r, s)] = dpooled(r, s);
  }

  CnnShape shape_;
  Eigen::Index h1_ = 0, p1_ = 0, h2_ = 0, p2_ = 0;
  std::vector<Eigen::Index> dense_;          // dense layer widths, the flattened pool2 first
  std::vector<Eigen::Index> dense_offsets_;  // start of each dense W in params_
  Eigen::Index w1_ = 0, w2_ = 0;             // start of conv1's and conv2's weights
  Eigen::VectorXf params_;
  std::vector<std::int32_t> table1_, table2_;
  mutable Eigen::Index width_ = 0;
  mutable Eigen::MatrixXf cols1_, conv1_, pool1_, cols2_, conv2_, pool2_, dpool1_, dpool2_;
  mutable Eigen::Matrix<std::int32_t, Eigen::Dynamic, Eigen::Dynamic> arg1_, arg2_;
  mutable std::vector<Eigen::MatrixXf> activations_, deltas_;
  mutable detail::Gemm conv1_gemm_, conv2_gemm_, conv1_wgrad_, conv2_wgrad_, conv2_back_;
  mutable std::vector<detail::Gemm> dense_forward_, dense_weight_grad_, dense_backward_;
};

static_assert(psync::Model<Cnn>);

}  // namespace psync::models
