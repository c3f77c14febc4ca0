#pragma once
/// @file
/// @brief What the classifiers share and users never name: an allocation-free
/// matrix product (Eigen's own allocates its packing buffers per call at these
/// sizes) and numerically stable softmax / cross-entropy over a chunk of samples.

#include "psync/core/error.hpp"
#include "psync/data/dataset.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>

namespace psync::models {

namespace detail {

/// @brief Largest number of samples a model processes at once; bigger batches are split.
///
/// Bounds the workspaces (an evaluation batch of 10000 images would otherwise need
/// tens of MB of activations per model copy) while staying wide enough for GEMM.
inline constexpr Eigen::Index max_chunk = 512;

/// @brief Whether a GEMM operand is used as stored or transposed.
enum class Op { none, transpose };

/// @brief Dense float product C = op(A) op(B) (or C += ...) that does not allocate in steady state.
///
/// Eigen's own product allocates its packing buffers on every call once they exceed
/// EIGEN_STACK_ALLOCATION_LIMIT (already at 256x784 by 784x64), which is a fresh,
/// page-faulting allocation per training step. This keeps Eigen's blocking buffers
/// alive between calls, sized for the largest shape seen so far. It uses Eigen 3.4's
/// internal GEMM entry point; other Eigen versions fall back to the plain product.
/// The buffers are a cache: copies start empty, so two models never share them.
class Gemm {
 public:
  /// @brief Empty: buffers are allocated by the first product.
  Gemm() = default;
  /// @brief Starts empty rather than sharing or copying the other's buffers.
  Gemm(const Gemm&) noexcept {}
  /// @brief Keeps this object's own buffers.
  Gemm& operator=(const Gemm&) noexcept { return *this; }
  /// @brief Takes over the other's buffers.
  Gemm(Gemm&&) noexcept = default;
  /// @brief Takes over the other's buffers.
  Gemm& operator=(Gemm&&) noexcept = default;
  /// @brief Frees the buffers.
  ~Gemm() = default;

  /// @brief c = op(a) * op(b), or c += op(a) * op(b) when `accumulate`; shapes must agree.
  template <Op OpA, Op OpB>
  void run(Eigen::Ref<Eigen::MatrixXf> c, const Eigen::Ref<const Eigen::MatrixXf>& a,
           const Eigen::Ref<const Eigen::MatrixXf>& b, bool accumulate) {
    const Eigen::Index rows = c.rows();
    const Eigen::Index cols = c.cols();
    const Eigen::Index depth = OpA == Op::none ? a.cols() : a.rows();
    eigen_assert((OpA == Op::none ? a.rows() : a.cols()) == rows);
    eigen_assert((OpB == Op::none ? b.rows() : b.cols()) == depth);
    eigen_assert((OpB == Op::none ? b.cols() : b.rows()) == cols);
    // Batches of one: GEMM's packing would cost more than the arithmetic.
    if (cols == 1 && depth > 0) {
      const auto x = [&] {
        if constexpr (OpB == Op::none) return b.col(0);
        else return b.row(0).transpose();
      }();
      if constexpr (OpA == Op::none) gemv(c.col(0), a, x, accumulate);
      else gemv(c.col(0), a.transpose(), x, accumulate);
      return;
    }
    if (depth == 1) {
      if (!accumulate) c.setZero();
      for (Eigen::Index j = 0; j < cols; ++j) {
        const float factor = OpB == Op::none ? b(0, j) : b(j, 0);
        if constexpr (OpA == Op::none) c.col(j) += factor * a.col(0);
        else c.col(j) += factor * a.row(0).transpose();
      }
      return;
    }
#if EIGEN_WORLD_VERSION == 3 && EIGEN_MAJOR_VERSION == 4
    if (!accumulate) c.setZero();  // Eigen's kernel always accumulates
    if (rows == 0 || cols == 0 || depth == 0) return;
    reserve(rows, cols, depth);
    // A transposed column-major operand is the same memory read as row-major.
    constexpr int order_a = OpA == Op::none ? Eigen::ColMajor : Eigen::RowMajor;
    constexpr int order_b = OpB == Op::none ? Eigen::ColMajor : Eigen::RowMajor;
    Eigen::internal::general_matrix_matrix_product<Eigen::Index, float, order_a, false, float, order_b, false,
                                                   Eigen::ColMajor, 1>::run(rows, cols, depth, a.data(),
                                                                            a.outerStride(), b.data(),
                                                                            b.outerStride(), c.data(), 1,
                                                                            c.outerStride(), 1.0f, *blocking_,
                                                                            nullptr);
#else
    const auto op = [](const auto& m, auto tag) -> decltype(auto) {
      if constexpr (decltype(tag)::value == Op::none) return m;
      else return m.transpose();
    };
    auto lhs = op(a, std::integral_constant<Op, OpA>{});
    auto rhs = op(b, std::integral_constant<Op, OpB>{});
    if (accumulate) c.noalias() += lhs * rhs;
    else c.noalias() = lhs * rhs;
#endif
  }

 private:
  // c (+)= lhs * x. Eigen's matrix-vector product needs no heap when x is contiguous
  // (otherwise it copies x to the stack, up to EIGEN_STACK_ALLOCATION_LIMIT).
  template <class Column, class Lhs, class Vector>
  static void gemv(Column c, const Lhs& lhs, const Vector& x, bool accumulate) {
    if (accumulate) c.noalias() += lhs * x;
    else c.noalias() = lhs * x;
  }

#if EIGEN_WORLD_VERSION == 3 && EIGEN_MAJOR_VERSION == 4
  using Blocking = Eigen::internal::gemm_blocking_space<Eigen::ColMajor, float, float, Eigen::Dynamic, Eigen::Dynamic,
                                                        Eigen::Dynamic, 1, false>;

  // Eigen's kernel clips its block sizes to the actual shape, so buffers sized for
  // a larger product serve every smaller one.
  void reserve(Eigen::Index rows, Eigen::Index cols, Eigen::Index depth) {
    if (blocking_ && rows <= rows_ && cols <= cols_ && depth <= depth_) return;
    rows_ = std::max(rows, rows_);
    cols_ = std::max(cols, cols_);
    depth_ = std::max(depth, depth_);
    blocking_ = std::make_unique<Blocking>(rows_, cols_, depth_, 1, true);
    blocking_->allocateAll();
  }

  std::unique_ptr<Blocking> blocking_;
  Eigen::Index rows_ = 0;
  Eigen::Index cols_ = 0;
  Eigen::Index depth_ = 0;
#endif
};

/// @brief Throws ConfigError unless `batch` has `inputs` features, >= 1 sample, and labels in [0, classes).
inline void check_classification_batch(const data::Batch& batch, Eigen::Index inputs, int classes,
                                       const char* model) {
  if (batch.features.rows() != inputs)
    throw ConfigError(std::string("psync: ") + model + " expects " + std::to_string(inputs) +
                      " features per sample, the batch has " + std::to_string(batch.features.rows()));
  if (batch.size() == 0) throw ConfigError(std::string("psync: ") + model + " was given an empty batch");
  if (batch.labels.size() != batch.size())
    throw ConfigError(std::string("psync: ") + model + " needs one label per sample: batch has " +
                      std::to_string(batch.size()) + " samples and " + std::to_string(batch.labels.size()) +
                      " labels");
  for (Eigen::Index i = 0; i < batch.labels.size(); ++i)
    if (batch.labels[i] < 0 || batch.labels[i] >= classes)
      throw DataError(std::string("psync: ") + model + ": label " + std::to_string(batch.labels[i]) +
                      " of sample " + std::to_string(i) + " is outside [0, " + std::to_string(classes) + ")");
}

/// @brief Summed cross-entropy of the logits `z` (classes x m) against `labels`.
///
/// With `gradient`, `z` is overwritten by scale * (softmax(z) - onehot(label)), the
/// gradient of scale * loss with respect to the logits. Subtracting each column's
/// maximum before exp keeps the softmax finite for any logits.
template <class Labels>
double softmax_cross_entropy(Eigen::Ref<Eigen::MatrixXf> z, const Labels& labels, float scale, bool gradient) {
  double total = 0.0;
  for (Eigen::Index j = 0; j < z.cols(); ++j) {
    auto col = z.col(j);
    const float top = col.maxCoeff();
    const auto y = static_cast<Eigen::Index>(labels[j]);
    const float shifted_label_logit = col[y] - top;
    if (gradient) {
      col = (col.array() - top).exp();
      const float sum = col.sum();
      total += std::log(static_cast<double>(sum)) - shifted_label_logit;
      col *= scale / sum;
      col[y] -= scale;
    } else {
      const float sum = (col.array() - top).exp().sum();
      total += std::log(static_cast<double>(sum)) - shifted_label_logit;
    }
  }
  return total;
}

/// @brief Number of columns of the logits `z` whose largest entry is at the label's row.
template <class Labels>
Eigen::Index count_correct(const Eigen::Ref<const Eigen::MatrixXf>& z, const Labels& labels) {
  Eigen::Index correct = 0;
  for (Eigen::Index j = 0; j < z.cols(); ++j) {
    Eigen::Index best = 0;
    z.col(j).maxCoeff(&best);
    if (best == labels[j]) ++correct;
  }
  return correct;
}

}  // namespace detail

}  // namespace psync::models
