// Whole clusters in one process over the in-process transport: every policy
// trains with the combination rule it names, BSP is exactly averaged SGD, SSP and
// DSSP keep their clock bound, OSP overlaps communication with compute,
// departures do not hang the rest, protocol violations are refused.
//
// Worker w always pulls towards its own target (w + 1) * 1, so the workers
// disagree: a wrong combination rule moves the model somewhere else.
#include "catch.hpp"
#include "toy_model.hpp"

#include <psync/core/server.hpp>
#include <psync/core/worker.hpp>
#include <psync/policies/asp.hpp>
#include <psync/policies/bsp.hpp>
#include <psync/policies/dssp.hpp>
#include <psync/policies/osp.hpp>
#include <psync/policies/ssp.hpp>
#include <psync/transport/any.hpp>
#include <psync/transport/emulated.hpp>
#include <psync/transport/in_process.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

using namespace std::chrono_literals;
using psync_test::Quadratic;
using psync_test::Target;

namespace {

constexpr Eigen::Index dim = 8;

struct ClusterSpec {
  int workers = 4;
  std::uint64_t steps = 200;
  float lr = 0.05f;
  /// Extra time a step of worker w takes (its batch source sleeps), by worker index.
  std::vector<std::chrono::microseconds> step_delay;
  /// Emulated links (default: none, messages move directly).
  psync::NetworkSpec network;
};

struct ClusterRun {
  std::vector<psync::WorkerReport> workers;
  psync::ServerReport server;
  Eigen::VectorXf final_parameters;

  std::uint64_t total_steps() const {
    std::uint64_t s = 0;
    for (const auto& w : workers) s += w.steps;
    return s;
  }
  std::uint64_t total_pushes() const {
    std::uint64_t s = 0;
    for (const auto& w : workers) s += w.pushes;
    return s;
  }
  std::uint64_t max_pushes() const {
    std::uint64_t s = 0;
    for (const auto& w : workers) s = std::max(s, w.pushes);
    return s;
  }
  psync::Summary clock_staleness() const {
    psync::Summary s;
    for (const auto& w : workers) s.merge(w.clock_staleness);
    return s;
  }
  psync::Summary steps_per_push() const {
    psync::Summary s;
    for (const auto& w : workers) s.merge(w.steps_per_push);
    return s;
  }
};

Eigen::VectorXf target_of(int w) { return Eigen::VectorXf::Constant(dim, static_cast<float>(w + 1)); }

/// One server and `spec.workers` workers as threads; worker w's batches pull towards `target_of(w)`.
template <class P>
ClusterRun run_cluster(const ClusterSpec& spec, P policy = {}) {
  auto network = std::make_shared<psync::Network>(spec.network);
  psync::InProcessHub hub;
  psync::ServerOptions so;
  so.expected_workers = static_cast<std::uint32_t>(spec.workers);
  so.join_timeout = 10s;
  so.peer_timeout = 10s;
  psync::Server<Quadratic, P> server(Quadratic(dim), so, policy);
  psync::Emulated<psync::InProcess> server_ep(hub.endpoint(psync::server_peer), network);
  auto server_done = std::async(std::launch::async, [&] { return server.run(server_ep); });
  std::vector<std::future<psync::WorkerReport>> futures;
  for (int w = 0; w < spec.workers; ++w) {
    futures.push_back(std::async(std::launch::async, [&, w] {
      psync::WorkerOptions wo;
      wo.learning_rate = spec.lr;
      wo.max_steps = spec.steps;
      wo.reply_timeout = 10s;
      const auto delay = static_cast<std::size_t>(w) < spec.step_delay.size() ? spec.step_delay[static_cast<std::size_t>(w)]
                                                                               : std::chrono::microseconds{0};
      psync::Worker<Quadratic, psync::Emulated<psync::InProcess>, P> worker(
          Quadratic(dim), psync::Emulated<psync::InProcess>(hub.endpoint(static_cast<psync::PeerId>(w)), network), wo,
          policy);
      const Target t{target_of(w)};
      return worker.run([&]() -> const Target& {
        if (delay.count() > 0) std::this_thread::sleep_for(delay);
        return t;
      });
    }));
  }
  ClusterRun c;
  for (auto& f : futures) c.workers.push_back(f.get());
  c.server = server_done.get();
  c.final_parameters = server.model().parameters();
  return c;
}

/// BSP's exact trajectory: every worker computes on the same x_t, the server applies the mean,
/// x_{t+1} = x_t - lr * mean_w (x_t - target_w).
Eigen::VectorXf averaged_sgd(int workers, std::uint64_t steps, float lr) {
  Eigen::VectorXf x = Eigen::VectorXf::Zero(dim);
  for (std::uint64_t s = 0; s < steps; ++s) {
    Eigen::VectorXf sum = Eigen::VectorXf::Zero(dim);
    for (int w = 0; w < workers; ++w) sum += -lr * (x - target_of(w));
    x += sum / static_cast<float>(workers);
  }
  return x;
}

}  // namespace

TEMPLATE_TEST_CASE("Every policy combines disagreeing workers by its rule and loses no step", "[cluster]",
                   psync::Bsp, psync::Asp, psync::Ssp<2>, (psync::Dssp<1, 3>), psync::Osp<4>, psync::Losp<4>,
                   psync::OspUninstalled<4>) {
  ClusterSpec spec;
  spec.workers = 4;
  spec.steps = 200;
  const auto c = run_cluster<TestType>(spec);
  INFO(TestType{}.name() << ": final " << c.final_parameters.transpose() << ", version " << c.server.version);
  REQUIRE(c.final_parameters.size() == dim);
  REQUIRE(c.final_parameters.allFinite());
  for (const auto& w : c.workers) REQUIRE(w.steps == spec.steps);
  REQUIRE(c.server.steps_applied == c.total_steps());  // nothing computed was lost
  REQUIRE(c.server.updates_applied == c.total_pushes());
  REQUIRE(c.server.peers.size() == static_cast<std::size_t>(spec.workers));
  // Each worker pulls towards its own target: the model ends between the extreme targets.
  REQUIRE(c.final_parameters.minCoeff() >= 1.0f - 0.05f);
  REQUIRE(c.final_parameters.maxCoeff() <= static_cast<float>(spec.workers) + 0.05f);
  // The rule each policy is specified with, not the one it happens to name: ASP, SSP and
  // DSSP add every push (one version per push), BSP and OSP apply each round's mean.
  constexpr bool adds_every_push =
      std::is_same_v<TestType, psync::Asp> || std::is_same_v<TestType, psync::Ssp<2>> ||
      std::is_same_v<TestType, psync::Dssp<1, 3>>;
  if constexpr (adds_every_push) {
    // One version per push.
    REQUIRE(c.server.version == c.total_pushes());
  } else {
    // One version per round; a worker cannot push round r+1 before round r closed.
    REQUIRE(c.server.version == c.max_pushes());
  }
  if constexpr (std::is_same_v<TestType, psync::Bsp>) {
    REQUIRE((c.final_parameters - averaged_sgd(spec.workers, spec.steps, spec.lr)).cwiseAbs().maxCoeff() < 1e-5f);
  }
  constexpr bool bounds_clock_gap = std::is_same_v<TestType, psync::Bsp> || std::is_same_v<TestType, psync::Ssp<2>> ||
                                     std::is_same_v<TestType, psync::Dssp<1, 3>>;
  if constexpr (bounds_clock_gap) {
    // A bounded clock gap settles near the minimiser of the summed loss, the mean target
    // 2.5. ASP bounds nothing, and OSP bounds each worker's unsent steps, not how far its
    // clock runs ahead of the others' (one push a round, of up to S steps): under either,
    // a worker the scheduler holds back finishes its steps alone and pulls the end point
    // towards its own target (a loaded CI run saw osp-uninstalled:4 end at 1.77).
    for (Eigen::Index i = 0; i < dim; ++i) REQUIRE(c.final_parameters[i] == Approx(2.5).margin(0.5));
  }
}

TEST_CASE("BSP applies the exact average of each round", "[cluster][bsp]") {
  ClusterSpec spec;
  spec.workers = 3;
  spec.steps = 25;
  spec.lr = 0.1f;
  const auto c = run_cluster<psync::Bsp>(spec);
  REQUIRE((c.final_parameters - averaged_sgd(spec.workers, spec.steps, spec.lr)).cwiseAbs().maxCoeff() < 1e-5f);
  REQUIRE(c.server.version == spec.steps);
  for (const auto& p : c.server.peers) REQUIRE(p.version_staleness.max == 0);
  for (const auto& w : c.workers) {
    REQUIRE(w.clock_staleness.max == 0);
    REQUIRE(w.steps_per_push.max == 1);
    REQUIRE(std::isnan(w.last_loss) == false);  // Quadratic::gradient returns the loss
  }
}

namespace {
/// An in-process endpoint that also counts the server's optional hooks.
struct HookedEndpoint {
  psync::InProcess inner;
  std::uint64_t* dimension;
  std::size_t* reserved;
  psync::PeerId self() const { return inner.self(); }
  void send(psync::PeerId to, psync::Message&& m) { inner.send(to, std::move(m)); }
  std::optional<psync::Envelope> receive(psync::Clock::time_point d) { return inner.receive(d); }
  std::optional<psync::Envelope> try_receive() { return inner.try_receive(); }
  void expect_dimension(std::uint64_t d) { *dimension = d; }
  void reserve_worker_ids(const std::vector<psync::PeerId>& ids) { *reserved = ids.size() + 1; }
};
}  // namespace

TEST_CASE("AnyTransport runs workers and a server unchanged: BSP is still the exact average", "[cluster][bsp][any]") {
  constexpr int workers = 3;
  constexpr std::uint64_t steps = 25;
  constexpr float lr = 0.1f;
  psync::InProcessHub hub;
  psync::ServerOptions so;
  so.expected_workers = workers;
  so.join_timeout = 10s;
  so.peer_timeout = 10s;
  psync::Server<Quadratic, psync::Bsp> server(Quadratic(dim), so);
  std::uint64_t dimension = 0;
  std::size_t reserved = 0;
  HookedEndpoint server_ep{hub.endpoint(psync::server_peer), &dimension, &reserved};
  // The server's endpoint by reference (it stays the caller's), the workers' owned.
  psync::AnyTransport server_view(std::ref(server_ep));
  REQUIRE(server_view.target<HookedEndpoint>() == &server_ep);
  REQUIRE(server_view.target<psync::InProcess>() == nullptr);
  auto server_done = std::async(std::launch::async, [&] { return server.run(server_view); });
  std::vector<std::future<psync::WorkerReport>> futures;
  for (int w = 0; w < workers; ++w) {
    futures.push_back(std::async(std::launch::async, [&, w] {
      psync::WorkerOptions wo;
      wo.learning_rate = lr;
      wo.max_steps = steps;
      wo.reply_timeout = 10s;
      psync::AnyTransport t(hub.endpoint(static_cast<psync::PeerId>(w)));
      psync::Worker<Quadratic, psync::AnyTransport, psync::Bsp> worker(Quadratic(dim), std::move(t), wo);
      const Target target{target_of(w)};
      return worker.run([&]() -> const Target& { return target; });
    }));
  }
  for (auto& f : futures) REQUIRE(f.get().steps == steps);
  const psync::ServerReport r = server_done.get();
  REQUIRE(r.version == steps);
  REQUIRE((server.model().parameters() - averaged_sgd(workers, steps, lr)).cwiseAbs().maxCoeff() < 1e-5f);
  // The hooks reached the endpoint: the model's size, and the (empty) list of reserved ids.
  REQUIRE(dimension == static_cast<std::uint64_t>(dim));
  REQUIRE(reserved == 1);

  // Moved from, it holds nothing and says so.
  psync::AnyTransport a(hub.endpoint(7));
  psync::AnyTransport b(std::move(a));
  REQUIRE(b.self() == 7);
  REQUIRE_THROWS_WITH(a.self(), Catch::Matchers::Contains("moved from"));  // NOLINT(bugprone-use-after-move)
}

// A straggler (worker 0 takes 6 ms a step, the others nothing) makes the fast
// workers run into the bound on every read, so the bound is reached and never passed.
// (6 ms, not less: DSSP's "past Lo" below needs the fast workers' push interval well
// under the straggler's: at 2 ms, under ThreadSanitizer at -O0 beside another test on
// 2 cores, one run saw a largest staleness of 1, the straggler not slow enough.)
TEST_CASE("SSP and DSSP keep every read within the clock bound", "[cluster][ssp]") {
  ClusterSpec spec;
  spec.workers = 3;
  spec.steps = 50;
  spec.step_delay = {6000us};
  SECTION("ssp:2") {
    const auto c = run_cluster<psync::Ssp<2>>(spec);
    REQUIRE(c.clock_staleness().max == 2);
    REQUIRE(c.final_parameters.minCoeff() >= 1.0f - 0.05f);
    REQUIRE(c.final_parameters.maxCoeff() <= 3.0f + 0.05f);
  }
  SECTION("ssp:0 (run-time bound)") {
    const auto c = run_cluster(spec, psync::Ssp<psync::runtime_bound>(0));
    REQUIRE(c.clock_staleness().max == 0);
  }
  SECTION("dssp:1:3") {
    const auto c = run_cluster<psync::Dssp<1, 3>>(spec);
    INFO("clock staleness max " << c.clock_staleness().max << ", mean " << c.clock_staleness().mean());
    REQUIRE(c.clock_staleness().max <= 3);
    // The fast readers' pushes come quicker than the straggler's, so DSSP lets them past Lo.
    REQUIRE(c.clock_staleness().max >= 2);
    REQUIRE(c.final_parameters.minCoeff() >= 1.0f - 0.05f);
    REQUIRE(c.final_parameters.maxCoeff() <= 3.0f + 0.05f);
  }
}

// Each step takes 1 ms and each message 4 ms one way, so a round trip is 8 ms. A policy
// whose compute waits for every reply (BSP) cannot finish N steps in less than N round
// trips; OSP computes while its push travels and finishes in a fraction of that.
TEST_CASE("OSP hides communication behind compute; BSP cannot", "[cluster][osp]") {
  ClusterSpec spec;
  spec.workers = 2;
  spec.steps = 60;
  spec.step_delay = {1000us, 1000us};
  spec.network.worker_link.latency = 4000us;
  const double round_trip = 2 * 0.004;
  const double synchronous = static_cast<double>(spec.steps) * round_trip;  // 0.48 s

  const auto bsp = run_cluster<psync::Bsp>(spec);
  const auto osp = run_cluster<psync::Osp<16>>(spec);
  for (std::size_t w = 0; w < 2; ++w) {
    INFO("worker " << w << ": bsp wall " << bsp.workers[w].wall_s << " s, osp wall " << osp.workers[w].wall_s
                   << " s, osp steps/push max " << osp.workers[w].steps_per_push.max << ", hidden bsp "
                   << bsp.workers[w].hidden_fraction() << " osp " << osp.workers[w].hidden_fraction());
    REQUIRE(bsp.workers[w].steps == spec.steps);
    REQUIRE(osp.workers[w].steps == spec.steps);
    // The physical floor of a synchronous round trip per step.
    REQUIRE(bsp.workers[w].wall_s >= 0.95 * synchronous);
    // OSP's ideal is about steps * 1 ms = 0.06 s; half the synchronous floor leaves 4x slack.
    REQUIRE(osp.workers[w].wall_s < 0.5 * synchronous);
    REQUIRE(osp.workers[w].wall_s < 0.5 * bsp.workers[w].wall_s);
    // Several local steps rode on one push, and compute rarely waited for the network.
    REQUIRE(osp.workers[w].steps_per_push.max > 1);
    REQUIRE(osp.workers[w].pushes < osp.workers[w].steps);
    REQUIRE(osp.workers[w].hidden_fraction() > 0.5);
    REQUIRE(bsp.workers[w].hidden_fraction() < 0.5);
  }
  REQUIRE(bsp.steps_per_push().max == 1);
  REQUIRE(osp.server.steps_applied == osp.total_steps());
}

TEST_CASE("A straggler holds BSP back but not ASP", "[cluster]") {
  ClusterSpec spec;
  spec.workers = 2;
  spec.steps = 40;
  spec.step_delay = {5000us};  // worker 0 takes 5 ms a step, worker 1 nothing
  const auto bsp = run_cluster<psync::Bsp>(spec);
  const auto asp = run_cluster<psync::Asp>(spec);
  // Under BSP the fast worker waits for the slow one every round (about 200 ms in all,
  // less when the host is busy and the fast thread loses its core), while the slow
  // worker's reads are ready when it asks; under ASP no read is ever held. (At 1 ms a
  // step, a loaded run with the fast worker's test code at -O0 saw the slow worker held
  // 106 ms and the fast one 9 ms: the fast thread had lost its core for whole rounds.)
  REQUIRE(bsp.workers[1].held_s > 0.004);
  REQUIRE(bsp.workers[1].held_s > bsp.workers[0].held_s);
  REQUIRE(asp.workers[1].held_s == 0.0);
  REQUIRE(asp.workers[1].clock_staleness.max > 0);  // it ran ahead of the straggler
}

TEST_CASE("A worker that leaves early does not hang BSP", "[cluster][bsp]") {
  const Eigen::Index n = 4;
  psync::InProcessHub hub;
  psync::ServerOptions so;
  so.expected_workers = 2;
  psync::Server<Quadratic, psync::Bsp> server(Quadratic(n), so);
  auto ep = hub.endpoint(psync::server_peer);
  auto done = std::async(std::launch::async, [&] { return server.run(ep); });
  auto run_worker = [&](psync::PeerId id, std::uint64_t steps) {
    psync::WorkerOptions wo;
    wo.max_steps = steps;
    wo.reply_timeout = 5s;
    psync::Worker<Quadratic, psync::InProcess, psync::Bsp> w(Quadratic(n), hub.endpoint(id), wo);
    Target t{Eigen::VectorXf::Ones(n)};
    return w.run([&]() -> const Target& { return t; });
  };
  auto a = std::async(std::launch::async, run_worker, 0, 5);
  auto b = std::async(std::launch::async, run_worker, 1, 50);
  REQUIRE(a.get().steps == 5);
  REQUIRE(b.get().steps == 50);
  const auto report = done.get();
  REQUIRE(report.steps_applied == 55);
}

TEST_CASE("A dead worker (endpoint closed without leave) is removed from the barrier", "[cluster][bsp]") {
  const Eigen::Index n = 4;
  psync::InProcessHub hub;
  psync::ServerOptions so;
  so.expected_workers = 2;
  psync::Server<Quadratic, psync::Bsp> server(Quadratic(n), so);
  auto ep = hub.endpoint(psync::server_peer);
  auto done = std::async(std::launch::async, [&] { return server.run(ep); });
  {
    auto dead = hub.endpoint(1);
    dead.send(psync::server_peer, psync::msg::Join{1, static_cast<std::uint64_t>(n), "bsp"});
  }  // closed: the hub tells the server it disconnected
  psync::WorkerOptions wo;
  wo.max_steps = 20;
  wo.reply_timeout = 5s;
  psync::Worker<Quadratic, psync::InProcess, psync::Bsp> w(Quadratic(n), hub.endpoint(0), wo);
  Target t{Eigen::VectorXf::Ones(n)};
  REQUIRE(w.run([&]() -> const Target& { return t; }).steps == 20);
  const auto report = done.get();
  bool saw_loss = false;
  for (const auto& e : report.events) saw_loss = saw_loss || e.find("worker 1: lost (disconnected)") != std::string::npos;
  REQUIRE(saw_loss);
}

TEST_CASE("The server refuses a wrong dimension, a policy mismatch and a duplicate id", "[cluster][errors]") {
  psync::InProcessHub hub;
  psync::ServerOptions so;
  so.expected_workers = 1;
  so.join_timeout = 2s;
  psync::Server<Quadratic, psync::Bsp> server(Quadratic(4), so);
  auto ep = hub.endpoint(psync::server_peer);
  auto done = std::async(std::launch::async, [&] { return server.run(ep); });
  auto expect_error = [&](psync::InProcess& e, psync::msg::ErrorCode code, const char* fragment) {
    auto reply = e.receive(psync::Clock::now() + 5s);
    REQUIRE(reply);
    auto* err = std::get_if<psync::msg::Error>(&reply->message);
    REQUIRE(err);
    INFO(err->text);
    REQUIRE(err->code == code);
    REQUIRE(err->text.find(fragment) != std::string::npos);
  };
  auto a = hub.endpoint(0);
  a.send(psync::server_peer, psync::msg::Join{0, 5, "bsp"});
  expect_error(a, psync::msg::ErrorCode::wrong_dimension, "5 parameters");
  a.send(psync::server_peer, psync::msg::Join{0, 4, "asp"});
  expect_error(a, psync::msg::ErrorCode::policy_mismatch, "'asp'");
  a.send(psync::server_peer, psync::msg::Push{0, 0, 1, Eigen::VectorXf::Ones(4)});
  expect_error(a, psync::msg::ErrorCode::not_joined, "before join");
  a.send(psync::server_peer, psync::msg::Join{3, 4, "bsp"});
  expect_error(a, psync::msg::ErrorCode::bad_frame, "join names worker 3");
  a.send(psync::server_peer, psync::msg::Join{0, 4, "bsp"});
  auto model = a.receive(psync::Clock::now() + 5s);
  REQUIRE(model);
  REQUIRE(std::holds_alternative<psync::msg::Model>(model->message));
  a.send(psync::server_peer, psync::msg::Join{0, 4, "bsp"});
  expect_error(a, psync::msg::ErrorCode::duplicate_worker, "already connected");
  a.send(psync::server_peer, psync::msg::Push{7, 0, 1, Eigen::VectorXf::Ones(4)});
  expect_error(a, psync::msg::ErrorCode::bad_clock, "expected 0");
  a.close();
  const auto report = done.get();
  REQUIRE(report.steps_applied == 0);
  REQUIRE(report.version == 0);
  REQUIRE(report.peers.size() == 1);
  REQUIRE(report.peers[0].left == psync::msg::LeaveReason::failed);
}

TEST_CASE("A worker whose server vanished gets a clear error, not a hang", "[cluster][errors]") {
  psync::InProcessHub hub;
  auto server_ep = hub.endpoint(psync::server_peer);
  psync::WorkerOptions wo;
  wo.reply_timeout = 300ms;
  psync::Worker<Quadratic, psync::InProcess, psync::Bsp> w(Quadratic(2), hub.endpoint(0), wo);
  Target t{Eigen::VectorXf::Ones(2)};
  // Nobody serves: the join times out with a message naming the worker.
  try {
    w.run([&]() -> const Target& { return t; });
    FAIL("the join did not time out");
  } catch (const psync::TimeoutError& e) {
    REQUIRE(std::string(e.what()).find("worker 0") != std::string::npos);
  }
  server_ep.close();
  psync::Worker<Quadratic, psync::InProcess, psync::Bsp> w2(Quadratic(2), hub.endpoint(1), wo);
  REQUIRE_THROWS_AS(w2.run([&]() -> const Target& { return t; }), psync::TransportError);
}

TEST_CASE("The server gives up when no worker joins", "[cluster][errors]") {
  psync::InProcessHub hub;
  psync::ServerOptions so;
  so.join_timeout = 200ms;
  psync::Server<Quadratic, psync::Asp> server(Quadratic(2), so);
  auto ep = hub.endpoint(psync::server_peer);
  REQUIRE_THROWS_AS(server.run(ep), psync::TimeoutError);
}

TEST_CASE("The server reports progress while training, at the requested pace", "[cluster]") {
  psync::InProcessHub hub;
  psync::ServerOptions so;
  so.progress_interval = 20ms;
  // Filled on the server thread, read here after run() returned (Catch2 asserts on this thread only).
  std::vector<std::uint64_t> versions;
  std::vector<Eigen::Index> sizes;
  so.on_progress = [&](const psync::ServerProgress& p) {
    sizes.push_back(p.parameters.size());
    versions.push_back(p.version);
  };
  psync::Server<Quadratic, psync::Bsp> server(Quadratic(4), so);
  auto ep = hub.endpoint(psync::server_peer);
  auto done = std::async(std::launch::async, [&] { return server.run(ep); });
  psync::WorkerOptions wo;
  wo.max_steps = 30;
  psync::Worker<Quadratic, psync::InProcess, psync::Bsp> w(Quadratic(4), hub.endpoint(0), wo);
  Target t{Eigen::VectorXf::Ones(4)};
  const auto start = psync::Clock::now();
  w.run([&]() -> const Target& {
    std::this_thread::sleep_for(5ms);  // 30 steps >= 150 ms: several progress periods
    return t;
  });
  const double elapsed = std::chrono::duration<double>(psync::Clock::now() - start).count();
  done.get();
  REQUIRE(versions.size() >= 2);
  REQUIRE(static_cast<double>(versions.size()) <= elapsed / 0.020 + 2);  // never more often than asked
  REQUIRE(std::is_sorted(versions.begin(), versions.end()));
  REQUIRE(std::all_of(sizes.begin(), sizes.end(), [](Eigen::Index s) { return s == 4; }));
}
