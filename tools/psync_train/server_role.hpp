#pragma once
// psync-train's server role: listen, serve until every worker has left (or a
// signal), evaluate, report.

#include "cli.hpp"

namespace psync_train {

/// Runs the parameter server `c` describes; returns the exit code. Throws on failure.
int run_server(const Config& c);

}  // namespace psync_train
