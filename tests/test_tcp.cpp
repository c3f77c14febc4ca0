// The TCP transport over real loopback sockets: message exchange between a server
// and several workers, large vectors, and every way a peer can misbehave or vanish.
// Every wait is bounded; the whole file runs in a few seconds.

#include "catch.hpp"
#include "tls_test_certs.hpp"
#include "toy_model.hpp"

#include <psync/core/server.hpp>
#include <psync/core/worker.hpp>
#include <psync/policies/bsp.hpp>
#include <psync/transport/tcp.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace asio = boost::asio;
namespace msg = psync::msg;
namespace wire = psync::wire;
using namespace std::chrono_literals;
using psync::Clock;
using psync::Envelope;
using psync::server_peer;
using Bytes = std::vector<std::byte>;

constexpr auto patience = 5s;  // bound on every wait for something that must happen

template <class T>
std::optional<Envelope> next(T& endpoint, std::chrono::milliseconds within = patience) {
  return endpoint.receive(Clock::now() + within);
}

// Receives within the bound and requires a message of kind M from `from`.
template <class M, class T>
M expect(T& endpoint, psync::PeerId from) {
  auto e = next(endpoint);
  REQUIRE(e.has_value());
  INFO("got a " << psync::message_name(e->message) << " from " << e->from);
  CHECK(e->from == from);
  REQUIRE(std::holds_alternative<M>(e->message));
  return std::get<M>(std::move(e->message));
}

Eigen::VectorXf ramp(Eigen::Index n, float scale = 1.0f) {
  Eigen::VectorXf v(n);
  for (Eigen::Index i = 0; i < n; ++i) v[i] = scale * static_cast<float>(i % 1000) + 0.25f;
  return v;
}

psync::TcpServerOptions server_options(std::uint64_t dimension = 0,
                                       std::chrono::milliseconds frame_timeout = 10000ms) {
  psync::TcpServerOptions o;
  o.limits.expected_dimension = dimension;
  o.frame_timeout = frame_timeout;
  return o;
}

// Joins worker `id` and consumes the Join on the server side.
psync::Tcp join(psync::TcpServer& server, psync::PeerId id, std::uint64_t dimension = 8,
                psync::TcpOptions options = {}) {
  psync::Tcp t("127.0.0.1", server.port(), id, options);
  t.send(server_peer, msg::Join{id, dimension, "bsp"});
  const auto j = expect<msg::Join>(server, id);
  CHECK(j.worker == id);
  return t;
}

// A raw socket that speaks (or breaks) the protocol by hand.
class RawClient {
 public:
  explicit RawClient(std::uint16_t port) { socket_.connect({asio::ip::make_address("127.0.0.1"), port}); }

  void write(const Bytes& b) { asio::write(socket_, asio::buffer(b)); }

  // Reads exactly `n` bytes within `within`; fewer if the peer closes or time runs out.
  Bytes read_exactly(std::size_t n, std::chrono::milliseconds within) {
    Bytes b(n);
    std::size_t got = 0;
    asio::async_read(socket_, asio::buffer(b), [&](const boost::system::error_code&, std::size_t k) { got = k; });
    io_.restart();
    io_.run_for(within);
    if (!io_.stopped()) {
      socket_.cancel();
      io_.restart();
      io_.run();
    }
    b.resize(got);
    return b;
  }

  // The server's first frame: its challenge.
  wire::Challenge read_challenge() {
    const Bytes b = read_exactly(wire::challenge_frame_size, 3000ms);
    REQUIRE(b.size() == wire::challenge_frame_size);
    return wire::decode_challenge(b);
  }

  // Reads until the peer closes or `within` passes; returns what arrived and whether it closed.
  std::pair<Bytes, bool> read_until_closed(std::chrono::milliseconds within) {
    Bytes all;
    bool closed = false;
    std::array<std::byte, 4096> buf{};
    std::function<void()> more = [&] {
      socket_.async_read_some(asio::buffer(buf), [&](const boost::system::error_code& ec, std::size_t n) {
        all.insert(all.end(), buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(n));
        if (ec) {
          closed = ec != asio::error::operation_aborted;
          return;
        }
        more();
      });
    };
    more();
    io_.restart();
    io_.run_for(within);
    if (!io_.stopped()) {
      socket_.cancel();
      io_.restart();
      io_.run();
    }
    return {all, closed};
  }

  void close() {
    boost::system::error_code ignored;
    socket_.close(ignored);
  }

 private:
  asio::io_context io_;
  asio::ip::tcp::socket socket_{io_};
};

// What a raw client read, without the challenge every connection starts with (checked).
Bytes after_challenge(const Bytes& bytes) {
  REQUIRE(bytes.size() >= wire::challenge_frame_size);
  (void)wire::decode_challenge(std::span(bytes).first(wire::challenge_frame_size));
  return Bytes(bytes.begin() + wire::challenge_frame_size, bytes.end());
}

// The Error frame a rejected raw client got back, checked to be followed by a close.
// With `challenge_read`, the client has already read the challenge.
msg::Error error_reply(RawClient& raw, bool challenge_read = false) {
  auto [all, closed] = raw.read_until_closed(3000ms);
  CHECK(closed);
  const Bytes bytes = challenge_read ? all : after_challenge(all);
  REQUIRE(bytes.size() >= wire::header_size);
  Envelope e = wire::decode(bytes, {});
  CHECK(e.from == server_peer);
  REQUIRE(std::holds_alternative<msg::Error>(e.message));
  return std::get<msg::Error>(e.message);
}

// A good worker still gets answers: the check that one bad peer harms no one else.
void still_works(psync::TcpServer& server, psync::Tcp& worker) {
  worker.send(server_peer, msg::Push{1, 0, 1, ramp(8)});
  auto push = expect<msg::Push>(server, worker.self());
  server.send(worker.self(), msg::Model{2, 1, 0, std::move(push.update)});
  CHECK(expect<msg::Model>(worker, server_peer).parameters == ramp(8));
}

/// Two BSP workers (ids 0 and 1, each endpoint from `connect(id, port)`) train a
/// Quadratic through the real Server over `endpoint`: both run their 50 steps, the
/// server applies all 100, and the model converges to the target.
template <class Connect>
void two_workers_train(psync::TcpServer& endpoint, Connect connect) {
  using psync_test::Quadratic;
  using psync_test::Target;
  constexpr Eigen::Index n = 6;
  psync::ServerOptions so;
  so.expected_workers = 2;
  so.join_timeout = 10s;
  so.peer_timeout = 10s;
  psync::Server<Quadratic, psync::Bsp> server(Quadratic(n), so);
  auto served = std::async(std::launch::async, [&] { return server.run(endpoint); });
  std::vector<std::future<psync::WorkerReport>> workers;
  for (psync::PeerId id = 0; id < 2; ++id) {
    workers.push_back(std::async(std::launch::async, [&, id] {
      psync::WorkerOptions wo;
      wo.learning_rate = 0.1f;
      wo.max_steps = 50;
      wo.reply_timeout = 10s;
      psync::Worker<Quadratic, psync::Tcp, psync::Bsp> w(Quadratic(n), connect(id, endpoint.port()), wo);
      const Target t{Eigen::VectorXf::Constant(n, 1.0f)};
      return w.run([&]() -> const Target& { return t; });
    }));
  }
  for (auto& w : workers) CHECK(w.get().steps == 50);
  const psync::ServerReport r = served.get();
  CHECK(r.steps_applied == 100);
  CHECK(r.peers.size() == 2);
  CHECK((server.model().parameters().array() - 1.0f).abs().maxCoeff() < 0.01f);  // converged to the target
}

}  // namespace

TEST_CASE("a server and three workers exchange every message kind", "[tcp]") {
  psync::TcpServer server;
  REQUIRE(server.port() != 0);
  CHECK(server.self() == server_peer);

  std::vector<psync::Tcp> workers;
  for (psync::PeerId id = 0; id < 3; ++id) workers.push_back(join(server, id));
  for (auto& w : workers) {
    const psync::PeerId id = w.self();
    server.send(id, msg::Model{1, 0, 5, ramp(8, static_cast<float>(id))});
    const auto m = expect<msg::Model>(w, server_peer);
    CHECK(m.version == 1);
    CHECK(m.held_ns == 5);
    CHECK(m.parameters == ramp(8, static_cast<float>(id)));

    w.send(server_peer, msg::Push{3, 1, 2, ramp(8, 2.0f)});
    const auto p = expect<msg::Push>(server, id);
    CHECK(p.clock == 3);
    CHECK(p.base_version == 1);
    CHECK(p.steps == 2);
    CHECK(p.update == ramp(8, 2.0f));

    w.send(server_peer, msg::Pull{4, ramp(8)});
    const auto pull = expect<msg::Pull>(server, id);
    CHECK(pull.clock == 4);
    CHECK(pull.buffer.size() == 0);  // the server allocates a read's buffer only once it admits the read

    w.send(server_peer, msg::Error{msg::ErrorCode::bad_clock, "from worker"});
    const auto err = expect<msg::Error>(server, id);
    CHECK(err.code == msg::ErrorCode::bad_clock);
    CHECK(err.text == "from worker");

    server.send(id, msg::Leave{msg::LeaveReason::timed_out});
    CHECK(expect<msg::Leave>(w, server_peer).reason == msg::LeaveReason::timed_out);
    server.send(id, msg::Join{id, 8, "ssp:2"});  // odd, but the transport does not judge content
    CHECK(expect<msg::Join>(w, server_peer).policy == "ssp:2");
  }
  for (auto& w : workers) {
    w.send(server_peer, msg::Leave{msg::LeaveReason::finished});
    CHECK(expect<msg::Leave>(server, w.self()).reason == msg::LeaveReason::finished);
  }
  // Closing a worker flushes its queue first, then the server sees it disconnect.
  workers[1].send(server_peer, msg::Push{9, 0, 1, ramp(8)});
  workers[1].close();
  CHECK(expect<msg::Push>(server, 1).clock == 9);
  CHECK(expect<msg::Leave>(server, 1).reason == msg::LeaveReason::disconnected);
  CHECK_THROWS_AS(server.send(1, msg::Leave{}), psync::TransportError);
  CHECK_THROWS_AS(workers[1].send(server_peer, msg::Leave{}), psync::TransportError);
  // An error frame from the server ends the conversation: delivered, then the connection closes.
  server.send(2, msg::Error{msg::ErrorCode::policy_mismatch, "from server"});
  CHECK(expect<msg::Error>(workers[2], server_peer).text == "from server");
  CHECK(expect<msg::Leave>(workers[2], server_peer).reason == msg::LeaveReason::disconnected);
  CHECK(expect<msg::Leave>(server, 2).reason == msg::LeaveReason::disconnected);
  CHECK_THROWS_AS(server.send(2, msg::Leave{}), psync::TransportError);
  CHECK(server.try_receive() == std::nullopt);
}

TEST_CASE("a 1M-float vector goes there and back exactly, in reused buffers", "[tcp]") {
  psync::TcpServer server;
  psync::Tcp worker = join(server, 0, 1'000'000);
  Eigen::VectorXf v = Eigen::VectorXf::Random(1'000'000);
  const Eigen::VectorXf original = v;
  for (int round = 0; round < 3; ++round) {
    worker.send(server_peer, msg::Push{static_cast<std::uint64_t>(round), 0, 1, std::move(v)});
    auto push = expect<msg::Push>(server, 0);
    REQUIRE(push.update == original);
    server.send(0, msg::Model{1, 0, 0, std::move(push.update)});
    v = expect<msg::Model>(worker, server_peer).parameters;
    REQUIRE(v == original);
  }
  // Pull: only the size travels, and the server's transport allocates nothing for it.
  worker.send(server_peer, msg::Pull{5, std::move(v)});
  auto pull = expect<msg::Pull>(server, 0);
  REQUIRE(pull.buffer.size() == 0);
  pull.buffer = original;
  server.send(0, msg::Model{2, 0, 0, std::move(pull.buffer)});
  CHECK(expect<msg::Model>(worker, server_peer).parameters == original);
}

TEST_CASE("a shared snapshot is written from its own memory and kept until written; its storage is not reused before", "[tcp][snapshot]") {
  constexpr Eigen::Index n = 2'000'000;  // more than a socket buffer: the write outlives send()
  psync::TcpServer server;
  psync::Tcp a = join(server, 0, n);
  psync::Tcp b = join(server, 1, n);
  psync::ModelSnapshotPool pool;
  const Eigen::VectorXf first = ramp(n), second = ramp(n, 2.0f);
  {
    psync::ModelSnapshot s = pool.make(first);
    for (psync::PeerId w : {0u, 1u}) {
      msg::Model m{1, 0, 0, {}, w};
      m.shared = s;  // both replies share one vector
      server.send(w, std::move(m));
    }
  }
  // Only the connections hold the snapshot now (the rest of a write that did not fit the
  // socket buffer runs on the I/O thread): the next snapshot must not write over it.
  psync::ModelSnapshot next = pool.make(second);
  CHECK(next.values() == second);
  CHECK(expect<msg::Model>(a, server_peer).parameters == first);
  CHECK(expect<msg::Model>(b, server_peer).parameters == first);
  // Reused only if both writes had finished by then (timing), never while one was running.
  CHECK(pool.kept() <= 2);
}

TEST_CASE("garbage gets an error frame and a closed connection; others are unaffected", "[tcp]") {
  psync::TcpServer server;
  psync::Tcp good = join(server, 1);

  RawClient raw(server.port());
  const std::string http = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
  Bytes garbage(http.size());
  std::memcpy(garbage.data(), http.data(), http.size());
  raw.write(garbage);
  const auto e = error_reply(raw);
  CHECK(e.code == msg::ErrorCode::bad_frame);
  CHECK(e.text == "bad magic 0x47455420 (expected 'PSYN')");
  still_works(server, good);
  CHECK(server.try_receive() == std::nullopt);  // the unjoined peer leaves no trace
}

TEST_CASE("a truncated header followed by a close is dropped quietly", "[tcp]") {
  psync::TcpServer server;
  psync::Tcp good = join(server, 1);
  {
    RawClient raw(server.port());
    const Bytes join_frame = wire::encode_to_bytes(4, msg::Join{4, 8, "bsp"});
    raw.write(Bytes(join_frame.begin(), join_frame.begin() + 7));
    raw.close();
  }
  {
    // A joined peer that dies mid-frame is reported gone.
    RawClient raw(server.port());
    raw.write(wire::encode_to_bytes(5, msg::Join{5, 8, "bsp"}));
    CHECK(expect<msg::Join>(server, 5).worker == 5);
    const Bytes push = wire::encode_to_bytes(5, msg::Push{0, 0, 1, ramp(8)});
    raw.write(Bytes(push.begin(), push.begin() + 30));
    raw.close();
    CHECK(expect<msg::Leave>(server, 5).reason == msg::LeaveReason::disconnected);
  }
  still_works(server, good);
}

TEST_CASE("header and content violations are answered and closed", "[tcp]") {
  psync::TcpServer server(server_options(784));
  psync::Tcp good = join(server, 1, 784);

  SECTION("oversized length") {
    RawClient raw(server.port());
    Bytes b = wire::encode_to_bytes(2, msg::Join{2, 784, "bsp"});
    const std::uint64_t huge = std::uint64_t{1} << 32;
    std::memcpy(b.data() + 12, &huge, 8);
    raw.write(Bytes(b.begin(), b.begin() + wire::header_size));
    const auto e = error_reply(raw);
    CHECK(e.code == msg::ErrorCode::bad_frame);
    CHECK(e.text == "payload length 4294967296 above limit 67108864");
  }
  SECTION("a frame before join") {
    RawClient raw(server.port());
    raw.write(wire::encode_to_bytes(2, msg::Pull{0, {}}));
    const auto e = error_reply(raw);
    CHECK(e.code == msg::ErrorCode::not_joined);
    CHECK(e.text == "first frame must be a join, got a pull");
  }
  SECTION("a sender id that is not the joined one") {
    RawClient raw(server.port());
    raw.write(wire::encode_to_bytes(2, msg::Join{2, 784, "bsp"}));
    CHECK(expect<msg::Join>(server, 2).worker == 2);
    raw.write(wire::encode_to_bytes(3, msg::Leave{}));
    const auto e = error_reply(raw);
    CHECK(e.code == msg::ErrorCode::bad_frame);
    CHECK(e.text == "frame with sender id 3 on worker 2's connection");
    CHECK(expect<msg::Leave>(server, 2).reason == msg::LeaveReason::disconnected);
  }
  SECTION("a second join under another id") {
    RawClient raw(server.port());
    raw.write(wire::encode_to_bytes(2, msg::Join{2, 784, "bsp"}));
    CHECK(expect<msg::Join>(server, 2).worker == 2);
    raw.write(wire::encode_to_bytes(2, msg::Join{2, 784, "asp"}));  // a re-join is passed on
    CHECK(expect<msg::Join>(server, 2).policy == "asp");
    raw.write(wire::encode_to_bytes(2, msg::Join{1, 784, "bsp"}));
    CHECK(error_reply(raw).text == "join for worker 1 on worker 2's connection");
    CHECK(expect<msg::Leave>(server, 2).reason == msg::LeaveReason::disconnected);
  }
  SECTION("wrong dimension from a joined worker") {
    psync::Tcp bad = join(server, 2, 784);
    bad.send(server_peer, msg::Push{0, 0, 1, ramp(10)});
    const auto e = expect<msg::Error>(bad, server_peer);
    CHECK(e.code == msg::ErrorCode::wrong_dimension);
    CHECK(e.text == "parameter vector has 10 floats, model has 784");
    CHECK(expect<msg::Leave>(bad, server_peer).reason == msg::LeaveReason::disconnected);
    CHECK(expect<msg::Leave>(server, 2).reason == msg::LeaveReason::disconnected);
    CHECK_THROWS_AS(bad.send(server_peer, msg::Leave{}), psync::TransportError);
  }
  // The good worker never noticed.
  good.send(server_peer, msg::Push{1, 0, 1, ramp(784)});
  auto push = expect<msg::Push>(server, 1);
  server.send(1, msg::Model{1, 0, 0, std::move(push.update)});
  CHECK(expect<msg::Model>(good, server_peer).parameters == ramp(784));
}

TEST_CASE("a slow-loris peer is cut off after the frame timeout", "[tcp]") {
  psync::TcpServer server(server_options(0, 500ms));
  psync::Tcp good = join(server, 1);
  RawClient raw(server.port());
  const Bytes frame = wire::encode_to_bytes(7, msg::Join{7, 8, "bsp"});
  const auto start = Clock::now();
  Bytes reply;
  bool closed = false;
  for (std::size_t i = 0; i < frame.size() && !closed && Clock::now() - start < 4s; ++i) {
    raw.write(Bytes{frame[i]});  // one byte every 200 ms
    auto [bytes, c] = raw.read_until_closed(200ms);
    reply.insert(reply.end(), bytes.begin(), bytes.end());
    closed = c;
  }
  const auto took = Clock::now() - start;
  CHECK(closed);
  CHECK(took >= 450ms);
  CHECK(took < 2000ms);
  const auto e = std::get<msg::Error>(wire::decode(after_challenge(reply), {}).message);
  CHECK(e.code == msg::ErrorCode::bad_frame);
  CHECK(e.text == "frame not completed within 500 ms");
  still_works(server, good);
  CHECK(server.try_receive() == std::nullopt);
}

TEST_CASE("a duplicate worker id is refused and the first keeps working", "[tcp]") {
  psync::TcpServer server;
  psync::Tcp first = join(server, 3);
  psync::Tcp second("127.0.0.1", server.port(), 3);
  second.send(server_peer, msg::Join{3, 8, "bsp"});
  const auto e = expect<msg::Error>(second, server_peer);
  CHECK(e.code == msg::ErrorCode::duplicate_worker);
  CHECK(e.text == "worker 3 is already connected");
  CHECK(expect<msg::Leave>(second, server_peer).reason == msg::LeaveReason::disconnected);
  still_works(server, first);
  CHECK(server.try_receive() == std::nullopt);  // neither a Join nor a Leave for the refused one
}

TEST_CASE("a vanished worker is reported as a disconnect", "[tcp]") {
  psync::TcpServer server;
  SECTION("endpoint destroyed") {
    { psync::Tcp w = join(server, 4); }
    CHECK(expect<msg::Leave>(server, 4).reason == msg::LeaveReason::disconnected);
  }
  SECTION("socket closed under it") {
    RawClient raw(server.port());
    raw.write(wire::encode_to_bytes(4, msg::Join{4, 8, "bsp"}));
    CHECK(expect<msg::Join>(server, 4).worker == 4);
    raw.close();
    CHECK(expect<msg::Leave>(server, 4).reason == msg::LeaveReason::disconnected);
  }
  CHECK_THROWS_AS(server.send(4, msg::Leave{}), psync::TransportError);
  // The id is free again.
  psync::Tcp again = join(server, 4);
  still_works(server, again);
}

TEST_CASE("a vanished server is reported to its workers", "[tcp]") {
  std::optional<psync::TcpServer> server(std::in_place);
  psync::Tcp w = join(*server, 0);
  server->send(0, msg::Model{1, 0, 0, ramp(8)});
  server.reset();  // flushes the model, then closes
  CHECK(expect<msg::Model>(w, server_peer).version == 1);
  CHECK(expect<msg::Leave>(w, server_peer).reason == msg::LeaveReason::disconnected);
  CHECK_THROWS_AS(w.send(server_peer, msg::Push{0, 0, 1, ramp(8)}), psync::TransportError);
  CHECK(w.try_receive() == std::nullopt);
}

TEST_CASE("connecting retries until the server is up, and gives up at the deadline", "[tcp]") {
  std::uint16_t port = 0;
  {
    psync::TcpServer probe;
    port = probe.port();
  }
  SECTION("server starts late") {
    std::optional<psync::TcpServer> server;
    std::thread starter([&] {
      std::this_thread::sleep_for(300ms);
      psync::TcpServerOptions o;
      o.port = port;
      server.emplace(o);
    });
    psync::TcpOptions o;
    o.connect_timeout = 5000ms;
    psync::Tcp w("127.0.0.1", port, 2, o);
    starter.join();
    w.send(server_peer, msg::Join{2, 8, "bsp"});
    CHECK(expect<msg::Join>(*server, 2).worker == 2);
  }
  SECTION("nobody there") {
    psync::TcpOptions o;
    o.connect_timeout = 300ms;
    const auto start = Clock::now();
    try {
      psync::Tcp w("127.0.0.1", port, 2, o);
      FAIL("connected to nothing");
    } catch (const psync::TransportError& e) {
      CHECK(std::string(e.what()).find("127.0.0.1:" + std::to_string(port)) != std::string::npos);
    }
    CHECK(Clock::now() - start < 2s);
  }
}

TEST_CASE("endpoint misuse throws TransportError", "[tcp]") {
  psync::TcpServer server;
  CHECK_THROWS_AS(server.send(99, msg::Leave{}), psync::TransportError);
  psync::Tcp w = join(server, 0);
  CHECK_THROWS_AS(w.send(5, msg::Leave{}), psync::TransportError);
  CHECK_THROWS_AS(w.send(server_peer, msg::Join{0, 1, std::string(300, 'x')}), psync::ProtocolError);
  CHECK(w.self() == 0);

  // A receiver blocked when the endpoint closes wakes at once.
  std::atomic<bool> threw{false};
  std::thread blocked([&] {
    try {
      (void)server.receive(Clock::now() + 10s);
    } catch (const psync::TransportError&) {
      threw = true;
    }
  });
  std::this_thread::sleep_for(50ms);
  const auto start = Clock::now();
  server.close();
  blocked.join();
  CHECK(threw);
  CHECK(Clock::now() - start < 3s);
  CHECK_THROWS_AS(server.send(0, msg::Leave{}), psync::TransportError);
  CHECK_THROWS_AS(server.try_receive(), psync::TransportError);

  psync::TcpServer moved_from;
  psync::TcpServer target = std::move(moved_from);
  CHECK(target.port() != 0);
  CHECK_THROWS_AS(moved_from.try_receive(), psync::TransportError);  // NOLINT(bugprone-use-after-move)
}

TEST_CASE("concurrent sends never interleave and keep each sender's order", "[tcp]") {
  // Bounds well above this test's bursts: it checks ordering, not the bounds.
  psync::TcpServerOptions so;
  so.max_queued_sends = 1000;
  psync::TcpServer server(so);
  psync::TcpOptions wo;
  wo.max_queued_sends = 1000;
  // Dimension 0 in the join: vectors of every size below are accepted (a worker
  // endpoint otherwise refuses models of another size than its join declared).
  psync::Tcp w = join(server, 0, 0, wo);
  constexpr int per_thread = 300;
  auto sender = [&](std::uint32_t tag) {
    for (int i = 0; i < per_thread; ++i) {
      server.send(0, msg::Model{static_cast<std::uint64_t>(i), tag, 0, ramp(1 + i % 50, static_cast<float>(tag))});
    }
  };
  std::thread a(sender, 1), b(sender, 2);
  std::array<std::uint64_t, 3> next_version{0, 0, 0};
  for (int n = 0; n < 2 * per_thread; ++n) {
    auto m = expect<msg::Model>(w, server_peer);
    REQUIRE((m.min_clock == 1 || m.min_clock == 2));
    REQUIRE(m.version == next_version[m.min_clock]++);
    REQUIRE(m.parameters == ramp(static_cast<Eigen::Index>(1 + m.version % 50), static_cast<float>(m.min_clock)));
  }
  a.join();
  b.join();
  // And the other direction, from two threads of the worker.
  std::thread c([&] {
    for (int i = 0; i < per_thread; ++i) w.send(server_peer, msg::Push{static_cast<std::uint64_t>(i), 1, 0, ramp(3)});
  });
  std::thread d([&] {
    for (int i = 0; i < per_thread; ++i) w.send(server_peer, msg::Push{static_cast<std::uint64_t>(i), 2, 0, ramp(3)});
  });
  std::array<std::uint64_t, 3> next_clock{0, 0, 0};
  for (int n = 0; n < 2 * per_thread; ++n) {
    auto p = expect<msg::Push>(server, 0);
    REQUIRE(p.clock == next_clock[p.base_version]++);
  }
  c.join();
  d.join();
}

// Bounds far above a stream's length, so only the vanishing peer stops it.
psync::TcpServerOptions unbounded_server() {
  psync::TcpServerOptions o;
  o.max_queued_sends = o.max_queued_receives = 1000;
  return o;
}
psync::TcpOptions unbounded_worker() {
  psync::TcpOptions o;
  o.max_queued_sends = o.max_queued_receives = 1000;
  return o;
}

TEST_CASE("a peer vanishing during a stream of large writes is handled on both sides", "[tcp]") {
  SECTION("worker vanishes while the server writes") {
    psync::TcpServer server(unbounded_server());
    auto w = std::make_unique<psync::Tcp>("127.0.0.1", server.port(), 0, unbounded_worker());
    w->send(server_peer, msg::Join{0, 100'000, "bsp"});
    CHECK(expect<msg::Join>(server, 0).worker == 0);
    std::atomic<bool> refused{false};
    std::thread writer([&] {
      const Eigen::VectorXf v = ramp(100'000);
      for (int i = 0; i < 300; ++i) {
        try {
          server.send(0, msg::Model{static_cast<std::uint64_t>(i), 0, 0, v});
        } catch (const psync::TransportError&) {
          refused = true;
          return;
        }
        std::this_thread::sleep_for(1ms);
      }
    });
    std::this_thread::sleep_for(30ms);
    w.reset();
    CHECK(expect<msg::Leave>(server, 0).reason == msg::LeaveReason::disconnected);
    writer.join();
    CHECK(refused);
  }
  SECTION("server vanishes while the worker writes") {
    std::optional<psync::TcpServer> server(std::in_place, unbounded_server());
    psync::Tcp w = join(*server, 0, 100'000, unbounded_worker());
    std::atomic<bool> refused{false};
    std::thread writer([&] {
      const Eigen::VectorXf v = ramp(100'000);
      for (int i = 0; i < 300; ++i) {
        try {
          w.send(server_peer, msg::Push{static_cast<std::uint64_t>(i), 0, 1, v});
        } catch (const psync::TransportError&) {
          refused = true;
          return;
        }
        std::this_thread::sleep_for(1ms);
      }
    });
    std::this_thread::sleep_for(30ms);
    server.reset();
    writer.join();
    CHECK(refused);
    // The connection stops accepting sends before the I/O thread queues the Leave, so
    // the Leave may still be on its way when the writer gives up: wait for it, bounded.
    bool left = false;
    const auto deadline = Clock::now() + 2s;
    while (!left) {
      auto e = w.receive(deadline);
      if (!e) break;
      left = std::holds_alternative<msg::Leave>(e->message);
    }
    CHECK(left);
  }
}

// ---- bounds: what one peer can make the server hold ----

TEST_CASE("a flooding peer meets backpressure: the receive queue holds its bound, nothing is lost", "[tcp][bounds]") {
  psync::TcpServerOptions so;
  so.max_queued_receives = 4;
  psync::TcpServer server(so);
  constexpr Eigen::Index n = 65'536;  // 256 KB per push: 200 of them overflow every socket buffer
  constexpr int pushes = 200;
  RawClient raw(server.port());
  raw.write(wire::encode_to_bytes(0, msg::Join{0, n, "bsp"}));
  CHECK(expect<msg::Join>(server, 0).worker == 0);
  std::atomic<int> written{0};
  std::thread flood([&] {
    for (int i = 0; i < pushes; ++i) {
      raw.write(wire::encode_to_bytes(0, msg::Push{static_cast<std::uint64_t>(i), 0, 1, ramp(n)}));
      ++written;
    }
  });
  std::this_thread::sleep_for(500ms);
  // The server took nothing: the connection stopped being read at the bound, and the
  // flooder is blocked by TCP, far from done.
  CHECK(server.queued_receives() == 4);
  CHECK(written.load() < pushes);
  for (int i = 0; i < pushes; ++i) {
    const auto p = expect<msg::Push>(server, 0);
    REQUIRE(p.clock == static_cast<std::uint64_t>(i));
  }
  flood.join();
  CHECK(server.queued_receives() == 0);
}

TEST_CASE("a peer that does not read its replies is disconnected at the send bound", "[tcp][bounds]") {
  psync::TcpServerOptions so;
  so.max_queued_sends = 3;
  psync::TcpServer server(so);
  psync::Tcp good = join(server, 1, 8);
  RawClient raw(server.port());  // joins, then never reads
  raw.write(wire::encode_to_bytes(0, msg::Join{0, 1'000'000, "bsp"}));
  CHECK(expect<msg::Join>(server, 0).worker == 0);
  const Eigen::VectorXf v = ramp(1'000'000);
  int sent = 0;
  std::string refusal;
  for (; sent < 100; ++sent) {
    try {
      server.send(0, msg::Model{static_cast<std::uint64_t>(sent), 0, 0, v});
    } catch (const psync::TransportError& e) {
      refusal = e.what();
      break;
    }
  }
  INFO(refusal);
  CHECK(sent < 100);  // 4 MB frames: a few fill the socket buffers, then 3 wait, then the bound
  CHECK(refusal.find("max_queued_sends 3") != std::string::npos);
  CHECK(expect<msg::Leave>(server, 0).reason == msg::LeaveReason::disconnected);
  CHECK_THROWS_AS(server.send(0, msg::Leave{}), psync::TransportError);
  still_works(server, good);
}

TEST_CASE("before its join a connection may send one join, small, in time", "[tcp][bounds]") {
  psync::TcpServerOptions so;
  so.join_timeout = 300ms;
  psync::TcpServer server(so);
  psync::Tcp good = join(server, 1);
  SECTION("a push header before join is refused before its payload is read") {
    RawClient raw(server.port());
    Bytes b = wire::encode_to_bytes(2, msg::Push{0, 0, 1, ramp(1000)});
    raw.write(Bytes(b.begin(), b.begin() + wire::header_size));  // the header alone: 4 KB announced
    const auto e = error_reply(raw);
    CHECK(e.code == msg::ErrorCode::not_joined);
    CHECK(e.text == "first frame must be a join, got a push");
  }
  SECTION("a join frame longer than any join") {
    RawClient raw(server.port());
    Bytes b = wire::encode_to_bytes(2, msg::Join{2, 8, "bsp"});
    const std::uint64_t big = 100'000;
    std::memcpy(b.data() + 12, &big, 8);
    raw.write(Bytes(b.begin(), b.begin() + wire::header_size));
    const auto e = error_reply(raw);
    CHECK(e.code == msg::ErrorCode::bad_frame);
    CHECK(e.text == "join payload of 100000 bytes, above the join limit " + std::to_string(wire::max_join_payload));
  }
  SECTION("an idle connection is closed at the join deadline") {
    RawClient raw(server.port());
    const auto start = Clock::now();
    const auto e = error_reply(raw);
    CHECK(Clock::now() - start >= 250ms);
    CHECK(e.code == msg::ErrorCode::not_joined);
    CHECK(e.text == "no join within 300 ms of connecting");
  }
  still_works(server, good);
  CHECK(server.try_receive() == std::nullopt);
}

TEST_CASE("connections past the pending cap evict the oldest unjoined; past the total cap they are refused",
          "[tcp][bounds]") {
  psync::TcpServerOptions so;
  so.max_pending_connections = 3;
  so.max_connections = 6;
  psync::TcpServer server(so);
  psync::Tcp joined = join(server, 1);
  std::vector<std::unique_ptr<RawClient>> idle;
  for (int i = 0; i < 5; ++i) {
    idle.push_back(std::make_unique<RawClient>(server.port()));
    std::this_thread::sleep_for(50ms);  // accepted in this order
  }
  // The two oldest were closed to make room; the three newest are open.
  for (int i = 0; i < 2; ++i) CHECK(idle[static_cast<std::size_t>(i)]->read_until_closed(2000ms).second);
  for (int i = 2; i < 5; ++i) CHECK_FALSE(idle[static_cast<std::size_t>(i)]->read_until_closed(100ms).second);
  // A worker still joins (it evicts one more idle connection) and trains.
  psync::Tcp late = join(server, 2);
  still_works(server, late);
  still_works(server, joined);
  CHECK(server.connection_count() == 4);  // 2 joined + 2 pending
  // Two more: 6 open, the cap; the next connection is closed before it is read.
  psync::Tcp third = join(server, 3);
  RawClient fill(server.port());
  std::this_thread::sleep_for(50ms);
  CHECK(server.connection_count() == 6);
  RawClient over(server.port());
  CHECK(over.read_until_closed(2000ms).second);
  CHECK_FALSE(fill.read_until_closed(100ms).second);
  still_works(server, third);
}

TEST_CASE("the server's dimension, once known, refuses a wrong-sized vector before it is read", "[tcp][bounds]") {
  psync::TcpServer server;
  server.expect_dimension(16);
  RawClient raw(server.port());
  raw.write(wire::encode_to_bytes(4, msg::Join{4, 1'000'000, "bsp"}));
  const auto e = error_reply(raw);
  CHECK(e.code == msg::ErrorCode::wrong_dimension);
  psync::Tcp good = join(server, 1, 16);
  good.send(server_peer, msg::Push{0, 0, 1, ramp(17)});
  CHECK(expect<msg::Error>(good, server_peer).code == msg::ErrorCode::wrong_dimension);
}

TEST_CASE("a model larger than max_payload_bytes travels once its dimension is known", "[tcp][bounds]") {
  psync::TcpServerOptions so;
  so.limits.max_payload_bytes = 1024;  // 256 floats
  psync::TcpServer server(so);
  server.expect_dimension(1000);
  psync::TcpOptions wo;
  wo.limits.max_payload_bytes = 1024;
  psync::Tcp w = join(server, 0, 1000, wo);  // the worker's join tells its endpoint the size too
  w.send(server_peer, msg::Push{0, 0, 1, ramp(1000)});
  auto p = expect<msg::Push>(server, 0);
  CHECK(p.update == ramp(1000));
  server.send(0, msg::Model{1, 0, 0, std::move(p.update)});
  CHECK(expect<msg::Model>(w, server_peer).parameters == ramp(1000));
  // Any other size is still bounded: 2000 floats is over the raised limit (a 1000-float model's frame).
  w.send(server_peer, msg::Push{1, 0, 1, ramp(2000)});
  const auto e = expect<msg::Error>(w, server_peer);
  CHECK(e.code == msg::ErrorCode::bad_frame);
  CHECK(e.text == "payload length " + std::to_string(wire::fixed_size(wire::MessageType::push) + 8000) + " above limit " +
                       std::to_string(wire::fixed_size(wire::MessageType::model) + 4000));
}

// ---- authentication: a shared secret proven at join (HMAC-SHA256 over the server's challenge) ----

namespace {

const psync::Secret cluster_secret("a shared secret of the cluster, 32+ bytes long");

psync::TcpServerOptions auth_server(const psync::Secret& secret = cluster_secret) {
  psync::TcpServerOptions o;
  o.secret = secret;
  return o;
}

psync::TcpOptions auth_worker(const psync::Secret& secret = cluster_secret) {
  psync::TcpOptions o;
  o.secret = secret;
  return o;
}

bool contains(const std::string& text, const std::string& what) { return text.find(what) != std::string::npos; }

/// A fresh directory for secret files, removed at the end.
struct SecretDir {
  std::filesystem::path path;
  SecretDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/psync-secret.XXXXXX";
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~SecretDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::filesystem::path write(const std::string& name, const std::string& bytes, mode_t mode = 0600) const {
    const auto p = path / name;
    std::ofstream(p, std::ios::binary) << bytes;
    REQUIRE(::chmod(p.c_str(), mode) == 0);
    return p;
  }
};

}  // namespace

TEST_CASE("every connection starts with a fresh challenge saying whether a secret is required", "[tcp][auth]") {
  psync::TcpServer open_server;
  RawClient plain(open_server.port());
  const wire::Challenge c0 = plain.read_challenge();
  CHECK_FALSE(c0.auth_required);
  RawClient again(open_server.port());
  const wire::Challenge c1 = again.read_challenge();
  CHECK(c1.nonce != c0.nonce);
  CHECK(c0.nonce != wire::Nonce{});
  if (psync::tcp_auth_available) {
    psync::TcpServer server(auth_server());
    RawClient raw(server.port());
    CHECK(raw.read_challenge().auth_required);
  }
}

TEST_CASE("read_secret_file refuses what ssh would, and strips one trailing newline", "[tcp][auth]") {
  SecretDir dir;
  CHECK(psync::read_secret_file(dir.write("text", "abc\n")).size() == 3);
  CHECK(psync::read_secret_file(dir.write("two", "abc\n\n")).size() == 4);
  CHECK(psync::read_secret_file(dir.write("raw", std::string("\0\1\2", 3))).size() == 3);
  CHECK(psync::read_secret_file(dir.write("ro", "abc", 0400)).size() == 3);
  auto refusal = [](const std::filesystem::path& p) -> std::string {
    try {
      (void)psync::read_secret_file(p);
    } catch (const psync::ConfigError& e) {
      return e.what();
    }
    return "no error";
  };
  const auto shared = dir.write("shared", "abc", 0640);
  const std::string why = refusal(shared);
  CHECK(contains(why, shared.string()));
  CHECK(contains(why, "mode 0640"));
  CHECK(contains(why, "chmod 600"));
  CHECK(contains(refusal(dir.write("world", "abc", 0604)), "mode 0604"));
  CHECK(contains(refusal(dir.write("empty", "")), "is empty"));
  CHECK(contains(refusal(dir.write("newline", "\n")), "is empty"));
  CHECK(contains(refusal(dir.path / "missing"), "cannot open"));
  CHECK(contains(refusal(dir.path), "not a regular file"));
}

#ifdef PSYNC_HAVE_OPENSSL

TEST_CASE("with the right secret, workers join and train over TCP", "[tcp][auth]") {
  psync::TcpServer endpoint(auth_server());
  two_workers_train(endpoint, [](psync::PeerId id, std::uint16_t port) {
    return psync::Tcp("127.0.0.1", port, id, auth_worker());
  });
}

TEST_CASE("a wrong secret gets Error{unauthenticated} and a closed connection; the others are unaffected",
          "[tcp][auth]") {
  psync::TcpServer server(auth_server());
  server.expect_dimension(8);
  psync::Tcp good = join(server, 1, 8, auth_worker());
  // Authentication comes first: a taken id or a wrong dimension is not even looked at.
  for (const auto& [id, dimension] : {std::pair<psync::PeerId, std::uint64_t>{2, 8}, {1, 8}, {3, 99}}) {
    INFO("join as worker " << id << " of dimension " << dimension);
    psync::Tcp bad("127.0.0.1", server.port(), id, auth_worker("not the cluster's secret"));
    const auto start = Clock::now();
    bad.send(server_peer, msg::Join{id, dimension, "bsp"});
    const auto e = expect<msg::Error>(bad, server_peer);
    CHECK(e.code == msg::ErrorCode::unauthenticated);
    CHECK(contains(e.text, "authentication failed: the join's MAC does not match"));
    CHECK(expect<msg::Leave>(bad, server_peer).reason == msg::LeaveReason::disconnected);
    CHECK(Clock::now() - start < 2s);
    CHECK_THROWS_AS(bad.send(server_peer, msg::Leave{}), psync::TransportError);
  }
  still_works(server, good);
  CHECK(server.try_receive() == std::nullopt);  // no Join, no Leave: the refused peers never existed
}

TEST_CASE("a raw client that skips the MAC, or forges one, is refused", "[tcp][auth]") {
  psync::TcpServer server(auth_server());
  psync::Tcp good = join(server, 1, 8, auth_worker());
  SECTION("no MAC") {
    RawClient raw(server.port());
    CHECK(raw.read_challenge().auth_required);
    raw.write(wire::encode_to_bytes(3, msg::Join{3, 8, "bsp"}));
    const auto e = error_reply(raw, true);
    CHECK(e.code == msg::ErrorCode::unauthenticated);
    CHECK(contains(e.text, "join without a MAC"));
  }
  SECTION("a MAC of zeros") {
    RawClient raw(server.port());
    (void)raw.read_challenge();
    msg::Join j{3, 8, "bsp"};
    j.mac.emplace();
    raw.write(wire::encode_to_bytes(3, j));
    CHECK(error_reply(raw, true).code == msg::ErrorCode::unauthenticated);
  }
  SECTION("the right MAC with one byte changed") {
    // Every byte counts: a comparison of a prefix only would let these in.
    for (const std::size_t at : {std::size_t{0}, std::size_t{15}, std::size_t{31}}) {
      INFO("byte " << at << " changed");
      RawClient raw(server.port());
      msg::Join j{3, 8, "bsp"};
      j.mac = psync::detail::join_mac(cluster_secret, raw.read_challenge().nonce, j);
      (*j.mac)[at] ^= std::byte{0x01};
      raw.write(wire::encode_to_bytes(3, j));
      CHECK(error_reply(raw, true).code == msg::ErrorCode::unauthenticated);
    }
  }
  SECTION("a push instead of a join") {
    RawClient raw(server.port());
    raw.write(wire::encode_to_bytes(3, msg::Push{0, 0, 1, ramp(8)}));
    CHECK(error_reply(raw).code == msg::ErrorCode::not_joined);
  }
  still_works(server, good);
  CHECK(server.try_receive() == std::nullopt);
}

TEST_CASE("a join replayed on another connection, or altered, is refused", "[tcp][auth]") {
  psync::TcpServer server(auth_server());
  RawClient a(server.port());
  RawClient b(server.port());
  const wire::Challenge ca = a.read_challenge();
  const wire::Challenge cb = b.read_challenge();
  REQUIRE(ca.nonce != cb.nonce);
  // A legitimate join on connection a, as a worker with the secret computes it.
  msg::Join j{4, 8, "bsp"};
  j.mac = psync::detail::join_mac(cluster_secret, ca.nonce, j);
  const Bytes frame = wire::encode_to_bytes(4, j);
  SECTION("replayed on b") {
    b.write(frame);
    const auto e = error_reply(b, true);
    CHECK(e.code == msg::ErrorCode::unauthenticated);
    CHECK(contains(e.text, "does not match"));
    // On its own connection it is accepted, and the MAC is not passed on.
    a.write(frame);
    const auto joined = expect<msg::Join>(server, 4);
    CHECK_FALSE(joined.mac.has_value());
  }
  SECTION("altered on a") {
    msg::Join altered = j;
    altered.dimension = 16;  // the MAC covers the dimension (and the worker and the policy)
    a.write(wire::encode_to_bytes(4, altered));
    CHECK(error_reply(a, true).code == msg::ErrorCode::unauthenticated);
  }
  CHECK(server.try_receive() == std::nullopt);
}

TEST_CASE("a server without a secret accepts joins with or without a MAC", "[tcp][auth]") {
  psync::TcpServer server;
  psync::Tcp with = join(server, 0, 8, auth_worker());
  psync::Tcp without = join(server, 1);
  RawClient raw(server.port());
  msg::Join j{2, 8, "bsp"};
  j.mac.emplace();  // nonsense, but nobody asked
  raw.write(wire::encode_to_bytes(2, j));
  CHECK_FALSE(expect<msg::Join>(server, 2).mac.has_value());
  still_works(server, with);
  still_works(server, without);
}

TEST_CASE("a worker without the secret is refused at construction by a server that requires one", "[tcp][auth]") {
  psync::TcpServer server(auth_server());
  const auto start = Clock::now();
  try {
    psync::Tcp w("127.0.0.1", server.port(), 0);
    FAIL("connected without a secret");
  } catch (const psync::ProtocolError& e) {
    CHECK(contains(e.what(), "requires authentication"));
  }
  CHECK(Clock::now() - start < 2s);
  // A secret from a file with a trailing newline is the same secret.
  SecretDir dir;
  const psync::Secret from_file = psync::read_secret_file(dir.write("secret", "a shared secret of the cluster, 32+ bytes long\n"));
  psync::Tcp w = join(server, 0, 8, auth_worker(from_file));
  still_works(server, w);
}

#else

TEST_CASE("without OpenSSL, configuring a secret is a ConfigError", "[tcp][auth]") {
  auto message = [](auto&& make) -> std::string {
    try {
      make();
    } catch (const psync::ConfigError& e) {
      return e.what();
    }
    return "no error";
  };
  CHECK(message([] { psync::TcpServer s(auth_server()); }) ==
        "psync was built without OpenSSL: authentication is unavailable");
  psync::TcpServer server;
  CHECK(message([&] { psync::Tcp w("127.0.0.1", server.port(), 0, auth_worker()); }) ==
        "psync was built without OpenSSL: authentication is unavailable");
}

#endif


// ---- TLS ----

namespace {

std::string failure_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

#ifdef PSYNC_HAVE_TLS

namespace {

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Collects the library's log lines while it lives.
class LogLines {
 public:
  LogLines() {
    previous_ = psync::set_log_handler([this](psync::LogLevel, std::string_view line) {
      std::lock_guard lock(mutex_);
      lines_.emplace_back(line);
    });
  }
  LogLines(const LogLines&) = delete;
  LogLines& operator=(const LogLines&) = delete;
  ~LogLines() { psync::set_log_handler(previous_); }

  // Waits (bounded) for a line containing `part`.
  bool wait_for(const std::string& part, std::chrono::milliseconds within = patience) {
    const auto deadline = Clock::now() + within;
    do {
      {
        std::lock_guard lock(mutex_);
        for (const auto& l : lines_) {
          if (has(l, part)) return true;
        }
      }
      std::this_thread::sleep_for(10ms);
    } while (Clock::now() < deadline);
    return false;
  }

 private:
  psync::LogHandler previous_;
  std::mutex mutex_;
  std::vector<std::string> lines_;
};

psync::TcpServerOptions tls_server(const psync_test::TlsFiles& f) {
  psync::TcpServerOptions o;
  o.tls.cert_file = f.server_cert;
  o.tls.key_file = f.server_key;
  return o;
}

psync::TcpOptions tls_worker(const psync_test::TlsFiles& f, std::chrono::milliseconds connect_timeout = 5000ms) {
  psync::TcpOptions o;
  o.tls.ca_file = f.ca;
  o.connect_timeout = connect_timeout;
  return o;
}

}  // namespace

TEST_CASE("workers train over TLS through the real server", "[tcp][tls]") {
  const psync_test::TlsFiles files;
  psync::TcpServer endpoint(tls_server(files));
  // One by address, one by name: both are in the certificate.
  two_workers_train(endpoint, [&](psync::PeerId id, std::uint16_t port) {
    return psync::Tcp(id == 0 ? "127.0.0.1" : "localhost", port, id, tls_worker(files));
  });
}

TEST_CASE("over TLS, every message kind travels and the shared secret still applies", "[tcp][tls]") {
  const psync_test::TlsFiles files;
  psync::TcpServerOptions so = tls_server(files);
  so.secret = "tls and a secret";
  psync::TcpServer server(so);
  psync::TcpOptions wo = tls_worker(files);
  wo.secret = "tls and a secret";
  psync::Tcp w = join(server, 3, 8, wo);
  still_works(server, w);
  w.send(server_peer, msg::Pull{4, ramp(8)});
  CHECK(expect<msg::Pull>(server, 3).clock == 4);
  server.send(3, msg::Error{msg::ErrorCode::policy_mismatch, "from server"});
  CHECK(expect<msg::Error>(w, server_peer).text == "from server");
  CHECK(expect<msg::Leave>(w, server_peer).reason == msg::LeaveReason::disconnected);
  CHECK(expect<msg::Leave>(server, 3).reason == msg::LeaveReason::disconnected);
  // Without the secret, TLS alone does not get a worker in.
  psync::TcpOptions no_secret = tls_worker(files);
  CHECK(has(failure_of([&] { psync::Tcp t("127.0.0.1", server.port(), 4, no_secret); }), "requires authentication"));
}

TEST_CASE("a 1M-float vector goes there and back exactly over TLS", "[tcp][tls]") {
  const psync_test::TlsFiles files;
  psync::TcpServer server(tls_server(files));
  psync::Tcp worker = join(server, 0, 1'000'000, tls_worker(files));
  Eigen::VectorXf v = Eigen::VectorXf::Random(1'000'000);
  const Eigen::VectorXf original = v;
  for (int round = 0; round < 3; ++round) {
    worker.send(server_peer, msg::Push{static_cast<std::uint64_t>(round), 0, 1, std::move(v)});
    auto push = expect<msg::Push>(server, 0);
    REQUIRE(push.update == original);
    server.send(0, msg::Model{1, 0, 0, std::move(push.update)});
    v = expect<msg::Model>(worker, server_peer).parameters;
    REQUIRE(v == original);
  }
  worker.send(server_peer, msg::Pull{5, std::move(v)});
  auto pull = expect<msg::Pull>(server, 0);
  pull.buffer = original;
  server.send(0, msg::Model{2, 0, 0, std::move(pull.buffer)});
  CHECK(expect<msg::Model>(worker, server_peer).parameters == original);
}

TEST_CASE("a worker that does not trust the server's certificate is refused with the reason", "[tcp][tls]") {
  const psync_test::TlsFiles files;
  LogLines logs;
  psync::TcpServer server(tls_server(files));
  psync::TcpOptions wrong = tls_worker(files);
  wrong.tls.ca_file = files.other_ca;
  const auto start = Clock::now();
  const std::string why = failure_of([&] { psync::Tcp t("127.0.0.1", server.port(), 0, wrong); });
  CHECK(Clock::now() - start < 3s);
  INFO(why);
  CHECK(has(why, "TLS handshake with 127.0.0.1:"));
  CHECK(has(why, "certificate verification failed"));
  CHECK(has(why, files.other_ca.string()));
  CHECK(logs.wait_for("TLS handshake failed"));
  for (auto until = Clock::now() + patience; server.connection_count() != 0 && Clock::now() < until;) {
    std::this_thread::sleep_for(10ms);
  }
  CHECK(server.connection_count() == 0);
  // A server whose certificate another CA signed is refused by a worker trusting ours.
  psync::TcpServerOptions impostor_options;
  impostor_options.tls.cert_file = files.other_cert;
  impostor_options.tls.key_file = files.other_key;
  psync::TcpServer impostor(impostor_options);
  CHECK(has(failure_of([&] { psync::Tcp t("127.0.0.1", impostor.port(), 0, tls_worker(files)); }),
            "certificate verification failed"));
  // The right CA still gets in.
  psync::Tcp good = join(server, 1, 8, tls_worker(files));
  still_works(server, good);
}

TEST_CASE("the server's certificate must name the host, or the configured server name", "[tcp][tls]") {
  const psync_test::TlsFiles files;
  psync::TcpServerOptions so;
  so.tls.cert_file = files.wrong_name_cert;
  so.tls.key_file = files.wrong_name_key;
  psync::TcpServer server(so);
  const std::string by_address = failure_of([&] { psync::Tcp t("127.0.0.1", server.port(), 0, tls_worker(files)); });
  INFO(by_address);
  CHECK(has(by_address, "IP address mismatch"));
  const std::string by_name = failure_of([&] { psync::Tcp t("localhost", server.port(), 0, tls_worker(files)); });
  INFO(by_name);
  CHECK(has(by_name, "hostname mismatch"));
  psync::TcpOptions named = tls_worker(files);
  named.tls.server_name = "elsewhere.example";
  psync::Tcp good = join(server, 0, 8, named);
  still_works(server, good);
}

TEST_CASE("a plain client at a TLS server, and a TLS client at a plain server, fail cleanly in time", "[tcp][tls]") {
  const psync_test::TlsFiles files;
  LogLines logs;
  SECTION("plain worker, TLS server: closed at the join deadline, the worker is told why") {
    psync::TcpServerOptions so = tls_server(files);
    so.join_timeout = 500ms;
    psync::TcpServer server(so);
    psync::TcpOptions plain;
    plain.connect_timeout = 4000ms;
    const auto start = Clock::now();
    const std::string why = failure_of([&] { psync::Tcp t("127.0.0.1", server.port(), 0, plain); });
    const auto took = Clock::now() - start;
    INFO(why);
    CHECK(took < 2500ms);
    CHECK(has(why, "closed the connection before sending its challenge"));
    CHECK(has(why, "TLS"));
    CHECK(logs.wait_for("TLS handshake not completed within 500 ms"));
    psync::Tcp good = join(server, 1, 8, tls_worker(files));
    still_works(server, good);
  }
  SECTION("plain bytes at a TLS server: the handshake fails at once, the server logs it") {
    psync::TcpServer server(tls_server(files));
    RawClient raw(server.port());
    raw.write(wire::encode_to_bytes(0, msg::Join{0, 8, "bsp"}));
    auto [bytes, closed] = raw.read_until_closed(3000ms);
    CHECK(closed);
    CHECK(logs.wait_for("TLS handshake failed"));
  }
  SECTION("TLS worker, plain server: the handshake fails at once, naming TLS") {
    psync::TcpServer server;
    const auto start = Clock::now();
    const std::string why = failure_of([&] { psync::Tcp t("127.0.0.1", server.port(), 0, tls_worker(files)); });
    INFO(why);
    CHECK(Clock::now() - start < 2s);
    CHECK(has(why, "TLS handshake with 127.0.0.1:"));
    CHECK(has(why, "failed"));
    psync::Tcp good = join(server, 1);
    still_works(server, good);
  }
  SECTION("TLS worker, server that says nothing: the handshake times out at connect_timeout") {
    asio::io_context io;
    asio::ip::tcp::acceptor silent(io, {asio::ip::make_address("127.0.0.1"), 0});
    const auto start = Clock::now();
    const std::string why = failure_of(
        [&] { psync::Tcp t("127.0.0.1", silent.local_endpoint().port(), 0, tls_worker(files, 400ms)); });
    INFO(why);
    CHECK(Clock::now() - start < 2s);
    CHECK(has(why, "not completed within 400 ms"));
  }
}

TEST_CASE("a TLS handshake counts against the join deadline and the pending cap", "[tcp][tls][bounds]") {
  const psync_test::TlsFiles files;
  LogLines logs;
  psync::TcpServerOptions so = tls_server(files);
  so.join_timeout = 600ms;
  so.max_pending_connections = 2;
  psync::TcpServer server(so);
  // Three silent connections: the first is evicted by the third, the others time out.
  RawClient a(server.port());
  RawClient b(server.port());
  std::this_thread::sleep_for(100ms);  // both accepted before the third arrives
  const auto start = Clock::now();
  RawClient c(server.port());
  CHECK(a.read_until_closed(3000ms).second);
  CHECK(Clock::now() - start < 500ms);  // evicted at c's arrival, before the deadline
  CHECK(logs.wait_for("max_pending_connections"));
  CHECK(b.read_until_closed(3000ms).second);
  CHECK(c.read_until_closed(3000ms).second);
  CHECK(Clock::now() - start < 2000ms);
  CHECK(logs.wait_for("TLS handshake not completed within 600 ms"));
  psync::Tcp good = join(server, 0, 8, tls_worker(files));
  still_works(server, good);
}

TEST_CASE("TLS misconfiguration is a ConfigError naming the file", "[tcp][tls]") {
  const psync_test::TlsFiles files;
  auto config_error = [](const std::function<void()>& f) -> std::string {
    try {
      f();
    } catch (const psync::ConfigError& e) {
      return e.what();
    } catch (const std::exception& e) {
      return std::string("not a ConfigError: ") + e.what();
    }
    return "no error";
  };
  psync::TcpServerOptions no_key;
  no_key.tls.cert_file = files.server_cert;
  CHECK(has(config_error([&] { psync::TcpServer s(no_key); }), "both a certificate file and a key file"));
  psync::TcpServerOptions missing = tls_server(files);
  missing.tls.cert_file = files.dir / "missing.pem";
  CHECK(has(config_error([&] { psync::TcpServer s(missing); }), "missing.pem"));
  psync::TcpServerOptions mismatched = tls_server(files);
  mismatched.tls.key_file = files.other_key;
  const std::string mismatch = config_error([&] { psync::TcpServer s(mismatched); });
  INFO(mismatch);
  CHECK(has(mismatch, files.other_key.string()));
  CHECK(has(mismatch, "mismatch"));
  psync::TcpServer server(tls_server(files));
  psync::TcpOptions bad_ca = tls_worker(files);
  bad_ca.tls.ca_file = files.dir / "no-ca.pem";
  CHECK(has(config_error([&] { psync::Tcp t("127.0.0.1", server.port(), 0, bad_ca); }), "no-ca.pem"));
}

#else

TEST_CASE("without libssl, asking for TLS is a ConfigError", "[tcp][tls]") {
  psync::TcpServerOptions so;
  so.tls.cert_file = "server.pem";
  so.tls.key_file = "server.key";
  CHECK(failure_of([&] { psync::TcpServer s(so); }) == "psync was built without OpenSSL's libssl: TLS is unavailable");
  psync::TcpServer server;
  psync::TcpOptions wo;
  wo.tls.ca_file = "ca.pem";
  CHECK(failure_of([&] { psync::Tcp w("127.0.0.1", server.port(), 0, wo); }) ==
        "psync was built without OpenSSL's libssl: TLS is unavailable");
}

#endif

TEST_CASE("encoded pushes cross TCP as they are; a malformed one is refused once its body is read", "[tcp][compress]") {
  psync::TcpServer server(server_options(8));
  psync::Tcp good = join(server, 1, 8);
  // Top-k pairs (1, 0.5) and (6, -2): indices, then values.
  std::vector<std::byte> pairs(16);
  const std::uint32_t idx[2] = {1, 6};
  const float val[2] = {0.5f, -2.0f};
  std::memcpy(pairs.data(), idx, 8);
  std::memcpy(pairs.data() + 8, val, 8);
  good.send(server_peer, msg::Push{0, 0, 1, Eigen::VectorXf(), psync::Encoding::topk, 8, pairs});
  const auto p = expect<msg::Push>(server, 1);
  CHECK(p.encoding == psync::Encoding::topk);
  CHECK(p.dimension() == 8);
  CHECK(p.payload == pairs);
  CHECK(p.update.size() == 0);

  psync::Tcp bad = join(server, 2, 8);
  std::vector<std::byte> swapped = pairs;
  std::memcpy(swapped.data(), &idx[1], 4);
  std::memcpy(swapped.data() + 4, &idx[0], 4);
  bad.send(server_peer, msg::Push{0, 0, 1, Eigen::VectorXf(), psync::Encoding::topk, 8, swapped});
  const auto e = expect<msg::Error>(bad, server_peer);
  CHECK(e.code == msg::ErrorCode::bad_frame);
  CHECK(e.text == "push: top-k indices not strictly increasing (1 after 6)");
  CHECK(expect<msg::Leave>(server, 2).reason == msg::LeaveReason::disconnected);
  // The good worker never noticed.
  good.send(server_peer, msg::Push{1, 0, 1, ramp(8)});
  CHECK(expect<msg::Push>(server, 1).update == ramp(8));
}
