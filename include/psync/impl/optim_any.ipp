#pragma once
/// @file
/// @brief The bodies of psync/optim/any.hpp's functions (psync/detail/config.hpp).

#include "psync/optim/any.hpp"

namespace psync::optim {

PSYNC_DECL std::string Any::name() const {
  return std::visit([](const auto& o) { return std::string(o.name()); }, held_);
}

PSYNC_DECL void Any::reset(Eigen::Index n) {
  std::visit([n](auto& o) { o.reset(n); }, held_);
}

PSYNC_DECL void Any::apply(Eigen::Ref<Eigen::VectorXf> g, float lr) {
  std::visit([&g, lr](auto& o) { o.apply(g, lr); }, held_);
}

PSYNC_DECL void Any::save(std::vector<std::byte>& out) const {
  put_string(out, name());
  std::visit([&out](const auto& o) { o.save(out); }, held_);
}

PSYNC_DECL void Any::restore(StateReader& in) {
  const std::string saved = in.string();
  const std::string mine = name();
  if (saved != mine) {
    throw ConfigError("optimizer state: saved by optimizer '" + saved + "', cannot restore it into '" + mine + "'");
  }
  std::visit([&in](auto& o) { o.restore(in); }, held_);
}

}  // namespace psync::optim
