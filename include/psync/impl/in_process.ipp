#pragma once
/// @file
/// @brief The bodies of psync/transport/in_process.hpp's functions (psync/detail/config.hpp).

#include "psync/transport/in_process.hpp"

namespace psync {

PSYNC_DECL InProcess InProcessHub::endpoint(PeerId id) const {
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

PSYNC_DECL void InProcess::send(PeerId to, Message&& m) {
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

PSYNC_DECL std::optional<Envelope> InProcess::receive(Clock::time_point deadline) {
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

PSYNC_DECL std::optional<Envelope> InProcess::try_receive() {
  if (!box_) throw TransportError("in-process: receive on a closed endpoint");
  std::unique_lock lock(box_->mutex);
  if (box_->queue.empty()) return std::nullopt;
  return pop(lock);
}

PSYNC_DECL void InProcess::close() noexcept {
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

PSYNC_DECL std::shared_ptr<detail::Mailbox> InProcess::lookup(PeerId id) const {
  if (!hub_) return nullptr;
  std::lock_guard lock(hub_->mutex);
  auto it = hub_->peers.find(id);
  return it == hub_->peers.end() ? nullptr : it->second;
}

}  // namespace psync
