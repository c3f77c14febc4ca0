#pragma once
/// @file
/// @brief In-process transport: a server and many workers as threads of one
/// process, messages moved (never copied) between mailboxes.

#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/core/message.hpp"

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
  void send(PeerId to, Message&& m) {
    auto box = lookup(to);
    if (!box) throw TransportError("in-process: no peer " + peer_name(to) + " to send to");
    {
      std::lock_guard lock(box->mutex);
      if (!box->open) throw TransportError("in-process: peer " + peer_name(to) + " is closed");
      box->queue.push_back(Envelope{self_, std::move(m)});
      box->size.store(box->queue.size(), std::memory_order_release);
    }
    box->ready.notify_one();
  }

  /// @brief Next message, or `std::nullopt` once `deadline` has passed.
  std::optional<Envelope> receive(Clock::time_point deadline) {
    if (!box_) throw TransportError("in-process: receive on a closed endpoint");
    if (spin_.count() > 0 && box_->size.load(std::memory_order_acquire) == 0) {
      const auto until = std::min(deadline, Clock::now() + spin_);
      // Yielding, not pure spinning: when the sender shares this CPU, it gets to run.
      while (box_->size.load(std::memory_order_acquire) == 0 && Clock::now() < until) {
        detail::cpu_relax();
        std::this_thread::yield();
      }
    }
    std::unique_lock lock(box_->mutex);
    if (!box_->ready.wait_until(lock, deadline, [&] { return !box_->queue.empty(); })) return std::nullopt;
    return pop(lock);
  }

  /// @brief Next message if one is waiting.
  std::optional<Envelope> try_receive() {
    if (!box_) throw TransportError("in-process: receive on a closed endpoint");
    std::unique_lock lock(box_->mutex);
    if (box_->queue.empty()) return std::nullopt;
    return pop(lock);
  }

  /// @brief Unregisters this endpoint and tells the other side; idempotent.
  void close() noexcept {
    if (!hub_ || !box_) return;
    std::map<PeerId, std::shared_ptr<detail::Mailbox>> notify;
    {
      std::lock_guard lock(hub_->mutex);
      hub_->peers.erase(self_);
      if (self_ == server_peer) {
        notify = hub_->peers;
      } else if (auto it = hub_->peers.find(server_peer); it != hub_->peers.end()) {
        notify.insert(*it);
      }
    }
    {
      std::lock_guard lock(box_->mutex);
      box_->open = false;
    }
    for (auto& [id, box] : notify) {
      {
        std::lock_guard lock(box->mutex);
        if (!box->open) continue;
        box->queue.push_back(Envelope{self_, msg::Leave{msg::LeaveReason::disconnected}});
        box->size.store(box->queue.size(), std::memory_order_release);
      }
      box->ready.notify_one();
    }
    box_.reset();
  }

 private:
  friend class InProcessHub;
  InProcess(std::shared_ptr<detail::HubState> hub, PeerId self, std::shared_ptr<detail::Mailbox> box)
      : hub_(std::move(hub)), self_(self), box_(std::move(box)), spin_(hub_->spin) {}

  static std::string peer_name(PeerId id) {
    return id == server_peer ? std::string("server") : "worker " + std::to_string(id);
  }

  std::shared_ptr<detail::Mailbox> lookup(PeerId id) const {
    if (!hub_) return nullptr;
    std::lock_guard lock(hub_->mutex);
    auto it = hub_->peers.find(id);
    return it == hub_->peers.end() ? nullptr : it->second;
  }

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

inline InProcess InProcessHub::endpoint(PeerId id) const {
  if (id == any_worker) {
    throw ConfigError("in-process: worker ids are not assigned here (any_worker); give each worker its own id");
  }
  auto box = std::make_shared<detail::Mailbox>();
  std::lock_guard lock(state_->mutex);
  if (!state_->peers.emplace(id, box).second) {
    throw TransportError("in-process: peer id " +
                         (id == server_peer ? std::string("server") : std::to_string(id)) + " already registered");
  }
  return InProcess(state_, id, std::move(box));
}

static_assert(Transport<InProcess>);

}  // namespace psync
