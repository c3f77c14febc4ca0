#pragma once
/// @file
/// @brief The bodies of psync/core/sharding.hpp's functions (psync/detail/config.hpp).

#include "psync/core/sharding.hpp"

namespace psync {

PSYNC_DECL ShardLayout::ShardLayout(Eigen::Index dimension, std::uint32_t shards) : dimension_(dimension), shards_(shards) {
  if (shards_ == 0) throw ConfigError("shard layout: the shard count is 0");
  if (dimension_ < static_cast<Eigen::Index>(shards_)) {
    throw ConfigError("shard layout: " + std::to_string(shards_) + " shards for a model of " +
                      std::to_string(dimension_) + " parameters (each shard needs at least one)");
  }
}

PSYNC_DECL Eigen::Index ShardLayout::offset(std::uint32_t i) const noexcept {
  const Eigen::Index k = shards_, idx = i;
  return idx * (dimension_ / k) + std::min(idx, dimension_ % k);
}

PSYNC_DECL Eigen::Index ShardLayout::size(std::uint32_t i) const noexcept {
  const Eigen::Index k = shards_, idx = i;
  return dimension_ / k + (idx < dimension_ % k ? 1 : 0);
}

PSYNC_DECL ParameterSlice ParameterSlice::of(Eigen::Ref<const Eigen::VectorXf> full, const ShardLayout& layout, std::uint32_t shard) {
  if (full.size() != layout.dimension()) {
    throw ConfigError("parameter slice: the model has " + std::to_string(full.size()) +
                      " parameters, the shard layout " + std::to_string(layout.dimension()));
  }
  if (shard >= layout.shards()) {
    throw ConfigError("parameter slice: shard " + std::to_string(shard) + " of " +
                      std::to_string(layout.shards()));
  }
  return ParameterSlice(full.segment(layout.offset(shard), layout.size(shard)));
}

}  // namespace psync
