#pragma once
/// @file
/// @brief The few names every layer shares: peer ids and the deadline clock. The
/// standard library only, so the policy headers that need them stay light.

#include <chrono>
#include <cstdint>
#include <limits>

namespace psync {

/// @brief Clock used for every deadline in psync.
using Clock = std::chrono::steady_clock;

/// @brief Identifies a participant: workers are 0..N-1, the server is `server_peer`.
using PeerId = std::uint32_t;

/// @brief The server's peer id on every transport.
inline constexpr PeerId server_peer = std::numeric_limits<PeerId>::max();

/// @brief A worker without an id of its own: a `Join` naming it asks the server to
/// assign one (the lowest id it has never admitted or reserved); the join reply's
/// `msg::Model::worker` says which. Only the TCP transport assigns ids
/// (docs/wire-protocol.md); a core that is handed such a join refuses it.
inline constexpr PeerId any_worker = server_peer - 1;

}  // namespace psync
