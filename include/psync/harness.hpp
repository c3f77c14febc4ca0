#pragma once
/// @file
/// @brief The in-process harness, opt-in beside the umbrella `psync/psync.hpp` (same
/// CMake target, `psync::psync`): `run_local` runs a whole cluster (one server, N
/// workers, any policy, optionally over an emulated network) in one process and
/// reports what happened; `run_sequential` is the single-threaded SGD reference
/// with the same report. Either takes any `psync::Model`; the `data::Dataset`
/// overloads are there too. `replay_rounds` replays a run's recorded order of
/// events (which step boundary took which reply) through the cores, with no clock.

#include "psync/harness/local_cluster.hpp"
#include "psync/harness/replay.hpp"
