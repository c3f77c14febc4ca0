#pragma once
/// @file
/// @brief The server's TCP endpoint: accepts workers within bounds, admits only joined peers.

// Boost 1.74's Asio uses std::exchange etc. without including <utility> under C++20.
#include <utility>

#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/core/log.hpp"
#include "psync/core/message.hpp"
#include "psync/core/worker_ids.hpp"
#include "psync/transport/tcp/auth.hpp"
#include "psync/transport/tcp/connection.hpp"
#include "psync/transport/tcp/io_thread.hpp"
#include "psync/transport/tcp/options.hpp"
#include "psync/transport/tcp/queue.hpp"
#include "psync/transport/tcp/tls.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <deque>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <variant>
#include <vector>

namespace psync {

namespace detail {

namespace asio = boost::asio;
using asio::ip::tcp;

/// State of a `TcpServer`; the public class is a movable handle to it.
class TcpServerImpl final : public TcpConnectionOwner {
 public:
  explicit TcpServerImpl(TcpServerOptions options)
      : options_(std::move(options)), work_(asio::make_work_guard(io_)), acceptor_(io_), retry_timer_(io_) {
    require_auth_support(options_.secret);
    require_tls_support(options_.tls.enabled());
#ifdef PSYNC_HAVE_TLS
    if (options_.tls.enabled()) tls_ = make_tls_server_context(options_.tls);
#endif
    try {
      const tcp::endpoint ep(asio::ip::make_address(options_.address), options_.port);
      acceptor_.open(ep.protocol());
      acceptor_.set_option(tcp::acceptor::reuse_address(true));
      acceptor_.bind(ep);
      acceptor_.listen();
      port_ = acceptor_.local_endpoint().port();
    } catch (const boost::system::system_error& e) {
      throw TransportError("tcp server: cannot listen on " + options_.address + ":" + std::to_string(options_.port) +
                           ": " + e.code().message());
    }
    accept();
    io_thread_.start("tcp server");
  }

  TcpServerImpl(const TcpServerImpl&) = delete;
  TcpServerImpl& operator=(const TcpServerImpl&) = delete;
  ~TcpServerImpl() { close(); }

  std::uint16_t port() const noexcept { return port_; }

  void send(PeerId to, Message&& m) {
    if (closed_.load()) throw TransportError("tcp server: send on a closed endpoint");
    std::shared_ptr<TcpConnection> c;
    {
      std::lock_guard lock(peers_mutex_);
      if (auto it = peers_.find(to); it != peers_.end()) c = it->second;
    }
    if (!c) throw TransportError("tcp server: no connected worker " + std::to_string(to));
    // An error frame ends the conversation (msg::Error's contract): flush it, then close.
    const bool refusal = std::holds_alternative<msg::Error>(m);
    c->enqueue(std::move(m));
    if (refusal) asio::post(io_, [c] { c->close_after_error(); });
  }

  std::optional<Envelope> receive(Clock::time_point deadline) { return queue_.pop(deadline, "tcp server"); }
  std::optional<Envelope> try_receive() { return queue_.try_pop("tcp server"); }

  void expect_dimension(std::uint64_t d) noexcept { expected_dimension_.store(d); }

  void reserve_worker_ids(const std::vector<PeerId>& ids) {
    std::lock_guard lock(peers_mutex_);
    for (const PeerId id : ids) worker_ids_.take(id);
  }

  void disconnect(PeerId peer) {
    std::shared_ptr<TcpConnection> c;
    {
      std::lock_guard lock(peers_mutex_);
      if (auto it = peers_.find(peer); it != peers_.end()) c = it->second;
    }
    if (c) asio::post(io_, [c] { c->close_after_error(); });
  }

  WireLimits limits() const override {
    WireLimits l = options_.limits;
    if (l.expected_dimension == 0) l.expected_dimension = expected_dimension_.load();
    return wire::fit_dimension(l);
  }

  void close() noexcept {
    if (closed_.exchange(true)) return;
    queue_.close();
    {
      std::lock_guard lock(peers_mutex_);
      peers_.clear();
    }
    try {
      asio::post(io_, [this] {
        boost::system::error_code ignored;
        acceptor_.close(ignored);
        retry_timer_.cancel(ignored);
        const std::vector<std::shared_ptr<TcpConnection>> all(connections_.begin(), connections_.end());
        for (const auto& c : all) c->close_gracefully();
        work_.reset();
      });
    } catch (...) {
      io_.stop();
    }
    io_thread_.join();
  }

  void on_frame(TcpConnection& c, const wire::FrameHeader& h, Message&& m) override {
    if (!c.peer()) {
      auto* join = std::get_if<msg::Join>(&m);
      if (!join) {
        throw wire::FrameError(msg::ErrorCode::not_joined,
                               std::string("first frame must be a join, got a ") + wire::type_name(h.type));
      }
      authenticate(c, *join);  // before anything else about the join is accepted
      if (join->worker != h.sender) {
        throw wire::FrameError(msg::ErrorCode::bad_frame, "join for worker " + std::to_string(join->worker) +
                                                              " sent with sender id " + std::to_string(h.sender));
      }
      if (join->worker == server_peer) {
        throw wire::FrameError(msg::ErrorCode::bad_frame, "worker id " + std::to_string(server_peer) +
                                                              " is reserved for the server");
      }
      wire::detail::check_dimension(join->dimension, limits(), "join declares a model of ");
      {
        std::lock_guard lock(peers_mutex_);
        if (join->worker == any_worker) {
          // The lowest id never taken; the core refuses it if it holds that id already.
          join->worker = worker_ids_.assign();
          join->assigned = true;
          if (join->worker == any_worker) {
            throw wire::FrameError(msg::ErrorCode::limit_exceeded, "no worker id left to assign (" +
                                                                       std::to_string(worker_ids_.size()) +
                                                                       " taken)");
          }
        }
        if (!peers_.emplace(join->worker, c.shared_from_this()).second) {
          throw wire::FrameError(msg::ErrorCode::duplicate_worker,
                                 "worker " + std::to_string(join->worker) + " is already connected");
        }
        worker_ids_.take(join->worker);
      }
      c.set_peer(join->worker);
    } else if (h.sender != *c.peer()) {
      throw wire::FrameError(msg::ErrorCode::bad_frame, "frame with sender id " + std::to_string(h.sender) +
                                                            " on worker " + std::to_string(*c.peer()) +
                                                            "'s connection");
    } else if (const auto* join = std::get_if<msg::Join>(&m); join && join->worker != *c.peer()) {
      throw wire::FrameError(msg::ErrorCode::bad_frame, "join for worker " + std::to_string(join->worker) +
                                                            " on worker " + std::to_string(*c.peer()) +
                                                            "'s connection");
    }
    queue_.push(Envelope{*c.peer(), std::move(m)}, c.credit());
  }

  void on_lost(TcpConnection& c) override {
    if (const auto id = c.peer()) {
      {
        std::lock_guard lock(peers_mutex_);
        if (auto it = peers_.find(*id); it != peers_.end() && it->second.get() == &c) peers_.erase(it);
      }
      queue_.push(Envelope{*id, msg::Leave{msg::LeaveReason::disconnected}});
    }
    connections_.erase(c.shared_from_this());
    connection_count_.store(connections_.size());
  }

  /// Connections open now, joined or not (I/O thread's count; approximate elsewhere).
  std::size_t connection_count() const noexcept { return connection_count_.load(); }
  std::size_t queued_receives() const { return queue_.size(); }

 private:
  // With a secret, the join must carry HMAC-SHA256(secret, nonce || worker || dimension
  // || policy) over the challenge this connection was sent, compared in constant time.
  void authenticate(TcpConnection& c, msg::Join& join) const {
    if (options_.secret.empty()) {
      join.mac.reset();
      return;
    }
    const wire::Challenge* challenge = c.challenge();
    if (!join.mac) {
      throw wire::FrameError(msg::ErrorCode::unauthenticated,
                             "authentication failed: join without a MAC, and this server requires one "
                             "(configure the cluster's shared secret)");
    }
    const bool ok = challenge != nullptr && mac_equal(*join.mac, join_mac(options_.secret, challenge->nonce, join));
    join.mac.reset();
    if (!ok) {
      throw wire::FrameError(msg::ErrorCode::unauthenticated,
                             "authentication failed: the join's MAC does not match (wrong shared secret, or not "
                             "computed over this connection's challenge)");
    }
  }

  void accept() {
    acceptor_.async_accept([this](const boost::system::error_code& ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
      if (ec) {
        // E.g. out of file descriptors: wait instead of spinning.
        psync::log(LogLevel::error, "psync tcp server: accept failed: " + ec.message());
        retry_timer_.expires_after(std::chrono::milliseconds(100));
        retry_timer_.async_wait([this](const boost::system::error_code& e) {
          if (!e) accept();
        });
        return;
      }
      admit(std::move(socket));
      accept();
    });
  }

  // Bounds the connections before any byte is read: past `max_connections` the new
  // socket is closed at once; past `max_pending_connections` the oldest connection
  // that has not joined is closed (a worker joins within milliseconds of connecting,
  // an idle connection is what it evicts).
  void admit(tcp::socket socket) {
    if (connections_.size() >= options_.max_connections) {
      if (!std::exchange(cap_logged_, true)) {
        psync::log(LogLevel::warning, "psync tcp server: " + std::to_string(connections_.size()) +
                                          " connections open (max_connections " +
                                          std::to_string(options_.max_connections) + "): refusing new ones");
      }
      boost::system::error_code ignored;
      socket.close(ignored);
      return;
    }
    cap_logged_ = false;
    std::erase_if(pending_, [](const std::weak_ptr<TcpConnection>& w) {
      auto c = w.lock();
      return !c || c->peer() || c->closing();
    });
    while (!pending_.empty() && pending_.size() >= options_.max_pending_connections) {
      if (auto oldest = pending_.front().lock()) {
        psync::log(LogLevel::info, "psync tcp server: peer " + oldest->remote() + ": closed, not joined while " +
                                       std::to_string(options_.max_pending_connections) +
                                       " newer connections arrived (max_pending_connections)");
        oldest->close_now();
      }
      pending_.pop_front();
    }
    if (options_.max_pending_connections == 0) {
      boost::system::error_code ignored;
      socket.close(ignored);
      return;
    }
    configure_socket(socket, options_.socket_buffer_bytes, options_.keepalive);
    TcpConnectionConfig config;
    config.frame_timeout = options_.frame_timeout;
    config.local_id = server_peer;
    config.side = "tcp server";
    config.require_join = true;
    config.join_timeout = options_.join_timeout;
    config.max_queued_receives = options_.max_queued_receives;
    config.max_queued_sends = options_.max_queued_sends;
    wire::Challenge challenge;
    challenge.auth_required = !options_.secret.empty();
    try {
      challenge.nonce = random_nonce();
    } catch (const std::exception& e) {
      psync::log(LogLevel::error, std::string("psync tcp server: ") + e.what() + "; closing the new connection");
      boost::system::error_code ignored;
      socket.close(ignored);
      return;
    }
#ifdef PSYNC_HAVE_TLS
    config.tls_accept = tls_ != nullptr;
    TcpStream stream = tls_ ? TcpStream(std::move(socket), tls_) : TcpStream(std::move(socket));
#else
    TcpStream stream(std::move(socket));
#endif
    auto c = std::make_shared<TcpConnection>(std::move(stream), *this, config);
    connections_.insert(c);
    connection_count_.store(connections_.size());
    pending_.push_back(c);
    c->start(challenge);  // the challenge is its first frame
  }

  TcpServerOptions options_;
#ifdef PSYNC_HAVE_TLS
  std::shared_ptr<asio::ssl::context> tls_;  // set when options_.tls is
#endif
  asio::io_context io_{1};
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  tcp::acceptor acceptor_;
  asio::steady_timer retry_timer_;
  std::uint16_t port_ = 0;
  EnvelopeQueue queue_;
  std::mutex peers_mutex_;
  std::map<PeerId, std::shared_ptr<TcpConnection>> peers_;  // joined workers (any thread, under peers_mutex_)
  WorkerIds worker_ids_;                                    // ids ever joined or reserved (under peers_mutex_)
  std::set<std::shared_ptr<TcpConnection>> connections_;    // every open connection (I/O thread)
  std::deque<std::weak_ptr<TcpConnection>> pending_;        // not joined yet, oldest first (I/O thread)
  std::atomic<std::size_t> connection_count_{0};
  std::atomic<std::uint64_t> expected_dimension_{0};
  bool cap_logged_ = false;
  std::atomic<bool> closed_{false};
  IoThread io_thread_{io_};  // last: joined before the rest is destroyed
};

}  // namespace detail

/// @brief The server's TCP endpoint: listens, accepts workers, reads frames on its
/// own I/O thread. Each connection is first sent a challenge (a random nonce). Its
/// first frame must be a `msg::Join`, within `join_timeout`, which must prove the
/// `secret` when there is one; its `worker` becomes the connection's peer id (and the
/// join is delivered too, without its MAC). A join for `any_worker` is given the
/// lowest id never joined on this endpoint nor reserved (`WorkerIds`), delivered as a
/// join for that id with `assigned` set; the server's reply tells the worker. An invalid frame gets a `msg::Error` back, a line in the log
/// (`psync::set_log_handler`) and a closed connection; so does a peer that exceeds
/// one of `TcpServerOptions`' bounds. Sending a `msg::Error` to a worker closes its
/// connection after the frame. A joined peer's loss is delivered as
/// `msg::Leave{disconnected}`. Movable, not copyable; destroying or closing it
/// closes every connection after flushing what was queued (bounded by about a second).
class TcpServer {
 public:
  /// @brief Binds and listens; throws `TransportError` if the address cannot be bound,
  /// `ConfigError` for a secret when psync was built without OpenSSL, for TLS when it
  /// was built without libssl, or when the TLS certificate or key cannot be used.
  explicit TcpServer(TcpServerOptions options = {})
      : impl_(std::make_unique<detail::TcpServerImpl>(std::move(options))) {}

  /// @brief Always `server_peer`.
  PeerId self() const noexcept { return server_peer; }
  /// @brief The port actually bound (useful with port 0).
  std::uint16_t port() const { return impl().port(); }

  /// @brief Queues `m` for worker `to` (thread-safe); the frame is written in order
  /// after earlier sends to the same worker. Throws `TransportError` if `to` is not
  /// a connected worker, `ProtocolError` if `m` cannot be encoded.
  void send(PeerId to, Message&& m) { impl().send(to, std::move(m)); }

  /// @brief Next message, or `std::nullopt` once `deadline` has passed; throws
  /// `TransportError` once the endpoint is closed.
  std::optional<Envelope> receive(Clock::time_point deadline) { return impl().receive(deadline); }

  /// @brief Next message if one is waiting.
  std::optional<Envelope> try_receive() { return impl().try_receive(); }

  /// @brief Every parameter vector must now have `d` floats (unless
  /// `TcpServerOptions::limits.expected_dimension` was set): a frame announcing
  /// another count is refused before its payload is read. `Server::run` calls it.
  void expect_dimension(std::uint64_t d) noexcept { impl().expect_dimension(d); }

  /// @brief Worker ids never to assign to a join for `any_worker` (those a server
  /// restored from a checkpoint; `Server::run` calls it). Ids that joined on this
  /// endpoint are never reassigned anyway.
  void reserve_worker_ids(const std::vector<PeerId>& ids) { impl().reserve_worker_ids(ids); }

  /// @brief Closes worker `peer`'s connection after flushing what was queued for it
  /// (thread-safe; nothing if it is not connected). Its `Leave{disconnected}` follows.
  void disconnect(PeerId peer) { impl().disconnect(peer); }

  /// @brief Connections open now, joined or not (for monitoring and tests).
  std::size_t connection_count() const { return impl().connection_count(); }
  /// @brief Messages received and not yet taken by `receive` (for monitoring and tests).
  std::size_t queued_receives() const { return impl().queued_receives(); }

  /// @brief Stops accepting, flushes and closes every connection, joins the I/O
  /// thread; idempotent. Blocked receivers wake and throw `TransportError`.
  void close() noexcept {
    if (impl_) impl_->close();
  }

 private:
  detail::TcpServerImpl& impl() const {
    if (!impl_) throw TransportError("tcp server: use of a moved-from endpoint");
    return *impl_;
  }

  std::unique_ptr<detail::TcpServerImpl> impl_;
};

static_assert(Transport<TcpServer>);

}  // namespace psync
