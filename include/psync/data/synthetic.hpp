#pragma once
/// @file
/// @brief Seeded synthetic datasets: Gaussian blobs for classification and a noisy
/// linear target for regression, both learnable by the models in psync::models.

#include "psync/core/error.hpp"
#include "psync/data/dataset.hpp"

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <string>

namespace psync::data {

/// @brief Size, difficulty and seed of a synthetic dataset.
struct SyntheticOptions {
  /// @brief Number of samples (columns).
  Eigen::Index samples = 4096;
  /// @brief Features per sample.
  Eigen::Index dimension = 32;
  /// @brief Number of classes (classification only).
  int classes = 4;
  /// @brief Standard deviation of the per-feature (classification) or target (regression) noise.
  float noise = 0.5f;
  /// @brief Seed: the same options give the same dataset on every platform.
  std::uint64_t seed = 1;
};

namespace detail {

/// @brief Throws ConfigError naming the first invalid field of `o`.
inline void check_options(const SyntheticOptions& o, bool classification) {
  if (o.samples < 1)
    throw ConfigError("psync: SyntheticOptions.samples must be >= 1, got " + std::to_string(o.samples));
  if (o.dimension < 1)
    throw ConfigError("psync: SyntheticOptions.dimension must be >= 1, got " + std::to_string(o.dimension));
  if (classification && o.classes < 2)
    throw ConfigError("psync: SyntheticOptions.classes must be >= 2, got " + std::to_string(o.classes));
  if (!(o.noise >= 0.0f))  // also rejects NaN
    throw ConfigError("psync: SyntheticOptions.noise must be >= 0, got " + std::to_string(o.noise));
}

}  // namespace detail

/// @brief Gaussian blobs: class k has centre c_k ~ N(0, I), sample = c_{label} + noise * N(0, I).
///
/// Labels cycle 0, 1, ..., classes-1 so every prefix is balanced. Centres are about
/// sqrt(2 * dimension) apart, so with the default noise a linear classifier is
/// near-perfect; raise `noise` for a harder problem. Throws ConfigError on bad options.
inline Dataset make_synthetic_classification(const SyntheticOptions& o) {
  detail::check_options(o, true);
  // Separate streams so changing `samples` does not move the class centres.
  detail::Rng centre_rng(o.seed * 2 + 0);
  detail::Rng sample_rng(o.seed * 2 + 1);
  Eigen::MatrixXf centres(o.dimension, o.classes);
  for (Eigen::Index j = 0; j < centres.cols(); ++j)
    for (Eigen::Index i = 0; i < centres.rows(); ++i) centres(i, j) = static_cast<float>(centre_rng.normal());

  Dataset d;
  d.num_classes = o.classes;
  d.features.resize(o.dimension, o.samples);
  d.labels.resize(o.samples);
  for (Eigen::Index s = 0; s < o.samples; ++s) {
    const int label = static_cast<int>(s % o.classes);
    d.labels[s] = label;
    for (Eigen::Index i = 0; i < o.dimension; ++i)
      d.features(i, s) = centres(i, label) + o.noise * static_cast<float>(sample_rng.normal());
  }
  return d;
}

/// @brief Linear regression data: x ~ N(0, I), y = w* . x + noise * N(0, 1), w* ~ N(0, I / dimension).
///
/// Scaling w* by 1/sqrt(dimension) keeps Var(w* . x) near 1 whatever the dimension,
/// so one learning rate suits every size. The best achievable mean squared-error
/// loss 0.5 (y - w.x - b)^2 is about 0.5 * noise^2. Throws ConfigError on bad options.
inline Dataset make_synthetic_regression(const SyntheticOptions& o) {
  detail::check_options(o, false);
  detail::Rng weight_rng(o.seed * 2 + 0);
  detail::Rng sample_rng(o.seed * 2 + 1);
  Eigen::VectorXf w(o.dimension);
  const double scale = 1.0 / std::sqrt(static_cast<double>(o.dimension));
  for (Eigen::Index i = 0; i < w.size(); ++i) w[i] = static_cast<float>(scale * weight_rng.normal());

  Dataset d;
  d.features.resize(o.dimension, o.samples);
  d.targets.resize(o.samples);
  for (Eigen::Index s = 0; s < o.samples; ++s) {
    double y = 0.0;
    for (Eigen::Index i = 0; i < o.dimension; ++i) {
      const float x = static_cast<float>(sample_rng.normal());
      d.features(i, s) = x;
      y += static_cast<double>(w[i]) * x;
    }
    d.targets[s] = static_cast<float>(y + o.noise * sample_rng.normal());
  }
  return d;
}

}  // namespace psync::data
