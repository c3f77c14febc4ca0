#pragma once
/// @file
/// @brief What a sans-I/O core asks its driver to send, and the queue it keeps it in.

#include "psync/core/message.hpp"

#include <cstddef>
#include <optional>
#include <utility>
#include <vector>

namespace psync {

/// @brief One message a core wants sent: the driver moves it into its transport.
struct Transmit {
  PeerId to = 0;
  Message message;
};

namespace detail {

/// FIFO of transmits whose storage is reused, so steady-state traffic allocates
/// nothing: a drained queue keeps its capacity.
class Outbox {
 public:
  void push(PeerId to, Message&& m) { queue_.push_back(Transmit{to, std::move(m)}); }
  std::optional<Transmit> poll() {
    if (head_ == queue_.size()) {
      queue_.clear();
      head_ = 0;
      return std::nullopt;
    }
    return std::move(queue_[head_++]);
  }
  bool empty() const noexcept { return head_ == queue_.size(); }
  void reserve(std::size_t n) { queue_.reserve(n); }

 private:
  std::vector<Transmit> queue_;
  std::size_t head_ = 0;
};

}  // namespace detail
}  // namespace psync
