#pragma once
/// @file
/// @brief The bodies of psync/core/log.hpp's functions (psync/detail/config.hpp).

#include "psync/core/log.hpp"

#include <iostream>

namespace psync {

PSYNC_DECL void stderr_log_handler(LogLevel, std::string_view line) {
  std::string out;
  out.reserve(line.size() + 1);
  out.append(line);
  out.push_back('\n');
  std::cerr << out << std::flush;
}

namespace detail {

PSYNC_DECL LogState& log_state() {
  static LogState state;
  return state;
}

}  // namespace detail

PSYNC_DECL LogHandler set_log_handler(LogHandler handler) {
  auto next = std::make_shared<const LogHandler>(std::move(handler));
  auto& s = detail::log_state();
  std::lock_guard lock(s.mutex);
  LogHandler previous = *s.handler;
  s.handler = std::move(next);
  return previous;
}

PSYNC_DECL void log(LogLevel level, std::string_view line) noexcept {
  std::shared_ptr<const LogHandler> h;
  {
    auto& s = detail::log_state();
    std::lock_guard lock(s.mutex);
    h = s.handler;
  }
  if (!h || !*h) return;
  try {
    (*h)(level, line);
  } catch (...) {  // a logger must not take the I/O thread down with it
  }
}

}  // namespace psync
