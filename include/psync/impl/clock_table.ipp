#pragma once
/// @file
/// @brief The bodies of psync/core/clock_table.hpp's functions (psync/detail/config.hpp).

#include "psync/core/clock_table.hpp"

namespace psync {

PSYNC_DECL bool ClockTable::join(PeerId w, std::uint64_t clock) {
  auto [it, inserted] = entries_.try_emplace(w, Entry{clock, true});
  if (!inserted) {
    if (it->second.live) return false;
    it->second = Entry{clock, true};
  }
  max_seen_ = std::max(max_seen_, clock);
  return true;
}

PSYNC_DECL bool ClockTable::leave(PeerId w) {
  auto it = entries_.find(w);
  if (it == entries_.end() || !it->second.live) return false;
  it->second.live = false;
  return true;
}

PSYNC_DECL std::uint64_t ClockTable::tick(PeerId w) {
  auto& e = entries_.at(w);
  ++e.clock;
  max_seen_ = std::max(max_seen_, e.clock);
  return e.clock;
}

PSYNC_DECL bool ClockTable::live(PeerId w) const {
  auto it = entries_.find(w);
  return it != entries_.end() && it->second.live;
}

PSYNC_DECL std::uint64_t ClockTable::clock(PeerId w) const {
  auto it = entries_.find(w);
  return it == entries_.end() ? 0 : it->second.clock;
}

PSYNC_DECL std::uint64_t ClockTable::min_clock() const {
  std::uint64_t m = std::numeric_limits<std::uint64_t>::max();
  for (const auto& [id, e] : entries_) {
    if (e.live) m = std::min(m, e.clock);
  }
  return m == std::numeric_limits<std::uint64_t>::max() ? max_seen_ : m;
}

PSYNC_DECL std::size_t ClockTable::live_count() const {
  return static_cast<std::size_t>(std::count_if(entries_.begin(), entries_.end(),
                                                [](const auto& kv) { return kv.second.live; }));
}

PSYNC_DECL std::vector<WorkerClock> ClockTable::entries() const {
  std::vector<WorkerClock> out;
  out.reserve(entries_.size());
  for (const auto& [id, e] : entries_) out.push_back(WorkerClock{id, e.clock, e.live});
  return out;
}

PSYNC_DECL void ClockTable::restore(std::span<const WorkerClock> entries, std::uint64_t max_clock_seen) {
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

}  // namespace psync
