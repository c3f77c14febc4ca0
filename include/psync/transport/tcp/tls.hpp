#pragma once
/// @file
/// @brief Optional TLS for the TCP transport: the options, the OpenSSL contexts, the
/// stream a connection reads and writes (plain socket or `asio::ssl::stream`), and
/// the worker's handshake.
///
/// TLS needs OpenSSL's libssl, an optional dependency: psync's CMake package links
/// `OpenSSL::SSL` and defines `PSYNC_HAVE_TLS` when it is found. Without it, asking
/// for TLS throws `ConfigError` from the endpoint's constructor.

// Boost 1.74's Asio uses std::exchange etc. without including <utility> under C++20.
#include <utility>

#include "psync/core/error.hpp"
#include "psync/core/message.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#ifdef PSYNC_HAVE_TLS
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/ssl/verify_context.hpp>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#endif

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

namespace psync {

/// @brief True when psync was built with OpenSSL's libssl, i.e. TLS is available.
inline constexpr bool tcp_tls_available =
#ifdef PSYNC_HAVE_TLS
    true;
#else
    false;
#endif

/// @brief TLS for a `TcpServer` (`TcpServerOptions::tls`). Both files empty (the
/// default): plain TCP. Otherwise every connection must complete a TLS handshake
/// (TLS 1.2 at least, 1.3 preferred) before anything else, within `join_timeout`.
struct TlsServerOptions {
  std::filesystem::path cert_file;  ///< PEM: the server's certificate, then any intermediates
  std::filesystem::path key_file;   ///< PEM: its private key (unencrypted)

  /// @brief True when TLS was asked for.
  bool enabled() const noexcept { return !cert_file.empty() || !key_file.empty(); }
};

/// @brief TLS for a worker's `Tcp` endpoint (`TcpOptions::tls`). An empty `ca_file`
/// (the default): plain TCP. Otherwise the worker completes a TLS handshake (TLS 1.2
/// at least, 1.3 preferred) before anything else and accepts only a server whose
/// certificate chains to a certificate in `ca_file` and names the server.
struct TlsClientOptions {
  std::filesystem::path ca_file;  ///< PEM: the CA certificate(s) the server's certificate must chain to
  /// @brief The name the server's certificate must carry (a DNS name, or an IP address
  /// matched against its IP subjectAltNames); empty = the host given to `Tcp`.
  /// Also sent as SNI when it is a DNS name.
  std::string server_name;

  /// @brief True when TLS was asked for.
  bool enabled() const noexcept { return !ca_file.empty(); }
};

namespace detail {

namespace asio = boost::asio;
using asio::ip::tcp;

/// Throws the ConfigError of an endpoint asked for TLS in a build without libssl.
inline void require_tls_support(bool wanted) {
  if (wanted && !tcp_tls_available) {
    throw ConfigError("psync was built without OpenSSL's libssl: TLS is unavailable");
  }
}

#ifdef PSYNC_HAVE_TLS

namespace ssl = asio::ssl;

// The oldest error in OpenSSL's queue, as text (and the queue cleared).
inline std::string tls_error_text() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "unknown error";
  char text[256];
  ERR_error_string_n(e, text, sizeof text);
  return text;
}

// A context with the versions and options both sides share.
inline std::shared_ptr<ssl::context> tls_context(ssl::context::method method) {
  auto ctx = std::make_shared<ssl::context>(method);
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                   ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 | ssl::context::single_dh_use);
  if (SSL_CTX_set_min_proto_version(ctx->native_handle(), TLS1_2_VERSION) != 1) {
    throw ConfigError("TLS: cannot require TLS 1.2: " + tls_error_text());
  }
  // Renegotiation is not needed and only gives a peer work to force on us.
  SSL_CTX_set_options(ctx->native_handle(), SSL_OP_NO_RENEGOTIATION);
  return ctx;
}

/// The server's context: its certificate chain and key, checked to match. Throws
/// `ConfigError` naming the file and OpenSSL's reason.
inline std::shared_ptr<ssl::context> make_tls_server_context(const TlsServerOptions& o) {
  if (o.cert_file.empty() || o.key_file.empty()) {
    throw ConfigError("TLS: the server needs both a certificate file and a key file (TlsServerOptions)");
  }
  auto ctx = tls_context(ssl::context::tls_server);
  boost::system::error_code ec;
  ctx->use_certificate_chain_file(o.cert_file.string(), ec);
  if (ec) throw ConfigError("TLS: cannot use the certificate file '" + o.cert_file.string() + "': " + ec.message());
  ctx->use_private_key_file(o.key_file.string(), ssl::context::pem, ec);
  if (ec) throw ConfigError("TLS: cannot use the key file '" + o.key_file.string() + "': " + ec.message());
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
    throw ConfigError("TLS: the key file '" + o.key_file.string() + "' does not match the certificate in '" +
                      o.cert_file.string() + "': " + tls_error_text());
  }
  return ctx;
}

/// The worker's context: trusts only the CA certificates in `ca_file` and verifies
/// the server's. Throws `ConfigError` naming the file and OpenSSL's reason.
inline std::shared_ptr<ssl::context> make_tls_client_context(const TlsClientOptions& o) {
  auto ctx = tls_context(ssl::context::tls_client);
  boost::system::error_code ec;
  ctx->load_verify_file(o.ca_file.string(), ec);
  if (ec) throw ConfigError("TLS: cannot load the CA file '" + o.ca_file.string() + "': " + ec.message());
  ctx->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
  return ctx;
}

// Asio's host-name check, which also records why it failed, so the handshake's error
// names the cause ("hostname mismatch") instead of a bare "certificate verify failed".
class RecordingHostNameVerification {
 public:
  explicit RecordingHostNameVerification(std::string host) : host_(std::move(host)), check_(host_) {}
  bool operator()(bool preverified, ssl::verify_context& ctx) const {
    if (!preverified) return false;  // OpenSSL has recorded the chain's fault
    if (check_(preverified, ctx)) return true;
    boost::system::error_code ec;
    (void)asio::ip::make_address(host_, ec);
    X509_STORE_CTX_set_error(ctx.native_handle(),
                             ec ? X509_V_ERR_HOSTNAME_MISMATCH : X509_V_ERR_IP_ADDRESS_MISMATCH);
    return false;
  }

 private:
  std::string host_;
  ssl::host_name_verification check_;
};

#endif  // PSYNC_HAVE_TLS

/// What a connection reads and writes: a plain TCP socket, or (with `PSYNC_HAVE_TLS`)
/// an `asio::ssl::stream` over one, which also owns its context. An Asio
/// AsyncReadStream/AsyncWriteStream either way, so `asio::async_read`/`async_write`
/// take it. Only one thread may use it at a time (the endpoint's I/O thread).
class TcpStream {
 public:
  using executor_type = tcp::socket::executor_type;

  /// A plain TCP stream.
  explicit TcpStream(tcp::socket socket) : plain_(std::move(socket)) {}

#ifdef PSYNC_HAVE_TLS
  /// A TLS stream over `socket`; no handshake yet.
  TcpStream(tcp::socket socket, std::shared_ptr<ssl::context> context)
      : context_(std::move(context)), tls_(std::make_unique<ssl::stream<tcp::socket>>(std::move(socket), *context_)) {}

  /// The TLS stream (`tls()` must be true).
  ssl::stream<tcp::socket>& tls_stream() noexcept { return *tls_; }
#endif

  TcpStream(TcpStream&&) noexcept = default;
  TcpStream& operator=(TcpStream&&) noexcept = default;

  /// True for a TLS stream.
  bool tls() const noexcept {
#ifdef PSYNC_HAVE_TLS
    return tls_ != nullptr;
#else
    return false;
#endif
  }

  /// The TCP socket underneath (for options, addresses, shutdown and close).
  tcp::socket& lowest_layer() noexcept {
#ifdef PSYNC_HAVE_TLS
    if (tls_) return tls_->next_layer();
#endif
    return *plain_;
  }
  const tcp::socket& lowest_layer() const noexcept {
#ifdef PSYNC_HAVE_TLS
    if (tls_) return tls_->next_layer();
#endif
    return *plain_;
  }

  executor_type get_executor() noexcept { return lowest_layer().get_executor(); }

  template <class MutableBuffers, class Handler>
  void async_read_some(const MutableBuffers& buffers, Handler&& handler) {
#ifdef PSYNC_HAVE_TLS
    if (tls_) {
      tls_->async_read_some(buffers, std::forward<Handler>(handler));
      return;
    }
#endif
    plain_->async_read_some(buffers, std::forward<Handler>(handler));
  }

  template <class ConstBuffers, class Handler>
  void async_write_some(const ConstBuffers& buffers, Handler&& handler) {
#ifdef PSYNC_HAVE_TLS
    if (tls_) {
      tls_->async_write_some(buffers, std::forward<Handler>(handler));
      return;
    }
#endif
    plain_->async_write_some(buffers, std::forward<Handler>(handler));
  }

  /// The server's side of the TLS handshake (`tls()` must be true).
  template <class Handler>
  void async_accept_tls(Handler&& handler) {
#ifdef PSYNC_HAVE_TLS
    tls_->async_handshake(ssl::stream_base::server, std::forward<Handler>(handler));
#else
    (void)handler;
#endif
  }

 private:
#ifdef PSYNC_HAVE_TLS
  std::shared_ptr<ssl::context> context_;  // outlives tls_ (declared first)
  std::unique_ptr<ssl::stream<tcp::socket>> tls_;
#endif
  std::optional<tcp::socket> plain_;
};

/// True for the errors a read meets when the peer closed its side: a plain EOF, or a
/// TLS stream closed without a close_notify (psync closes TLS connections at the TCP
/// level; a truncated frame is still detected by its length).
inline bool is_peer_close(const boost::system::error_code& ec) noexcept {
#ifdef PSYNC_HAVE_TLS
  if (ec == ssl::error::stream_truncated) return true;
#endif
  return ec == asio::error::eof;
}

/// Why a TLS handshake failed, in words: the certificate check's reason when that is
/// what failed, else the error's own message.
inline std::string tls_handshake_error(TcpStream& stream, const boost::system::error_code& ec) {
#ifdef PSYNC_HAVE_TLS
  if (is_peer_close(ec) || ec == asio::error::connection_reset) {
    return "the peer closed the connection during the TLS handshake (" + ec.message() + ")";
  }
  if (stream.tls()) {
    const long verify = SSL_get_verify_result(stream.tls_stream().native_handle());
    if (verify != X509_V_OK) {
      return std::string("certificate verification failed: ") + X509_verify_cert_error_string(verify);
    }
  }
#else
  (void)stream;
#endif
  return ec.message();
}

/// The worker's side: wraps a connected `socket` in TLS per `options` (plain when they
/// are empty) and completes the handshake by `timeout`, running `io` on this thread.
/// `host` is the name the worker connected to (checked when `options.server_name` is
/// empty), `where` its host:port for messages. Throws `TransportError` naming the cause.
inline TcpStream tls_connect(asio::io_context& io, tcp::socket socket, const TlsClientOptions& options,
                             const std::string& host, const std::string& where, std::chrono::milliseconds timeout) {
  if (!options.enabled()) return TcpStream(std::move(socket));
#ifdef PSYNC_HAVE_TLS
  TcpStream stream(std::move(socket), make_tls_client_context(options));
  ssl::stream<tcp::socket>& s = stream.tls_stream();
  const std::string name = options.server_name.empty() ? host : options.server_name;
  boost::system::error_code ec;
  (void)asio::ip::make_address(name, ec);
  // SNI carries DNS names only.
  if (ec && SSL_set_tlsext_host_name(s.native_handle(), name.c_str()) != 1) {
    throw TransportError("tcp worker: TLS: cannot set the server name '" + name + "': " + tls_error_text());
  }
  s.set_verify_callback(RecordingHostNameVerification(name));
  bool done = false;
  s.async_handshake(ssl::stream_base::client, [&](const boost::system::error_code& e) {
    ec = e;
    done = true;
  });
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  io.restart();
  while (!done && io.run_one_until(deadline) != 0) {
  }
  if (!done) {
    boost::system::error_code ignored;
    stream.lowest_layer().close(ignored);
    io.restart();
    while (!done && io.run_one() != 0) {
    }
    throw TransportError("tcp worker: TLS handshake with " + where + " not completed within " +
                         std::to_string(timeout.count()) + " ms (is the server a psync server with TLS on?)");
  }
  if (ec) {
    std::string why = tls_handshake_error(stream, ec);
    if (SSL_get_verify_result(s.native_handle()) != X509_V_OK) {
      why += " (the server's certificate must chain to the CA in '" + options.ca_file.string() + "' and name '" +
             name + "')";
    } else {
      why += " (is the server a psync server with TLS on?)";
    }
    throw TransportError("tcp worker: TLS handshake with " + where + " failed: " + why);
  }
  return stream;
#else
  (void)io;
  (void)host;
  (void)where;
  (void)timeout;
  require_tls_support(true);
  return TcpStream(std::move(socket));
#endif
}

}  // namespace detail

}  // namespace psync
