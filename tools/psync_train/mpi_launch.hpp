#pragma once
// psync-train under mpirun (--transport mpi): MPI's lifetime and the rank's role.
// Built only with the psync::mpi component (PSYNC_TRAIN_WITH_MPI).

#include "cli.hpp"

namespace psync_train {

/// Initialises MPI (MPI_THREAD_SERIALIZED, checked) and fills in what the rank decides:
/// rank 0 is the server, rank r the worker r - 1; --workers must be the ranks - 1. With
/// --shards K > 1, ranks 0..K-1 serve shards 0..K-1 and rank r >= K is worker r - K.
/// Throws UsageError (too few ranks, --workers disagreeing, too low a thread level).
void mpi_start(int& argc, char**& argv, Config& c);

/// MPI_Finalize after a successful run (every rank ends so, the server last).
void mpi_finish() noexcept;

/// After a failure has been reported: ends the whole job with `code` (MPI_Abort), so the
/// other ranks do not wait for this one in MPI_Finalize.
[[noreturn]] void mpi_abort(int code) noexcept;

}  // namespace psync_train
