// Worker ids the server assigns (issue 10): a worker that joins as `any_worker` gets
// the lowest id never taken, named and assigned workers mix, an assigned worker keeps
// its id across a reconnection, ids restored from a checkpoint are never handed out,
// and max_workers still bounds everything. The rule (`WorkerIds`), the cores, the TCP
// endpoints and a whole cluster, each checked on its own.

#include "catch.hpp"
#include "toy_model.hpp"

#include <psync/core/server.hpp>
#include <psync/core/server_core.hpp>
#include <psync/core/worker.hpp>
#include <psync/core/worker_core.hpp>
#include <psync/core/worker_ids.hpp>
#include <psync/policies/bsp.hpp>
#include <psync/transport/in_process.hpp>
#include <psync/transport/tcp.hpp>

#include <algorithm>
#include <chrono>
#include <future>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace msg = psync::msg;
using namespace std::chrono_literals;
using psync::any_worker;
using psync::Clock;
using psync::PeerId;
using psync::server_peer;
using psync_test::Quadratic;
using psync_test::Target;

constexpr Eigen::Index dim = 4;
constexpr auto patience = 5s;

template <class M>
M expect(psync::TcpServer& s, PeerId from) {
  auto e = s.receive(Clock::now() + patience);
  REQUIRE(e.has_value());
  INFO("got a " << psync::message_name(e->message) << " from " << e->from);
  CHECK(e->from == from);
  REQUIRE(std::holds_alternative<M>(e->message));
  return std::get<M>(std::move(e->message));
}

template <class M>
M expect(psync::Tcp& t) {
  auto e = t.receive(Clock::now() + patience);
  REQUIRE(e.has_value());
  INFO("got a " << psync::message_name(e->message));
  REQUIRE(std::holds_alternative<M>(e->message));
  return std::get<M>(std::move(e->message));
}

/// Connects as `id` (any_worker: asks for one), sends its join; the server's endpoint
/// delivers the join under the id it bound, which this returns with the endpoint.
std::pair<psync::Tcp, PeerId> join(psync::TcpServer& server, PeerId id) {
  psync::Tcp t("127.0.0.1", server.port(), id);
  t.send(server_peer, msg::Join{id, dim, "bsp"});
  auto e = server.receive(Clock::now() + patience);
  REQUIRE(e.has_value());
  REQUIRE(std::holds_alternative<msg::Join>(e->message));
  const auto& j = std::get<msg::Join>(e->message);
  CHECK(j.worker == e->from);
  CHECK(j.assigned == (id == any_worker));
  if (id != any_worker) CHECK(e->from == id);
  return {std::move(t), e->from};
}

/// The server's join reply, which tells the worker its id.
void reply(psync::TcpServer& server, PeerId to) {
  msg::Model m;
  m.worker = to;
  m.parameters = Eigen::VectorXf::Zero(dim);
  server.send(to, std::move(m));
}

psync::ServerCoreOptions core_options(std::uint32_t expected = 1) {
  psync::ServerCoreOptions o;
  o.expected_workers = expected;
  return o;
}

msg::Join join_for(PeerId id, bool assigned = false) {
  msg::Join j{id, dim, "bsp"};
  j.assigned = assigned;
  return j;
}

/// The next message the core queued for `to`, which must be of kind M.
template <class M, class Core>
M sent(Core& core, PeerId to) {
  auto t = core.poll_transmit();
  REQUIRE(t.has_value());
  CHECK(t->to == to);
  INFO("sent a " << psync::message_name(t->message));
  REQUIRE(std::holds_alternative<M>(t->message));
  return std::get<M>(std::move(t->message));
}

}  // namespace

TEST_CASE("WorkerIds assigns the lowest id never taken", "[worker_ids]") {
  psync::WorkerIds ids;
  CHECK(ids.assign() == 0);
  CHECK(ids.assign() == 1);
  ids.take(3);  // a named worker
  CHECK(ids.assign() == 2);
  CHECK(ids.assign() == 4);  // 3 is taken
  ids.take(2);               // taken again (a rejoin): nothing changes
  CHECK(ids.size() == 5);
  CHECK(ids.taken(3));
  CHECK_FALSE(ids.taken(5));

  SECTION("a gap left by reserved ids is filled lowest first") {
    psync::WorkerIds r;
    for (PeerId id : {1u, 2u, 5u}) r.take(id);
    CHECK(r.assign() == 0);
    CHECK(r.assign() == 3);
    CHECK(r.assign() == 4);
    CHECK(r.assign() == 6);
  }
  SECTION("the sentinels are never taken, and the capacity bounds the set") {
    psync::WorkerIds small(2);
    small.take(any_worker);
    small.take(server_peer);
    CHECK(small.size() == 0);
    CHECK(small.assign() == 0);
    small.take(7);
    CHECK(small.assign() == any_worker);  // full: nothing left to assign
    small.take(9);                        // accepted, not remembered
    CHECK(small.size() == 2);
  }
}

TEST_CASE("the server core replies with the worker's id and refuses what it cannot assign", "[worker_ids][cores]") {
  const auto now = Clock::now();

  SECTION("every reply names the worker it is for") {
    psync::ServerCore<Quadratic, psync::Bsp> core(Quadratic(dim), core_options(1), {}, now);
    core.on_message(5, join_for(5, true), now);
    CHECK(sent<msg::Model>(core, 5).worker == 5);
  }
  SECTION("a join for any_worker that reaches the core is refused: the transport assigns") {
    psync::ServerCore<Quadratic, psync::Bsp> core(Quadratic(dim), core_options(1), {}, now);
    core.on_message(any_worker, join_for(any_worker), now);
    const auto e = sent<msg::Error>(core, any_worker);
    CHECK(e.code == msg::ErrorCode::bad_frame);
    CHECK(e.text.find("assigned worker id") != std::string::npos);
    CHECK(core.live_workers() == 0);
  }
  SECTION("an assigned id the core holds (restored from a checkpoint) is refused; its close is not the worker's") {
    psync::ServerCore<Quadratic, psync::Bsp> first(Quadratic(dim), core_options(2), {}, now);
    first.on_message(0, join_for(0), now);
    first.on_message(1, join_for(1), now);
    while (first.poll_transmit()) {
    }
    psync::ServerCore<Quadratic, psync::Bsp> core(Quadratic(dim), core_options(2), {}, now);
    core.restore(first.checkpoint_state(), now);
    CHECK(core.known_workers() == std::vector<PeerId>{0, 1});
    REQUIRE(core.awaited_workers() == 2);
    core.on_message(1, join_for(1, true), now);
    const auto e = sent<msg::Error>(core, 1);
    CHECK(e.code == msg::ErrorCode::duplicate_worker);
    core.on_message(1, msg::Leave{msg::LeaveReason::disconnected}, now);  // the refused connection closing
    CHECK(core.live_workers() == 2);                                      // worker 1 is still expected back
    core.on_message(1, join_for(1), now);                                 // and returns under its id
    CHECK(core.awaited_workers() == 1);
  }
  SECTION("max_workers refuses an assigned id past the bound") {
    auto o = core_options(1);
    o.max_workers = 2;
    psync::ServerCore<Quadratic, psync::Bsp> core(Quadratic(dim), o, {}, now);
    core.on_message(0, join_for(0, true), now);
    core.on_message(1, join_for(1, true), now);
    core.on_message(2, join_for(2, true), now);
    std::optional<msg::Error> refusal;
    while (auto t = core.poll_transmit()) {
      if (auto* e = std::get_if<msg::Error>(&t->message)) {
        CHECK(t->to == 2);
        refusal = *e;
      }
    }
    REQUIRE(refusal.has_value());
    CHECK(refusal->code == msg::ErrorCode::limit_exceeded);
    CHECK(core.live_workers() == 2);
  }
}

TEST_CASE("a worker core created as any_worker takes the id its join reply assigns", "[worker_ids][cores]") {
  const auto now = Clock::now();
  psync::WorkerCore<Quadratic, psync::Bsp> w(Quadratic(dim), any_worker, 0.1f, {});
  w.start(now);
  CHECK(sent<msg::Join>(w, server_peer).worker == any_worker);
  msg::Model m;
  m.worker = 2;
  m.parameters = Eigen::VectorXf::Zero(dim);
  w.on_message(std::move(m), now);
  CHECK(w.joined());
  CHECK(w.id() == 2);
  CHECK(w.report().id == 2);
  w.rejoin(now);  // after a lost connection it rejoins under the id it was given
  CHECK(sent<msg::Join>(w, server_peer).worker == 2);

  psync::WorkerCore<Quadratic, psync::Bsp> bad(Quadratic(dim), any_worker, 0.1f, {});
  bad.start(now);
  msg::Model none;
  none.worker = any_worker;
  none.parameters = Eigen::VectorXf::Zero(dim);
  CHECK_THROWS_AS(bad.on_message(std::move(none), now), psync::ProtocolError);
}

TEST_CASE("the in-process transport does not assign ids: any_worker is a ConfigError", "[worker_ids]") {
  psync::InProcessHub hub;
  CHECK_THROWS_AS(hub.endpoint(any_worker), psync::ConfigError);
}

TEST_CASE("the TCP server assigns the lowest free id; named and assigned workers mix", "[worker_ids][tcp]") {
  psync::TcpServer server;
  auto [a, ida] = join(server, any_worker);
  CHECK(ida == 0);
  auto [named, idn] = join(server, 2);
  CHECK(idn == 2);
  auto [b, idb] = join(server, any_worker);
  CHECK(idb == 1);
  auto [c, idc] = join(server, any_worker);
  CHECK(idc == 3);  // 2 is named

  // The reply tells each assigned worker its id; its frames carry it from then on.
  CHECK(a.self() == any_worker);
  reply(server, 0);
  CHECK(expect<msg::Model>(a).worker == 0);
  CHECK(a.self() == 0);
  a.send(server_peer, msg::Pull{0, {}});
  expect<msg::Pull>(server, 0);

  SECTION("a named worker cannot take an assigned id that is connected") {
    psync::Tcp dup("127.0.0.1", server.port(), 1);
    dup.send(server_peer, msg::Join{1, dim, "bsp"});
    const auto e = expect<msg::Error>(dup);
    CHECK(e.code == msg::ErrorCode::duplicate_worker);
  }
  SECTION("an assigned worker that drops keeps its id: it reconnects under it, and nobody else gets it") {
    a.close();
    expect<msg::Leave>(server, 0);
    auto [d, idd] = join(server, any_worker);
    CHECK(idd == 4);  // not 0: that one is worker 0's for good
    auto [again, id_again] = join(server, 0);
    CHECK(id_again == 0);
  }
}

TEST_CASE("ids reserved by the server (restored workers) are never assigned", "[worker_ids][tcp]") {
  psync::TcpServer server;
  server.reserve_worker_ids({0, 2});
  auto [a, ida] = join(server, any_worker);
  CHECK(ida == 1);
  auto [b, idb] = join(server, any_worker);
  CHECK(idb == 3);
}

TEST_CASE("a cluster of workers without ids trains over TCP as workers 0, 1, 2", "[worker_ids][tcp]") {
  psync::TcpServer endpoint;
  psync::ServerOptions so;
  so.expected_workers = 3;
  so.join_timeout = 10s;
  so.peer_timeout = 10s;
  psync::Server<Quadratic, psync::Bsp> server(Quadratic(dim), so);
  auto served = std::async(std::launch::async, [&] { return server.run(endpoint); });
  std::vector<std::future<std::pair<PeerId, psync::WorkerReport>>> workers;
  for (int i = 0; i < 3; ++i) {
    workers.push_back(std::async(std::launch::async, [&] {
      psync::WorkerOptions wo;
      wo.learning_rate = 0.1f;
      wo.max_steps = 40;
      wo.reply_timeout = 10s;
      psync::Worker<Quadratic, psync::Tcp, psync::Bsp> w(
          Quadratic(dim), psync::Tcp("127.0.0.1", endpoint.port(), any_worker), wo);
      const Target t{Eigen::VectorXf::Constant(dim, 1.0f)};
      psync::WorkerReport r = w.run([&]() -> const Target& { return t; });
      return std::pair{w.core().id(), r};
    }));
  }
  std::set<PeerId> ids;
  for (auto& w : workers) {
    auto [id, r] = w.get();
    CHECK(r.steps == 40);
    CHECK(r.id == id);
    ids.insert(id);
  }
  CHECK(ids == std::set<PeerId>{0, 1, 2});
  const psync::ServerReport r = served.get();
  CHECK(r.steps_applied == 120);
  std::set<PeerId> reported;
  for (const auto& p : r.peers) reported.insert(p.id);
  CHECK(reported == std::set<PeerId>{0, 1, 2});
}

// A worker restarted after a half-open drop finds its id held by its own stale
// connection (the server has not yet noticed it is dead: keepalive or the peer timeout
// will). With reconnection on, it retries its join with backoff and trains as soon as
// the stale connection is gone; without, or if the id stays taken, it fails naming why.
TEST_CASE("a worker whose id a stale connection holds retries its join until the stale one is gone",
          "[worker_ids][tcp][faults]") {
  psync::TcpServer endpoint;
  psync::ServerOptions so;
  so.expected_workers = 2;
  so.join_timeout = 10s;
  so.peer_timeout = 10s;
  psync::Server<Quadratic, psync::Bsp> server(Quadratic(dim), so);
  auto served = std::async(std::launch::async, [&] { return server.run(endpoint); });

  // The stale connection: worker 0's previous process, joined, then silent.
  std::optional<psync::Tcp> stale(std::in_place, "127.0.0.1", endpoint.port(), PeerId{0});
  stale->send(server_peer, msg::Join{0, dim, "bsp"});

  const Target target{Eigen::VectorXf::Constant(dim, 1.0f)};
  // Worker 1 takes 5 ms a step, so it is still training when worker 0 comes back.
  auto worker = [&](PeerId id, std::chrono::milliseconds reconnect) {
    psync::WorkerOptions wo;
    wo.learning_rate = 0.1f;
    wo.max_steps = id == 1 ? 300 : 30;
    wo.reply_timeout = 10s;
    wo.reconnect_timeout = reconnect;
    wo.reconnect_backoff = 50ms;
    wo.reconnect_backoff_max = 200ms;
    psync::Worker<Quadratic, psync::Tcp, psync::Bsp> w(Quadratic(dim), psync::Tcp("127.0.0.1", endpoint.port(), id), wo);
    const auto port = endpoint.port();
    w.reconnect_with([port, id] { return psync::Tcp("127.0.0.1", port, id); });
    return w.run([&]() -> const Target& {
      if (id == 1) std::this_thread::sleep_for(5ms);
      return target;
    });
  };
  auto healthy = std::async(std::launch::async, [&] { return worker(1, 0ms); });

  SECTION("without reconnection the restarted worker fails at once, naming the id in use") {
    try {
      worker(0, 0ms);
      FAIL("the join was not refused");
    } catch (const psync::IdInUseError& e) {
      CHECK(std::string(e.what()).find("duplicate_worker") != std::string::npos);
    }
  }
  SECTION("with reconnection it gives up when the id stays taken past its budget, saying so") {
    const auto t0 = Clock::now();
    try {
      worker(0, 600ms);
      FAIL("the join was not refused");
    } catch (const psync::IdInUseError& e) {
      CHECK(std::string(e.what()).find("join retried for 600 ms") != std::string::npos);
    }
    const auto took = Clock::now() - t0;
    CHECK(took >= 400ms);
    CHECK(took < 5s);
  }
  SECTION("with reconnection it trains once the stale connection is gone") {
    auto restarted = std::async(std::launch::async, [&] { return worker(0, 8000ms); });
    std::this_thread::sleep_for(700ms);  // a few refused joins
    REQUIRE(restarted.wait_for(0s) == std::future_status::timeout);
    stale.reset();  // what keepalive does to a dead peer's connection
    const psync::WorkerReport r0 = restarted.get();
    CHECK(r0.steps == 30);
    CHECK(healthy.get().steps == 300);
    const psync::ServerReport r = served.get();
    std::set<PeerId> reported;
    for (const auto& p : r.peers) {
      reported.insert(p.id);
      if (p.id == 0) {
        CHECK(p.pushes == 30);  // the restarted worker's; the stale one never pushed
        CHECK(p.left == msg::LeaveReason::finished);
      }
    }
    CHECK(reported == std::set<PeerId>{0, 1});
    return;
  }
  // The other sections: the stale connection goes, so the healthy worker and the server finish.
  stale.reset();
  CHECK(healthy.get().steps == 300);
  served.get();
}
