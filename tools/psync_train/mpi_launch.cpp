// psync-train under mpirun (see mpi_launch.hpp).

#include "mpi_launch.hpp"

#include <psync/core/error.hpp>
#include <psync/transport/mpi.hpp>

#include <cstdlib>
#include <optional>
#include <string>

namespace psync_train {

namespace {

std::optional<psync::MpiSession> g_session;

}  // namespace

void mpi_start(int& argc, char**& argv, Config& c) {
  try {
    g_session.emplace(argc, argv);
  } catch (const psync::ConfigError& e) {
    throw UsageError(std::string("--transport mpi: ") + e.what());
  }
  int rank = 0;
  int size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const std::uint32_t k = c.shard_count;  // --shards, 1 by default
  if (k == 1 && size < 2) {
    throw UsageError("--transport mpi needs at least 2 ranks (rank 0 serves, ranks 1.. are workers), got " +
                     std::to_string(size) + ": run it as mpirun -np 1+WORKERS psync-train --transport mpi ...");
  }
  if (k > 1 && static_cast<std::uint32_t>(size) <= k) {
    throw UsageError("--shards " + std::to_string(k) + " needs more than " + std::to_string(k) + " ranks (ranks 0.." +
                     std::to_string(k - 1) + " serve, the rest are workers), got " + std::to_string(size) +
                     ": run it as mpirun -np " + std::to_string(k) + "+WORKERS psync-train --transport mpi --shards " +
                     std::to_string(k) + " ...");
  }
  const auto workers = static_cast<std::uint32_t>(size) - k;
  const std::string servers = k == 1 ? "the server on rank 0" : std::to_string(k) + " shard servers on ranks 0.." +
                                                                    std::to_string(k - 1);
  if (c.workers_given && c.workers != workers) {
    throw UsageError("--workers " + std::to_string(c.workers) + " but mpirun started " + std::to_string(size) +
                     " ranks, i.e. " + std::to_string(workers) + " worker(s) besides " + servers);
  }
  c.workers = workers;
  const auto r = static_cast<std::uint32_t>(rank);
  c.role = r < k ? "server" : "worker";
  if (r < k && k > 1) c.shard_index = r;
  if (r >= k) c.id = r - k;
  c.server = k == 1 ? "MPI rank 0" : "MPI ranks 0.." + std::to_string(k - 1);
}

void mpi_finish() noexcept { g_session.reset(); }

void mpi_abort(int code) noexcept {
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort does not return; should it, end this process anyway
}

}  // namespace psync_train
