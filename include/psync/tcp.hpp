#pragma once
/// @file
/// @brief The TCP transport (`psync::TcpServer`, `psync::Tcp`; transport/tcp.hpp),
/// opt-in: it needs Boost.Asio (and OpenSSL for authentication and TLS when psync was
/// built with them). CMake: link `psync::tcp` (`find_package(psync COMPONENTS tcp)`).
/// `psync/psync.hpp` leaves it out so that a program training in one process needs
/// only Eigen and the standard library.

#include "psync/psync.hpp"
#include "psync/transport/tcp.hpp"
