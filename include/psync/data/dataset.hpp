#pragma once
/// @file
/// @brief In-memory datasets (samples are columns), deterministic sharding across
/// workers, and a minibatch sampler that reuses one buffer.

#include "psync/core/error.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <string>
#include <utility>
#include <vector>

namespace psync::data {

namespace detail {

/// @brief Small seeded generator (SplitMix64 seeding, xoshiro256** stream).
///
/// psync's own generator rather than `<random>` because the standard engines'
/// distributions (shuffle, normal) differ across library implementations, and
/// shards, batches and initial models must be identical everywhere for a seed.
class Rng {
 public:
  /// @brief Seeds the four state words from `seed` via SplitMix64 (any seed, 0 included, is fine).
  explicit Rng(std::uint64_t seed) noexcept {
    for (auto& word : state_) {
      seed += 0x9e3779b97f4a7c15ULL;
      std::uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
      word = z ^ (z >> 31);
    }
  }

  /// @brief Next 64 uniformly random bits.
  std::uint64_t next() noexcept {
    const std::uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const std::uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }

  /// @brief Uniform integer in [0, bound) without modulo bias; `bound` must be > 0.
  std::uint64_t below(std::uint64_t bound) noexcept {
    // Rejecting the top partial range keeps every value equally likely.
    const std::uint64_t limit = ~std::uint64_t{0} - (~std::uint64_t{0} % bound);
    std::uint64_t x = next();
    while (x >= limit) x = next();
    return x % bound;
  }

  /// @brief Uniform double in [0, 1) with 53 random bits.
  double uniform() noexcept { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

  /// @brief Standard normal deviate (Box-Muller; the second value is kept for the next call).
  double normal() noexcept {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = 1.0 - uniform();  // in (0, 1]: log stays finite
    const double u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2.0 * std::numbers::pi * u2);
    has_spare_ = true;
    return r * std::cos(2.0 * std::numbers::pi * u2);
  }

  /// @brief Fisher-Yates shuffle of `v` in place (no allocation).
  template <class Vector>
  void shuffle(Vector& v) noexcept {
    for (Eigen::Index i = static_cast<Eigen::Index>(v.size()) - 1; i > 0; --i) {
      const auto j = static_cast<Eigen::Index>(below(static_cast<std::uint64_t>(i) + 1));
      using std::swap;
      swap(v[i], v[j]);
    }
  }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) noexcept { return (x << k) | (x >> (64 - k)); }

  std::uint64_t state_[4]{};
  double spare_ = 0.0;
  bool has_spare_ = false;
};

}  // namespace detail

/// @brief A labelled dataset held in memory; samples are columns.
///
/// `features` is dimension x size (column-major) so a linear layer is `W * features`.
/// A classification set fills `labels` (values in [0, num_classes)) and leaves
/// `targets` empty; a regression set does the opposite.
struct Dataset {
  /// @brief Features, one sample per column (dimension x size).
  Eigen::MatrixXf features;
  /// @brief Class of each sample (classification); empty for regression.
  Eigen::VectorXi labels;
  /// @brief Target value of each sample (regression); empty for classification.
  Eigen::VectorXf targets;
  /// @brief Number of classes (0 for regression).
  int num_classes = 0;

  /// @brief Number of samples.
  Eigen::Index size() const noexcept { return features.cols(); }
  /// @brief Number of features per sample.
  Eigen::Index dimension() const noexcept { return features.rows(); }

  /// @brief Throws ConfigError unless labels/targets are empty or have one entry per sample.
  void check_consistent() const {
    if (labels.size() != 0 && labels.size() != size())
      throw ConfigError("psync: dataset has " + std::to_string(size()) + " samples but " +
                        std::to_string(labels.size()) + " labels");
    if (targets.size() != 0 && targets.size() != size())
      throw ConfigError("psync: dataset has " + std::to_string(size()) + " samples but " +
                        std::to_string(targets.size()) + " targets");
  }

  /// @brief Contiguous copy of samples [first, first + count); throws ConfigError if out of range.
  Dataset subset(Eigen::Index first, Eigen::Index count) const {
    check_consistent();
    if (first < 0 || count < 0 || first > size() || count > size() - first)
      throw ConfigError("psync: Dataset::subset(" + std::to_string(first) + ", " +
                        std::to_string(count) + ") is outside a dataset of " +
                        std::to_string(size()) + " samples");
    Dataset out;
    out.features = features.middleCols(first, count);
    if (labels.size() != 0) out.labels = labels.segment(first, count);
    if (targets.size() != 0) out.targets = targets.segment(first, count);
    out.num_classes = num_classes;
    return out;
  }
};

/// @brief A minibatch; columns are samples. Samplers reuse one Batch, so it is a buffer, not a value to keep.
struct Batch {
  /// @brief Features, one sample per column.
  Eigen::MatrixXf features;
  /// @brief Class of each sample (empty for regression).
  Eigen::VectorXi labels;
  /// @brief Target of each sample (empty for classification).
  Eigen::VectorXf targets;

  /// @brief Number of samples in the batch.
  Eigen::Index size() const noexcept { return features.cols(); }
};

namespace detail {

/// @brief Copies the samples `index[0..count)` of `d` into the first `count` columns of `b`.
template <class Indices>
void gather(const Dataset& d, const Indices& index, Eigen::Index from, Eigen::Index count,
            Batch& b, Eigen::Index at) noexcept {
  const bool has_labels = d.labels.size() != 0;
  const bool has_targets = d.targets.size() != 0;
  for (Eigen::Index k = 0; k < count; ++k) {
    const Eigen::Index i = index[from + k];
    b.features.col(at + k) = d.features.col(i);
    if (has_labels) b.labels[at + k] = d.labels[i];
    if (has_targets) b.targets[at + k] = d.targets[i];
  }
}

/// @brief Sizes `b` for `count` samples of `d`'s shape.
inline void shape_batch(const Dataset& d, Eigen::Index count, Batch& b) {
  b.features.resize(d.dimension(), count);
  b.labels.resize(d.labels.size() != 0 ? count : 0);
  b.targets.resize(d.targets.size() != 0 ? count : 0);
}

}  // namespace detail

/// @brief The seed of worker `w`'s batch order in a cluster seeded `seed`:
/// `seed * 7919 + w + 1`. `run_local`, psync-train, the simulation benchmarks and
/// `harness::replay_rounds`' callers draw worker w's `BatchSampler` over its `shard`
/// with it, so the same seed gives the same batches in each of them.
constexpr std::uint64_t worker_seed(std::uint64_t seed, std::uint64_t w) noexcept { return seed * 7919 + w + 1; }

/// @brief Splits `d` into `parts` disjoint shards that together hold every sample once.
///
/// Samples are dealt after a shuffle seeded by `seed`, so each shard is a uniform
/// sample of the whole (a sorted input does not give one worker one class); the
/// result depends only on `d`, `parts` and `seed`. Shard sizes differ by at most one.
/// Throws ConfigError if `parts` < 1 or `parts` > d.size().
inline std::vector<Dataset> shard(const Dataset& d, int parts, std::uint64_t seed) {
  d.check_consistent();
  if (parts < 1)
    throw ConfigError("psync: shard() needs at least 1 part, got " + std::to_string(parts));
  if (parts > d.size())
    throw ConfigError("psync: shard() cannot split " + std::to_string(d.size()) +
                      " samples into " + std::to_string(parts) + " non-empty parts");
  Eigen::Matrix<Eigen::Index, Eigen::Dynamic, 1> order(d.size());
  for (Eigen::Index i = 0; i < d.size(); ++i) order[i] = i;
  detail::Rng rng(seed);
  rng.shuffle(order);

  std::vector<Dataset> out(static_cast<std::size_t>(parts));
  const Eigen::Index base = d.size() / parts;
  const Eigen::Index extra = d.size() % parts;
  Eigen::Index from = 0;
  for (int p = 0; p < parts; ++p) {
    const Eigen::Index count = base + (p < extra ? 1 : 0);
    Batch b;
    detail::shape_batch(d, count, b);
    detail::gather(d, order, from, count, b, 0);
    Dataset& s = out[static_cast<std::size_t>(p)];
    s.features = std::move(b.features);
    s.labels = std::move(b.labels);
    s.targets = std::move(b.targets);
    s.num_classes = d.num_classes;
    from += count;
  }
  return out;
}

/// @brief Draws uniform minibatches: each epoch is a fresh seeded permutation, consumed in order.
///
/// Batches are consecutive windows of an endless stream of epoch permutations, so
/// every sample is drawn exactly once per epoch. When the batch size does not divide
/// the dataset, the batch at an epoch boundary takes the old epoch's tail and the
/// new epoch's head (a sample may then appear twice in that one batch).
/// The sampler keeps a pointer to the dataset: the dataset must outlive it.
/// All memory is allocated by the constructor; next() never allocates.
class BatchSampler {
 public:
  /// @brief Sampler over `d` (which must outlive it); throws ConfigError if `batch_size` is not in [1, d.size()].
  BatchSampler(const Dataset& d, Eigen::Index batch_size, std::uint64_t seed)
      : data_(&d), rng_(seed) {
    d.check_consistent();
    if (batch_size < 1 || batch_size > d.size())
      throw ConfigError("psync: BatchSampler batch size " + std::to_string(batch_size) +
                        " must be between 1 and the dataset size " + std::to_string(d.size()));
    order_.resize(d.size());
    for (Eigen::Index i = 0; i < d.size(); ++i) order_[i] = i;
    rng_.shuffle(order_);
    detail::shape_batch(d, batch_size, batch_);
  }

  /// @brief Deleted: the sampler keeps a pointer to the dataset, so a temporary would dangle.
  BatchSampler(Dataset&&, Eigen::Index, std::uint64_t) = delete;

  /// @brief The next minibatch; the reference stays valid (and is overwritten) until the next call.
  const Batch& next() noexcept {
    const Eigen::Index n = order_.size();
    const Eigen::Index b = batch_.size();
    Eigen::Index filled = 0;
    while (filled < b) {
      if (position_ == n) {
        rng_.shuffle(order_);
        position_ = 0;
        ++epoch_;
      }
      const Eigen::Index take = std::min(b - filled, n - position_);
      detail::gather(*data_, order_, position_, take, batch_, filled);
      position_ += take;
      filled += take;
    }
    return batch_;
  }

  /// @brief Samples per batch.
  Eigen::Index batch_size() const noexcept { return batch_.size(); }
  /// @brief Epoch (0-based pass over the dataset) of the most recently drawn sample.
  std::uint64_t epoch() const noexcept { return epoch_; }

 private:
  const Dataset* data_;
  detail::Rng rng_;
  Eigen::Matrix<Eigen::Index, Eigen::Dynamic, 1> order_;
  Eigen::Index position_ = 0;
  std::uint64_t epoch_ = 0;
  Batch batch_;
};

/// @brief A batch holding the first `limit` samples of `d` (all of them if `limit` < 0 or too large), for evaluation.
inline Batch whole(const Dataset& d, Eigen::Index limit = -1) {
  d.check_consistent();
  const Eigen::Index count = (limit < 0 || limit > d.size()) ? d.size() : limit;
  Batch b;
  b.features = d.features.leftCols(count);
  if (d.labels.size() != 0) b.labels = d.labels.head(count);
  if (d.targets.size() != 0) b.targets = d.targets.head(count);
  return b;
}

}  // namespace psync::data
