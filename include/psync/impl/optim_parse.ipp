#pragma once
/// @file
/// @brief The bodies of psync/optim/parse.hpp's functions (psync/detail/config.hpp).

#include "psync/optim/parse.hpp"

#include <charconv>
#include <cstdlib>

namespace psync::optim {

namespace detail {

PSYNC_DECL std::vector<std::string_view> split_commas(std::string_view text) {
  std::vector<std::string_view> out;
  while (true) {
    const auto comma = text.find(',');
    out.push_back(text.substr(0, comma));
    if (comma == std::string_view::npos) return out;
    text = text.substr(comma + 1);
  }
}

PSYNC_DECL bool parse_number(std::string_view text, double& out) {
  if (text.empty() || text.front() == ' ' || text.front() == '+') return false;
  const std::string s(text);
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || !std::isfinite(v)) return false;
  out = v;
  return true;
}

PSYNC_DECL bool parse_count(std::string_view text, std::uint64_t& out) {
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return !text.empty() && ec == std::errc{} && end == text.data() + text.size();
}

}  // namespace detail

PSYNC_DECL Any parse_optimizer(std::string_view text) {
  const auto colon = text.find(':');
  const std::string_view kind = text.substr(0, colon);
  const bool has_args = colon != std::string_view::npos;
  const std::string_view args = has_args ? text.substr(colon + 1) : std::string_view{};
  const auto fail = [&](const std::string& why) -> Any {
    throw ConfigError("optimizer '" + std::string(text) + "': " + why + " (expected " + optimizer_forms + ")");
  };
  // The hyper-parameters after the colon: between 1 and `most` numbers.
  const auto numbers = [&](std::size_t most) {
    std::vector<double> v;
    if (!has_args) return v;
    const auto pieces = detail::split_commas(args);
    if (pieces.size() > most) {
      fail(std::string("at most ").append(std::to_string(most)).append(" number(s) after '").append(kind).append(":'"));
    }
    for (const auto piece : pieces) {
      double x = 0;
      if (!detail::parse_number(piece, x)) fail(std::string(1, '\'').append(piece).append("' is not a number"));
      v.push_back(x);
    }
    return v;
  };
  try {
    if (kind == "sgd") {
      if (has_args) return fail("sgd takes no hyper-parameters");
      return Sgd{};
    }
    if (kind == "momentum" || kind == "nesterov") {
      const auto v = numbers(1);
      return Momentum(v.empty() ? 0.9f : static_cast<float>(v[0]), kind == "nesterov");
    }
    if (kind == "adam") {
      const auto v = numbers(3);
      return Adam(v.size() > 0 ? static_cast<float>(v[0]) : 0.9f, v.size() > 1 ? static_cast<float>(v[1]) : 0.999f,
                  v.size() > 2 ? static_cast<float>(v[2]) : 1e-8f);
    }
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    if (what.starts_with("optimizer '")) throw;
    throw ConfigError("optimizer '" + std::string(text) + "': " + what);
  }
  return fail("unknown optimizer");
}

PSYNC_DECL Schedule parse_schedule(std::string_view text, float lr) {
  const auto colon = text.find(':');
  const std::string_view kind = text.substr(0, colon);
  const bool has_args = colon != std::string_view::npos;
  const std::string_view args = has_args ? text.substr(colon + 1) : std::string_view{};
  const auto fail = [&](const std::string& why) -> Schedule {
    throw ConfigError("schedule '" + std::string(text) + "': " + why + " (expected " + schedule_forms + ")");
  };
  const auto number = [&](std::string_view piece, const char* what) {
    double x = 0;
    if (!detail::parse_number(piece, x)) fail(std::string(what) + " '" + std::string(piece) + "' is not a number");
    return x;
  };
  const auto count = [&](std::string_view piece, const char* what) {
    std::uint64_t n = 0;
    if (!detail::parse_count(piece, n)) fail(std::string(what) + " '" + std::string(piece) + "' is not a whole number");
    return n;
  };
  try {
    if (text.empty() || text == "constant") return Constant(lr);
    if (kind == "constant") return fail("constant takes nothing (the rate is the learning rate)");
    if (kind == "step") {
      const auto p = detail::split_commas(args);
      if (!has_args || p.size() != 2) return fail("step takes GAMMA,EVERY");
      return StepDecay(lr, static_cast<float>(number(p[0], "GAMMA")), count(p[1], "EVERY"));
    }
    if (kind == "cosine") {
      const auto p = detail::split_commas(args);
      if (!has_args || p.size() > 2) return fail("cosine takes STEPS[,MIN_LR]");
      return Cosine(lr, count(p[0], "STEPS"), p.size() > 1 ? static_cast<float>(number(p[1], "MIN_LR")) : 0.0f);
    }
    if (kind == "warmup") {
      if (!has_args) return fail("warmup takes N[,SCHEDULE]");
      const auto comma = args.find(',');
      const std::uint64_t n = count(args.substr(0, comma), "N");
      const std::string_view after = comma == std::string_view::npos ? std::string_view{} : args.substr(comma + 1);
      if (comma != std::string_view::npos && after.empty()) return fail("nothing after 'warmup:N,'");
      return Warmup<Schedule>(n, parse_schedule(after, lr));
    }
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    if (what.starts_with("schedule '" + std::string(text) + "'")) throw;
    throw ConfigError("schedule '" + std::string(text) + "': " + what);
  }
  return fail("unknown schedule");
}

}  // namespace psync::optim
