#pragma once
/// @file
/// @brief The concepts psync's class templates require: ParameterSet, Model,
/// Transport and SyncPolicy (the last defined in policies/policy.hpp, which needs
/// no Eigen). A type that does not model one is reported where it is used as a
/// template argument.

#include "psync/core/message.hpp"
#include "psync/core/types.hpp"
#include "psync/policies/policy.hpp"

#include <Eigen/Core>

#include <chrono>
#include <concepts>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

namespace psync {

/// @brief Something with one contiguous float parameter vector: all the server needs.
/// Writable access is checked through `data()`: Eigen's `Ref<VectorXf>` converting
/// constructor is unconstrained, so convertibility alone would accept a read-only view.
template <class M>
concept ParameterSet = std::copy_constructible<M> && requires(M& m, const M& cm) {
  { cm.parameters() } -> std::convertible_to<Eigen::Ref<const Eigen::VectorXf>>;
  { m.parameters() } -> std::convertible_to<Eigen::Ref<Eigen::VectorXf>>;
  { m.parameters().data() } -> std::same_as<float*>;
};

/// @brief A trainable model: parameters, a loss and an analytic gradient for a batch.
///
/// `gradient(batch, g)` writes the gradient of the mean loss over the batch into `g`
/// (already sized to the parameter count) and must not allocate in steady state.
template <class M>
concept Model = ParameterSet<M> && requires { typename M::Batch; } &&
    requires(const M& cm, const typename M::Batch& b, Eigen::Ref<Eigen::VectorXf> g) {
      { cm.loss(b) } -> std::convertible_to<double>;
      cm.gradient(b, g);
    };

/// @brief Moves typed messages between peers.
///
/// - `self()` is this endpoint's peer id (`server_peer` for the server).
/// - `send(to, message)` hands the message over (moved); throws `TransportError`
///   if the peer is unknown or gone.
/// - `receive(deadline)` blocks until a message arrives or the deadline passes
///   (then returns `std::nullopt`); `try_receive()` never blocks.
/// - A lost peer is reported as a `msg::Leave{disconnected}` from that peer.
template <class T>
concept Transport = requires(T& t, PeerId to, Message&& m, Clock::time_point deadline) {
  { t.self() } -> std::convertible_to<PeerId>;
  t.send(to, std::move(m));
  { t.receive(deadline) } -> std::same_as<std::optional<Envelope>>;
  { t.try_receive() } -> std::same_as<std::optional<Envelope>>;
};

}  // namespace psync
