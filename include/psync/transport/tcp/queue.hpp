#pragma once
/// @file
/// @brief The bounded queue between a TCP endpoint's I/O thread and its receivers, and the per-connection pool of float vectors.

// Boost 1.74's Asio uses std::exchange etc. without including <utility> under C++20.
#include <utility>

#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/core/message.hpp"

#include <Eigen/Core>

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace psync {

namespace detail {

/// What a queued envelope gives back when a receiver takes it: the connection it came
/// from counts its undelivered frames, and stops reading past its bound.
class ReceiveCredit {
 public:
  /// One frame of this source was taken by a receiver (any thread; must not block).
  virtual void release() noexcept = 0;

 protected:
  ~ReceiveCredit() = default;
};

/// Thread-safe queue of received envelopes; the `receive` side of both endpoints.
/// It is bounded by its sources: each connection stops reading while it has its
/// bound of frames in here, and learns through its `ReceiveCredit` when one is taken.
class EnvelopeQueue {
 public:
  /// Queues `e`; `credit` (may be null, e.g. a synthesised Leave) is released when a
  /// receiver takes it.
  void push(Envelope&& e, std::shared_ptr<ReceiveCredit> credit = nullptr) {
    {
      std::lock_guard lock(mutex_);
      if (closed_) return;
      queue_.push_back(Entry{std::move(e), std::move(credit)});
    }
    ready_.notify_one();
  }

  std::optional<Envelope> pop(Clock::time_point deadline, const char* who) {
    std::unique_lock lock(mutex_);
    ready_.wait_until(lock, deadline, [&] { return closed_ || !queue_.empty(); });
    return take(lock, who);
  }

  std::optional<Envelope> try_pop(const char* who) {
    std::unique_lock lock(mutex_);
    return take(lock, who);
  }

  /// Envelopes waiting now.
  std::size_t size() const {
    std::lock_guard lock(mutex_);
    return queue_.size();
  }

  /// Wakes every waiting receiver; they and later ones throw.
  void close() {
    std::deque<Entry> dropped;
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
      dropped.swap(queue_);
    }
    ready_.notify_all();
  }

 private:
  struct Entry {
    Envelope envelope;
    std::shared_ptr<ReceiveCredit> credit;
  };

  std::optional<Envelope> take(std::unique_lock<std::mutex>& lock, const char* who) {
    if (closed_) throw TransportError(std::string(who) + ": receive on a closed endpoint");
    if (queue_.empty()) return std::nullopt;
    Entry e = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    if (e.credit) e.credit->release();
    return std::move(e.envelope);
  }

  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Entry> queue_;
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

}  // namespace detail

}  // namespace psync
