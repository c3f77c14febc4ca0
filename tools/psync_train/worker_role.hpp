#pragma once
// psync-train's worker role: connect, join, train this worker's shard, leave.

#include "cli.hpp"

#include <cstdint>
#include <optional>

namespace psync_train {

/// Runs the worker `c` describes; returns the exit code. Throws on failure.
int run_worker(const Config& c);

/// True once the worker's connection is up, so a transport error says "lost" rather than "cannot reach".
bool worker_connected();

/// This worker's id once known: --id, or the one the server assigned at join (none before).
std::optional<std::uint32_t> worker_id();

}  // namespace psync_train
