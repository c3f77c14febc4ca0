#pragma once
/// @file
/// @brief The one place where run time meets compile time: a policy spelled as a
/// string ("bsp", "asp", "ssp:3", "dssp:2:6", "osp:20", "losp:20",
/// "osp-uninstalled:20") becomes a policy value.

#include "psync/core/error.hpp"
#include "psync/detail/config.hpp"
#include "psync/policies/asp.hpp"
#include "psync/policies/bsp.hpp"
#include "psync/policies/dssp.hpp"
#include "psync/policies/osp.hpp"
#include "psync/policies/ssp.hpp"

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
PSYNC_DECL AnyPolicy parse_policy(std::string_view text);

/// @brief Calls `f(policy)` with the policy `text` names, as its own type, so `f`
/// can instantiate `Server<M, decltype(policy)>` and friends.
template <class F>
decltype(auto) with_policy(std::string_view text, F&& f) {
  return std::visit(std::forward<F>(f), parse_policy(text));
}

}  // namespace psync

#if PSYNC_HEADER_ONLY
#include "psync/impl/policy_parse.ipp"
#endif
