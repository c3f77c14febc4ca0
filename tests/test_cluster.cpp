// Whole clusters in one process over the in-process transport: every policy
// trains, departures do not hang the rest, protocol violations are refused.
#include "catch.hpp"
#include "toy_model.hpp"

#include <psync/core/server.hpp>
#include <psync/core/worker.hpp>
#include <psync/policies/asp.hpp>
#include <psync/policies/bsp.hpp>
#include <psync/policies/osp.hpp>
#include <psync/policies/ssp.hpp>
#include <psync/transport/in_process.hpp>

#include <chrono>
#include <future>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using psync_test::Quadratic;
using psync_test::Target;

namespace {

template <class P>
struct Cluster {
  std::vector<psync::WorkerReport> workers;
  psync::ServerReport server;
  Eigen::VectorXf final_parameters;
};

// Worker w's batches all pull towards `target * (w + 1)`; the optimum of the sum is their mean.
template <class P>
Cluster<P> run_cluster(int n, std::uint64_t steps, float lr, std::vector<double> slowdown = {},
                       bool same_target = false) {
  const Eigen::Index dim = 8;
  psync::InProcessHub hub;
  psync::ServerOptions so;
  so.expected_workers = static_cast<std::uint32_t>(n);
  so.join_timeout = 10s;
  psync::Server<Quadratic, P> server(Quadratic(dim), so);
  auto server_ep = hub.endpoint(psync::server_peer);
  auto server_done = std::async(std::launch::async, [&] { return server.run(server_ep); });
  std::vector<std::future<psync::WorkerReport>> futures;
  for (int w = 0; w < n; ++w) {
    futures.push_back(std::async(std::launch::async, [&, w] {
      psync::WorkerOptions wo;
      wo.id = static_cast<psync::PeerId>(w);
      wo.learning_rate = lr;
      wo.max_steps = steps;
      wo.reply_timeout = 10s;
      if (static_cast<std::size_t>(w) < slowdown.size()) wo.straggler.slowdown = slowdown[static_cast<std::size_t>(w)];
      psync::Worker<Quadratic, psync::InProcess, P> worker(Quadratic(dim), hub.endpoint(wo.id), wo);
      Target t{Eigen::VectorXf::Constant(dim, same_target ? 3.0f : static_cast<float>(w + 1))};
      return worker.run([&]() -> const Target& { return t; });
    }));
  }
  Cluster<P> c;
  for (auto& f : futures) c.workers.push_back(f.get());
  c.server = server_done.get();
  c.final_parameters = server.model().parameters();
  return c;
}

}  // namespace

TEMPLATE_TEST_CASE("Every policy reaches the common optimum and loses no step", "[cluster]", psync::Bsp, psync::Asp,
                   psync::Ssp<2>, psync::Osp<4>, psync::Losp<4>) {
  const int n = 4;
  const auto c = run_cluster<TestType>(n, 300, 0.05f, {}, true);
  for (Eigen::Index i = 0; i < c.final_parameters.size(); ++i) REQUIRE(c.final_parameters[i] == Approx(3.0).margin(1e-3));
  std::uint64_t pushed_steps = 0;
  for (const auto& w : c.workers) pushed_steps += w.steps;
  REQUIRE(c.server.steps_applied == pushed_steps);
}

// With one step per push, every worker doing the same number of steps and the
// clock gap bounded, BSP and SSP settle at the minimiser of the workers' summed
// loss. ASP bounds nothing: whichever worker the scheduler lets finish last pulls
// the end point towards its own target, and OSP bundles a varying number of local
// steps per round; both are checked on a common optimum above and on real data.
TEMPLATE_TEST_CASE("Bounded-staleness policies converge to the workers' consensus", "[cluster]", psync::Bsp,
                   psync::Ssp<2>) {
  const int n = 4;
  const auto c = run_cluster<TestType>(n, 200, 0.05f);
  // Optimum of sum_w 0.5||x - (w+1)||^2 is the mean of 1..4 = 2.5.
  REQUIRE(c.final_parameters.size() == 8);
  for (Eigen::Index i = 0; i < c.final_parameters.size(); ++i) {
    REQUIRE(c.final_parameters[i] == Approx(2.5).margin(0.3));
  }
  std::uint64_t pushed_steps = 0;
  for (const auto& w : c.workers) {
    REQUIRE(w.steps == 200);
    REQUIRE(w.pushes >= 1);
    pushed_steps += w.steps;
  }
  REQUIRE(c.server.steps_applied == pushed_steps);  // nothing computed was lost
  REQUIRE(c.server.peers.size() == static_cast<std::size_t>(n));
}

TEST_CASE("BSP applies the exact average of each round", "[cluster][bsp]") {
  // Sequential reference: x <- x - lr * mean_w (x - t_w) per round, identical targets per worker per round.
  const int n = 3;
  const float lr = 0.1f;
  const std::uint64_t steps = 25;
  const auto c = run_cluster<psync::Bsp>(n, steps, lr);
  Eigen::VectorXf x = Eigen::VectorXf::Zero(8);
  for (std::uint64_t s = 0; s < steps; ++s) {
    Eigen::VectorXf sum = Eigen::VectorXf::Zero(8);
    for (int w = 0; w < n; ++w) sum += -lr * (x - Eigen::VectorXf::Constant(8, static_cast<float>(w + 1)));
    x += sum / static_cast<float>(n);
  }
  REQUIRE((c.final_parameters - x).cwiseAbs().maxCoeff() < 1e-5f);
  REQUIRE(c.server.version == steps);
  for (const auto& p : c.server.peers) REQUIRE(p.staleness.max == 0);
}

TEST_CASE("OSP pushes several local steps per round and hides communication", "[cluster][osp]") {
  const auto c = run_cluster<psync::Osp<8>>(2, 300, 0.05f);
  for (const auto& w : c.workers) {
    REQUIRE(w.steps == 300);
    REQUIRE(w.pushes <= w.steps);
    REQUIRE(w.installs >= 1);
  }
}

TEST_CASE("A straggler holds BSP back but not ASP", "[cluster]") {
  // Each step costs almost nothing, so stretch it: worker 0 sleeps ~ (factor-1) x compute.
  const auto bsp = run_cluster<psync::Bsp>(2, 40, 0.05f, {50.0});
  const auto asp = run_cluster<psync::Asp>(2, 40, 0.05f, {50.0});
  // Under BSP the fast worker waits for the slow one every round; under ASP it never waits for it.
  REQUIRE(bsp.workers[1].held_s > asp.workers[1].held_s);
  REQUIRE(asp.workers[1].held_s < 0.05);
}

TEST_CASE("A worker that leaves early does not hang BSP", "[cluster][bsp]") {
  const Eigen::Index dim = 4;
  psync::InProcessHub hub;
  psync::ServerOptions so;
  so.expected_workers = 2;
  psync::Server<Quadratic, psync::Bsp> server(Quadratic(dim), so);
  auto ep = hub.endpoint(psync::server_peer);
  auto done = std::async(std::launch::async, [&] { return server.run(ep); });
  auto run_worker = [&](psync::PeerId id, std::uint64_t steps) {
    psync::WorkerOptions wo;
    wo.id = id;
    wo.max_steps = steps;
    wo.reply_timeout = 5s;
    psync::Worker<Quadratic, psync::InProcess, psync::Bsp> w(Quadratic(dim), hub.endpoint(id), wo);
    Target t{Eigen::VectorXf::Ones(dim)};
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
  const Eigen::Index dim = 4;
  psync::InProcessHub hub;
  psync::ServerOptions so;
  so.expected_workers = 2;
  psync::Server<Quadratic, psync::Bsp> server(Quadratic(dim), so);
  auto ep = hub.endpoint(psync::server_peer);
  auto done = std::async(std::launch::async, [&] { return server.run(ep); });
  {
    auto dead = hub.endpoint(1);
    dead.send(psync::server_peer, psync::msg::Join{1, static_cast<std::uint64_t>(dim), "bsp"});
  }  // closed: the hub tells the server it disconnected
  psync::WorkerOptions wo;
  wo.id = 0;
  wo.max_steps = 20;
  wo.reply_timeout = 5s;
  psync::Worker<Quadratic, psync::InProcess, psync::Bsp> w(Quadratic(dim), hub.endpoint(0), wo);
  Target t{Eigen::VectorXf::Ones(dim)};
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
}

TEST_CASE("A worker whose server vanished gets a clear error, not a hang", "[cluster][errors]") {
  psync::InProcessHub hub;
  auto server_ep = hub.endpoint(psync::server_peer);
  psync::WorkerOptions wo;
  wo.id = 0;
  wo.reply_timeout = 300ms;
  psync::Worker<Quadratic, psync::InProcess, psync::Bsp> w(Quadratic(2), hub.endpoint(0), wo);
  Target t{Eigen::VectorXf::Ones(2)};
  // Nobody serves: the join times out with a message naming the worker.
  REQUIRE_THROWS_AS(w.run([&]() -> const Target& { return t; }), psync::TimeoutError);
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
  std::vector<std::uint64_t> versions;
  so.on_progress = [&](const psync::ServerProgress& p) {
    REQUIRE(p.parameters.size() == 4);
    versions.push_back(p.version);
  };
  psync::Server<Quadratic, psync::Bsp> server(Quadratic(4), so);
  auto ep = hub.endpoint(psync::server_peer);
  auto done = std::async(std::launch::async, [&] { return server.run(ep); });
  psync::WorkerOptions wo;
  wo.max_steps = 30;
  wo.straggler.slowdown = 1.0;
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
}
