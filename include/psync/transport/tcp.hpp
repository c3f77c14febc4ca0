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

// Boost 1.74's Asio uses std::exchange etc. without including <utility> under C++20.
#include <utility>

#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/core/message.hpp"
#include "psync/transport/wire.hpp"

#include <boost/asio/buffer.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <Eigen/Core>

#include <sys/socket.h>
#include <sys/uio.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <exception>
#include <future>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <variant>
#include <vector>

namespace psync {

/// @brief Configuration of a `TcpServer`.
struct TcpServerOptions {
  std::string address = "127.0.0.1";  ///< local address to listen on ("0.0.0.0" for all)
  std::uint16_t port = 0;              ///< port to listen on; 0 = any free port, see `TcpServer::port()`
  WireLimits limits;                   ///< what the server accepts from workers
  /// @brief A frame whose first byte has arrived must be complete within this, so a
  /// peer trickling bytes (slow-loris) cannot hold a connection. Choose it above
  /// the largest frame's transfer time on the slowest link.
  std::chrono::milliseconds frame_timeout{10000};
  /// @brief SO_SNDBUF/SO_RCVBUF for each connection; 0 keeps the kernel's autotuning.
  int socket_buffer_bytes = 0;
};

/// @brief Configuration of a worker's `Tcp` endpoint.
struct TcpOptions {
  /// @brief Connecting is retried (the server may start later) until this has passed.
  std::chrono::milliseconds connect_timeout{10000};
  WireLimits limits;  ///< what the worker accepts from the server
  /// @brief A started frame from the server must be complete within this.
  std::chrono::milliseconds frame_timeout{10000};
  /// @brief SO_SNDBUF/SO_RCVBUF for the connection; 0 keeps the kernel's autotuning.
  int socket_buffer_bytes = 0;
};

namespace detail {

namespace asio = boost::asio;
using asio::ip::tcp;

/// How long a closing connection keeps reading (and discarding) after its last
/// write, so the peer gets our final frame instead of a reset; also the bound on
/// flushing when an endpoint closes.
inline constexpr std::chrono::milliseconds tcp_linger_timeout{1000};
/// Most frames gathered into one write (two buffers each, Asio writes at most 64 at once).
inline constexpr std::size_t tcp_max_batch = 32;

/// Thread-safe queue of received envelopes; the `receive` side of both endpoints.
class EnvelopeQueue {
 public:
  void push(Envelope&& e) {
    {
      std::lock_guard lock(mutex_);
      if (closed_) return;
      queue_.push_back(std::move(e));
    }
    ready_.notify_one();
  }

  std::optional<Envelope> pop(Clock::time_point deadline, const char* who) {
    std::unique_lock lock(mutex_);
    ready_.wait_until(lock, deadline, [&] { return closed_ || !queue_.empty(); });
    return take(who);
  }

  std::optional<Envelope> try_pop(const char* who) {
    std::lock_guard lock(mutex_);
    return take(who);
  }

  /// Wakes every waiting receiver; they and later ones throw.
  void close() {
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
      queue_.clear();
    }
    ready_.notify_all();
  }

 private:
  std::optional<Envelope> take(const char* who) {
    if (closed_) throw TransportError(std::string(who) + ": receive on a closed endpoint");
    if (queue_.empty()) return std::nullopt;
    Envelope e = std::move(queue_.front());
    queue_.pop_front();
    return e;
  }

  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Envelope> queue_;
  bool closed_ = false;
};

/// A few float vectors kept for reuse, matched by exact size (an Eigen vector cannot
/// change size without reallocating). Filled by whichever thread finished a write,
/// drained by the I/O thread.
class VectorPool {
 public:
  static constexpr std::size_t capacity = 4;

  VectorPool() { free_.reserve(capacity); }

  Eigen::VectorXf acquire(Eigen::Index n) {
    if (n == 0) return {};
    std::lock_guard lock(mutex_);
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->size() == n) {
        Eigen::VectorXf v = std::move(*it);
        free_.erase(it);
        return v;
      }
    }
    return Eigen::VectorXf(n);
  }

  void recycle(Eigen::VectorXf&& v) {
    if (v.size() == 0) return;
    std::lock_guard lock(mutex_);
    if (free_.size() == capacity) free_.erase(free_.begin());  // the oldest size is the least likely to return
    free_.push_back(std::move(v));
  }

 private:
  std::mutex mutex_;
  std::vector<Eigen::VectorXf> free_;
};

/// Completion condition for whole-buffer reads and writes. Asio's `transfer_all`
/// caps each system call at 64 KiB, which costs 64 handler round trips per 4 MB
/// vector; this one lets a call move as much as the socket will.
struct TransferAllUnbounded {
  std::size_t operator()(const boost::system::error_code& ec, std::size_t) const noexcept {
    return ec ? 0 : std::size_t{1} << 30;
  }
};

inline void configure_socket(tcp::socket& s, int buffer_bytes) {
  boost::system::error_code ignored;
  // Small frames (joins, pulls, acks) must not wait for Nagle's algorithm.
  s.set_option(tcp::no_delay(true), ignored);
  if (buffer_bytes > 0) {
    s.set_option(asio::socket_base::send_buffer_size(buffer_bytes), ignored);
    s.set_option(asio::socket_base::receive_buffer_size(buffer_bytes), ignored);
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

 protected:
  ~TcpConnectionOwner() = default;
};

/// Settings a connection needs from its endpoint.
struct TcpConnectionConfig {
  WireLimits limits;
  std::chrono::milliseconds frame_timeout{10000};
  PeerId local_id = 0;        ///< sender id written into every outgoing frame
  const char* side = "tcp";  ///< prefix of log lines and errors
};

/// One socket: an asynchronous frame reader, a write queue that never interleaves
/// frames, a frame timer and a lingering close. `enqueue` may be called from any
/// thread: when nothing is queued or being written it writes the frame itself
/// (non-blocking), which saves a wake-up of the I/O thread per message, and hands
/// whatever did not fit to the I/O thread. Everything else runs on the I/O thread.
class TcpConnection : public std::enable_shared_from_this<TcpConnection> {
 public:
  TcpConnection(tcp::socket socket, TcpConnectionOwner& owner, TcpConnectionConfig config)
      : socket_(std::move(socket)),
        executor_(socket_.get_executor()),
        frame_timer_(executor_),
        linger_timer_(executor_),
        owner_(owner),
        config_(config),
        remote_(endpoint_name(socket_)),
        fd_(socket_.native_handle()) {
    inflight_.reserve(tcp_max_batch);
    encoded_.reserve(tcp_max_batch);
    buffers_.reserve(2 * tcp_max_batch);
  }

  TcpConnection(const TcpConnection&) = delete;
  TcpConnection& operator=(const TcpConnection&) = delete;

  /// The peer's address:port, for logs.
  const std::string& remote() const noexcept { return remote_; }
  /// The worker id this connection joined as, if it has.
  std::optional<PeerId> peer() const noexcept { return peer_; }
  /// Records the id the peer joined as.
  void set_peer(PeerId id) noexcept { peer_ = id; }

  /// Begins reading frames.
  void start() { read_frame(); }

  /// Queues `m` for sending (any thread). Throws `ProtocolError` if `m` cannot be
  /// encoded and `TransportError` if the connection is closing or closed.
  void enqueue(Message&& m) {
    (void)wire::encode(config_.local_id, m);  // reject an unencodable message in the caller's thread
    std::unique_lock lock(out_mutex_);
    if (!accepting_) throw TransportError(std::string(config_.side) + ": connection to " + remote_ + " is closed");
    if (outbox_.empty() && !io_writing_ && !caller_writing_) {
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
    stop_accepting();
    begin_close();
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
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    if (!defer) socket_.close(ignored);
    report_lost();
  }

 private:
  // ---- reading: header (first bytes arm the frame timer), fixed fields, body ----

  void read_frame() {
    if (closed_) return;
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
    try {
      header_ = wire::decode_header(header_buf_, config_.limits);
    } catch (const wire::FrameError& e) {
      return reject(e.code(), e.what());
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
    try {
      incoming_ = wire::decode_fixed(header_, std::span(fixed_buf_.data(), wire::fixed_size(header_.type)),
                                     config_.limits, [this](Eigen::Index n) { return pool_.acquire(n); });
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
      owner_.on_frame(*this, header_, std::move(incoming_));
    } catch (const wire::FrameError& e) {
      recycle(incoming_);
      return reject(e.code(), e.what());
    } catch (const std::exception& e) {
      recycle(incoming_);
      return reject(msg::ErrorCode::internal, e.what());
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
      } else if (ec != asio::error::eof && ec != asio::error::operation_aborted) {
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

  // A caller's non-blocking write of one frame; whatever did not fit goes to the
  // front of the outbox for the I/O thread. Never throws.
  void write_directly(Message&& m) noexcept {
    auto self = shared_from_this();  // keeps the descriptor open until we are done
    const wire::EncodedFrame f = wire::encode(config_.local_id, m);
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
      socket_.close(ignored);
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
        skip = std::exchange(front_written_, 0);
      }
    }
    if (inflight_.empty()) {
      if (draining_ && !send_shut_) {
        // Everything is flushed: tell the peer we are done, keep reading until it agrees.
        send_shut_ = true;
        boost::system::error_code ignored;
        socket_.shutdown(tcp::socket::shutdown_send, ignored);
      }
      return;
    }
    // Frames point into inflight_'s elements: encode only after it stops growing.
    for (const Message& m : inflight_) encoded_.push_back(wire::encode(config_.local_id, m));
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
    line += ": " + reason + "\n";
    std::cerr << line << std::flush;
  }

  tcp::socket socket_;
  asio::any_io_executor executor_;
  asio::steady_timer frame_timer_;
  asio::steady_timer linger_timer_;
  TcpConnectionOwner& owner_;
  TcpConnectionConfig config_;
  const std::string remote_;
  const int fd_;  // for callers' direct writes, which must not touch socket_
  std::optional<PeerId> peer_;

  // Read side (I/O thread).
  std::array<std::byte, wire::header_size> header_buf_{};
  std::size_t header_have_ = 0;
  std::array<std::byte, wire::max_fixed_size> fixed_buf_{};
  wire::FrameHeader header_{};
  Message incoming_;
  std::uint64_t frame_gen_ = 0;
  bool in_frame_ = false;
  bool read_pending_ = false;
  std::array<std::byte, 4096> drain_buf_{};
  VectorPool pool_;

  // Outbox and write ownership (any thread, under out_mutex_).
  std::mutex out_mutex_;
  std::deque<Message> outbox_;
  std::size_t front_written_ = 0;  // bytes of outbox_.front() a caller already wrote
  bool accepting_ = true;
  bool kick_posted_ = false;
  bool io_writing_ = false;      // the I/O thread has a write in flight
  bool caller_writing_ = false;  // a caller is writing directly
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
/// left, and is joined with a bound.
class IoThread {
 public:
  explicit IoThread(asio::io_context& io) : io_(io) {}
  IoThread(const IoThread&) = delete;
  IoThread& operator=(const IoThread&) = delete;
  ~IoThread() { join(); }

  void start(const char* side) {
    std::promise<void> done;
    done_ = done.get_future();
    thread_ = std::thread([this, side, done = std::move(done)]() mutable {
      for (;;) {
        try {
          io_.run();
          break;
        } catch (const std::exception& e) {  // a handler threw: log it and keep serving
          std::cerr << (std::string("psync ") + side + ": I/O thread: " + e.what() + "\n") << std::flush;
        }
      }
      done.set_value();
    });
  }

  /// Waits for the context to run out of work; stops it past the bound.
  void join() noexcept {
    if (!thread_.joinable()) return;
    if (done_.wait_for(tcp_linger_timeout + std::chrono::milliseconds(1000)) != std::future_status::ready) {
      io_.stop();
    }
    thread_.join();
  }

 private:
  asio::io_context& io_;
  std::thread thread_;
  std::future<void> done_;
};

/// State of a `TcpServer`; the public class is a movable handle to it.
class TcpServerImpl final : public TcpConnectionOwner {
 public:
  explicit TcpServerImpl(TcpServerOptions options)
      : options_(std::move(options)), work_(asio::make_work_guard(io_)), acceptor_(io_), retry_timer_(io_) {
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
    c->enqueue(std::move(m));
  }

  std::optional<Envelope> receive(Clock::time_point deadline) { return queue_.pop(deadline, "tcp server"); }
  std::optional<Envelope> try_receive() { return queue_.try_pop("tcp server"); }

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
      const auto* join = std::get_if<msg::Join>(&m);
      if (!join) {
        throw wire::FrameError(msg::ErrorCode::not_joined,
                               std::string("first frame must be a join, got a ") + wire::type_name(h.type));
      }
      if (join->worker != h.sender) {
        throw wire::FrameError(msg::ErrorCode::bad_frame, "join for worker " + std::to_string(join->worker) +
                                                              " sent with sender id " + std::to_string(h.sender));
      }
      if (join->worker == server_peer) {
        throw wire::FrameError(msg::ErrorCode::bad_frame, "worker id " + std::to_string(server_peer) +
                                                              " is reserved for the server");
      }
      {
        std::lock_guard lock(peers_mutex_);
        if (!peers_.emplace(join->worker, c.shared_from_this()).second) {
          throw wire::FrameError(msg::ErrorCode::duplicate_worker,
                                 "worker " + std::to_string(join->worker) + " is already connected");
        }
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
    queue_.push(Envelope{*c.peer(), std::move(m)});
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
  }

 private:
  void accept() {
    acceptor_.async_accept([this](const boost::system::error_code& ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
      if (ec) {
        // E.g. out of file descriptors: wait instead of spinning.
        std::cerr << ("psync tcp server: accept failed: " + ec.message() + "\n") << std::flush;
        retry_timer_.expires_after(std::chrono::milliseconds(100));
        retry_timer_.async_wait([this](const boost::system::error_code& e) {
          if (!e) accept();
        });
        return;
      }
      configure_socket(socket, options_.socket_buffer_bytes);
      auto c = std::make_shared<TcpConnection>(
          std::move(socket), *this,
          TcpConnectionConfig{options_.limits, options_.frame_timeout, server_peer, "tcp server"});
      connections_.insert(c);
      c->start();
      accept();
    });
  }

  TcpServerOptions options_;
  asio::io_context io_{1};
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  tcp::acceptor acceptor_;
  asio::steady_timer retry_timer_;
  std::uint16_t port_ = 0;
  EnvelopeQueue queue_;
  std::mutex peers_mutex_;
  std::map<PeerId, std::shared_ptr<TcpConnection>> peers_;  // joined workers (any thread, under peers_mutex_)
  std::set<std::shared_ptr<TcpConnection>> connections_;    // every open connection (I/O thread)
  std::atomic<bool> closed_{false};
  IoThread io_thread_{io_};  // last: joined before the rest is destroyed
};

/// State of a worker's `Tcp` endpoint; the public class is a movable handle to it.
class TcpClientImpl final : public TcpConnectionOwner {
 public:
  TcpClientImpl(const std::string& host, std::uint16_t port, PeerId self, const TcpOptions& options)
      : self_(self) {
    tcp::socket socket = connect(host, port, options.connect_timeout);
    configure_socket(socket, options.socket_buffer_bytes);
    conn_ = std::make_shared<TcpConnection>(
        std::move(socket), *this, TcpConnectionConfig{options.limits, options.frame_timeout, self, "tcp worker"});
    conn_->start();
    work_.emplace(asio::make_work_guard(io_));
    io_.restart();  // the connect loop may have left the context stopped
    io_thread_.start("tcp worker");
  }

  TcpClientImpl(const TcpClientImpl&) = delete;
  TcpClientImpl& operator=(const TcpClientImpl&) = delete;
  ~TcpClientImpl() { close(); }

  PeerId self() const noexcept { return self_; }

  void send(PeerId to, Message&& m) {
    if (closed_.load()) throw TransportError("tcp worker: send on a closed endpoint");
    if (to != server_peer) {
      throw TransportError("tcp worker: can only send to the server, not to peer " + std::to_string(to));
    }
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

  void on_frame(TcpConnection&, const wire::FrameHeader& h, Message&& m) override {
    if (h.sender != server_peer) {
      throw wire::FrameError(msg::ErrorCode::bad_frame,
                             "frame with sender id " + std::to_string(h.sender) + ", expected the server");
    }
    queue_.push(Envelope{server_peer, std::move(m)});
  }

  void on_lost(TcpConnection&) override { queue_.push(Envelope{server_peer, msg::Leave{msg::LeaveReason::disconnected}}); }

 private:
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

  PeerId self_;
  asio::io_context io_{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  EnvelopeQueue queue_;
  std::shared_ptr<TcpConnection> conn_;
  std::atomic<bool> closed_{false};
  IoThread io_thread_{io_};  // last: joined before the rest is destroyed
};

}  // namespace detail

/// @brief The server's TCP endpoint: listens, accepts any number of workers, reads
/// frames on its own I/O thread. A connection's first frame must be a `msg::Join`;
/// its `worker` becomes the connection's peer id (and the join is delivered too).
/// An invalid frame gets a `msg::Error` back, a line on stderr and a closed
/// connection; a joined peer's loss is delivered as `msg::Leave{disconnected}`.
/// Movable, not copyable; destroying or closing it closes every connection after
/// flushing what was queued (bounded by about a second).
class TcpServer {
 public:
  /// @brief Binds and listens; throws `TransportError` if the address cannot be bound.
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

/// @brief A worker's TCP endpoint: one connection to the server. Messages may only
/// be sent to `server_peer`; everything received comes from `server_peer`. The
/// worker announces itself by sending its own `msg::Join`. If the connection dies,
/// a `msg::Leave{disconnected}` from `server_peer` is delivered and later sends throw
/// `TransportError`. Movable, not copyable; closing flushes queued messages first.
class Tcp {
 public:
  /// @brief Connects to `host:port` as worker `self`, retrying until
  /// `options.connect_timeout` (the server may start later); throws `TransportError`
  /// naming host:port if it cannot. Name resolution is bounded by the system
  /// resolver's own timeout as well.
  Tcp(const std::string& host, std::uint16_t port, PeerId self, TcpOptions options = {})
      : impl_(std::make_unique<detail::TcpClientImpl>(host, port, self, options)) {}

  /// @brief The worker id given at construction.
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

static_assert(Transport<TcpServer>);
static_assert(Transport<Tcp>);

}  // namespace psync
