#pragma once
/// @file
/// @brief The server's view of its workers: who is live, each one's clock.

#include "psync/core/error.hpp"
#include "psync/core/message.hpp"
#include "psync/detail/config.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace psync {

/// @brief One worker's entry of a `ClockTable`, as a checkpoint stores it.
struct WorkerClock {
  PeerId worker = 0;        ///< the worker's id
  std::uint64_t clock = 0;  ///< pushes the server accepted from it
  bool live = false;        ///< joined and not gone
  /// @brief Field-wise equality.
  friend bool operator==(const WorkerClock&, const WorkerClock&) = default;
};

/// @brief Per-worker push clocks and liveness. Pure bookkeeping: no threads, no I/O.
///
/// A worker's clock counts the pushes the server has accepted from it. The
/// minimum is taken over live workers only, so a worker that leaves (finished,
/// dead or timed out) no longer holds the others back.
class ClockTable {
 public:
  /// @brief Registers `w` as live with clock `clock`; returns false if `w` is already live.
  bool join(PeerId w, std::uint64_t clock);

  /// @brief Marks `w` as gone; returns false if it was not live.
  bool leave(PeerId w);

  /// @brief Counts one accepted push from live worker `w`; returns its new clock.
  std::uint64_t tick(PeerId w);

  /// @brief True if `w` has joined and not left.
  bool live(PeerId w) const;

  /// @brief `w`'s clock (live or not); 0 if unknown.
  std::uint64_t clock(PeerId w) const;

  /// @brief Slowest live clock; with no live worker, the largest clock ever seen
  /// (so nothing still waiting can be held back by workers that are gone).
  std::uint64_t min_clock() const;

  /// @brief Number of live workers.
  std::size_t live_count() const;

  /// @brief Number of workers that ever joined.
  std::size_t known_count() const { return entries_.size(); }

  /// @brief Every worker that ever joined, by ascending id (what a checkpoint stores).
  std::vector<WorkerClock> entries() const;

  /// @brief Largest clock ever held by any worker. Not derivable from `entries()`: a
  /// worker that left and rejoined at the slowest clock lowered its own entry.
  std::uint64_t max_clock_seen() const noexcept { return max_seen_; }

  /// @brief Replaces the table with checkpointed entries; throws `ConfigError` on a
  /// worker listed twice or a clock above `max_clock_seen`.
  void restore(std::span<const WorkerClock> entries, std::uint64_t max_clock_seen);

  /// @brief Calls `f(id, clock, live)` for every worker that ever joined, by ascending id.
  template <class F>
  void for_each(F&& f) const {
    for (const auto& [id, e] : entries_) f(id, e.clock, e.live);
  }

  /// @brief Calls `f(id, clock)` for each live worker.
  template <class F>
  void for_each_live(F&& f) const {
    for (const auto& [id, e] : entries_) {
      if (e.live) f(id, e.clock);
    }
  }

 private:
  struct Entry {
    std::uint64_t clock = 0;
    bool live = false;
  };
  std::map<PeerId, Entry> entries_;
  std::uint64_t max_seen_ = 0;
};

}  // namespace psync

#if PSYNC_HEADER_ONLY
#include "psync/impl/clock_table.ipp"
#endif
