#pragma once
/// @file
/// @brief The library's one way to say something no caller asked for: a process-wide
/// log hook. Transports report refused peers, lost connections and I/O errors here
/// instead of writing to `std::cerr` themselves.
///
/// By default lines go to `std::cerr`, one write per line. An application routes them
/// elsewhere (its own logger, a file, a test's capture) or silences them:
/// @code
///   psync::set_log_handler([](psync::LogLevel level, std::string_view line) {
///     my_logger.write(psync::log_level_name(level), line);
///   });
///   psync::set_log_handler(nullptr);  // silence
///   psync::set_log_handler(psync::stderr_log_handler);  // back to the default
/// @endcode
/// The handler may be called from any thread, including a transport's I/O thread, and
/// concurrently: keep it short and thread-safe. It must not throw (what it throws is
/// swallowed).

#include "psync/detail/config.hpp"

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>

namespace psync {

/// @brief How much a log line matters.
enum class LogLevel : unsigned char {
  debug,    ///< detail for whoever is debugging psync itself
  info,     ///< an expected event: a peer closed, a connection limit applied
  warning,  ///< a peer was refused or lost; training goes on
  error,    ///< something of ours failed (e.g. accept() out of descriptors)
};

/// @brief "debug", "info", "warning" or "error".
constexpr std::string_view log_level_name(LogLevel level) noexcept {
  switch (level) {
    case LogLevel::debug: return "debug";
    case LogLevel::info: return "info";
    case LogLevel::warning: return "warning";
    case LogLevel::error: return "error";
  }
  return "unknown";
}

/// @brief Receives every log line (without a trailing newline).
using LogHandler = std::function<void(LogLevel, std::string_view)>;

/// @brief The default handler: the line and a newline to `std::cerr`, in one write.
PSYNC_DECL void stderr_log_handler(LogLevel, std::string_view line);

namespace detail {

struct LogState {
  std::mutex mutex;
  std::shared_ptr<const LogHandler> handler = std::make_shared<const LogHandler>(stderr_log_handler);
};

PSYNC_DECL LogState& log_state();

}  // namespace detail

/// @brief Routes every later log line to `handler`; an empty handler silences the
/// library. Returns the previous handler (empty if it was silenced). Thread-safe;
/// a line being written concurrently may still go to the previous handler.
PSYNC_DECL LogHandler set_log_handler(LogHandler handler);

/// @brief Sends one line to the current handler (nothing if silenced).
PSYNC_DECL void log(LogLevel level, std::string_view line) noexcept;

}  // namespace psync

#if PSYNC_HEADER_ONLY
#include "psync/impl/log.ipp"
#endif
