#pragma once
/// @file
/// @brief A worker's TCP endpoint: one connection to the server, connected with retries until a deadline.

// Boost 1.74's Asio uses std::exchange etc. without including <utility> under C++20.
#include <utility>

#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/core/message.hpp"
#include "psync/transport/tcp/auth.hpp"
#include "psync/transport/tcp/connection.hpp"
#include "psync/transport/tcp/io_thread.hpp"
#include "psync/transport/tcp/options.hpp"
#include "psync/transport/tcp/queue.hpp"
#include "psync/transport/tcp/tls.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <variant>

namespace psync {

namespace detail {

namespace asio = boost::asio;
using asio::ip::tcp;

class TcpClientImpl final : public TcpConnectionOwner {
 public:
  TcpClientImpl(const std::string& host, std::uint16_t port, PeerId self, const TcpOptions& options)
      : self_(self), limits_(options.limits), secret_(options.secret) {
    require_auth_support(secret_);
    require_tls_support(options.tls.enabled());
    tls_ = options.tls.enabled();
    tcp::socket socket = connect(host, port, options.connect_timeout);
    configure_socket(socket, options.socket_buffer_bytes, options.keepalive);
    TcpStream stream = tls_connect(io_, std::move(socket), options.tls, host, host + ":" + std::to_string(port),
                                   options.connect_timeout);
    TcpConnectionConfig config;
    config.frame_timeout = options.frame_timeout;
    config.local_id = self;
    config.side = "tcp worker";
    config.max_queued_receives = options.max_queued_receives;
    config.max_queued_sends = options.max_queued_sends;
    conn_ = std::make_shared<TcpConnection>(std::move(stream), *this, config);
    conn_->start();
    work_.emplace(asio::make_work_guard(io_));
    io_.restart();  // the connect loop may have left the context stopped
    io_thread_.start("tcp worker");
    await_challenge(host + ":" + std::to_string(port), options.connect_timeout);
  }

  TcpClientImpl(const TcpClientImpl&) = delete;
  TcpClientImpl& operator=(const TcpClientImpl&) = delete;
  ~TcpClientImpl() { close(); }

  PeerId self() const noexcept { return self_.load(); }

  void send(PeerId to, Message&& m) {
    if (closed_.load()) throw TransportError("tcp worker: send on a closed endpoint");
    if (to != server_peer) {
      throw TransportError("tcp worker: can only send to the server, not to peer " + std::to_string(to));
    }
    if (auto* j = std::get_if<msg::Join>(&m)) prepare_join(*j);
    conn_->enqueue(std::move(m));
  }

  std::optional<Envelope> receive(Clock::time_point deadline) { return queue_.pop(deadline, "tcp worker"); }
  std::optional<Envelope> try_receive() { return queue_.try_pop("tcp worker"); }

  void close() noexcept {
    if (closed_.exchange(true)) return;
    queue_.close();
    try {
      asio::post(io_, [this] {
        conn_->close_gracefully();
        work_.reset();
      });
    } catch (...) {
      io_.stop();
    }
    io_thread_.join();
  }

  WireLimits limits() const override {
    WireLimits l = limits_;
    if (l.expected_dimension == 0) l.expected_dimension = joined_dimension_.load();
    return wire::fit_dimension(l);
  }

  void on_frame(TcpConnection& c, const wire::FrameHeader& h, Message&& m) override {
    if (h.sender != server_peer) {
      throw wire::FrameError(msg::ErrorCode::bad_frame,
                             "frame with sender id " + std::to_string(h.sender) + ", expected the server");
    }
    if (!challenged_.load(std::memory_order_acquire)) {
      std::lock_guard lock(handshake_mutex_);
      if (const auto* e = std::get_if<msg::Error>(&m)) {  // refused at once: say why
        handshake_failure_ = "the server refused the connection: " + std::string(error_code_name(e->code)) + ": " +
                             e->text;
        handshake_refused_ = true;
        handshake_cv_.notify_all();
      } else {
        handshake_failure_ = std::string("the server's first frame was a ") + wire::type_name(h.type) +
                             ", not its challenge (a psync server of another version?)";
        handshake_cv_.notify_all();
        throw wire::FrameError(msg::ErrorCode::bad_frame, handshake_failure_);
      }
    }
    if (self_.load() == any_worker) {
      if (const auto* model = std::get_if<msg::Model>(&m)) {
        // The join reply names the id the server assigned us: our frames carry it from now on.
        if (model->worker >= any_worker) {
          throw wire::FrameError(msg::ErrorCode::bad_frame,
                                 "the join reply assigns worker id " + std::to_string(model->worker));
        }
        c.set_local_id(model->worker);
        self_.store(model->worker);
      }
    }
    queue_.push(Envelope{server_peer, std::move(m)}, c.credit());
  }

  void on_challenge(TcpConnection&, const wire::FrameHeader&, const wire::Challenge& challenge) override {
    std::lock_guard lock(handshake_mutex_);
    if (challenge_) throw wire::FrameError(msg::ErrorCode::bad_frame, "a second challenge from the server");
    challenge_ = challenge;
    challenged_.store(true, std::memory_order_release);
    handshake_cv_.notify_all();
  }

  void on_lost(TcpConnection&) override {
    {
      std::lock_guard lock(handshake_mutex_);
      if (!challenge_ && handshake_failure_.empty()) {
        handshake_failure_ = "the server closed the connection before sending its challenge";
        if (!tls_) handshake_failure_ += " (a TLS server? then configure TcpOptions::tls)";
      }
      handshake_lost_ = true;
      handshake_cv_.notify_all();
    }
    queue_.push(Envelope{server_peer, msg::Leave{msg::LeaveReason::disconnected}});
  }

 private:
  // The worker's own join says how large the server's models are: frames of that
  // size are accepted whatever max_payload_bytes says, and no others carry vectors.
  // With a secret, the join gets its MAC over our challenge. Not inlined: GCC then
  // warns that a join's fields "may be used uninitialized" in every send of another kind.
  [[gnu::noinline]] void prepare_join(msg::Join& j) {
    joined_dimension_.store(j.dimension);
    if (!secret_.empty()) j.mac = join_mac(secret_, nonce_, j);
  }

  // The server's first frame is its challenge: wait for it (bounded), keep its nonce
  // for the join's MAC, and fail here if the server requires a secret we do not have.
  void await_challenge(const std::string& where, std::chrono::milliseconds timeout) {
    std::string failure;
    bool refused = false;
    {
      std::unique_lock lock(handshake_mutex_);
      handshake_cv_.wait_for(lock, timeout,
                             [&] { return challenge_.has_value() || handshake_lost_ || handshake_refused_; });
      if (challenge_ && challenge_->auth_required && secret_.empty()) {
        failure = "the server at " + where +
                  " requires authentication: configure the cluster's shared secret (TcpOptions::secret)";
        refused = true;
      } else if (challenge_) {
        nonce_ = challenge_->nonce;
      } else if (!handshake_failure_.empty()) {
        failure = handshake_failure_ + " (" + where + ")";
        refused = handshake_refused_;
      } else {
        failure = "no challenge from the server at " + where + " within " + std::to_string(timeout.count()) +
                  " ms of connecting (is it a psync server of protocol version " +
                  std::to_string(wire::protocol_version) + (tls_ ? "" : ", without TLS") + "?)";
      }
    }
    if (failure.empty()) return;
    close();
    if (refused) throw ProtocolError("tcp worker: " + failure);
    throw TransportError("tcp worker: " + failure);
  }

  // Runs the context on this thread until `done` or the deadline; false on timeout.
  bool run_until(const bool& done, Clock::time_point deadline) {
    io_.restart();
    while (!done && io_.run_one_until(deadline) != 0) {
    }
    return done;
  }

  // Resolves and connects, retrying refusals until the deadline (the server may start later).
  tcp::socket connect(const std::string& host, std::uint16_t port, std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    const std::string where = host + ":" + std::to_string(port);
    constexpr auto retry_delay = std::chrono::milliseconds(50);
    std::string last = "timed out";
    tcp::resolver resolver(io_);
    for (;;) {
      bool done = false;
      boost::system::error_code ec;
      tcp::resolver::results_type endpoints;
      resolver.async_resolve(host, std::to_string(port),
                             [&](const boost::system::error_code& e, tcp::resolver::results_type r) {
                               ec = e;
                               endpoints = std::move(r);
                               done = true;
                             });
      if (!run_until(done, deadline)) {
        resolver.cancel();
        run_until(done, Clock::time_point::max());  // the handler refers to this frame: let it run
        last = "name resolution timed out";
        break;
      }
      if (!ec) {
        tcp::socket socket(io_);
        done = false;
        asio::async_connect(socket, endpoints, [&](const boost::system::error_code& e, const tcp::endpoint&) {
          ec = e;
          done = true;
        });
        if (!run_until(done, deadline)) {
          boost::system::error_code ignored;
          socket.close(ignored);
          run_until(done, Clock::time_point::max());
          last = "timed out";
          break;
        }
        if (!ec) return socket;
      }
      last = ec.message();
      if (Clock::now() + retry_delay >= deadline) break;
      std::this_thread::sleep_for(retry_delay);
    }
    throw TransportError("tcp worker: cannot connect to " + where + " within " + std::to_string(timeout.count()) +
                         " ms: " + last);
  }

  std::atomic<PeerId> self_;  // any_worker until the join reply assigns an id
  WireLimits limits_;
  Secret secret_;
  bool tls_ = false;
  wire::Nonce nonce_{};  // the server's challenge, set once by the constructor
  std::atomic<std::uint64_t> joined_dimension_{0};
  // The handshake: the I/O thread records the challenge (or why there is none).
  std::mutex handshake_mutex_;
  std::condition_variable handshake_cv_;
  std::optional<wire::Challenge> challenge_;
  std::atomic<bool> challenged_{false};
  std::string handshake_failure_;
  bool handshake_refused_ = false;  // the server sent an Error instead
  bool handshake_lost_ = false;
  asio::io_context io_{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  EnvelopeQueue queue_;
  std::shared_ptr<TcpConnection> conn_;
  std::atomic<bool> closed_{false};
  IoThread io_thread_{io_};  // last: joined before the rest is destroyed
};

}  // namespace detail

/// @brief A worker's TCP endpoint: one connection to the server. Messages may only
/// be sent to `server_peer`; everything received comes from `server_peer`. The
/// worker announces itself by sending its own `msg::Join`, to which the endpoint adds
/// the MAC of `TcpOptions::secret` over the server's challenge when it has a secret.
/// If the connection dies, a `msg::Leave{disconnected}` from `server_peer` is
/// delivered and later sends throw `TransportError`. Movable, not copyable; closing flushes queued messages first.
class Tcp {
 public:
  /// @brief Connects to `host:port` as worker `self` (`any_worker`: the server assigns
  /// the id at join, see `self()`), retrying until
  /// `options.connect_timeout` (the server may start later), then waits (as long again
  /// at most) for the server's challenge; throws `TransportError` naming host:port if
  /// it cannot, `ProtocolError` if the server refuses us or requires a secret we were
  /// not given, `ConfigError` for a secret when psync was built without OpenSSL (for
  /// TLS, without libssl; or an unreadable CA file); with TLS, `TransportError` naming
  /// the cause if the handshake fails or the server's certificate is refused. Name
  /// resolution is bounded by the system resolver's own timeout as well.
  Tcp(const std::string& host, std::uint16_t port, PeerId self, TcpOptions options = {})
      : impl_(std::make_unique<detail::TcpClientImpl>(host, port, self, options)) {}

  /// @brief The worker id given at construction; for `any_worker`, the id the server
  /// assigned once its join reply has been received (`any_worker` until then).
  PeerId self() const { return impl().self(); }

  /// @brief Queues `m` for the server (thread-safe). Throws `TransportError` if `to`
  /// is not `server_peer` or the connection is gone, `ProtocolError` if `m` cannot
  /// be encoded.
  void send(PeerId to, Message&& m) { impl().send(to, std::move(m)); }

  /// @brief Next message, or `std::nullopt` once `deadline` has passed; throws
  /// `TransportError` once the endpoint is closed.
  std::optional<Envelope> receive(Clock::time_point deadline) { return impl().receive(deadline); }

  /// @brief Next message if one is waiting.
  std::optional<Envelope> try_receive() { return impl().try_receive(); }

  /// @brief Flushes queued messages (bounded), closes the connection, joins the I/O
  /// thread; idempotent.
  void close() noexcept {
    if (impl_) impl_->close();
  }

 private:
  detail::TcpClientImpl& impl() const {
    if (!impl_) throw TransportError("tcp worker: use of a moved-from endpoint");
    return *impl_;
  }

  std::unique_ptr<detail::TcpClientImpl> impl_;
};

static_assert(Transport<Tcp>);

}  // namespace psync
