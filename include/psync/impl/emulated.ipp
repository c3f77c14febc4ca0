#pragma once
/// @file
/// @brief The bodies of psync/transport/emulated.hpp's functions (psync/detail/config.hpp).

#include "psync/transport/emulated.hpp"

namespace psync {

PSYNC_DECL std::size_t emulated_size(const Message& m) noexcept {
  const std::size_t payload = std::visit(
      [](const auto& x) -> std::size_t {
        using M = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<M, msg::Push>) {
          // An encoded push costs its codec's bytes (docs/compression.md).
          if (x.encoding != Encoding::dense) return x.payload.size();
          return static_cast<std::size_t>(x.update.size()) * sizeof(float);
        } else if constexpr (std::is_same_v<M, msg::Model>) {
          return static_cast<std::size_t>(x.values().size()) * sizeof(float);
        } else if constexpr (std::is_same_v<M, msg::Join>) {
          return x.policy.size();
        } else if constexpr (std::is_same_v<M, msg::Error>) {
          return x.text.size();
        } else {
          return 0;
        }
      },
      m);
  return emulated_header_bytes + payload;
}

PSYNC_DECL Network::Network(NetworkSpec spec) : spec_(std::move(spec)) {
  check_bandwidth(spec_.server_nic_bytes_per_s, "server NIC");
  check_link(spec_.worker_link, "default worker link");
  for (const auto& [id, link] : spec_.per_worker) check_link(link, "worker " + std::to_string(id) + "'s link");
}

PSYNC_DECL Transmission Network::schedule(PeerId from, PeerId to, std::size_t bytes, Clock::time_point now) {
  std::lock_guard lock(mutex_);
  // An infinitely fast link is never busy, so it neither delays nor is reserved:
  // an unlimited server NIC must not serialise the workers' pushes.
  const double up_bw = bandwidth(from);
  const double down_bw = bandwidth(to);
  Clock::time_point* up = limited(up_bw) ? &uplink_busy_[from] : nullptr;
  Clock::time_point* down = limited(down_bw) ? &downlink_busy_[to] : nullptr;

  Transmission t;
  t.sent = now;
  t.start = now;
  if (up) t.start = std::max(t.start, *up);
  if (down) t.start = std::max(t.start, *down);
  const double bw = slower(up_bw, down_bw);
  Clock::duration tx{0};
  if (limited(bw)) {
    // Rounded up so the emulated time never undercuts the physical bound.
    tx = std::chrono::ceil<Clock::duration>(std::chrono::duration<double>(static_cast<double>(bytes) / bw));
  }
  t.finish = t.start + tx;
  if (up) *up = t.finish;
  if (down) *down = t.finish;

  Clock::duration delay = latency(from) + latency(to);
  if (const auto spread = jitter(from) + jitter(to); spread.count() > 0) {
    auto [it, fresh] = jitter_rng_.try_emplace(from, spec_.seed ^ static_cast<std::uint64_t>(from));
    static_cast<void>(fresh);
    // Built from the raw engine output, not std::uniform_*_distribution, whose
    // algorithm differs between standard libraries: the schedule stays
    // reproducible across platforms.
    const double unit = static_cast<double>(it->second() >> 11) * 0x1.0p-53;
    delay += std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double, std::micro>(unit * static_cast<double>(spread.count())));
  }
  // A link is a FIFO: jitter must never let a message overtake an earlier one
  // from the same sender to the same receiver.
  Clock::time_point& last = last_delivery_[{from, to}];
  t.deliver_at = std::max(t.finish + delay, last);
  last = t.deliver_at;
  return t;
}

PSYNC_DECL void Network::check_bandwidth(double bw, const std::string& what) {
  if (!(bw >= 0)) throw ConfigError("emulated network: " + what + " bandwidth must be >= 0 (0 = infinite)");
}

PSYNC_DECL void Network::check_link(const LinkSpec& link, const std::string& what) {
  check_bandwidth(link.bandwidth_bytes_per_s, what);
  if (link.latency.count() < 0) throw ConfigError("emulated network: " + what + " latency must be >= 0");
  if (link.jitter.count() < 0) throw ConfigError("emulated network: " + what + " jitter must be >= 0");
}

PSYNC_DECL double Network::slower(double a, double b) noexcept {
  if (a <= 0) return b;
  if (b <= 0) return a;
  return std::min(a, b);
}

PSYNC_DECL double Network::bandwidth(PeerId p) const noexcept {
  return p == server_peer ? spec_.server_nic_bytes_per_s : spec_.link(p).bandwidth_bytes_per_s;
}

PSYNC_DECL Clock::duration Network::latency(PeerId p) const noexcept {
  return p == server_peer ? Clock::duration{0} : Clock::duration{spec_.link(p).latency};
}

PSYNC_DECL std::chrono::microseconds Network::jitter(PeerId p) const noexcept {
  return p == server_peer ? std::chrono::microseconds{0} : spec_.link(p).jitter;
}

}  // namespace psync
