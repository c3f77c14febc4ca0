#pragma once
/// @file
/// @brief The server's view of its workers: who is live, each one's clock.

#include "psync/core/error.hpp"
#include "psync/core/message.hpp"

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
  bool join(PeerId w, std::uint64_t clock) {
    auto [it, inserted] = entries_.try_emplace(w, Entry{clock, true});
    if (!inserted) {
      if (it->second.live) return false;
      it->second = Entry{clock, true};
    }
    max_seen_ = std::max(max_seen_, clock);
    return true;
  }

  /// @brief Marks `w` as gone; returns false if it was not live.
  bool leave(PeerId w) {
    auto it = entries_.find(w);
    if (it == entries_.end() || !it->second.live) return false;
    it->second.live = false;
    return true;
  }

  /// @brief Counts one accepted push from live worker `w`; returns its new clock.
  std::uint64_t tick(PeerId w) {
    auto& e = entries_.at(w);
    ++e.clock;
    max_seen_ = std::max(max_seen_, e.clock);
    return e.clock;
  }

  /// @brief True if `w` has joined and not left.
  bool live(PeerId w) const {
    auto it = entries_.find(w);
    return it != entries_.end() && it->second.live;
  }

  /// @brief `w`'s clock (live or not); 0 if unknown.
  std::uint64_t clock(PeerId w) const {
    auto it = entries_.find(w);
    return it == entries_.end() ? 0 : it->second.clock;
  }

  /// @brief Slowest live clock; with no live worker, the largest clock ever seen
  /// (so nothing still waiting can be held back by workers that are gone).
  std::uint64_t min_clock() const {
    std::uint64_t m = std::numeric_limits<std::uint64_t>::max();
    for (const auto& [id, e] : entries_) {
      if (e.live) m = std::min(m, e.clock);
    }
    return m == std::numeric_limits<std::uint64_t>::max() ? max_seen_ : m;
  }

  /// @brief Number of live workers.
  std::size_t live_count() const {
    return static_cast<std::size_t>(std::count_if(entries_.begin(), entries_.end(),
                                                  [](const auto& kv) { return kv.second.live; }));
  }

  /// @brief Number of workers that ever joined.
  std::size_t known_count() const { return entries_.size(); }

  /// @brief Every worker that ever joined, by ascending id (what a checkpoint stores).
  std::vector<WorkerClock> entries() const {
    std::vector<WorkerClock> out;
    out.reserve(entries_.size());
    for (const auto& [id, e] : entries_) out.push_back(WorkerClock{id, e.clock, e.live});
    return out;
  }

  /// @brief Largest clock ever held by any worker. Not derivable from `entries()`: a
  /// worker that left and rejoined at the slowest clock lowered its own entry.
  std::uint64_t max_clock_seen() const noexcept { return max_seen_; }

  /// @brief Replaces the table with checkpointed entries; throws `ConfigError` on a
  /// worker listed twice or a clock above `max_clock_seen`.
  void restore(std::span<const WorkerClock> entries, std::uint64_t max_clock_seen) {
    std::map<PeerId, Entry> restored;
    for (const WorkerClock& w : entries) {
      if (w.clock > max_clock_seen) {
        throw ConfigError("clock table: worker " + std::to_string(w.worker) + " has clock " + std::to_string(w.clock) +
                          ", above the largest clock seen " + std::to_string(max_clock_seen));
      }
      if (!restored.try_emplace(w.worker, Entry{w.clock, w.live}).second) {
        throw ConfigError("clock table: worker " + std::to_string(w.worker) + " listed twice");
      }
    }
    entries_ = std::move(restored);
    max_seen_ = max_clock_seen;
  }

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
