#pragma once
/// @file
/// @brief How a parameter vector is split across K server shards (`ShardLayout`) and
/// the model type a shard server holds (`ParameterSlice`).
///
/// Each shard owns one contiguous slice. Slices are balanced by element count: the
/// sizes differ by at most one. The balance is over the data, not over a key space:
/// splitting a key range evenly when the keys are not uniformly used leaves one shard
/// with most of the bytes (ps-lite issue #119), and that shard's NIC and thread become
/// the whole cluster's ceiling again. psync's parameters are one dense vector, so the
/// element count is the data.

#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/detail/config.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>

namespace psync {

/// @brief The split of a `dimension`-float parameter vector into `shards` contiguous
/// slices whose sizes differ by at most one (the first `dimension % shards` slices
/// hold one float more).
class ShardLayout {
 public:
  /// @brief Splits `dimension` floats over `shards` shards. Throws `ConfigError` if
  /// `shards` is 0 or larger than `dimension` (a shard must own at least one float).
  ShardLayout(Eigen::Index dimension, std::uint32_t shards);

  /// @brief Parameters in the whole model.
  Eigen::Index dimension() const noexcept { return dimension_; }
  /// @brief Number of shards.
  std::uint32_t shards() const noexcept { return shards_; }
  /// @brief Index of shard `i`'s first parameter in the whole model.
  Eigen::Index offset(std::uint32_t i) const noexcept;
  /// @brief Number of parameters shard `i` owns.
  Eigen::Index size(std::uint32_t i) const noexcept;

 private:
  Eigen::Index dimension_;
  std::uint32_t shards_;
};

/// @brief The model a shard server holds: its slice of the parameters and nothing
/// else (a server needs only a `ParameterSet`).
class ParameterSlice {
 public:
  /// @brief An empty slice.
  ParameterSlice() = default;
  /// @brief A slice holding `values`.
  explicit ParameterSlice(Eigen::VectorXf values) : values_(std::move(values)) {}
  /// @brief Shard `shard`'s slice of `full` (which must have `layout.dimension()` floats;
  /// `ConfigError` otherwise, or for a shard index out of range).
  static ParameterSlice of(Eigen::Ref<const Eigen::VectorXf> full, const ShardLayout& layout, std::uint32_t shard);

  /// @brief The slice's values.
  Eigen::Ref<const Eigen::VectorXf> parameters() const { return values_; }
  /// @brief The slice's values, writable.
  Eigen::Ref<Eigen::VectorXf> parameters() { return values_; }

 private:
  Eigen::VectorXf values_;
};

static_assert(ParameterSet<ParameterSlice>);

}  // namespace psync

#if PSYNC_HEADER_ONLY
#include "psync/impl/sharding.ipp"
#endif
