// Faults against the real Server over the in-process transport: a raw endpoint
// plays a misbehaving worker next to real Workers, all in one process. Every
// wait has a deadline of a few seconds; nothing sleeps in place of synchronising.
// Catch2 assertions run on the main thread only: the other threads hand back
// reports through futures.
//
// Also here: the worker id comes from the endpoint alone, and the LOSP probe, a
// one-worker run whose model records the parameter each step computes on, which
// shows exactly how many of its own steps a policy's installed model is missing.
#include "catch.hpp"
#include "toy_model.hpp"

#include <psync/core/server.hpp>
#include <psync/core/worker.hpp>
#include <psync/policies/bsp.hpp>
#include <psync/policies/osp.hpp>
#include <psync/policies/ssp.hpp>
#include <psync/transport/emulated.hpp>
#include <psync/transport/in_process.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <future>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using psync_test::Quadratic;
using psync_test::Target;

namespace {

constexpr Eigen::Index dim = 4;
constexpr float marker = 1e6f;  // what a refused push carries: it must never reach the model

Eigen::VectorXf target_of(psync::PeerId w) { return Eigen::VectorXf::Constant(dim, static_cast<float>(w + 1)); }

/// A real worker on its own thread, pulling towards `target_of(id)`; `before_batch` runs
/// on that thread before every step (a gate, never an assertion).
template <class P>
std::future<psync::WorkerReport> start_worker(const psync::InProcessHub& hub, psync::PeerId id, std::uint64_t steps,
                                              float lr, std::chrono::milliseconds reply_timeout,
                                              std::function<void()> before_batch = {}) {
  return std::async(std::launch::async, [=, endpoint = hub.endpoint(id)]() mutable {
    psync::WorkerOptions wo;
    wo.learning_rate = lr;
    wo.max_steps = steps;
    wo.reply_timeout = reply_timeout;
    psync::Worker<Quadratic, psync::InProcess, P> worker(Quadratic(dim), std::move(endpoint), wo);
    const Target t{target_of(id)};
    return worker.run([&]() -> const Target& {
      if (before_batch) before_batch();
      return t;
    });
  });
}

/// Waits (bounded) for the server; stops it if it does not finish, so a failure is a failure, not a hang.
template <class S>
psync::ServerReport finish_server(S& server, std::future<psync::ServerReport>& done) {
  if (done.wait_for(10s) != std::future_status::ready) {
    server.stop();
    done.get();
    FAIL("the server did not finish within 10 s after its workers");
  }
  return done.get();
}

/// The next message to `ep`, which must arrive within 5 s.
psync::Message next_message(psync::InProcess& ep) {
  auto env = ep.receive(psync::Clock::now() + 5s);
  REQUIRE(env);
  REQUIRE(env->from == psync::server_peer);
  return std::move(env->message);
}

/// The raw peer joins under its endpoint's id and takes its join reply.
void raw_join(psync::InProcess& raw, const char* policy) {
  raw.send(psync::server_peer, psync::msg::Join{raw.self(), static_cast<std::uint64_t>(dim), policy});
  const auto reply = next_message(raw);
  REQUIRE(std::holds_alternative<psync::msg::Model>(reply));
}

psync::msg::Error expect_error(psync::InProcess& raw, psync::msg::ErrorCode code, const std::string& fragment) {
  auto m = next_message(raw);
  auto* err = std::get_if<psync::msg::Error>(&m);
  INFO("received '" << psync::message_name(m) << "'");
  REQUIRE(err);
  INFO("error text: " << err->text);
  REQUIRE(err->code == code);
  REQUIRE(err->text.find(fragment) != std::string::npos);
  return *err;
}

bool has_event(const psync::ServerReport& r, const std::string& fragment) {
  return std::any_of(r.events.begin(), r.events.end(),
                     [&](const std::string& e) { return e.find(fragment) != std::string::npos; });
}

const psync::PeerReport* peer(const psync::ServerReport& r, psync::PeerId id) {
  for (const auto& p : r.peers) {
    if (p.id == id) return &p;
  }
  return nullptr;
}

/// The server's endpoint, reporting every message the server takes (on the server's thread).
struct Spy {
  psync::InProcess inner;
  std::function<void(const psync::Envelope&)> seen;

  psync::PeerId self() const { return inner.self(); }
  void send(psync::PeerId to, psync::Message&& m) { inner.send(to, std::move(m)); }
  std::optional<psync::Envelope> receive(psync::Clock::time_point deadline) { return note(inner.receive(deadline)); }
  std::optional<psync::Envelope> try_receive() { return note(inner.try_receive()); }

 private:
  std::optional<psync::Envelope> note(std::optional<psync::Envelope> e) {
    if (e && seen) seen(*e);
    return e;
  }
};
static_assert(psync::Transport<Spy>);

/// Becomes ready once the server has taken a clock-0 push from each of workers 0..n-1:
/// the moment their next reads are up to the policy. No sleeping, no polling.
class PushWatch {
 public:
  explicit PushWatch(psync::PeerId n) : state_(std::make_shared<State>()) {
    state_->workers = n;
    state_->remaining = n;
  }
  std::function<void(const psync::Envelope&)> hook() {
    return [s = state_](const psync::Envelope& e) {
      const auto* p = std::get_if<psync::msg::Push>(&e.message);
      if (!p || p->clock != 0 || e.from >= s->workers) return;
      if (--s->remaining == 0) s->ready.set_value();
    };
  }
  /// True if it happened within 5 s.
  bool wait() { return state_->ready.get_future().wait_for(5s) == std::future_status::ready; }

 private:
  struct State {
    psync::PeerId workers = 0;
    psync::PeerId remaining = 0;  // touched by the server thread only
    std::promise<void> ready;
  };
  std::shared_ptr<State> state_;
};

/// BSP with real workers 0 and 1 only: x <- x + (u_0 + u_1) / n, u_w = -lr (x - target_w).
/// In round 0 the mean is over `first_round_pushes` (a refused peer's accepted zero push counts).
Eigen::VectorXf two_worker_bsp(std::uint64_t steps, float lr, int first_round_pushes) {
  Eigen::VectorXf x = Eigen::VectorXf::Zero(dim);
  for (std::uint64_t s = 0; s < steps; ++s) {
    const Eigen::VectorXf sum = -lr * (x - target_of(0)) + -lr * (x - target_of(1));
    x += sum / static_cast<float>(s == 0 ? first_round_pushes : 2);
  }
  return x;
}

/// The run ends with both real workers done and the model exactly theirs (the
/// refused peer's update never landed); returns the server's report for more checks.
template <class S>
psync::ServerReport require_real_workers_prevailed(std::future<psync::WorkerReport>& w0,
                                                    std::future<psync::WorkerReport>& w1, S& server,
                                                    std::future<psync::ServerReport>& done, std::uint64_t steps,
                                                    float lr, int first_round_pushes) {
  // The real workers finish normally (no exception from get()).
  const auto r0 = w0.get();
  const auto r1 = w1.get();
  auto report = finish_server(server, done);
  REQUIRE(r0.steps == steps);
  REQUIRE(r1.steps == steps);
  const Eigen::VectorXf final_model = server.model().parameters();
  INFO("final model " << final_model.transpose());
  REQUIRE(final_model.allFinite());
  REQUIRE((final_model - two_worker_bsp(steps, lr, first_round_pushes)).cwiseAbs().maxCoeff() < 1e-5f);
  return report;
}

}  // namespace

TEST_CASE("A push for a round the server has not answered is refused; the others train on", "[faults]") {
  const std::uint64_t steps = 20;
  const float lr = 0.1f;
  psync::InProcessHub hub;
  psync::ServerOptions so;
  so.expected_workers = 3;
  so.join_timeout = 5s;
  psync::Server<Quadratic, psync::Bsp> server(Quadratic(dim), so);
  auto server_ep = hub.endpoint(psync::server_peer);
  auto done = std::async(std::launch::async, [&] { return server.run(server_ep); });

  // The real workers take their first batch only once the raw peer's pushes are queued,
  // so those reach the server while round 0 is still open.
  std::promise<void> go;
  std::shared_future<void> gate = go.get_future().share();
  // Bounded, so a failed assertion before `go` cannot leave them waiting forever.
  auto gated = [gate] { gate.wait_for(5s); };
  auto w0 = start_worker<psync::Bsp>(hub, 0, steps, lr, 5000ms, gated);
  auto w1 = start_worker<psync::Bsp>(hub, 1, steps, lr, 5000ms, gated);
  auto raw = hub.endpoint(2);
  raw_join(raw, "bsp");

  int first_round_pushes = 2;
  SECTION("clock 1 pushed before the reply to clock 0") {
    // Clock 0 is legitimate (a zero update, accepted into round 0); clock 1 comes while
    // the read it implies is still held: it would put round 1's update into round 0.
    raw.send(psync::server_peer, psync::msg::Push{0, 0, 1, Eigen::VectorXf::Zero(dim)});
    raw.send(psync::server_peer, psync::msg::Push{1, 0, 1, Eigen::VectorXf::Constant(dim, marker)});
    go.set_value();
    expect_error(raw, psync::msg::ErrorCode::bad_clock, "before the server answered its previous read");
    first_round_pushes = 3;
  }
  SECTION("a push stamped with a later clock") {
    raw.send(psync::server_peer, psync::msg::Push{5, 0, 1, Eigen::VectorXf::Constant(dim, marker)});
    go.set_value();
    expect_error(raw, psync::msg::ErrorCode::bad_clock, "stamped clock 5, expected 0");
  }
  SECTION("a push claiming zero steps") {
    raw.send(psync::server_peer, psync::msg::Push{0, 0, 0, Eigen::VectorXf::Constant(dim, marker)});
    go.set_value();
    expect_error(raw, psync::msg::ErrorCode::bad_clock, "claims 0 steps");
  }
  SECTION("a push on a model version the server never made") {
    raw.send(psync::server_peer, psync::msg::Push{0, 9, 1, Eigen::VectorXf::Constant(dim, marker)});
    go.set_value();
    expect_error(raw, psync::msg::ErrorCode::bad_clock, "on model version 9");
  }
  SECTION("a push of the wrong size") {
    raw.send(psync::server_peer, psync::msg::Push{0, 0, 1, Eigen::VectorXf::Constant(dim + 1, marker)});
    go.set_value();
    expect_error(raw, psync::msg::ErrorCode::wrong_dimension, "has 5 floats, model has 4");
  }
  SECTION("a pull stamped with another clock") {
    raw.send(psync::server_peer, psync::msg::Pull{3, {}});
    go.set_value();
    expect_error(raw, psync::msg::ErrorCode::bad_clock, "pull from worker 2 stamped clock 3, expected 0");
  }

  // Exactly what the two real workers produce under BSP once the raw peer is gone.
  const auto report = require_real_workers_prevailed(w0, w1, server, done, steps, lr, first_round_pushes);
  REQUIRE(server.model().parameters().cwiseAbs().maxCoeff() < 10.0f);  // the marker never landed
  REQUIRE(report.steps_applied == 2 * steps + (first_round_pushes == 3 ? 1 : 0));
  REQUIRE(has_event(report, "worker 2: refused"));
  const auto* p2 = peer(report, 2);
  REQUIRE(p2);
  REQUIRE(p2->left_known);
  REQUIRE(p2->left == psync::msg::LeaveReason::failed);
  // Refused and removed: nothing more comes to the raw peer.
  REQUIRE_FALSE(raw.try_receive().has_value());
}

TEST_CASE("A non-finite update is refused and never touches the model", "[faults]") {
  const std::uint64_t steps = 20;
  const float lr = 0.1f;
  const float bad = GENERATE(std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                             -std::numeric_limits<float>::infinity());
  psync::InProcessHub hub;
  psync::ServerOptions so;
  so.expected_workers = 3;
  so.join_timeout = 5s;
  psync::Server<Quadratic, psync::Bsp> server(Quadratic(dim), so);
  PushWatch watch(2);
  Spy server_ep{hub.endpoint(psync::server_peer), watch.hook()};
  auto done = std::async(std::launch::async, [&] { return server.run(server_ep); });
  auto w0 = start_worker<psync::Bsp>(hub, 0, steps, lr, 5000ms);
  auto w1 = start_worker<psync::Bsp>(hub, 1, steps, lr, 5000ms);
  auto raw = hub.endpoint(2);
  raw_join(raw, "bsp");
  // Both real workers pushed round 0 and wait for the raw peer, the slowest: refusing
  // it must also release them.
  REQUIRE(watch.wait());
  Eigen::VectorXf update = Eigen::VectorXf::Constant(dim, marker);
  update[1] = bad;
  raw.send(psync::server_peer, psync::msg::Push{0, 0, 1, std::move(update)});
  expect_error(raw, psync::msg::ErrorCode::bad_frame, "non-finite");

  const auto report = require_real_workers_prevailed(w0, w1, server, done, steps, lr, 2);
  REQUIRE(report.steps_applied == 2 * steps);
  REQUIRE(has_event(report, "non-finite"));
}

// The old bug: removing the slowest worker did not re-examine the reads it held
// back, so the others slept until their reply timeout. Here the timeout is 3 s and
// the whole run must end well before it.
TEMPLATE_TEST_CASE("Losing the slowest worker wakes the others at once", "[faults]", psync::Bsp, psync::Ssp<0>) {
  const std::uint64_t steps = 30;
  const auto reply_timeout = 3000ms;
  const std::string policy = TestType{}.name();
  psync::InProcessHub hub;
  psync::ServerOptions so;
  so.expected_workers = 3;
  so.join_timeout = 5s;
  psync::Server<Quadratic, TestType> server(Quadratic(dim), so);
  PushWatch watch(2);
  Spy server_ep{hub.endpoint(psync::server_peer), watch.hook()};
  auto done = std::async(std::launch::async, [&] { return server.run(server_ep); });
  const auto t0 = psync::Clock::now();
  auto w0 = start_worker<TestType>(hub, 0, steps, 0.1f, reply_timeout);
  auto w1 = start_worker<TestType>(hub, 1, steps, 0.1f, reply_timeout);
  std::optional<psync::InProcess> raw(hub.endpoint(2));

  SECTION("its endpoint closes while the others wait for it") {
    raw_join(*raw, policy.c_str());
    // Both real workers pushed clock 0; their reads at clock 1 are held for the raw peer.
    REQUIRE(watch.wait());
    raw.reset();  // the hub reports the loss as a Leave{disconnected}
  }
  SECTION("its endpoint closes right after its push") {
    raw_join(*raw, policy.c_str());
    REQUIRE(watch.wait());
    // This push completes round 0: the reply to it may find the endpoint gone, and a Leave follows.
    raw->send(psync::server_peer, psync::msg::Push{0, 0, 1, Eigen::VectorXf::Zero(dim)});
    raw->close();
  }
  SECTION("its endpoint closes before its join is answered") {
    raw->send(psync::server_peer, psync::msg::Join{2, static_cast<std::uint64_t>(dim), policy});
    raw.reset();
  }

  const auto r0 = w0.get();  // throws TimeoutError if a wake-up was missed
  const auto r1 = w1.get();
  const double elapsed = std::chrono::duration<double>(psync::Clock::now() - t0).count();
  const auto report = finish_server(server, done);
  REQUIRE(r0.steps == steps);
  REQUIRE(r1.steps == steps);
  REQUIRE(elapsed < 2.0);
  REQUIRE(has_event(report, "worker 2: lost (disconnected)"));
  const auto* p2 = peer(report, 2);
  REQUIRE(p2);
  REQUIRE(p2->left == psync::msg::LeaveReason::disconnected);
}

TEST_CASE("The worker id is the endpoint's: given once", "[faults]") {
  psync::InProcessHub hub;
  psync::ServerOptions so;
  so.expected_workers = 1;
  so.join_timeout = 5s;
  psync::Server<Quadratic, psync::Bsp> server(Quadratic(dim), so);
  auto server_ep = hub.endpoint(psync::server_peer);
  auto done = std::async(std::launch::async, [&] { return server.run(server_ep); });
  psync::WorkerOptions wo;
  wo.max_steps = 5;
  wo.reply_timeout = 5s;
  psync::Worker<Quadratic, psync::InProcess, psync::Bsp> worker(Quadratic(dim), hub.endpoint(7), wo);
  REQUIRE(worker.core().id() == 7);
  const Target t{target_of(0)};
  const auto r = worker.run([&]() -> const Target& { return t; });
  const auto report = finish_server(server, done);
  REQUIRE(r.id == 7);
  REQUIRE(r.steps == 5);
  REQUIRE(report.peers.size() == 1);
  REQUIRE(report.peers[0].id == 7);
  REQUIRE(report.peers[0].pushes == 5);
  REQUIRE(has_event(report, "worker 7 joined at clock 0"));
}

namespace {

// The LOSP probe: one parameter, gradient constant -1, learning rate 1, so local step k
// (k = 0, 1, ...) of a worker that has every one of its own steps in its model computes
// on exactly k. The model records the value it sees (gradient is const: the log lives outside).
struct Tick {
  Eigen::Index size() const { return 1; }
};

class Probe {
 public:
  using Batch = Tick;
  explicit Probe(std::vector<float>* seen) : x_(Eigen::VectorXf::Zero(1)), seen_(seen) {}
  Eigen::Ref<const Eigen::VectorXf> parameters() const { return x_; }
  Eigen::Ref<Eigen::VectorXf> parameters() { return x_; }
  double loss(const Batch&) const { return -static_cast<double>(x_[0]); }
  void gradient(const Batch&, Eigen::Ref<Eigen::VectorXf> g) const {
    if (seen_) seen_->push_back(x_[0]);
    g[0] = -1.0f;
  }

 private:
  Eigen::VectorXf x_;
  std::vector<float>* seen_;
};

struct ProbeRun {
  std::vector<double> lag;  // per step k: k - the parameter step k computed on
  psync::WorkerReport worker;
  float final_model = 0;

  double max_lag() const { return *std::max_element(lag.begin(), lag.end()); }
  double min_lag() const { return *std::min_element(lag.begin(), lag.end()); }
};

constexpr std::uint64_t probe_steps = 100;

/// One worker and the server over links of 2 ms each way (a 4 ms round trip), with
/// compute taking next to nothing: many local steps happen while each push travels.
template <class P>
ProbeRun run_probe() {
  psync::NetworkSpec spec;
  spec.worker_link.latency = 2000us;
  auto network = std::make_shared<psync::Network>(spec);
  psync::InProcessHub hub;
  psync::ServerOptions so;
  so.expected_workers = 1;
  so.join_timeout = 5s;
  psync::Server<Probe, P> server(Probe(nullptr), so);
  psync::Emulated<psync::InProcess> server_ep(hub.endpoint(psync::server_peer), network);
  auto done = std::async(std::launch::async, [&] { return server.run(server_ep); });
  std::vector<float> seen;
  seen.reserve(probe_steps);
  psync::WorkerOptions wo;
  wo.learning_rate = 1.0f;
  wo.max_steps = probe_steps;
  wo.reply_timeout = 5s;
  ProbeRun run;
  {
    psync::Worker<Probe, psync::Emulated<psync::InProcess>, P> worker(
        Probe(&seen), psync::Emulated<psync::InProcess>(hub.endpoint(0), network), wo);
    const Tick tick;
    run.worker = worker.run([&]() -> const Tick& { return tick; });
  }
  finish_server(server, done);
  run.final_model = server.model().parameters()[0];
  for (std::size_t k = 0; k < seen.size(); ++k) run.lag.push_back(static_cast<double>(k) - static_cast<double>(seen[k]));
  return run;
}

}  // namespace

TEST_CASE("LOSP probe: compensation puts every local step in the model the next step computes on",
          "[faults][osp][losp]") {
  constexpr std::uint32_t S = 20;
  SECTION("losp:20 computes on exactly k at step k") {
    const auto r = run_probe<psync::Losp<S>>();
    INFO("lag min " << r.min_lag() << " max " << r.max_lag() << ", steps per push max " << r.worker.steps_per_push.max);
    REQUIRE(r.lag.size() == probe_steps);
    REQUIRE(r.min_lag() == 0.0);
    REQUIRE(r.max_lag() == 0.0);
    REQUIRE(r.worker.steps_per_push.max > 1);  // pushes overlapped compute, so there was something to compensate
    REQUIRE(r.worker.installs >= 1);
    REQUIRE(r.final_model == static_cast<float>(probe_steps));
  }
  SECTION("losp-uninstalled:20 computes on exactly k at step k") {
    const auto r = run_probe<psync::OspUninstalled<S, psync::install::Compensated>>();
    INFO("lag min " << r.min_lag() << " max " << r.max_lag());
    REQUIRE(r.lag.size() == probe_steps);
    REQUIRE(r.min_lag() == 0.0);
    REQUIRE(r.max_lag() == 0.0);
    REQUIRE(r.worker.steps_per_push.max > 1);
    REQUIRE(r.final_model == static_cast<float>(probe_steps));
  }
  SECTION("osp:20 installs the global model and loses its unreflected steps, at most 2S of them") {
    const auto r = run_probe<psync::Osp<S>>();
    INFO("lag min " << r.min_lag() << " max " << r.max_lag());
    REQUIRE(r.lag.size() == probe_steps);
    REQUIRE(r.min_lag() >= 0.0);  // a model never holds more steps than the worker took
    REQUIRE(r.max_lag() > 0.0);
    REQUIRE(r.max_lag() <= 2.0 * S);
    // The server still gets every step.
    REQUIRE(r.final_model == static_cast<float>(probe_steps));
  }
  SECTION("osp-uninstalled:20 loses at most S") {
    const auto r = run_probe<psync::OspUninstalled<S>>();
    INFO("lag min " << r.min_lag() << " max " << r.max_lag());
    REQUIRE(r.min_lag() >= 0.0);
    REQUIRE(r.max_lag() > 0.0);
    REQUIRE(r.max_lag() <= static_cast<double>(S));
    REQUIRE(r.final_model == static_cast<float>(probe_steps));
  }
  SECTION("the gradient returns no loss: last_loss is NaN") {
    const auto r = run_probe<psync::Losp<S>>();
    REQUIRE(std::isnan(r.worker.last_loss));
  }
}
