#pragma once
/// @file
/// @brief In-process transport: a server and many workers as threads of one
/// process, messages moved (never copied) between mailboxes.

#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/core/message.hpp"
#include "psync/detail/config.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>

namespace psync {

namespace detail {

/// One peer's queue of received messages.
struct Mailbox {
  std::mutex mutex;
  std::condition_variable ready;
  std::deque<Envelope> queue;
  std::atomic<std::size_t> size{0};  ///< the queue's length, readable without the lock (for spinning)
  bool open = true;
};

struct HubState {
  std::mutex mutex;
  std::map<PeerId, std::shared_ptr<Mailbox>> peers;
  std::chrono::nanoseconds spin{0};
};

/// A hint to the core that this is a busy-wait loop.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace detail

/// @brief How in-process endpoints wait.
struct InProcessOptions {
  /// @brief How long `receive` polls for a message before it sleeps on a condition
  /// variable. Waking a thread parked on another core costs several microseconds
  /// per hop on a VM; a round trip that answers within the spin never pays it. The
  /// spin burns CPU only while nothing has arrived and is bounded; 0 disables it.
  std::chrono::nanoseconds spin{std::chrono::microseconds(20)};
};

class InProcess;

/// @brief The switchboard that in-process endpoints register with. Copies share
/// one switchboard; it lives as long as any copy or endpoint does.
class InProcessHub {
 public:
  /// @brief A switchboard whose endpoints wait as `options` says.
  explicit InProcessHub(InProcessOptions options = {}) : state_(std::make_shared<detail::HubState>()) {
    state_->spin = options.spin;
  }

  /// @brief A new endpoint for peer `id`; throws `TransportError` if `id` is taken,
  /// `ConfigError` for `any_worker` (only the TCP transport assigns ids).
  InProcess endpoint(PeerId id) const;

 private:
  std::shared_ptr<detail::HubState> state_;
};

/// @brief One peer's endpoint on an `InProcessHub`. Move-only; closing it (or
/// destroying it) tells the other side with a `msg::Leave{disconnected}`: a worker's
/// close reaches the server, the server's close reaches every worker.
class InProcess {
 public:
  InProcess(InProcess&& other) noexcept
      : hub_(std::move(other.hub_)), self_(other.self_), box_(std::move(other.box_)), spin_(other.spin_) {}
  InProcess& operator=(InProcess&& other) noexcept {
    if (this != &other) {
      close();
      hub_ = std::move(other.hub_);
      self_ = other.self_;
      box_ = std::move(other.box_);
      spin_ = other.spin_;
    }
    return *this;
  }
  InProcess(const InProcess&) = delete;
  InProcess& operator=(const InProcess&) = delete;
  ~InProcess() { close(); }

  /// @brief This endpoint's peer id.
  PeerId self() const noexcept { return self_; }

  /// @brief Moves `m` into `to`'s mailbox; throws `TransportError` if `to` is unknown or closed.
  void send(PeerId to, Message&& m);

  /// @brief Next message, or `std::nullopt` once `deadline` has passed.
  std::optional<Envelope> receive(Clock::time_point deadline);

  /// @brief Next message if one is waiting.
  std::optional<Envelope> try_receive();

  /// @brief Unregisters this endpoint and tells the other side; idempotent.
  void close() noexcept;

 private:
  friend class InProcessHub;
  InProcess(std::shared_ptr<detail::HubState> hub, PeerId self, std::shared_ptr<detail::Mailbox> box)
      : hub_(std::move(hub)), self_(self), box_(std::move(box)), spin_(hub_->spin) {}

  static std::string peer_name(PeerId id) {
    return id == server_peer ? std::string("server") : "worker " + std::to_string(id);
  }

  std::shared_ptr<detail::Mailbox> lookup(PeerId id) const;

  std::optional<Envelope> pop(std::unique_lock<std::mutex>&) {
    Envelope e = std::move(box_->queue.front());
    box_->queue.pop_front();
    box_->size.store(box_->queue.size(), std::memory_order_release);
    return e;
  }

  std::shared_ptr<detail::HubState> hub_;
  PeerId self_ = 0;
  std::shared_ptr<detail::Mailbox> box_;
  std::chrono::nanoseconds spin_{0};
};


static_assert(Transport<InProcess>);

}  // namespace psync

#if PSYNC_HEADER_ONLY
#include "psync/impl/in_process.ipp"
#endif
