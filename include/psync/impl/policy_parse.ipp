#pragma once
/// @file
/// @brief The bodies of psync/policies/parse.hpp's functions (psync/detail/config.hpp).

#include "psync/policies/parse.hpp"

#include <charconv>

namespace psync {

PSYNC_DECL AnyPolicy parse_policy(std::string_view text) {
  const auto fail = [&](std::string_view why) -> AnyPolicy {
    throw ConfigError("policy '" + std::string(text) + "': " + std::string(why) +
                      " (expected bsp, asp, ssp:s, dssp:LO:HI, osp:S, losp:S, osp-uninstalled:S or losp-uninstalled:S)");
  };
  const auto number = [&](std::string_view digits) {
    std::uint32_t value = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (digits.empty() || ec != std::errc{} || end != digits.data() + digits.size() || value == runtime_bound) {
      fail("each bound must be a non-negative integer below " + std::to_string(runtime_bound));
    }
    return value;
  };
  if (text == "bsp") return Bsp{};
  if (text == "asp") return Asp{};
  const auto colon = text.find(':');
  if (colon == std::string_view::npos) return fail("unknown policy");
  const auto kind = text.substr(0, colon);
  const auto rest = text.substr(colon + 1);
  if (kind == "dssp") {
    const auto second = rest.find(':');
    if (second == std::string_view::npos) return fail("DSSP needs two bounds, LO:HI");
    const std::uint32_t lo = number(rest.substr(0, second));
    const std::uint32_t hi = number(rest.substr(second + 1));
    if (lo > hi) return fail("DSSP needs LO <= HI");
    return Dssp<runtime_bound, runtime_bound>(lo, hi);
  }
  if (kind != "ssp" && kind != "osp" && kind != "losp" && kind != "osp-uninstalled" && kind != "losp-uninstalled") {
    return fail("unknown policy");
  }
  const std::uint32_t value = number(rest);
  if (kind == "ssp") return Ssp<runtime_bound>(value);
  if (value == 0) return fail("OSP's stale threshold must be at least 1");
  if (kind == "osp") return Osp<runtime_bound>(value);
  if (kind == "losp") return Losp<runtime_bound>(value);
  if (kind == "osp-uninstalled") return OspUninstalled<runtime_bound>(value);
  return OspUninstalled<runtime_bound, install::Compensated>(value);
}

}  // namespace psync
