#pragma once
/// @file
/// @brief TCP transport over Boost.Asio: `TcpServer` (the server's endpoint, accepts
/// any number of workers) and `Tcp` (a worker's endpoint, one connection to the
/// server). Both model `psync::Transport` and behave like `InProcess`: typed messages
/// in, typed messages out, a lost peer reported as `msg::Leave{disconnected}`.
///
/// Each endpoint runs one `io_context` on its own thread. Frames are read
/// asynchronously with the staged decoder of wire.hpp, straight into float vectors
/// taken from a small per-connection pool; a vector that has been sent goes back to
/// that pool, so a server that answers a push with the same buffer (and a worker
/// that pushes the model it was sent) allocates nothing per message.
///
/// The parts live in transport/tcp/: options.hpp (what the endpoints take),
/// queue.hpp (the bounded receive queue and vector pool), connection.hpp (one
/// socket), io_thread.hpp, server.hpp (`TcpServer`), client.hpp (`Tcp`) and auth.hpp
/// (`Secret`, `read_secret_file`, the join MAC).

#include "psync/transport/tcp/auth.hpp"
#include "psync/transport/tcp/client.hpp"
#include "psync/transport/tcp/options.hpp"
#include "psync/transport/tcp/server.hpp"
