#pragma once
/// @file
/// @brief The rule a server endpoint assigns worker ids by: the lowest id never taken.

#include "psync/core/message.hpp"

#include <cstddef>
#include <set>

namespace psync {

/// @brief The worker ids a server endpoint has seen, and the one it assigns next.
///
/// An id is *taken* once a worker has joined under it (named or assigned) or once
/// the server reserved it (a worker restored from a checkpoint). It stays taken for
/// the endpoint's life: a worker that left or was lost rejoins under its own id, and
/// a worker given an id keeps it for its reconnections. `assign` returns the lowest
/// id that is not taken, and takes it. Not thread-safe: the endpoint locks.
///
/// At most `capacity` ids are remembered (every structure of the server is bounded);
/// past that, `assign` fails and named ids are accepted without being remembered.
class WorkerIds {
 public:
  /// @brief Ids remembered by default: far above `ServerCoreOptions::max_workers`.
  static constexpr std::size_t default_capacity = std::size_t{1} << 16;

  /// @brief An empty set remembering at most `capacity` ids.
  explicit WorkerIds(std::size_t capacity = default_capacity) : capacity_(capacity) {}

  /// @brief A worker joined under `id` (named by itself or reserved by the server): it is taken.
  void take(PeerId id) {
    if (id >= any_worker || taken_.size() >= capacity_) return;
    taken_.insert(id);
  }

  /// @brief True if `id` is taken.
  bool taken(PeerId id) const { return taken_.contains(id); }

  /// @brief Takes and returns the lowest id not taken; `any_worker` if none can be
  /// remembered any more (the join is then refused).
  PeerId assign() {
    if (taken_.size() >= capacity_) return any_worker;
    PeerId id = 0;
    for (const PeerId t : taken_) {  // ascending: the first gap is the lowest free id
      if (t != id) break;
      ++id;
    }
    taken_.insert(id);
    return id;
  }

  /// @brief How many ids are taken.
  std::size_t size() const noexcept { return taken_.size(); }

 private:
  std::size_t capacity_;
  std::set<PeerId> taken_;
};

}  // namespace psync
