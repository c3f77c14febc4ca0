#pragma once
/// @file
/// @brief Timeline recorder: spans and instants on named tracks, written as Chrome
/// trace-event JSON (opens in Perfetto, ui.perfetto.dev, or chrome://tracing).

#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/detail/config.hpp"
#include "psync/detail/json.hpp"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <ostream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace psync {

/// @brief A thread-safe timeline of spans and instants, shared by a server and its
/// workers in one process (or one per process).
///
/// A track is one row in the viewer (`tid` in the JSON; all tracks share `pid` 1).
/// Event names are interned once, so a name need not outlive the call and
/// recording an event allocates nothing beyond the event table's growth.
/// Timestamps are relative to the trace's creation, in microseconds.
class Trace {
 public:
  /// @brief An empty trace whose time origin is now; room for `reserve_events`
  /// events is allocated up front so recording does not reallocate mid-run.
  explicit Trace(std::size_t reserve_events = std::size_t{1} << 16);
  Trace(const Trace&) = delete;
  Trace& operator=(const Trace&) = delete;

  /// @brief The instant all timestamps are measured from.
  Clock::time_point origin() const noexcept { return origin_; }

  /// @brief Gives `track` a display name (e.g. "worker 3", "server"); a later call renames it.
  void name_track(std::uint32_t track, std::string name);

  /// @brief Records that `name` (e.g. "compute", "push", "pull", "wait", "apply") ran
  /// on `track` from `begin` to `end`; an `end` before `begin` records zero length.
  void span(std::uint32_t track, std::string_view name, Clock::time_point begin, Clock::time_point end);

  /// @brief Records a point event `name` on `track` at `at`.
  void instant(std::uint32_t track, std::string_view name, Clock::time_point at);

  /// @brief Number of spans and instants recorded (track names not counted).
  std::size_t size() const;

  /// @brief Writes the trace as `{"traceEvents":[...],"displayTimeUnit":"ms"}`: a
  /// `thread_name` and `thread_sort_index` metadata event per named track, then the
  /// events in recording order. Throws `Error` if the stream fails.
  void write_json(std::ostream& out) const;

  /// @brief Writes the JSON to `path` (replacing it); throws `Error` naming the path
  /// if it cannot be opened or written.
  void write_json(const std::filesystem::path& path) const;

 private:
  enum class Kind : std::uint8_t { span, instant };

  struct Event {
    std::int64_t begin_ns;
    std::int64_t dur_ns;
    std::uint32_t track;
    std::uint32_t name;
    Kind kind;
  };

  std::int64_t since_origin(Clock::time_point t) const noexcept;

  /// Looks the name up without allocating; only a name never seen before is copied. Lock held.
  std::uint32_t intern(std::string_view name);

  template <class I>
  static void append_int(std::string& s, I v) {
    char buf[24];
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    s.append(buf, r.ptr);
  }

  /// Microseconds with three decimals, formatted from integers so the output does
  /// not depend on the stream's locale or floating-point settings.
  static void append_us(std::string& s, std::int64_t ns);

  mutable std::mutex mutex_;
  Clock::time_point origin_;
  std::vector<Event> events_;
  std::vector<std::string> names_;                               // by id
  std::map<std::string, std::uint32_t, std::less<>> name_ids_;  // transparent: lookup by string_view
  std::map<std::uint32_t, std::string> track_names_;
};

/// @brief Records a span on `trace` from construction to destruction; with a null
/// trace it does nothing (not even read the clock).
///
/// `name` is read at destruction, so it must outlive the scope (a literal does).
class ScopedSpan {
 public:
  /// @brief Starts the span now if `trace` is not null.
  ScopedSpan(Trace* trace, std::uint32_t track, std::string_view name) noexcept
      : trace_(trace), track_(track), name_(name) {
    if (trace_) begin_ = Clock::now();
  }
  ScopedSpan(const ScopedSpan&) = delete;
  ScopedSpan& operator=(const ScopedSpan&) = delete;

  /// @brief Ends the span and records it; a failure to record (out of memory) is swallowed.
  ~ScopedSpan() {
    if (!trace_) return;
    try {
      trace_->span(track_, name_, begin_, Clock::now());
    } catch (...) {
      // A lost trace event must not turn into std::terminate in a destructor.
    }
  }

 private:
  Trace* trace_;
  std::uint32_t track_;
  std::string_view name_;
  Clock::time_point begin_{};
};

}  // namespace psync

#if PSYNC_HEADER_ONLY
#include "psync/impl/trace.ipp"
#endif
