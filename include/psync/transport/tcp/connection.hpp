#pragma once
/// @file
/// @brief One TCP connection: a staged frame reader with backpressure, a bounded write queue, deadlines and a lingering close.

// Boost 1.74's Asio uses std::exchange etc. without including <utility> under C++20.
#include <utility>

#include "psync/core/error.hpp"
#include "psync/core/log.hpp"
#include "psync/core/message.hpp"
#include "psync/transport/tcp/options.hpp"
#include "psync/transport/tcp/queue.hpp"
#include "psync/transport/tcp/tls.hpp"
#include "psync/transport/wire.hpp"

#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <Eigen/Core>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

namespace psync {

namespace detail {

namespace asio = boost::asio;
using asio::ip::tcp;

/// Most frames gathered into one write (two buffers each, Asio writes at most 64 at once).
inline constexpr std::size_t tcp_max_batch = 32;

/// Completion condition for whole-buffer reads and writes. Asio's `transfer_all`
/// caps each system call at 64 KiB, which costs 64 handler round trips per 4 MB
/// vector; this one lets a call move as much as the socket will.
struct TransferAllUnbounded {
  std::size_t operator()(const boost::system::error_code& ec, std::size_t) const noexcept {
    return ec ? 0 : std::size_t{1} << 30;
  }
};

inline void configure_socket(tcp::socket& s, int buffer_bytes, const TcpKeepalive& keepalive) {
  boost::system::error_code ignored;
  // Small frames (joins, pulls, acks) must not wait for Nagle's algorithm.
  s.set_option(tcp::no_delay(true), ignored);
  if (buffer_bytes > 0) {
    s.set_option(asio::socket_base::send_buffer_size(buffer_bytes), ignored);
    s.set_option(asio::socket_base::receive_buffer_size(buffer_bytes), ignored);
  }
  if (keepalive.enabled) {
    s.set_option(asio::socket_base::keep_alive(true), ignored);
    const int fd = s.native_handle();
    const int idle = static_cast<int>(keepalive.idle.count());
    const int interval = static_cast<int>(keepalive.interval.count());
    const int probes = keepalive.probes;
    // Best effort: a platform without these options keeps its own (longer) defaults.
    (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
    (void)::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes);
  }
}

inline std::string endpoint_name(const tcp::socket& s) {
  boost::system::error_code ec;
  const tcp::endpoint ep = s.remote_endpoint(ec);
  if (ec) return "unknown peer";
  return ep.address().to_string() + ":" + std::to_string(ep.port());
}

class TcpConnection;

/// What a connection reports to the endpoint that owns it; called on the I/O thread.
class TcpConnectionOwner {
 public:
  /// A complete, valid frame. Throwing `wire::FrameError` rejects it: the peer is told
  /// why and the connection closes.
  virtual void on_frame(TcpConnection& c, const wire::FrameHeader& h, Message&& m) = 0;
  /// The connection is gone (closed, lost or rejected); called exactly once.
  virtual void on_lost(TcpConnection& c) = 0;
  /// What frames from this endpoint's peers may hold (read at every frame header, so
  /// an endpoint may tighten it once it learns the model's dimension).
  virtual WireLimits limits() const = 0;
  /// A valid `Challenge` frame (transport level, not a message). Only a worker's
  /// endpoint expects one; by default it is a protocol violation.
  virtual void on_challenge(TcpConnection&, const wire::FrameHeader&, const wire::Challenge&) {
    throw wire::FrameError(msg::ErrorCode::bad_frame, "unexpected challenge frame");
  }

 protected:
  ~TcpConnectionOwner() = default;
};

/// Settings a connection needs from its endpoint.
struct TcpConnectionConfig {
  std::chrono::milliseconds frame_timeout{10000};
  PeerId local_id = 0;        ///< sender id written into every outgoing frame
  const char* side = "tcp";  ///< prefix of log lines and errors
  /// The peer must join first: before `set_peer`, only one Join frame (at most
  /// `wire::max_join_payload` bytes) is read, within `join_timeout` of `start`. That
  /// Join is decoded without the dimension check: the owner authenticates it first,
  /// then checks its dimension itself.
  bool require_join = false;
  std::chrono::milliseconds join_timeout{10000};
  std::size_t max_queued_receives = 4;  ///< frames delivered and not taken before reading pauses
  std::size_t max_queued_sends = 8;     ///< frames queued for the peer before it is failed
  /// The stream is TLS and this side accepts: `start` runs the server's handshake
  /// first (bounded by the join deadline), then sends the challenge and reads.
  bool tls_accept = false;
};

/// One socket (plain or TLS, see `TcpStream`): an asynchronous frame reader, a write queue that never interleaves
/// frames, a frame timer and a lingering close. `enqueue` may be called from any
/// thread: when nothing is queued or being written it writes the frame itself
/// (non-blocking), which saves a wake-up of the I/O thread per message, and hands
/// whatever did not fit to the I/O thread (on a plain socket; a TLS stream is only
/// written by the I/O thread). Everything else runs on the I/O thread.
///
/// Both directions are bounded. Reading pauses while `max_queued_receives` frames
/// of this connection wait in the receive queue (each queued frame holds a
/// `credit()`, released when a receiver takes it), so a fast sender meets TCP
/// backpressure instead of growing the queue. A peer that lets `max_queued_sends`
/// frames pile up for it is failed: `enqueue` throws and the peer gets an error.
class TcpConnection final : public std::enable_shared_from_this<TcpConnection>, public ReceiveCredit {
 public:
  TcpConnection(TcpStream stream, TcpConnectionOwner& owner, TcpConnectionConfig config)
      : socket_(std::move(stream)),
        executor_(socket_.get_executor()),
        frame_timer_(executor_),
        linger_timer_(executor_),
        join_timer_(executor_),
        owner_(owner),
        config_(config),
        remote_(endpoint_name(socket_.lowest_layer())),
        fd_(socket_.lowest_layer().native_handle()),
        direct_writes_(!socket_.tls()) {
    inflight_.reserve(tcp_max_batch);
    encoded_.reserve(tcp_max_batch);
    buffers_.reserve(2 * tcp_max_batch);
  }

  TcpConnection(const TcpConnection&) = delete;
  TcpConnection& operator=(const TcpConnection&) = delete;

  /// The peer's address:port, for logs.
  const std::string& remote() const noexcept { return remote_; }
  /// True once the connection is closing or closed (I/O thread).
  bool closing() const noexcept { return draining_ || closed_; }
  /// The worker id this connection joined as, if it has.
  std::optional<PeerId> peer() const noexcept { return peer_; }
  /// Records the id the peer joined as (I/O thread); from now on it may send any frame.
  void set_peer(PeerId id) noexcept {
    peer_ = id;
    boost::system::error_code ignored;
    join_timer_.cancel(ignored);
  }

  /// The sender id of frames encoded from now on (a worker that was assigned its id;
  /// any thread, before it sends anything under the new id).
  void set_local_id(PeerId id) noexcept { local_id_.store(id, std::memory_order_relaxed); }

  /// The challenge this connection sent its peer first, if it sent one.
  const wire::Challenge* challenge() const noexcept { return challenge_ ? &*challenge_ : nullptr; }

  /// Begins reading frames (I/O thread); with `require_join`, starts the join deadline.
  /// A `challenge` is written before any other frame. With `tls_accept`, the TLS
  /// handshake comes first, within the join deadline.
  void start(std::optional<wire::Challenge> challenge = std::nullopt) {
    if (config_.require_join) {
      join_timer_.expires_after(config_.join_timeout);
      join_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
        if (ec || self->peer_ || self->closed_) return;
        const std::string ms = std::to_string(self->config_.join_timeout.count());
        if (self->handshaking_) {
          // Nothing can be sent before the handshake: just close.
          self->log("TLS handshake not completed within " + ms + " ms of connecting (a plain-TCP client?); closing");
          return self->close_now();
        }
        self->fail(msg::ErrorCode::not_joined, "no join within " + ms + " ms of connecting");
        if (!self->read_pending_) self->drain();
      });
    }
    if (config_.tls_accept) {
      handshaking_ = true;
      socket_.async_accept_tls([self = shared_from_this(), challenge](const boost::system::error_code& ec) {
        self->handshaking_ = false;
        if (self->closed_) return;
        if (ec) {
          self->log("TLS handshake failed: " + tls_handshake_error(self->socket_, ec) + "; closing");
          return self->close_now();
        }
        self->begin(challenge);
      });
      return;
    }
    begin(challenge);
  }

  /// A hold on this connection's receive bound, for one frame put in the receive
  /// queue (I/O thread); the queue releases it when a receiver takes the frame.
  std::shared_ptr<ReceiveCredit> credit() {
    undelivered_.fetch_add(1);
    return std::static_pointer_cast<ReceiveCredit>(shared_from_this());
  }

  /// A receiver took one of this connection's frames (any thread).
  void release() noexcept override {
    const std::size_t left = undelivered_.fetch_sub(1) - 1;
    if (left < config_.max_queued_receives && paused_.exchange(false)) {
      try {
        asio::post(executor_, [self = shared_from_this()] { self->read_frame(); });
      } catch (...) {  // out of memory: the connection stays paused until its deadline closes it
      }
    }
  }

  /// Queues `m` for sending (any thread). Throws `ProtocolError` if `m` cannot be
  /// encoded and `TransportError` if the connection is closing or closed.
  void enqueue(Message&& m) {
    (void)wire::encode(local_id_.load(std::memory_order_relaxed), m);  // reject an unencodable message in the caller's thread
    std::unique_lock lock(out_mutex_);
    if (!accepting_) throw TransportError(std::string(config_.side) + ": connection to " + remote_ + " is closed");
    if (const std::size_t queued = outbox_.size() + inflight_count_ + (caller_writing_ ? 1 : 0);
        queued >= config_.max_queued_sends) {
      accepting_ = false;
      lock.unlock();
      const std::string reason = "peer does not read: " + std::to_string(queued) +
                                 " frames queued for it (max_queued_sends " +
                                 std::to_string(config_.max_queued_sends) + ")";
      asio::post(executor_, [self = shared_from_this(), reason] {
        self->fail(msg::ErrorCode::limit_exceeded, reason);
        if (!self->read_pending_) self->drain();
      });
      throw TransportError(std::string(config_.side) + ": " + reason + " (" + remote_ + ")");
    }
    if (direct_writes_ && outbox_.empty() && !io_writing_ && !caller_writing_) {
      caller_writing_ = true;  // the socket is ours until we hand it back
      lock.unlock();
      write_directly(std::move(m));
      return;
    }
    outbox_.push_back(std::move(m));
    const bool kick = !std::exchange(kick_posted_, true);
    lock.unlock();
    if (kick) asio::post(executor_, [self = shared_from_this()] { self->kick(); });
  }

  /// Rejects the peer: logs `reason`, reports the loss, sends `msg::Error{code, reason}`
  /// and closes after it (I/O thread).
  void fail(msg::ErrorCode code, const std::string& reason) {
    if (draining_ || closed_) return;
    if (handshaking_) {  // no frame can go out before the TLS handshake
      log(reason + "; closing");
      return close_now();
    }
    log(reason + "; closing");
    stop_accepting();
    report_lost();
    {
      std::lock_guard lock(out_mutex_);
      outbox_.push_back(msg::Error{code, reason});
    }
    begin_close();
  }

  /// Stops taking messages, flushes those queued, then closes (I/O thread).
  void close_gracefully() {
    if (draining_ || closed_) return;
    if (handshaking_) return close_now();
    stop_accepting();
    begin_close();
  }

  /// After an error frame of the endpoint's own was queued: the peer is gone for the
  /// endpoint at once (reported lost), the frame is flushed, then the socket closes (I/O thread).
  void close_after_error() {
    if (draining_ || closed_) return;
    if (handshaking_) return close_now();
    stop_accepting();
    report_lost();
    begin_close();
    if (!read_pending_) drain();
  }

  /// Closes the socket now; pending writes are dropped (I/O thread).
  void close_now() {
    if (closed_) return;
    closed_ = true;
    bool defer = false;
    {
      std::lock_guard lock(out_mutex_);
      accepting_ = false;
      outbox_.clear();
      // A caller is inside sendmsg on our descriptor: closing it now could let the
      // number be reused under that call. Shut it down (which fails the write) and
      // let the caller hand the close back to this thread.
      defer = close_deferred_ = caller_writing_;
    }
    boost::system::error_code ignored;
    frame_timer_.cancel(ignored);
    linger_timer_.cancel(ignored);
    join_timer_.cancel(ignored);
    socket_.lowest_layer().shutdown(tcp::socket::shutdown_both, ignored);
    if (!defer) socket_.lowest_layer().close(ignored);
    report_lost();
  }

 private:
  // After the handshake, if any: the challenge goes out first, then frames are read.
  void begin(const std::optional<wire::Challenge>& challenge) {
    if (challenge) {
      challenge_ = *challenge;
      write_challenge();
    }
    read_frame();
  }

  // ---- reading: header (first bytes arm the frame timer), fixed fields, body ----

  void read_frame() {
    if (closed_ || read_pending_) return;
    if (draining_) return drain();
    read_pending_ = true;
    socket_.async_read_some(asio::buffer(header_buf_),
                            [self = shared_from_this()](const boost::system::error_code& ec, std::size_t n) {
                              self->on_first_bytes(ec, n);
                            });
  }

  void on_first_bytes(const boost::system::error_code& ec, std::size_t n) {
    read_pending_ = false;
    if (ec) return on_read_error(ec);
    if (draining_) return drain();
    header_have_ = n;
    arm_frame_timer();
    if (n == wire::header_size) return on_header({}, 0);
    read_pending_ = true;
    asio::async_read(socket_, asio::buffer(header_buf_.data() + n, wire::header_size - n),
                     [self = shared_from_this()](const boost::system::error_code& e, std::size_t m) {
                       self->on_header(e, m);
                     });
  }

  void on_header(const boost::system::error_code& ec, std::size_t n) {
    read_pending_ = false;
    header_have_ += n;
    if (ec) return on_read_error(ec);
    if (draining_) return drain();
    limits_ = owner_.limits();
    // The owner checks a first join's dimension once it has authenticated the join.
    if (config_.require_join && !peer_) limits_.expected_dimension = 0;
    try {
      header_ = wire::decode_header(header_buf_, limits_);
    } catch (const wire::FrameError& e) {
      return reject(e.code(), e.what());
    }
    if (config_.require_join && !peer_) {
      // Nothing but a Join is read from a peer that has not joined: no allocation
      // larger than a Join frame for a stranger.
      if (header_.type != wire::MessageType::join) {
        return reject(msg::ErrorCode::not_joined,
                      std::string("first frame must be a join, got a ") + wire::type_name(header_.type));
      }
      if (header_.payload_length > wire::max_join_payload) {
        return reject(msg::ErrorCode::bad_frame, "join payload of " + std::to_string(header_.payload_length) +
                                                     " bytes, above the join limit " +
                                                     std::to_string(wire::max_join_payload));
      }
    }
    read_pending_ = true;
    asio::async_read(socket_, asio::buffer(fixed_buf_.data(), wire::fixed_size(header_.type)),
                     [self = shared_from_this()](const boost::system::error_code& e, std::size_t) {
                       self->on_fixed(e);
                     });
  }

  void on_fixed(const boost::system::error_code& ec) {
    read_pending_ = false;
    if (ec) return on_read_error(ec);
    if (draining_) return drain();
    if (header_.type == wire::MessageType::challenge) return on_challenge();
    try {
      // A Pull's buffer is scratch space the receiver may fill: the server's core
      // allocates it once the read is admitted, so a Pull costs no memory on arrival.
      const bool pull = header_.type == wire::MessageType::pull;
      incoming_ = wire::decode_fixed(header_, std::span(fixed_buf_.data(), wire::fixed_size(header_.type)), limits_,
                                     [this, pull](Eigen::Index n) {
                                       return pull ? Eigen::VectorXf() : pool_.acquire(n);
                                     });
    } catch (const wire::FrameError& e) {
      return reject(e.code(), e.what());
    } catch (const std::exception& e) {  // e.g. bad_alloc for a large but legal vector
      return reject(msg::ErrorCode::internal, std::string("cannot take the frame: ") + e.what());
    }
    const std::span<std::byte> body = wire::body_bytes(incoming_);
    if (body.empty()) return on_body({});
    read_pending_ = true;
    asio::async_read(socket_, asio::buffer(body.data(), body.size()), TransferAllUnbounded{},
                     [self = shared_from_this()](const boost::system::error_code& e, std::size_t) {
                       self->on_body(e);
                     });
  }

  void on_body(const boost::system::error_code& ec) {
    read_pending_ = false;
    if (ec) {
      recycle(incoming_);
      return on_read_error(ec);
    }
    if (draining_) {
      recycle(incoming_);
      return drain();
    }
    disarm_frame_timer();
    try {
      wire::check_body(incoming_);  // an encoded push's indices and values, now that they arrived
      owner_.on_frame(*this, header_, std::move(incoming_));
    } catch (const wire::FrameError& e) {
      recycle(incoming_);
      return reject(e.code(), e.what());
    } catch (const std::exception& e) {
      recycle(incoming_);
      return reject(msg::ErrorCode::internal, e.what());
    }
    continue_reading();
  }

  // A challenge has no body: its fixed fields are the whole frame.
  void on_challenge() {
    disarm_frame_timer();
    try {
      const wire::Challenge c =
          wire::decode_challenge(header_, std::span(fixed_buf_.data(), wire::fixed_size(header_.type)));
      owner_.on_challenge(*this, header_, c);
    } catch (const wire::FrameError& e) {
      return reject(e.code(), e.what());
    } catch (const std::exception& e) {
      return reject(msg::ErrorCode::internal, e.what());
    }
    continue_reading();
  }

  // After a delivered frame: read the next one, unless this connection has its
  // bound of frames waiting in the receive queue (then `release` resumes it).
  void continue_reading() {
    if (undelivered_.load() >= config_.max_queued_receives) {
      paused_.store(true);
      // A receiver may have taken a frame between the check and the flag: whoever
      // clears the flag first resumes reading, exactly once.
      if (undelivered_.load() >= config_.max_queued_receives || !paused_.exchange(false)) return;
    }
    read_frame();
  }

  // Called from a read handler (no read pending) when a frame is refused.
  void reject(msg::ErrorCode code, const std::string& reason) {
    fail(code, reason);
    if (!read_pending_) drain();
  }

  void on_read_error(const boost::system::error_code& ec) {
    if (closed_) return;
    if (!draining_) {
      if (in_frame_ && header_have_ < wire::header_size) {
        log("connection closed after " + std::to_string(header_have_) + " of " +
            std::to_string(wire::header_size) + " header bytes: " + ec.message());
      } else if (in_frame_) {
        log("connection closed in the middle of a " + std::string(wire::type_name(header_.type)) + " frame (" +
            std::to_string(header_.payload_length) + " payload bytes announced): " + ec.message());
      } else if (!is_peer_close(ec) && ec != asio::error::operation_aborted) {
        log("connection lost: " + ec.message());
      }
    }
    close_now();
  }

  // Reads and discards until the peer closes or the linger timer fires.
  void drain() {
    if (closed_) return;
    read_pending_ = true;
    socket_.async_read_some(asio::buffer(drain_buf_),
                            [self = shared_from_this()](const boost::system::error_code& ec, std::size_t) {
                              self->read_pending_ = false;
                              if (ec) return self->close_now();
                              self->drain();
                            });
  }

  void arm_frame_timer() {
    in_frame_ = true;
    ++frame_gen_;
    frame_timer_.expires_after(config_.frame_timeout);
    frame_timer_.async_wait([self = shared_from_this(), gen = frame_gen_](const boost::system::error_code& ec) {
      if (ec || gen != self->frame_gen_ || !self->in_frame_) return;
      self->fail(msg::ErrorCode::bad_frame, "frame not completed within " +
                                                std::to_string(self->config_.frame_timeout.count()) + " ms");
    });
  }

  void disarm_frame_timer() {
    in_frame_ = false;
    ++frame_gen_;
    boost::system::error_code ignored;
    frame_timer_.cancel(ignored);
  }

  // ---- writing: batches of frames, gathered straight from the messages ----

  // The challenge goes out before anything else: the I/O thread owns the socket's
  // sending side until it is written (sends queue behind it).
  void write_challenge() {
    challenge_frame_ = wire::encode_challenge(*challenge_);
    {
      std::lock_guard lock(out_mutex_);
      io_writing_ = true;
    }
    asio::async_write(socket_, asio::buffer(challenge_frame_),
                      [self = shared_from_this()](const boost::system::error_code& ec, std::size_t) {
                        {
                          std::lock_guard lock(self->out_mutex_);
                          self->io_writing_ = false;
                        }
                        if (ec) {
                          if (!self->closed_ && !self->draining_ && ec != asio::error::operation_aborted) {
                            self->log("write failed: " + ec.message());
                          }
                          return self->close_now();
                        }
                        self->start_write();
                      });
  }

  // A caller's non-blocking write of one frame; whatever did not fit goes to the
  // front of the outbox for the I/O thread. Never throws.
  void write_directly(Message&& m) noexcept {
    auto self = shared_from_this();  // keeps the descriptor open until we are done
    const wire::EncodedFrame f = wire::encode(local_id_.load(std::memory_order_relaxed), m);
    std::array<iovec, 2> iov{iovec{const_cast<std::byte*>(f.prefix.data()), f.prefix_size},
                             iovec{const_cast<std::byte*>(f.body.data()), f.body.size()}};
    const std::size_t total = f.size();
    std::size_t written = 0;
    while (written < total) {
      msghdr h{};
      // Skip what was written: the prefix first, then into the body.
      if (written < f.prefix_size) {
        iov[0].iov_base = const_cast<std::byte*>(f.prefix.data()) + written;
        iov[0].iov_len = f.prefix_size - written;
        h.msg_iov = iov.data();
        h.msg_iovlen = f.body.empty() ? 1 : 2;
      } else {
        iov[1].iov_base = const_cast<std::byte*>(f.body.data()) + (written - f.prefix_size);
        iov[1].iov_len = total - written;
        h.msg_iov = iov.data() + 1;
        h.msg_iovlen = 1;
      }
      const ssize_t n = ::sendmsg(fd_, &h, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) {
        written += static_cast<std::size_t>(n);
      } else if (n < 0 && errno == EINTR) {
        continue;
      } else {
        break;  // full socket buffer, or an error the I/O thread's write will meet and report
      }
    }
    bool post = false;
    {
      std::lock_guard lock(out_mutex_);
      caller_writing_ = false;
      if (written < total && accepting_) {
        outbox_.push_front(std::move(m));
        front_written_ = written;
      }
      if ((!outbox_.empty() || close_deferred_) && !kick_posted_) post = kick_posted_ = true;
    }
    if (written == total) recycle(m);
    if (post) {
      try {
        asio::post(executor_, [self] { self->kick(); });
      } catch (...) {  // out of memory: the frames wait for the next kick; the socket closes with us
      }
    }
  }

  void kick() {
    bool close_late = false;
    {
      std::lock_guard lock(out_mutex_);
      kick_posted_ = false;
      if (close_deferred_ && !caller_writing_) close_deferred_ = false, close_late = true;
    }
    if (close_late) {
      boost::system::error_code ignored;
      socket_.lowest_layer().close(ignored);
      return;
    }
    start_write();
  }

  void start_write() {
    if (closed_) return;
    std::size_t skip = 0;
    {
      std::lock_guard lock(out_mutex_);
      if (io_writing_ || caller_writing_) return;  // the caller kicks us when it is done
      while (!outbox_.empty() && inflight_.size() < tcp_max_batch) {
        inflight_.push_back(std::move(outbox_.front()));
        outbox_.pop_front();
      }
      if (!inflight_.empty()) {
        io_writing_ = true;
        inflight_count_ = inflight_.size();
        skip = std::exchange(front_written_, 0);
      }
    }
    if (inflight_.empty()) {
      if (draining_ && !send_shut_) {
        // Everything is flushed: tell the peer we are done, keep reading until it agrees.
        // (TLS too closes at the TCP level, without a close_notify: see is_peer_close.)
        send_shut_ = true;
        boost::system::error_code ignored;
        socket_.lowest_layer().shutdown(tcp::socket::shutdown_send, ignored);
      }
      return;
    }
    // Frames point into inflight_'s elements: encode only after it stops growing.
    for (const Message& m : inflight_) encoded_.push_back(wire::encode(local_id_.load(std::memory_order_relaxed), m));
    for (const wire::EncodedFrame& f : encoded_) {
      buffers_.emplace_back(f.prefix.data(), f.prefix_size);
      if (!f.body.empty()) buffers_.emplace_back(f.body.data(), f.body.size());
    }
    // The first frame may have been started by a caller's direct write.
    std::size_t first = 0;
    while (skip > 0 && skip >= buffers_[first].size()) skip -= buffers_[first++].size();
    buffers_[first] += skip;
    // A span, not the vector: the write operation copies its buffer sequence.
    asio::async_write(socket_, std::span<const asio::const_buffer>(buffers_).subspan(first), TransferAllUnbounded{},
                      [self = shared_from_this()](const boost::system::error_code& ec, std::size_t) {
                        self->on_write(ec);
                      });
  }

  void on_write(const boost::system::error_code& ec) {
    {
      std::lock_guard lock(out_mutex_);
      io_writing_ = false;
      inflight_count_ = 0;
    }
    for (Message& m : inflight_) recycle(m);
    inflight_.clear();
    encoded_.clear();
    buffers_.clear();
    if (ec) {
      if (!closed_ && !draining_ && ec != asio::error::operation_aborted) log("write failed: " + ec.message());
      return close_now();
    }
    start_write();
  }

  void recycle(Message& m) {
    if (auto* p = std::get_if<msg::Push>(&m)) {
      pool_.recycle(std::move(p->update));
    } else if (auto* mo = std::get_if<msg::Model>(&m)) {
      pool_.recycle(std::move(mo->parameters));
      pool_.recycle(std::move(mo->spare));
      mo->shared.reset();  // written: the server may reuse the snapshot's storage
    } else if (auto* pu = std::get_if<msg::Pull>(&m)) {
      pool_.recycle(std::move(pu->buffer));
    }
  }

  // ---- closing ----

  void stop_accepting() {
    std::lock_guard lock(out_mutex_);
    accepting_ = false;
  }

  void begin_close() {
    draining_ = true;
    in_frame_ = false;
    ++frame_gen_;
    boost::system::error_code ignored;
    frame_timer_.cancel(ignored);
    linger_timer_.expires_after(tcp_linger_timeout);
    linger_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (!ec) self->close_now();
    });
    start_write();
  }

  void report_lost() {
    if (std::exchange(lost_reported_, true)) return;
    auto keep = shared_from_this();  // the owner may drop its reference
    owner_.on_lost(*this);
  }

  void log(const std::string& reason) const {
    std::string line = std::string("psync ") + config_.side + ": peer " + remote_;
    if (peer_) line += " (worker " + std::to_string(*peer_) + ")";
    line += ": " + reason;
    psync::log(LogLevel::warning, line);
  }

  TcpStream socket_;
  asio::any_io_executor executor_;
  asio::steady_timer frame_timer_;
  asio::steady_timer linger_timer_;
  asio::steady_timer join_timer_;
  TcpConnectionOwner& owner_;
  TcpConnectionConfig config_;
  const std::string remote_;
  const int fd_;  // for callers' direct writes, which must not touch socket_
  const bool direct_writes_;  // callers may write (plain TCP only: a TLS stream is the I/O thread's)
  bool handshaking_ = false;  // the TLS handshake is under way (I/O thread)
  std::atomic<PeerId> local_id_{config_.local_id};  // sender id of outgoing frames
  std::optional<PeerId> peer_;
  std::optional<wire::Challenge> challenge_;  // what this side sent first (I/O thread; fixed after start)
  std::array<std::byte, wire::challenge_frame_size> challenge_frame_{};

  // Read side (I/O thread).
  std::array<std::byte, wire::header_size> header_buf_{};
  std::size_t header_have_ = 0;
  std::array<std::byte, wire::max_fixed_size> fixed_buf_{};
  wire::FrameHeader header_{};
  WireLimits limits_;
  Message incoming_;
  std::uint64_t frame_gen_ = 0;
  bool in_frame_ = false;
  bool read_pending_ = false;
  std::array<std::byte, 4096> drain_buf_{};
  VectorPool pool_;
  std::atomic<std::size_t> undelivered_{0};  // frames in the receive queue (any thread)
  std::atomic<bool> paused_{false};          // reading waits for a release (any thread)

  // Outbox and write ownership (any thread, under out_mutex_).
  std::mutex out_mutex_;
  std::deque<Message> outbox_;
  std::size_t front_written_ = 0;  // bytes of outbox_.front() a caller already wrote
  bool accepting_ = true;
  bool kick_posted_ = false;
  bool io_writing_ = false;      // the I/O thread has a write in flight
  bool caller_writing_ = false;  // a caller is writing directly
  std::size_t inflight_count_ = 0;  // frames in the I/O thread's write
  bool close_deferred_ = false;  // close_now waits for that caller

  // Write side (I/O thread).
  std::vector<Message> inflight_;
  std::vector<wire::EncodedFrame> encoded_;
  std::vector<asio::const_buffer> buffers_;

  // Lifecycle (I/O thread).
  bool draining_ = false;  // no more deliveries; flush, shut down our side, discard input
  bool send_shut_ = false;
  bool closed_ = false;
  bool lost_reported_ = false;
};

/// The I/O thread shared by both endpoints: runs the context until it has no work

}  // namespace detail

}  // namespace psync
