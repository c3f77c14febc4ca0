// psync-train: one process of a psync cluster over TCP, either the parameter
// server or one worker. Start one server and N workers (on one machine or many,
// see scripts/launch_local.sh and docs/processes.md); every flag also has a
// PSYNC_* environment variable, and flags win.
//
// Exit codes: 0 success, 1 runtime failure (lost server, timeout, refused join,
// bad data file, interrupted), 2 usage error (the message says which flag).
//
// The program's parts: cli (flags and environment), server_role, worker_role,
// report (the --metrics JSON) and task (data and models).

#include "cli.hpp"
#include "report.hpp"
#include "server_role.hpp"
#include "worker_role.hpp"

#include <psync/core/error.hpp>

#ifdef PSYNC_TRAIN_WITH_MPI
#include "mpi_launch.hpp"
#endif

#include <csignal>
#include <exception>
#include <iostream>
#include <optional>
#include <string>

using namespace psync_train;

namespace {

int run(const Config& c) { return c.role == "server" ? run_server(c) : run_worker(c); }

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);  // a lost peer is an error to report, not a reason to die silently
  std::optional<Config> config;
  try {
    config = parse(argc, argv);
    if (!config) {
      print_help(std::cout);
      return exit_ok;
    }
    check_writable("--metrics", config->metrics);
    check_writable("--trace", config->trace);
#ifdef PSYNC_TRAIN_WITH_MPI
    if (config->transport == "mpi") mpi_start(argc, argv, *config);
#endif
  } catch (const UsageError& e) {
    std::cerr << program << ": usage error: " << e.what() << std::endl;
#ifdef PSYNC_TRAIN_WITH_MPI
    mpi_finish();  // every rank sees the same flags, so every rank ends here and finalises
#endif
    return exit_usage;
  } catch (const std::exception& e) {
    std::cerr << program << ": usage error: " << e.what() << std::endl;
    return exit_usage;
  }
  const Config& c = *config;
  std::string error;
  int code = exit_failure;
  try {
    const int ok = run(c);
#ifdef PSYNC_TRAIN_WITH_MPI
    if (c.transport == "mpi") mpi_finish();
#endif
    return ok;
  } catch (const psync::ConfigError& e) {
    error = e.what();
    code = exit_usage;
  } catch (const psync::TransportError& e) {
    error = c.role != "worker"    ? std::string(e.what())
            : worker_connected() ? "lost the server at " + c.server + ": " + e.what()
                                 : "cannot reach the server at " + c.server + ": " + e.what();
  } catch (const psync::TimeoutError& e) {
    error = c.role == "worker" ? std::string("no answer from the server at ") + c.server + ": " + e.what()
                               : e.what();
  } catch (const psync::ProtocolError& e) {
    error = c.role == "worker" ? std::string("the server at ") + c.server + " refused us: " + e.what() : e.what();
  } catch (const std::exception& e) {
    error = e.what();
  }
  // A worker without --id is named by the id the server assigned, once it has one.
  const auto id = worker_id();
  const std::string who = c.role == "server" ? std::string("server on ") + c.server
                          : id               ? "worker " + std::to_string(*id) + " (server " + c.server + ")"
                                             : "worker without an id yet (server " + c.server + ")";
  std::cerr << program << ": " << who << ": " << (code == exit_usage ? "configuration error: " : "error: ") << error
            << std::endl;
  if (c.role == "worker") {
    try {
      write_worker_metrics(c, worker_id(), nullptr, error);
    } catch (const std::exception& e) {
      std::cerr << program << ": " << e.what() << std::endl;
    }
  }
#ifdef PSYNC_TRAIN_WITH_MPI
  if (c.transport == "mpi") mpi_abort(code);  // the other ranks must not wait for this one
#endif
  return code;
}
