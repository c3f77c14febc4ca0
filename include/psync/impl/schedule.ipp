#pragma once
/// @file
/// @brief The bodies of psync/optim/schedule.hpp's functions (psync/detail/config.hpp).

#include "psync/optim/schedule.hpp"

namespace psync::optim {

namespace detail {

PSYNC_DECL void check_rate(const char* who, const char* what, double lr) {
  if (!(lr > 0) || !std::isfinite(lr)) {
    throw ConfigError(std::string(who) + ": " + what + " must be positive and finite, got " + std::to_string(lr));
  }
}

}  // namespace detail

}  // namespace psync::optim
