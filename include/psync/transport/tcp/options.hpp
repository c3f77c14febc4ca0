#pragma once
/// @file
/// @brief What the TCP endpoints take: addresses, limits, deadlines and bounds.

// Boost 1.74's Asio uses std::exchange etc. without including <utility> under C++20.
#include <utility>

#include "psync/transport/tcp/auth.hpp"
#include "psync/transport/tcp/tls.hpp"
#include "psync/transport/wire.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

namespace psync {

/// @brief TCP keepalive, so a peer whose host died (no FIN, no RST) is noticed even
/// while nothing is being sent to it, e.g. a worker whose read the server holds.
struct TcpKeepalive {
  bool enabled = true;
  std::chrono::seconds idle{10};      ///< silence before the first probe (TCP_KEEPIDLE)
  std::chrono::seconds interval{5};   ///< between probes (TCP_KEEPINTVL)
  int probes = 3;                     ///< unanswered probes before the connection is dropped (TCP_KEEPCNT)
};

/// @brief Configuration of a `TcpServer`.
///
/// Every resource a peer can make the server hold is bounded, and the defaults are
/// safe for a server exposed to peers that misbehave:
/// - before its Join, a connection may send nothing but one Join frame (at most
///   `wire::max_join_payload` bytes), within `join_timeout`; at most
///   `max_pending_connections` connections may be waiting to join (a new one evicts
///   the oldest), and at most `max_connections` may be open at once;
/// - once joined, a peer has at most `max_queued_receives` frames received and not yet
///   taken by `receive` (then its connection is not read: TCP backpressure), and at
///   most `max_queued_sends` frames waiting to be written to it (then it is
///   disconnected: it is not reading);
/// - every float vector is bounded by `limits` (set `limits.expected_dimension`, or let
///   `Server::run` set it through `expect_dimension`).
///
/// With a `secret`, a connection's Join must carry the MAC of that secret over the
/// connection's challenge, or it gets `msg::Error{unauthenticated}` and is closed;
/// the check comes before anything else about the join is looked at.
///
/// With `tls` (a certificate and key), every connection is TLS: its handshake must
/// complete within `join_timeout` (it counts among the pending connections meanwhile).
///
/// So the memory the endpoint holds for peers is at most about
/// `max_connections` × (`max_queued_receives` + `max_queued_sends` + 4) frames of the
/// largest accepted size, and for connections that have not joined, a Join frame each.
/// A peer that exceeds a bound gets a `msg::Error` naming it and is disconnected.
struct TcpServerOptions {
  std::string address = "127.0.0.1";  ///< local address to listen on ("0.0.0.0" for all)
  std::uint16_t port = 0;              ///< port to listen on; 0 = any free port, see `TcpServer::port()`
  WireLimits limits;                   ///< what the server accepts from workers
  /// @brief A frame whose first byte has arrived must be complete within this, so a
  /// peer trickling bytes (slow-loris) cannot hold a connection. Choose it above
  /// the largest frame's transfer time on the slowest link.
  std::chrono::milliseconds frame_timeout{10000};
  /// @brief A new connection must have joined within this (first byte included).
  std::chrono::milliseconds join_timeout{10000};
  /// @brief Most connections open at once; more are accepted and closed at once.
  std::size_t max_connections = 512;
  /// @brief Most connections that have not joined yet; a new one closes the oldest.
  std::size_t max_pending_connections = 64;
  /// @brief Most frames received from one peer and not yet taken by `receive`; past
  /// it the connection is not read until the receiver catches up.
  std::size_t max_queued_receives = 4;
  /// @brief Most frames queued for one peer and not yet written; a peer that lets
  /// more pile up (it does not read) is disconnected with an error.
  std::size_t max_queued_sends = 8;
  /// @brief SO_SNDBUF/SO_RCVBUF for each connection; 0 keeps the kernel's autotuning.
  int socket_buffer_bytes = 0;
  /// @brief Keepalive on every connection.
  TcpKeepalive keepalive;
  /// @brief Shared secret every worker must prove at its join (HMAC-SHA256 over the
  /// connection's random challenge; docs/wire-protocol.md); empty = no authentication,
  /// any join is accepted. Needs psync built with OpenSSL (else the constructor throws
  /// `ConfigError`). See `read_secret_file`.
  Secret secret;
  /// @brief TLS: the server's certificate and key files (PEM); empty = plain TCP.
  /// Needs psync built with OpenSSL's libssl (else the constructor throws `ConfigError`).
  TlsServerOptions tls;
};

/// @brief Configuration of a worker's `Tcp` endpoint.
struct TcpOptions {
  /// @brief Connecting is retried (the server may start later) until this has passed;
  /// then the server's challenge (its first frame) must arrive within this too.
  std::chrono::milliseconds connect_timeout{10000};
  WireLimits limits;  ///< what the worker accepts from the server
  /// @brief A started frame from the server must be complete within this.
  std::chrono::milliseconds frame_timeout{10000};
  /// @brief Most frames received from the server and not yet taken by `receive`; past
  /// it the connection is not read until the worker catches up.
  std::size_t max_queued_receives = 8;
  /// @brief Most frames queued for the server and not yet written; past it `send` throws.
  std::size_t max_queued_sends = 64;
  /// @brief SO_SNDBUF/SO_RCVBUF for the connection; 0 keeps the kernel's autotuning.
  int socket_buffer_bytes = 0;
  /// @brief Keepalive on the connection.
  TcpKeepalive keepalive;
  /// @brief The cluster's shared secret: the endpoint adds its MAC over the server's
  /// challenge to the worker's Join (sent even if the server does not require it).
  /// Empty: no MAC, and a server that requires one is refused at construction. Needs
  /// psync built with OpenSSL (else the constructor throws `ConfigError`).
  Secret secret;
  /// @brief TLS: the CA file (PEM) the server's certificate must chain to, and the
  /// name it must carry (default: the host connected to); empty = plain TCP. The
  /// handshake must complete within `connect_timeout`. Needs psync built with
  /// OpenSSL's libssl (else the constructor throws `ConfigError`).
  TlsClientOptions tls;
};

namespace detail {

/// How long a closing connection keeps reading (and discarding) after its last
/// write, so the peer gets our final frame instead of a reset; also the bound on
/// flushing when an endpoint closes.
inline constexpr std::chrono::milliseconds tcp_linger_timeout{1000};

}  // namespace detail

}  // namespace psync
