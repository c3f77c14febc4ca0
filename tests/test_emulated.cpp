// Emulated network: the link model (deterministic, checked with virtual times) and
// the real-time decorator over InProcess (lower bounds strict, upper bounds generous
// because the machine is shared and sanitizers slow everything down).
#include "psync/transport/emulated.hpp"

#include "catch.hpp"

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

using namespace std::chrono_literals;
using psync::Clock;
using psync::Emulated;
using psync::InProcess;
using psync::InProcessHub;
using psync::LinkSpec;
using psync::Network;
using psync::NetworkSpec;
using psync::server_peer;

namespace {

/// A push whose emulated size is exactly `bytes` (header included).
psync::Message push_of_size(std::size_t bytes, std::uint64_t clock = 0) {
  const auto floats = static_cast<Eigen::Index>((bytes - psync::emulated_header_bytes) / sizeof(float));
  return psync::msg::Push{clock, 0, 1, Eigen::VectorXf::Zero(floats)};
}

psync::Message small_push(std::uint64_t clock) { return psync::msg::Push{clock, 0, 1, Eigen::VectorXf::Zero(4)}; }

/// Generous: a sanitized build on a loaded 2-core VM can be very late.
constexpr auto slack = 2s;

Clock::time_point t0() { return Clock::time_point{} + 1h; }  // virtual origin

std::shared_ptr<Network> make_network(NetworkSpec spec) { return std::make_shared<Network>(std::move(spec)); }

}  // namespace

static_assert(psync::Transport<Emulated<InProcess>>);

TEST_CASE("emulated_size charges header plus payload") {
  using namespace psync;
  CHECK(emulated_size(msg::Leave{}) == emulated_header_bytes);
  CHECK(emulated_size(msg::Push{0, 0, 1, Eigen::VectorXf::Zero(250)}) == emulated_header_bytes + 1000);
  CHECK(emulated_size(msg::Model{1, 0, 0, Eigen::VectorXf::Zero(10)}) == emulated_header_bytes + 40);
  CHECK(emulated_size(msg::Join{0, 10, "ssp:3"}) == emulated_header_bytes + 5);
  CHECK(emulated_size(msg::Pull{0, Eigen::VectorXf::Zero(1000)}) == emulated_header_bytes);
}

TEST_CASE("NetworkSpec::enabled is false only when nothing is delayed") {
  NetworkSpec spec;
  CHECK_FALSE(spec.enabled());
  spec.per_worker[3] = LinkSpec{};
  CHECK_FALSE(spec.enabled());
  spec.per_worker[3].jitter = 1us;
  CHECK(spec.enabled());
  NetworkSpec nic;
  nic.server_nic_bytes_per_s = 1e9;
  CHECK(nic.enabled());
  NetworkSpec lat;
  lat.worker_link.latency = 1us;
  CHECK(lat.enabled());
}

TEST_CASE("Network rejects negative or NaN settings") {
  NetworkSpec a;
  a.worker_link.bandwidth_bytes_per_s = -1;
  CHECK_THROWS_AS(Network(a), psync::ConfigError);
  NetworkSpec b;
  b.per_worker[2].latency = -1us;
  CHECK_THROWS_AS(Network(b), psync::ConfigError);
  NetworkSpec c;
  c.server_nic_bytes_per_s = std::nan("");
  CHECK_THROWS_AS(Network(c), psync::ConfigError);
}

TEST_CASE("Network schedule: transmission, queueing, latency, server NIC") {
  SECTION("size / bandwidth plus latency") {
    NetworkSpec spec;
    spec.worker_link = LinkSpec{10e6, 20ms, 0us};
    Network net(spec);
    const auto t = net.schedule(0, server_peer, 1'000'000, t0());
    CHECK(t.start == t0());
    CHECK(t.finish == t0() + 100ms);
    CHECK(t.deliver_at == t0() + 120ms);
  }
  SECTION("the slower of the two links sets the pace") {
    NetworkSpec spec;
    spec.worker_link.bandwidth_bytes_per_s = 100e6;
    spec.server_nic_bytes_per_s = 10e6;
    Network net(spec);
    CHECK(net.schedule(server_peer, 0, 1'000'000, t0()).finish == t0() + 100ms);
  }
  SECTION("a second message queues behind the first on a busy uplink") {
    NetworkSpec spec;
    spec.worker_link.bandwidth_bytes_per_s = 10e6;
    Network net(spec);
    const auto a = net.schedule(0, server_peer, 500'000, t0());
    const auto b = net.schedule(0, server_peer, 500'000, t0() + 10ms);
    CHECK(a.finish == t0() + 50ms);
    CHECK(b.start == a.finish);
    CHECK(b.finish == a.finish + 50ms);
    // An idle link starts at once.
    const auto c = net.schedule(0, server_peer, 500'000, t0() + 1s);
    CHECK(c.start == t0() + 1s);
  }
  SECTION("the shared server NIC serialises two workers' pushes") {
    NetworkSpec spec;
    spec.worker_link.bandwidth_bytes_per_s = 10e6;
    spec.server_nic_bytes_per_s = 10e6;
    Network net(spec);
    const auto a = net.schedule(0, server_peer, 1'000'000, t0());
    const auto b = net.schedule(1, server_peer, 1'000'000, t0());
    CHECK(a.finish == t0() + 100ms);
    CHECK(b.finish == t0() + 200ms);
    // NIC out is a separate direction: the model going back does not wait for pushes.
    CHECK(net.schedule(server_peer, 2, 1'000'000, t0()).finish == t0() + 100ms);

    NetworkSpec fat = spec;
    fat.server_nic_bytes_per_s = 0;
    Network net2(fat);
    CHECK(net2.schedule(0, server_peer, 1'000'000, t0()).finish == t0() + 100ms);
    CHECK(net2.schedule(1, server_peer, 1'000'000, t0()).finish == t0() + 100ms);
  }
  SECTION("per-worker overrides") {
    NetworkSpec spec;
    spec.worker_link.latency = 1ms;
    spec.per_worker[1] = LinkSpec{0, 50ms, 0us};
    Network net(spec);
    CHECK(net.schedule(0, server_peer, 100, t0()).deliver_at == t0() + 1ms);
    CHECK(net.schedule(1, server_peer, 100, t0()).deliver_at == t0() + 50ms);
    CHECK(net.schedule(server_peer, 1, 100, t0()).deliver_at == t0() + 50ms);
  }
}

TEST_CASE("Network schedule: jitter stays in range, keeps FIFO and is reproducible") {
  NetworkSpec spec;
  spec.worker_link = LinkSpec{50e6, 1ms, 5ms};
  spec.server_nic_bytes_per_s = 100e6;
  spec.seed = 42;

  auto run = [](const NetworkSpec& s) {
    Network net(s);
    std::vector<psync::Transmission> out;
    for (int i = 0; i < 200; ++i) {
      const auto now = t0() + std::chrono::microseconds(137 * i);
      const psync::PeerId w = static_cast<psync::PeerId>(i % 3);
      out.push_back(net.schedule(w, server_peer, 10'000, now));
      out.push_back(net.schedule(server_peer, w, 20'000, now));
    }
    return out;
  };
  const auto a = run(spec);
  const auto b = run(spec);
  REQUIRE(a.size() == b.size());
  bool any_jitter = false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    CHECK(a[i].start == b[i].start);
    CHECK(a[i].finish == b[i].finish);
    CHECK(a[i].deliver_at == b[i].deliver_at);
    CHECK(a[i].deliver_at >= a[i].finish + 1ms);
    any_jitter = any_jitter || a[i].deliver_at > a[i].finish + 1ms;
  }
  CHECK(any_jitter);
  // Per pair, delivery times never go backwards.
  for (std::size_t i = 6; i < a.size(); ++i) CHECK(a[i].deliver_at >= a[i - 6].deliver_at);

  auto other = spec;
  other.seed = 43;
  const auto c = run(other);
  bool differs = false;
  for (std::size_t i = 0; i < a.size(); ++i) differs = differs || a[i].deliver_at != c[i].deliver_at;
  CHECK(differs);
}

TEST_CASE("Emulated: latency is honoured") {
  NetworkSpec spec;
  spec.worker_link.latency = 20ms;
  auto net = make_network(spec);
  InProcessHub hub;
  Emulated<InProcess> server(hub.endpoint(server_peer), net);
  Emulated<InProcess> worker(hub.endpoint(0), net);
  CHECK(worker.self() == 0);

  const auto sent = Clock::now();
  worker.send(server_peer, small_push(7));
  CHECK_FALSE(server.try_receive().has_value());
  auto e = server.receive(sent + slack);
  const auto elapsed = Clock::now() - sent;
  REQUIRE(e.has_value());
  CHECK(e->from == 0);
  REQUIRE(std::get_if<psync::msg::Push>(&e->message) != nullptr);
  CHECK(std::get<psync::msg::Push>(e->message).clock == 7);
  CHECK(elapsed >= 20ms);
  CHECK(elapsed < slack);

  // Also on the way back (server NIC has no latency; the worker's downlink has).
  const auto sent2 = Clock::now();
  server.send(0, psync::msg::Model{1, 0, 0, Eigen::VectorXf::Zero(4)});
  REQUIRE(worker.receive(sent2 + slack).has_value());
  CHECK(Clock::now() - sent2 >= 20ms);

  const auto st = worker.stats();
  CHECK(st.messages == 1);
  CHECK(st.delivered == 1);
  CHECK(st.bytes == psync::emulated_size(small_push(0)));
  CHECK(st.propagation == 20ms);
}

TEST_CASE("Emulated: bandwidth, and messages queue on a busy link") {
  NetworkSpec spec;
  spec.worker_link.bandwidth_bytes_per_s = 10e6;
  auto net = make_network(spec);
  InProcessHub hub;
  Emulated<InProcess> server(hub.endpoint(server_peer), net);
  Emulated<InProcess> worker(hub.endpoint(0), net);

  SECTION("1 MB over 10 MB/s takes >= 100 ms") {
    const auto sent = Clock::now();
    worker.send(server_peer, push_of_size(1'000'000));
    auto e = server.receive(sent + slack + 100ms);
    const auto elapsed = Clock::now() - sent;
    REQUIRE(e.has_value());
    CHECK(std::get<psync::msg::Push>(e->message).update.size() == (1'000'000 - 64) / 4);
    CHECK(elapsed >= 100ms);
    CHECK(elapsed < slack + 100ms);
    CHECK(worker.stats().transmission == 100ms);
  }
  SECTION("two 0.5 MB messages: the second finishes a transmission time after the first") {
    auto first = push_of_size(500'000, 1);
    auto second = push_of_size(500'000, 2);
    const auto sent = Clock::now();
    worker.send(server_peer, std::move(first));
    worker.send(server_peer, std::move(second));
    auto a = server.receive(sent + slack);
    const auto ta = Clock::now();
    auto b = server.receive(sent + slack + 100ms);
    const auto tb = Clock::now();
    REQUIRE(a.has_value());
    REQUIRE(b.has_value());
    CHECK(std::get<psync::msg::Push>(a->message).clock == 1);
    CHECK(std::get<psync::msg::Push>(b->message).clock == 2);
    CHECK(ta - sent >= 50ms);
    CHECK(tb - sent >= 100ms);
    CHECK(tb - sent < slack + 100ms);
    const auto st = worker.stats();
    CHECK(st.transmission == 100ms);
    // The second waited for the first (the exact amount depends on how fast the
    // two sends followed each other; the Network test checks it exactly).
    CHECK(st.queueing > 0ms);
  }
}

TEST_CASE("Emulated: the shared server NIC makes two simultaneous pushes take ~2x") {
  auto measure = [](double nic) {
    NetworkSpec spec;
    spec.worker_link.bandwidth_bytes_per_s = 10e6;
    spec.server_nic_bytes_per_s = nic;
    auto net = make_network(spec);
    InProcessHub hub;
    Emulated<InProcess> server(hub.endpoint(server_peer), net);
    Emulated<InProcess> w0(hub.endpoint(0), net);
    Emulated<InProcess> w1(hub.endpoint(1), net);
    const auto sent = Clock::now();
    w0.send(server_peer, push_of_size(1'000'000));
    w1.send(server_peer, push_of_size(1'000'000));
    REQUIRE(server.receive(sent + slack + 200ms).has_value());
    REQUIRE(server.receive(sent + slack + 200ms).has_value());
    return Clock::now() - sent;
  };
  const auto shared = measure(10e6);
  CHECK(shared >= 200ms);
  CHECK(shared < slack + 200ms);
  const auto unshared = measure(0);
  CHECK(unshared >= 100ms);
  CHECK(unshared < slack + 100ms);
}

TEST_CASE("Emulated: FIFO per sender under jitter") {
  NetworkSpec spec;
  spec.worker_link = LinkSpec{0, 1ms, 10ms};
  spec.seed = 7;
  auto net = make_network(spec);
  InProcessHub hub;
  Emulated<InProcess> server(hub.endpoint(server_peer), net);
  Emulated<InProcess> w0(hub.endpoint(0), net);
  Emulated<InProcess> w1(hub.endpoint(1), net);
  constexpr std::uint64_t n = 100;
  for (std::uint64_t i = 0; i < n; ++i) {
    w0.send(server_peer, small_push(i));
    w1.send(server_peer, small_push(i));
  }
  std::uint64_t next[2] = {0, 0};
  const auto deadline = Clock::now() + slack + 1s;
  for (std::uint64_t k = 0; k < 2 * n; ++k) {
    auto e = server.receive(deadline);
    REQUIRE(e.has_value());
    REQUIRE(e->from < 2);
    CHECK(std::get<psync::msg::Push>(e->message).clock == next[e->from]);
    ++next[e->from];
  }
  CHECK(next[0] == n);
  CHECK(next[1] == n);
  w0.close();  // the counter is bumped after the forward returns: settle it first
  CHECK(w0.stats().delivered == n);
  CHECK(w0.stats().flushed_early == 0);
}

TEST_CASE("Emulated: the server's messages to a slow worker do not hold up a fast one") {
  NetworkSpec spec;
  spec.per_worker[0] = LinkSpec{0, 300ms, 0us};
  spec.per_worker[1] = LinkSpec{0, 5ms, 0us};
  auto net = make_network(spec);
  InProcessHub hub;
  Emulated<InProcess> server(hub.endpoint(server_peer), net);
  Emulated<InProcess> slow(hub.endpoint(0), net);
  Emulated<InProcess> fast(hub.endpoint(1), net);
  const auto sent = Clock::now();
  server.send(0, psync::msg::Model{});
  server.send(1, psync::msg::Model{});
  REQUIRE(fast.receive(sent + slack).has_value());
  const auto fast_at = Clock::now() - sent;
  REQUIRE(slow.receive(sent + slack + 300ms).has_value());
  const auto slow_at = Clock::now() - sent;
  CHECK(fast_at >= 5ms);
  CHECK(slow_at >= 300ms);
  CHECK(fast_at < slow_at);
}

TEST_CASE("Emulated: a disabled network forwards directly") {
  InProcessHub hub;
  auto net = make_network(NetworkSpec{});
  Emulated<InProcess> server(hub.endpoint(server_peer), net);
  Emulated<InProcess> worker(hub.endpoint(0), net);
  Emulated<InProcess> nullnet(hub.endpoint(1), nullptr);
  worker.send(server_peer, small_push(3));
  nullnet.send(server_peer, small_push(4));
  // No thread hop: the messages are already in the mailbox.
  auto a = server.try_receive();
  auto b = server.try_receive();
  REQUIRE(a.has_value());
  REQUIRE(b.has_value());
  CHECK(std::get<psync::msg::Push>(a->message).clock == 3);
  CHECK(std::get<psync::msg::Push>(b->message).clock == 4);
  CHECK(worker.stats().delivered == 1);
  CHECK(worker.stats().total_delay() == Clock::duration{0});
  // Errors of the inner send surface at once.
  CHECK_THROWS_AS(worker.send(99, small_push(0)), psync::TransportError);
}

TEST_CASE("Emulated: close with pending messages") {
  NetworkSpec spec;
  spec.worker_link.latency = 10s;
  auto net = make_network(spec);
  InProcessHub hub;
  Emulated<InProcess> server(hub.endpoint(server_peer), net);

  SECTION("close() flushes at once, in order, then the inner endpoint says goodbye") {
    Emulated<InProcess> worker(hub.endpoint(0), net);
    for (std::uint64_t i = 0; i < 3; ++i) worker.send(server_peer, small_push(i));
    const auto before = Clock::now();
    worker.close();
    CHECK(Clock::now() - before < slack);
    for (std::uint64_t i = 0; i < 3; ++i) {
      auto e = server.try_receive();
      REQUIRE(e.has_value());
      CHECK(std::get<psync::msg::Push>(e->message).clock == i);
    }
    auto leave = server.try_receive();
    REQUIRE(leave.has_value());
    CHECK(std::holds_alternative<psync::msg::Leave>(leave->message));
    CHECK(worker.stats().flushed_early == 3);
    CHECK_THROWS_AS(worker.send(server_peer, small_push(9)), psync::TransportError);
    worker.close();  // idempotent
  }
  SECTION("close(deadline) keeps the schedule until the deadline") {
    NetworkSpec s2;
    s2.worker_link.latency = 30ms;
    auto net2 = make_network(s2);
    Emulated<InProcess> worker(hub.endpoint(1), net2);
    const auto sent = Clock::now();
    worker.send(server_peer, small_push(1));
    worker.close(sent + slack);
    CHECK(Clock::now() - sent >= 30ms);
    REQUIRE(server.try_receive().has_value());
    CHECK(worker.stats().flushed_early == 0);
  }
  SECTION("the destructor with pending messages to a vanished peer neither hangs nor throws") {
    const auto before = Clock::now();
    {
      Emulated<InProcess> worker(hub.endpoint(2), net);
      worker.send(server_peer, small_push(1));
      worker.send(server_peer, small_push(2));
      server.close();  // the destination is gone before delivery
    }
    CHECK(Clock::now() - before < slack);
  }
  SECTION("dropped deliveries are counted") {
    Emulated<InProcess> worker(hub.endpoint(3), net);
    worker.send(server_peer, small_push(1));
    server.close();
    worker.close();
    CHECK(worker.stats().dropped == 1);
    CHECK(worker.stats().delivered == 0);
  }
}

TEST_CASE("Emulated: a move keeps the endpoint and its pending messages") {
  NetworkSpec spec;
  spec.worker_link.latency = 10ms;
  auto net = make_network(spec);
  InProcessHub hub;
  Emulated<InProcess> server(hub.endpoint(server_peer), net);
  Emulated<InProcess> a(hub.endpoint(0), net);
  a.send(server_peer, small_push(1));
  Emulated<InProcess> b(std::move(a));
  b.send(server_peer, small_push(2));
  const auto deadline = Clock::now() + slack;
  for (std::uint64_t i = 1; i <= 2; ++i) {
    auto e = server.receive(deadline);
    REQUIRE(e.has_value());
    CHECK(std::get<psync::msg::Push>(e->message).clock == i);
  }
  CHECK_THROWS_AS(a.send(server_peer, small_push(3)), psync::TransportError);  // NOLINT(bugprone-use-after-move)
  CHECK(b.self() == 0);
}
