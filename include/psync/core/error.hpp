#pragma once
/// @file
/// @brief Exception types thrown by psync. Each names what was wrong.

#include <cstdint>
#include <stdexcept>
#include <string>

namespace psync {

/// @brief Base of every exception psync throws.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// @brief A wait ran past its deadline (a peer is too slow, dead, or never came).
class TimeoutError : public Error {
 public:
  using Error::Error;
};

/// @brief A transport failed: connection refused or lost, peer unknown, endpoint closed.
class TransportError : public Error {
 public:
  using Error::Error;
};

/// @brief A peer broke the protocol: bad frame, wrong dimension, duplicate id, bad clock.
class ProtocolError : public Error {
 public:
  using Error::Error;
};

/// @brief The server answered `shutting_down`: it is stopping (and closes the
/// connection). A worker that reconnects may be taken back by a restarted server.
class ServerStoppingError : public ProtocolError {
 public:
  using ProtocolError::ProtocolError;
};

/// @brief The server refused a join with `duplicate_worker`: another connection holds
/// this worker's id. When that connection is a stale one (the worker's previous
/// process, half-open after a crash), it goes once TCP keepalive or the server's peer
/// timeout finds it dead; a worker that reconnects retries its join until then.
class IdInUseError : public ProtocolError {
 public:
  using ProtocolError::ProtocolError;
};

/// @brief A data file is missing, truncated or malformed; the message names the file.
class DataError : public Error {
 public:
  using Error::Error;
};

/// @brief A configuration value is invalid (zero workers, negative learning rate, ...).
class ConfigError : public Error {
 public:
  using Error::Error;
};

}  // namespace psync
