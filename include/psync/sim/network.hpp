#pragma once
/// @file
/// @brief The virtual-time network: every transfer through the server's NIC shares
/// it fairly with the others in the same direction (max-min fair share, each flow
/// also capped by its worker's link), as the kernel shares a link between
/// concurrent TCP flows; a message arrives `latency + jitter` after its last byte.
/// `Sharing::fifo` instead models the real-time `Emulated` transport.

#include "psync/transport/emulated.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace psync::sim {

/// @brief Virtual time in nanoseconds since the start of a simulation.
using Nanos = std::int64_t;

/// @brief How a link divides its bandwidth between concurrent transfers.
enum class Sharing {
  /// Max-min fair share, what the kernel does to concurrent TCP flows (the default).
  fair,
  /// One transfer at a time, in the order they started, each at its full rate:
  /// the model of the real-time `Emulated` transport, kept to validate against it.
  fifo,
};

/// @brief One direction of the server's NIC (workers to server, or server to
/// workers) with the transfers crossing it. Pure arithmetic: the simulator asks
/// when the next transfer finishes and advances it to that time.
class SharedLink {
 public:
  /// @brief A transfer in flight.
  struct Flow {
    std::uint64_t id = 0;      ///< the simulator's handle for the message
    double remaining = 0;      ///< bytes still to send
    double cap = 0;            ///< the worker link's bandwidth (bytes/s), infinite if 0 was given
    double rate = 0;           ///< bytes/s it gets now
  };

  /// @brief `nic_bytes_per_s` = 0 means infinite.
  explicit SharedLink(double nic_bytes_per_s = 0, Sharing sharing = Sharing::fair)
      : nic_(nic_bytes_per_s > 0 ? nic_bytes_per_s : std::numeric_limits<double>::infinity()), sharing_(sharing) {}

  /// @brief Starts a transfer of `bytes` capped at `link_bytes_per_s` (0: infinite) at time `now`.
  void add(std::uint64_t id, double bytes, double link_bytes_per_s, Nanos now) {
    advance(now);
    flows_.push_back(Flow{id, bytes, link_bytes_per_s > 0 ? link_bytes_per_s : std::numeric_limits<double>::infinity(), 0});
    share();
  }

  /// @brief When the next transfer finishes (max if none).
  Nanos next_finish() const {
    Nanos best = std::numeric_limits<Nanos>::max();
    for (const auto& f : flows_) {
      if (f.remaining <= 0 || std::isinf(f.rate)) return last_;
      if (f.rate <= 0) continue;
      const double ns = std::ceil(f.remaining / f.rate * 1e9);
      best = std::min(best, last_ + static_cast<Nanos>(ns));
    }
    return best;
  }

  /// @brief Advances to `now` and moves every finished transfer's id into `done`, in start order.
  void finish_until(Nanos now, std::vector<std::uint64_t>& done) {
    advance(now);
    // A flow is done when less than a thousandth of a byte is left (rounding of ns steps).
    for (auto it = flows_.begin(); it != flows_.end();) {
      if (it->remaining <= 1e-3 || std::isinf(it->rate)) {
        done.push_back(it->id);
        it = flows_.erase(it);
      } else {
        ++it;
      }
    }
    share();
  }

  /// @brief Transfers in flight.
  std::size_t active() const noexcept { return flows_.size(); }

 private:
  void advance(Nanos now) {
    const double dt = static_cast<double>(now - last_) * 1e-9;
    if (dt > 0) {
      for (auto& f : flows_) f.remaining = std::isinf(f.rate) ? 0 : std::max(0.0, f.remaining - f.rate * dt);
    }
    last_ = std::max(last_, now);
  }

  /// Max-min fair share (water filling): flows capped below an equal share keep
  /// their cap, the rest split what is left equally.
  void share() {
    if (sharing_ == Sharing::fifo && !std::isinf(nic_)) {
      // flows_ is in start order: the oldest sends alone, at its full rate.
      for (std::size_t i = 0; i < flows_.size(); ++i) flows_[i].rate = i == 0 ? std::min(flows_[i].cap, nic_) : 0;
      return;
    }
    std::vector<Flow*> order;
    order.reserve(flows_.size());
    for (auto& f : flows_) order.push_back(&f);
    std::sort(order.begin(), order.end(), [](const Flow* a, const Flow* b) { return a->cap < b->cap; });
    double left = nic_;
    std::size_t n = order.size();
    for (Flow* f : order) {
      const double fair = left / static_cast<double>(n);
      f->rate = std::min(f->cap, fair);
      if (!std::isinf(left)) left -= f->rate;
      --n;
    }
  }

  double nic_;
  Sharing sharing_;
  Nanos last_ = 0;
  std::vector<Flow> flows_;
};

}  // namespace psync::sim
