#pragma once
/// @file
/// @brief Optimizers and learning-rate schedules from text, for command lines and
/// configuration files (psync-train's `--optimizer` and `--schedule`):
/// @code
///   psync::optim::Any o = psync::optim::parse_optimizer("nesterov:0.95");
///   psync::optim::Schedule s = psync::optim::parse_schedule("warmup:100,cosine:900", 0.1f);
/// @endcode
/// Grammars (docs/optimizers.md#choosing-at-run-time):
/// - optimizer: `sgd` | `momentum[:MU]` | `nesterov[:MU]` | `adam[:B1[,B2[,EPS]]]`
///   (defaults: MU 0.9; B1 0.9, B2 0.999, EPS 1e-8);
/// - schedule: `constant` (or empty) | `step:GAMMA,EVERY` | `cosine:STEPS[,MIN_LR]` |
///   `warmup:N[,SCHEDULE]` (N warm-up steps, then SCHEDULE, default constant).
/// Bad text is a `ConfigError` that names the text and the accepted forms.

#include "psync/core/error.hpp"
#include "psync/detail/config.hpp"
#include "psync/optim/any.hpp"
#include "psync/optim/optimizer.hpp"
#include "psync/optim/schedule.hpp"

#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace psync::optim {

/// @brief The optimizer forms `parse_optimizer` accepts, for messages and help texts.
inline constexpr const char* optimizer_forms = "sgd, momentum[:MU], nesterov[:MU] or adam[:B1,B2,EPS]";
/// @brief The schedule forms `parse_schedule` accepts, for messages and help texts.
inline constexpr const char* schedule_forms =
    "constant, step:GAMMA,EVERY, cosine:STEPS[,MIN_LR] or warmup:N[,SCHEDULE]";

namespace detail {

/// Splits `text` at commas ("" gives one empty piece).
PSYNC_DECL std::vector<std::string_view> split_commas(std::string_view text);

/// A finite number filling all of `text`, or nullopt-like failure via `ok`.
PSYNC_DECL bool parse_number(std::string_view text, double& out);

/// A non-negative integer filling all of `text`.
PSYNC_DECL bool parse_count(std::string_view text, std::uint64_t& out);

}  // namespace detail

/// @brief The optimizer `text` names: "sgd", "momentum" or "momentum:MU", "nesterov" or
/// "nesterov:MU", "adam" or "adam:B1[,B2[,EPS]]" (defaults 0.9; 0.9, 0.999, 1e-8).
/// Throws `ConfigError` naming `text` and the accepted forms, or the out-of-range value.
PSYNC_DECL Any parse_optimizer(std::string_view text);

/// @brief The learning-rate schedule `text` names, starting at rate `lr`: "constant" or
/// "" (`Constant(lr)`), "step:GAMMA,EVERY" (`StepDecay`), "cosine:STEPS[,MIN_LR]"
/// (`Cosine`), "warmup:N[,SCHEDULE]" (`Warmup` over N steps to SCHEDULE, itself any of
/// these, default constant; e.g. "warmup:100,cosine:900"). Throws `ConfigError` naming
/// `text` and the accepted forms, or the out-of-range value.
PSYNC_DECL Schedule parse_schedule(std::string_view text, float lr);

}  // namespace psync::optim

#if PSYNC_HEADER_ONLY
#include "psync/impl/optim_parse.ipp"
#endif
