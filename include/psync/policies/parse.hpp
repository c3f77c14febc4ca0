#pragma once
/// @file
/// @brief The one place where run time meets compile time: a policy spelled as a
/// string ("bsp", "asp", "ssp:3", "dssp:2:6", "osp:20", "losp:20",
/// "osp-uninstalled:20") becomes a policy value.

#include "psync/core/error.hpp"
#include "psync/policies/asp.hpp"
#include "psync/policies/bsp.hpp"
#include "psync/policies/dssp.hpp"
#include "psync/policies/osp.hpp"
#include "psync/policies/ssp.hpp"

#include <charconv>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace psync {

/// @brief Any policy a string can name.
using AnyPolicy = std::variant<Bsp, Asp, Ssp<runtime_bound>, Dssp<runtime_bound, runtime_bound>, Osp<runtime_bound>,
                               Losp<runtime_bound>, OspUninstalled<runtime_bound>,
                               OspUninstalled<runtime_bound, install::Compensated>>;

/// @brief Parses "bsp", "asp", "ssp:s", "dssp:LO:HI", "osp:S", "losp:S", "osp-uninstalled:S"
/// or "losp-uninstalled:S" (non-negative integers; S at least 1, LO <= HI); throws
/// `ConfigError` naming the text and the accepted forms.
inline AnyPolicy parse_policy(std::string_view text) {
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

/// @brief Calls `f(policy)` with the policy `text` names, as its own type, so `f`
/// can instantiate `Server<M, decltype(policy)>` and friends.
template <class F>
decltype(auto) with_policy(std::string_view text, F&& f) {
  return std::visit(std::forward<F>(f), parse_policy(text));
}

}  // namespace psync
