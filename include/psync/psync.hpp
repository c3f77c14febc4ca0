#pragma once
/// @file
/// @brief psync: parameter-server training with BSP, ASP, SSP, DSSP and OSP, chosen by
/// one template argument. Include this one header; it needs Eigen and the standard
/// library only (CMake: `psync::psync`).
///
/// Opt-in headers of the same target, kept out of the umbrella to keep its compile
/// time down:
/// - `psync/models.hpp`: the bundled models (linear, softmax, MLP, CNN) and data sets;
/// - `psync/harness.hpp`: `run_local` / `run_sequential`, a whole cluster in one call;
/// - `psync/sim/simulator.hpp`: virtual time (`psync::sim::simulate`).
///
/// Opt-in, each with its own CMake target and dependency:
/// - `psync/tcp.hpp`: the TCP transport (`psync::tcp`, Boost.Asio);
/// - `psync/data/fashion_mnist.hpp`: IDX and Fashion-MNIST files (`psync::data`, zlib);
/// - `psync/transport/mpi.hpp`: the MPI transport (`psync::mpi`, MPI).

#define PSYNC_VERSION_MAJOR 0
#define PSYNC_VERSION_MINOR 1
#define PSYNC_VERSION_PATCH 0
/// @brief "major.minor.patch" of this psync.
#define PSYNC_VERSION_STRING "0.1.0"

#include "psync/compress/codec.hpp"
#include "psync/concepts.hpp"
#include "psync/core/checkpoint.hpp"
#include "psync/core/clock_table.hpp"
#include "psync/core/error.hpp"
#include "psync/core/message.hpp"
#include "psync/core/metrics.hpp"
#include "psync/core/server.hpp"
#include "psync/core/server_core.hpp"
#include "psync/core/sharding.hpp"
#include "psync/core/trace.hpp"
#include "psync/core/types.hpp"
#include "psync/core/worker.hpp"
#include "psync/core/worker_core.hpp"
#include "psync/optim/any.hpp"
#include "psync/optim/optimizer.hpp"
#include "psync/optim/parse.hpp"
#include "psync/optim/schedule.hpp"
#include "psync/policies/asp.hpp"
#include "psync/policies/bsp.hpp"
#include "psync/policies/dssp.hpp"
#include "psync/policies/osp.hpp"
#include "psync/policies/parse.hpp"
#include "psync/policies/policy.hpp"
#include "psync/policies/rules.hpp"
#include "psync/policies/ssp.hpp"
#include "psync/transport/any.hpp"
#include "psync/transport/emulated.hpp"
#include "psync/transport/in_process.hpp"
#include "psync/transport/sharded.hpp"
#include "psync/transport/wire.hpp"
