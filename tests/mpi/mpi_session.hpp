#pragma once
// MPI for the whole test program: initialised by the first case that asks, finalised at exit.
#include <psync/transport/mpi.hpp>

namespace psync_test {

inline psync::MpiSession& mpi_session() {
  static int argc = 0;
  static char** argv = nullptr;
  static psync::MpiSession s(argc, argv);
  return s;
}

}  // namespace psync_test
