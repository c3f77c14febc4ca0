#pragma once
/// @file
/// @brief The one place where run time meets compile time: a policy spelled as a
/// string ("bsp", "asp", "ssp:3", "osp:20", "losp:20") becomes a policy value.

#include "psync/core/error.hpp"
#include "psync/policies/asp.hpp"
#include "psync/policies/bsp.hpp"
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
using AnyPolicy = std::variant<Bsp, Asp, Ssp<runtime_bound>, Osp<runtime_bound>, Losp<runtime_bound>>;

/// @brief Parses "bsp", "asp", "ssp:S", "osp:S" or "losp:S" (S a non-negative integer,
/// at least 1 for OSP); throws `ConfigError` naming the text and the accepted forms.
inline AnyPolicy parse_policy(std::string_view text) {
  const auto fail = [&](std::string_view why) -> AnyPolicy {
    throw ConfigError("policy '" + std::string(text) + "': " + std::string(why) +
                      " (expected bsp, asp, ssp:S, osp:S or losp:S)");
  };
  if (text == "bsp") return Bsp{};
  if (text == "asp") return Asp{};
  const auto colon = text.find(':');
  if (colon == std::string_view::npos) return fail("unknown policy");
  const auto kind = text.substr(0, colon);
  const auto number = text.substr(colon + 1);
  std::uint32_t value = 0;
  const auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), value);
  if (number.empty() || ec != std::errc{} || end != number.data() + number.size() || value == runtime_bound) {
    return fail("the bound must be a non-negative integer");
  }
  if (kind == "ssp") return Ssp<runtime_bound>{value};
  if (kind != "osp" && kind != "losp") return fail("unknown policy");
  if (value == 0) return fail("OSP's stale threshold must be at least 1");
  if (kind == "osp") return Osp<runtime_bound>{value};
  return Losp<runtime_bound>{value};
}

/// @brief Calls `f(policy)` with the policy `text` names, as its own type, so `f`
/// can instantiate `Server<M, decltype(policy)>` and friends.
template <class F>
decltype(auto) with_policy(std::string_view text, F&& f) {
  return std::visit(std::forward<F>(f), parse_policy(text));
}

}  // namespace psync
