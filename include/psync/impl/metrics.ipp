#pragma once
/// @file
/// @brief The bodies of psync/core/metrics.hpp's functions (psync/detail/config.hpp).

#include "psync/core/metrics.hpp"

namespace psync {

PSYNC_DECL double time_to_accuracy(const std::vector<SeriesPoint>& series, double target,
                                   std::size_t window) noexcept {
  if (window == 0) window = 1;
  double sum = 0;
  for (std::size_t i = 0; i < series.size(); ++i) {
    sum += series[i].test_accuracy;
    if (i >= window) sum -= series[i - window].test_accuracy;
    if (i + 1 >= window && sum / static_cast<double>(window) >= target) return series[i].seconds;
  }
  return -1;
}

PSYNC_DECL double RunReport::time_to_accuracy(double target, std::size_t window) const noexcept {
  return psync::time_to_accuracy(series, target, window);
}

}  // namespace psync
