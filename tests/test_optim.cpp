// Optimizers, learning-rate schedules, the per-step callback and the log hook.
//
// Schedules and optimizers are checked against their closed forms. The worker-side
// and server-side optimizers are checked through the sans-I/O cores driven in lock
// step (deterministic: every message is moved at once, in worker order) against
// the math replayed here, and through real clusters over the in-process transport.
#include "alloc_counter.hpp"
#include "catch.hpp"
#include "toy_model.hpp"

#include <psync/core/checkpoint.hpp>
#include <psync/core/log.hpp>
#include <psync/core/server.hpp>
#include <psync/core/server_core.hpp>
#include <psync/core/worker.hpp>
#include <psync/core/worker_core.hpp>
#include <psync/harness/local_cluster.hpp>
#include <psync/optim/any.hpp>
#include <psync/optim/optimizer.hpp>
#include <psync/optim/parse.hpp>
#include <psync/optim/schedule.hpp>
#include <psync/sim/simulator.hpp>
#include <psync/policies/asp.hpp>
#include <psync/policies/bsp.hpp>
#include <psync/policies/osp.hpp>
#include <psync/policies/ssp.hpp>
#include <psync/transport/in_process.hpp>

#include <atomic>
#include <chrono>
#include <cmath>
#include <future>
#include <limits>
#include <memory>
#include <mutex>
#include <numbers>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using psync_test::Quadratic;
using psync_test::Target;
namespace optim = psync::optim;

namespace {

constexpr Eigen::Index dim = 4;
const psync::Clock::time_point t0{};

Eigen::VectorXf target_of(int w) { return Eigen::VectorXf::Constant(dim, static_cast<float>(w + 1)); }

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// ---- lock-step driver of the sans-I/O cores ---------------------------------------

/// One ServerCore and `workers` WorkerCores; every message is delivered at once, in order.
template <class P, class WO, class SO>
struct Lockstep {
  using Server = psync::ServerCore<Quadratic, P, SO>;
  using Worker = psync::WorkerCore<Quadratic, P, WO>;

  Lockstep(int workers, float lr, WO wopt, SO sopt, optim::Schedule server_lr = {}, optim::Schedule worker_lr = {}) {
    psync::ServerCoreOptions so;
    so.expected_workers = static_cast<std::uint32_t>(workers);
    so.optimizer_schedule = std::move(server_lr);
    server = std::make_unique<Server>(Quadratic(dim), so, P{}, t0, sopt);
    for (int w = 0; w < workers; ++w) {
      cores.push_back(std::make_unique<Worker>(Quadratic(dim), static_cast<psync::PeerId>(w), lr, P{}, wopt, worker_lr));
      cores.back()->start(t0);
    }
    pump();
  }

  /// Moves messages until none is left.
  void pump() {
    for (bool moved = true; moved;) {
      moved = false;
      for (auto& c : cores) {
        while (auto t = c->poll_transmit()) {
          server->on_message(c->id(), std::move(t->message), t0);
          moved = true;
        }
      }
      while (auto t = server->poll_transmit()) {
        cores[t->to]->on_message(std::move(t->message), t0);
        moved = true;
      }
    }
  }

  /// One step of every worker (each must be allowed to compute), on its own target.
  void round() {
    for (std::size_t w = 0; w < cores.size(); ++w) {
      auto& c = *cores[w];
      REQUIRE(c.begin_step(t0));
      c.model().gradient(Target{target_of(static_cast<int>(w))}, c.gradient());
      c.end_step(1, 0.0, t0);
      pump();
    }
  }

  Eigen::VectorXf model() const { return server->model().parameters(); }

  std::unique_ptr<Server> server;
  std::vector<std::unique_ptr<Worker>> cores;
};

/// Steps of worker-side plain SGD under BSP, replayed: x += mean_w(-lr * (x - t_w)).
Eigen::VectorXf bsp_sgd(int workers, int rounds, float lr) {
  Eigen::VectorXf x = Eigen::VectorXf::Zero(dim);
  for (int r = 0; r < rounds; ++r) {
    Eigen::VectorXf sum = Eigen::VectorXf::Zero(dim);
    for (int w = 0; w < workers; ++w) sum += -lr * (x - target_of(w));
    x += sum / static_cast<float>(workers);
  }
  return x;
}

/// Adam's update for gradient sequence `gs` (double precision), the last step's.
struct AdamRef {
  double b1 = 0.9, b2 = 0.999, eps = 1e-8;
  Eigen::VectorXd m = Eigen::VectorXd::Zero(dim), v = Eigen::VectorXd::Zero(dim);
  int t = 0;
  Eigen::VectorXd step(const Eigen::VectorXd& g, double lr) {
    ++t;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g.cwiseProduct(g);
    const Eigen::ArrayXd mh = m.array() / (1 - std::pow(b1, t));
    const Eigen::ArrayXd vh = v.array() / (1 - std::pow(b2, t));
    return (-lr * mh / (vh.sqrt() + eps)).matrix();
  }
};

}  // namespace

// ---- schedules ---------------------------------------------------------------------

TEST_CASE("Schedules follow their closed forms", "[optim][schedule]") {
  const optim::Constant c(0.1f);
  CHECK(c(0) == 0.1f);
  CHECK(c(123456) == 0.1f);

  const optim::StepDecay d(0.1f, 0.1f, 50);
  for (std::uint64_t s : {0u, 1u, 49u, 50u, 99u, 100u, 149u, 150u, 1000u}) {
    CHECK(d(s) == Approx(0.1 * std::pow(0.1, static_cast<double>(s / 50))).epsilon(1e-6));
  }
  CHECK(d(49) == 0.1f);
  CHECK(d(50) == Approx(0.01f).epsilon(1e-6));

  const optim::Cosine cos(0.2f, 100, 0.02f);
  for (std::uint64_t s : {0u, 10u, 25u, 50u, 75u, 99u, 100u, 500u}) {
    const double t = static_cast<double>(std::min<std::uint64_t>(s, 100)) / 100.0;
    CHECK(cos(s) == Approx(0.02 + 0.18 * 0.5 * (1 + std::cos(std::numbers::pi * t))).epsilon(1e-6));
  }
  CHECK(cos(0) == Approx(0.2f));
  CHECK(cos(50) == Approx(0.11f));
  CHECK(cos(100) == Approx(0.02f));
  CHECK(cos(1000) == Approx(0.02f));

  const optim::Warmup w(10, optim::Constant(0.5f));
  for (std::uint64_t s = 0; s < 10; ++s) CHECK(w(s) == Approx(0.5 * static_cast<double>(s + 1) / 10.0));
  CHECK(w(10) == 0.5f);
  CHECK(w(999) == 0.5f);

  // Warm-up then cosine: the cosine starts at its own step 0 after the warm-up.
  const optim::Warmup wc(5, optim::Cosine(1.0f, 20));
  CHECK(wc(0) == Approx(0.2));
  CHECK(wc(4) == Approx(1.0));
  CHECK(wc(5) == Approx(1.0));
  CHECK(wc(15) == Approx(0.5));
  CHECK(wc(25) == Approx(0.0).margin(1e-7));
  // Warm-up then step decay.
  const optim::Warmup wd(2, optim::StepDecay(1.0f, 0.5f, 3));
  CHECK(wd(0) == Approx(0.5));
  CHECK(wd(1) == Approx(1.0));
  CHECK(wd(2 + 3) == Approx(0.5));
  CHECK(wd(2 + 6) == Approx(0.25));
}

TEST_CASE("Schedules and optimizers refuse bad hyper-parameters, naming the value", "[optim][schedule]") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  auto says = [](auto&& f, const std::string& part) {
    try {
      f();
    } catch (const psync::ConfigError& e) {
      INFO(e.what());
      CHECK(contains(e.what(), part));
      return;
    }
    FAIL("no ConfigError, expected one saying '" << part << "'");
  };
  says([&] { (void)optim::Constant(0.0f); }, "learning rate must be positive and finite, got 0");
  says([&] { (void)optim::Constant(-0.1f); }, "got -0.1");
  says([&] { (void)optim::Constant(nan); }, "got nan");
  says([&] { (void)optim::Constant(inf); }, "learning rate");
  says([&] { (void)optim::StepDecay(0.1f, 0.0f, 10); }, "gamma must be in (0, 1], got 0");
  says([&] { (void)optim::StepDecay(0.1f, 1.5f, 10); }, "gamma must be in (0, 1], got 1.5");
  says([&] { (void)optim::StepDecay(0.1f, 0.5f, 0); }, "at least 1 step, got 0");
  says([&] { (void)optim::Cosine(0.1f, 0); }, "at least 1, got 0");
  says([&] { (void)optim::Cosine(0.1f, 10, 0.2f); }, "min_lr must be in [0, lr], got 0.2");
  says([&] { (void)optim::Warmup(0, optim::Constant(0.1f)); }, "warm-up steps must be at least 1, got 0");
  says([&] { (void)optim::Momentum(1.0f); }, "momentum must be in [0, 1), got 1");
  says([&] { (void)optim::Momentum(-0.5f); }, "got -0.5");
  says([&] { (void)optim::Momentum(nan); }, "got nan");
  says([&] { (void)optim::Adam(1.0f); }, "beta1 must be in [0, 1), got 1");
  says([&] { (void)optim::Adam(0.9f, nan); }, "beta2 must be in [0, 1), got nan");
  says([&] { (void)optim::Adam(0.9f, 0.999f, 0.0f); }, "eps must be positive and finite, got 0");
  says([&] { (void)psync::WorkerCore<Quadratic, psync::Bsp>(Quadratic(dim), 0, 0.0f, {}); }, "learning rate must be positive");
  says([&] { (void)psync::WorkerCore<Quadratic, psync::Bsp>(Quadratic(dim), 0, nan, {}); }, "got nan");
  // A schedule that goes negative or NaN is caught at the step that uses it.
  psync::WorkerCore<Quadratic, psync::Asp> core(Quadratic(dim), 0, 0.1f, {}, {},
                                                [](std::uint64_t s) { return s < 2 ? 0.1f : -1.0f; });
  CHECK(core.learning_rate_at(1) == 0.1f);
  says([&] { (void)core.learning_rate_at(2); }, "the learning-rate schedule gave -1.000000 at step 2");
}

// ---- optimizers --------------------------------------------------------------------

TEST_CASE("Optimizers give the closed-form updates for a known gradient sequence", "[optim]") {
  std::vector<Eigen::VectorXf> gs;
  gs.push_back((Eigen::VectorXf(dim) << 1.0f, -2.0f, 0.5f, 0.0f).finished());
  gs.push_back((Eigen::VectorXf(dim) << 0.5f, 1.0f, -0.25f, 3.0f).finished());
  gs.push_back((Eigen::VectorXf(dim) << -1.0f, 0.0f, 2.0f, -1.0f).finished());
  const float lr = 0.1f, mu = 0.9f;

  SECTION("SGD is -lr * g, exactly") {
    optim::Sgd sgd;
    Eigen::VectorXf g = gs[0];
    sgd.apply(g, lr);
    CHECK(g == (gs[0] * -lr).eval());
  }
  SECTION("momentum: v = mu v + g, update -lr v") {
    optim::Momentum m(mu);
    m.reset(dim);
    Eigen::VectorXd v = Eigen::VectorXd::Zero(dim);
    for (const auto& g0 : gs) {
      Eigen::VectorXf g = g0;
      m.apply(g, lr);
      v = mu * v + g0.cast<double>();
      CHECK((g.cast<double>() - (-lr * v)).cwiseAbs().maxCoeff() < 1e-6);
    }
    // By hand: v3 = mu^2 g1 + mu g2 + g3.
    const Eigen::VectorXd v3 = mu * mu * gs[0].cast<double>() + mu * gs[1].cast<double>() + gs[2].cast<double>();
    CHECK((m.velocity().cast<double>() - v3).cwiseAbs().maxCoeff() < 1e-6);
  }
  SECTION("Nesterov: update -lr (g + mu v), with v already updated") {
    optim::Momentum m(mu, true);
    CHECK(m.name() == "nesterov(0.9)");
    Eigen::VectorXd v = Eigen::VectorXd::Zero(dim);
    for (const auto& g0 : gs) {
      Eigen::VectorXf g = g0;  // first use sizes the state
      m.apply(g, lr);
      v = mu * v + g0.cast<double>();
      const Eigen::VectorXd expected = -lr * (g0.cast<double>() + mu * v);
      CHECK((g.cast<double>() - expected).cwiseAbs().maxCoeff() < 1e-6);
    }
  }
  SECTION("Adam with bias correction; its first step is -lr * sign(g) where g != 0") {
    optim::Adam a;
    a.reset(dim);
    AdamRef ref;
    for (std::size_t k = 0; k < gs.size(); ++k) {
      Eigen::VectorXf g = gs[k];
      a.apply(g, lr);
      const Eigen::VectorXd expected = ref.step(gs[k].cast<double>(), lr);
      CHECK((g.cast<double>() - expected).cwiseAbs().maxCoeff() < 1e-6);
      if (k == 0) {
        CHECK(g[0] == Approx(-lr));
        CHECK(g[1] == Approx(lr));
        CHECK(g[3] == 0.0f);
      }
    }
    CHECK(a.steps() == 3);
  }
  SECTION("a second gradient of another size is refused") {
    optim::Momentum m(mu);
    Eigen::VectorXf g = gs[0];
    m.apply(g, lr);
    Eigen::VectorXf other = Eigen::VectorXf::Ones(dim + 1);
    CHECK_THROWS_AS(m.apply(other, lr), psync::ConfigError);
  }
}

// A sharded server runs the optimizer on each slice with its own state, so an element's
// update must not depend on where its slice starts in memory: Eigen's vectorized float
// sqrt (EIGEN_FAST_MATH, the default) is an approximation that differs from std::sqrt
// in the last bits, and which elements take the vector path depends on the alignment.
TEST_CASE("Optimizers update each element the same whatever the slice's offset", "[optim][sharding]") {
  constexpr Eigen::Index n = 37;
  Eigen::VectorXf grads(4 * (n + 8));
  for (Eigen::Index i = 0; i < grads.size(); ++i) grads[i] = std::sin(0.37f * static_cast<float>(i)) * 1e-2f * static_cast<float>(1 + i % 7);
  const auto run = [&](auto optimizer, Eigen::Index offset) {
    // The same n values, placed `offset` floats into a buffer.
    Eigen::VectorXf buffer = Eigen::VectorXf::Zero(n + 8);
    Eigen::VectorXf out(4 * n);
    optimizer.reset(n);
    for (int step = 0; step < 4; ++step) {
      buffer.segment(offset, n) = grads.segment(step * (n + 8), n);
      Eigen::Ref<Eigen::VectorXf> g = buffer.segment(offset, n);
      optimizer.apply(g, 0.01f);
      out.segment(step * n, n) = g;
    }
    return out;
  };
  for (Eigen::Index offset = 1; offset < 8; ++offset) {
    INFO("offset " << offset);
    CHECK((run(psync::optim::Adam(), offset).array() == run(psync::optim::Adam(), 0).array()).all());
    CHECK((run(psync::optim::Momentum(0.9f, true), offset).array() == run(psync::optim::Momentum(0.9f, true), 0).array()).all());
    CHECK((run(psync::optim::Sgd(), offset).array() == run(psync::optim::Sgd(), 0).array()).all());
  }
}

TEST_CASE("Optimizers allocate nothing per step once sized", "[optim][alloc]") {
  Eigen::VectorXf g = Eigen::VectorXf::Ones(1000);
  optim::Momentum m(0.9f, true);
  optim::Adam a;
  m.reset(g.size());
  a.reset(g.size());
  const long before = g_allocations.load();
  for (int i = 0; i < 10; ++i) {
    m.apply(g, 0.01f);
    a.apply(g, 0.01f);
  }
  CHECK(g_allocations.load() - before == 0);
}

// ---- worker-side -------------------------------------------------------------------

TEST_CASE("The default worker is plain SGD, bit for bit", "[optim][worker]") {
  const float lr = 0.05f;
  Lockstep<psync::Bsp, optim::Sgd, optim::None> plain(3, lr, {}, {});
  // Momentum 0 is SGD exactly (0 * v + g == g), and a constant schedule is the constant rate.
  Lockstep<psync::Bsp, optim::Momentum, optim::None> zero(3, lr, optim::Momentum(0.0f), {}, {}, optim::Constant(lr));
  for (int r = 0; r < 20; ++r) {
    plain.round();
    zero.round();
  }
  const Eigen::VectorXf expected = bsp_sgd(3, 20, lr);
  CHECK(plain.model() == expected);
  CHECK(zero.model() == expected);
}

TEST_CASE("Worker-side momentum and Adam push the closed-form updates under BSP", "[optim][worker]") {
  const float lr = 0.05f;
  const int workers = 3, rounds = 15;
  SECTION("momentum, one velocity per worker") {
    const bool nesterov = GENERATE(false, true);
    Lockstep<psync::Bsp, optim::Momentum, optim::None> run(workers, lr, optim::Momentum(0.9f, nesterov), {});
    Eigen::VectorXd x = Eigen::VectorXd::Zero(dim);
    std::vector<Eigen::VectorXd> v(workers, Eigen::VectorXd::Zero(dim));
    for (int r = 0; r < rounds; ++r) {
      run.round();
      Eigen::VectorXd sum = Eigen::VectorXd::Zero(dim);
      for (int w = 0; w < workers; ++w) {
        const Eigen::VectorXd g = x - target_of(w).cast<double>();
        v[w] = 0.9 * v[w] + g;
        sum += -lr * (nesterov ? Eigen::VectorXd(g + 0.9 * v[w]) : v[w]);
      }
      x += sum / workers;
    }
    CHECK((run.model().cast<double>() - x).cwiseAbs().maxCoeff() < 1e-4);
  }
  SECTION("Adam, one pair of moments per worker") {
    Lockstep<psync::Bsp, optim::Adam, optim::None> run(workers, lr, optim::Adam(), {});
    Eigen::VectorXd x = Eigen::VectorXd::Zero(dim);
    std::vector<AdamRef> refs(workers);
    for (int r = 0; r < rounds; ++r) {
      run.round();
      Eigen::VectorXd sum = Eigen::VectorXd::Zero(dim);
      for (int w = 0; w < workers; ++w) sum += refs[w].step(x - target_of(w).cast<double>(), lr);
      x += sum / workers;
    }
    CHECK((run.model().cast<double>() - x).cwiseAbs().maxCoeff() < 1e-4);
  }
}

TEST_CASE("Each worker step uses the schedule's rate for its own step count", "[optim][worker]") {
  const optim::StepDecay decay(0.1f, 0.5f, 3);
  Lockstep<psync::Asp, optim::Sgd, optim::None> run(1, 1.0f, {}, {}, {}, decay);
  Eigen::VectorXd x = Eigen::VectorXd::Zero(dim);
  for (std::uint64_t s = 0; s < 10; ++s) {
    run.round();
    CHECK(run.cores[0]->learning_rate() == decay(s));
    x += -static_cast<double>(decay(s)) * (x - target_of(0).cast<double>());
  }
  CHECK((run.model().cast<double>() - x).cwiseAbs().maxCoeff() < 1e-5);
}

namespace {

template <class P, class WO = optim::Sgd, class SO = optim::None>
struct Cluster {
  int workers = 3;
  std::uint64_t steps = 300;
  float lr = 0.05f;
  WO wopt{};
  SO sopt{};
  optim::Schedule server_lr;
  std::function<void(const psync::StepInfo&)> on_step;  // worker 0's
  optim::Schedule worker_lr;

  Eigen::VectorXf run() {
    psync::InProcessHub hub;
    psync::ServerOptions so;
    so.expected_workers = static_cast<std::uint32_t>(workers);
    so.join_timeout = 10s;
    so.peer_timeout = 10s;
    so.optimizer_schedule = server_lr;
    psync::Server<Quadratic, P, SO> server(Quadratic(dim), so, P{}, sopt);
    auto ep = hub.endpoint(psync::server_peer);
    auto done = std::async(std::launch::async, [&] { return server.run(ep); });
    std::vector<std::future<psync::WorkerReport>> futures;
    for (int w = 0; w < workers; ++w) {
      futures.push_back(std::async(std::launch::async, [&, w] {
        psync::WorkerOptions wo;
        wo.learning_rate = lr;
        wo.learning_rate_schedule = worker_lr;
        wo.max_steps = steps;
        wo.reply_timeout = 10s;
        if (w == 0) wo.on_step = on_step;
        psync::Worker<Quadratic, psync::InProcess, P, WO> worker(Quadratic(dim), hub.endpoint(static_cast<psync::PeerId>(w)),
                                                                 wo, P{}, wopt);
        const Target t{target_of(w)};
        return worker.run([&]() -> const Target& { return t; });
      }));
    }
    for (auto& f : futures) f.get();
    done.get();
    return server.model().parameters();
  }
};

/// The mean of the workers' targets, where every disagreeing cluster must end up.
Eigen::VectorXf mean_target(int workers) {
  Eigen::VectorXf m = Eigen::VectorXf::Zero(dim);
  for (int w = 0; w < workers; ++w) m += target_of(w);
  return m / static_cast<float>(workers);
}

}  // namespace

TEST_CASE("A cluster of disagreeing workers trained with momentum converges to the mean optimum", "[optim][cluster]") {
  SECTION("BSP, worker-side Nesterov") {
    Cluster<psync::Bsp, optim::Momentum> c;
    c.wopt = optim::Momentum(0.9f, true);
    c.lr = 0.02f;
    CHECK((c.run() - mean_target(c.workers)).cwiseAbs().maxCoeff() < 1e-3);
  }
  SECTION("SSP(2), worker-side momentum") {
    // Pushes are added: at the optimum each worker's velocity is (x - t_w) / (1 - mu), so
    // every push moves the model by about lr * 10 = 0.05 and the others' pull it back;
    // workers finish at most 2 pushes apart. Hence the tolerance.
    Cluster<psync::Ssp<2>, optim::Momentum> c;
    c.wopt = optim::Momentum(0.9f);
    c.lr = 0.005f;
    CHECK((c.run() - mean_target(c.workers)).cwiseAbs().maxCoeff() < 0.2);
  }
  SECTION("SSP(1), worker-side Adam with warm-up and a cosine schedule") {
    // (Under ASP a worker that finishes early leaves the others pulling towards their own
    // targets alone: where the model ends depends on the thread timing.)
    Cluster<psync::Ssp<1>, optim::Adam> c;
    c.wopt = optim::Adam();
    c.steps = 400;
    c.worker_lr = optim::Warmup(20, optim::Cosine(0.05f, 380, 0.0005f));
    CHECK((c.run() - mean_target(c.workers)).cwiseAbs().maxCoeff() < 0.1);
  }
}

// ---- server-side -------------------------------------------------------------------

TEST_CASE("Server-side SGD under BSP is worker-side SGD: bit for bit at a power-of-two rate", "[optim][server]") {
  // Worker-side: the round applies (sum_w fl(-lr * g_w)) / P; server-side: fl(-lr * (sum_w g_w) / P).
  // Multiplying by a power of two (and dividing by P = 2) is exact in float, so both are the
  // same float; with P = 2 the sum g_a + g_b is the same float in either arrival order.
  // At another rate the products round differently: equal within float rounding only.
  const float lr = GENERATE(0.0625f, 0.05f);
  Cluster<psync::Bsp> worker_side;
  worker_side.workers = 2;
  worker_side.steps = 100;
  worker_side.lr = lr;
  Cluster<psync::Bsp, optim::OnServer, optim::Sgd> server_side;
  server_side.workers = 2;
  server_side.steps = 100;
  server_side.lr = lr;
  server_side.server_lr = optim::Constant(lr);
  const Eigen::VectorXf a = worker_side.run();
  const Eigen::VectorXf b = server_side.run();
  CHECK(a == bsp_sgd(2, 100, lr));
  if (lr == 0.0625f) {
    CHECK(b == a);
  } else {
    CHECK((b - a).cwiseAbs().maxCoeff() <= 1e-5f * a.cwiseAbs().maxCoeff());
  }
}

TEST_CASE("Server-side optimizers apply once per round on the mean (RoundAverage), once per push (Sum)",
          "[optim][server]") {
  const float lr = 0.05f;
  const int workers = 3, rounds = 12;
  SECTION("BSP momentum: one velocity on the mean equals P velocities averaged (momentum is linear)") {
    Lockstep<psync::Bsp, optim::Momentum, optim::None> ws(workers, lr, optim::Momentum(0.9f), {});
    Lockstep<psync::Bsp, optim::OnServer, optim::Momentum> ss(workers, lr, {}, optim::Momentum(0.9f), optim::Constant(lr));
    Eigen::VectorXd x = Eigen::VectorXd::Zero(dim), v = Eigen::VectorXd::Zero(dim);
    for (int r = 0; r < rounds; ++r) {
      ws.round();
      ss.round();
      Eigen::VectorXd mean = Eigen::VectorXd::Zero(dim);
      for (int w = 0; w < workers; ++w) mean += x - target_of(w).cast<double>();
      mean /= workers;
      v = 0.9 * v + mean;
      x += -lr * v;
    }
    CHECK(ss.server->optimizer_steps() == rounds);
    CHECK((ss.model().cast<double>() - x).cwiseAbs().maxCoeff() < 1e-4);
    CHECK((ws.model().cast<double>() - x).cwiseAbs().maxCoeff() < 1e-4);
  }
  SECTION("BSP Adam: one pair of moments on the mean differs from P pairs (Adam is not linear)") {
    Lockstep<psync::Bsp, optim::Adam, optim::None> ws(workers, lr, optim::Adam(), {});
    Lockstep<psync::Bsp, optim::OnServer, optim::Adam> ss(workers, lr, {}, optim::Adam(), optim::Constant(lr));
    Eigen::VectorXd x = Eigen::VectorXd::Zero(dim);
    AdamRef server_ref;
    for (int r = 0; r < rounds; ++r) {
      ws.round();
      ss.round();
      Eigen::VectorXd mean = Eigen::VectorXd::Zero(dim);
      for (int w = 0; w < workers; ++w) mean += x - target_of(w).cast<double>();
      x += server_ref.step(mean / workers, lr);
    }
    CHECK(ss.server->optimizer().steps() == rounds);
    CHECK((ss.model().cast<double>() - x).cwiseAbs().maxCoeff() < 1e-4);
    // Far above float rounding (the closed forms hold within 1e-4), here about 3e-3.
    CHECK((ss.model() - ws.model()).cwiseAbs().maxCoeff() > 1e-3);
  }
  SECTION("ASP momentum: one velocity stepped by every push in arrival order") {
    Lockstep<psync::Asp, optim::OnServer, optim::Momentum> ss(workers, lr, {}, optim::Momentum(0.9f), optim::Constant(lr));
    // Each worker computes at the model it last received; in lock step worker w pushes
    // right after worker w-1's push was applied and answered.
    Eigen::VectorXd x = Eigen::VectorXd::Zero(dim), v = Eigen::VectorXd::Zero(dim);
    std::vector<Eigen::VectorXd> seen(workers, Eigen::VectorXd::Zero(dim));
    for (int r = 0; r < rounds; ++r) {
      ss.round();
      for (int w = 0; w < workers; ++w) {
        v = 0.9 * v + (seen[w] - target_of(w).cast<double>());
        x += -lr * v;
        seen[w] = x;
      }
    }
    CHECK(ss.server->optimizer_steps() == static_cast<std::uint64_t>(rounds * workers));
    CHECK((ss.model().cast<double>() - x).cwiseAbs().maxCoeff() < 1e-4);
  }
  SECTION("the server's schedule counts optimizer steps") {
    const optim::StepDecay decay(0.1f, 0.5f, 2);
    Lockstep<psync::Bsp, optim::OnServer, optim::Sgd> ss(2, lr, {}, {}, decay);
    Eigen::VectorXd x = Eigen::VectorXd::Zero(dim);
    for (int r = 0; r < 7; ++r) {
      ss.round();
      const Eigen::VectorXd mean = x - (target_of(0) + target_of(1)).cast<double>() / 2;
      x += -static_cast<double>(decay(static_cast<std::uint64_t>(r))) * mean;
    }
    CHECK((ss.model().cast<double>() - x).cwiseAbs().maxCoeff() < 1e-5);
  }
}

TEST_CASE("A server-side optimizer: LOSP refused, mismatched workers refused, schedule required", "[optim][server]") {
  psync::ServerCoreOptions so;
  so.optimizer_schedule = optim::Constant(0.1f);
  SECTION("LOSP's compensation with a server-side optimizer is a ConfigError on both sides") {
    try {
      psync::WorkerCore<Quadratic, psync::Losp<4>, optim::OnServer> w(Quadratic(dim), 0, 0.1f, psync::Losp<4>{});
      FAIL("no error");
    } catch (const psync::ConfigError& e) {
      CHECK(contains(e.what(), "losp:4"));
      CHECK(contains(e.what(), "compensated"));
      CHECK(contains(e.what(), "server-side optimizer"));
    }
    try {
      psync::ServerCore<Quadratic, psync::Losp<4>, optim::Adam> s(Quadratic(dim), so, psync::Losp<4>{}, t0, optim::Adam());
      FAIL("no error");
    } catch (const psync::ConfigError& e) {
      CHECK(contains(e.what(), "losp:4"));
      CHECK(contains(e.what(), "adam(0.9,0.999,1e-08)"));
    }
    // OSP installs the global model: allowed.
    CHECK_NOTHROW(psync::WorkerCore<Quadratic, psync::Osp<4>, optim::OnServer>(Quadratic(dim), 0, 0.1f, psync::Osp<4>{}));
  }
  SECTION("no schedule") {
    psync::ServerCoreOptions none;
    CHECK_THROWS_WITH((psync::ServerCore<Quadratic, psync::Bsp, optim::Sgd>(Quadratic(dim), none, {}, t0)),
                      Catch::Contains("needs a learning rate"));
  }
  SECTION("a worker pushing updates to a server with an optimizer, and the other way round, are refused") {
    auto refusal = [](auto& server, auto& worker) {
      worker.start(t0);
      while (auto t = worker.poll_transmit()) server.on_message(worker.id(), std::move(t->message), t0);
      auto reply = server.poll_transmit();
      REQUIRE(reply);
      auto* e = std::get_if<psync::msg::Error>(&reply->message);
      REQUIRE(e);
      CHECK(e->code == psync::msg::ErrorCode::policy_mismatch);
      return e->text;
    };
    {
      psync::ServerCore<Quadratic, psync::Bsp, optim::Momentum> server(Quadratic(dim), so, {}, t0, optim::Momentum());
      psync::WorkerCore<Quadratic, psync::Bsp> worker(Quadratic(dim), 0, 0.1f, {});
      const std::string text = refusal(server, worker);
      CHECK(contains(text, "worker runs policy 'bsp', server runs 'bsp+gradients'"));
      CHECK(contains(text, "momentum(0.9)"));
    }
    {
      psync::ServerCore<Quadratic, psync::Bsp> server(Quadratic(dim), {}, {}, t0);
      psync::WorkerCore<Quadratic, psync::Bsp, optim::OnServer> worker(Quadratic(dim), 0, 0.1f, {});
      CHECK(contains(refusal(server, worker), "this server has none"));
    }
  }
}

TEST_CASE("A server-side optimizer's state survives a checkpoint, and a mismatch is refused", "[optim][server][checkpoint]") {
  const float lr = 0.05f;
  using Run = Lockstep<psync::Bsp, optim::OnServer, optim::Adam>;
  Run a(2, lr, {}, optim::Adam(), optim::Constant(lr));
  for (int r = 0; r < 5; ++r) a.round();
  // Through the file encoding, as the Server driver writes it.
  const auto bytes = psync::checkpoint::encode(a.server->checkpoint_state(), 1);
  const psync::CheckpointState state = psync::checkpoint::decode(bytes).state;
  CHECK(!state.policy_state.empty());

  SECTION("restored, the trajectory goes on exactly as without the restart") {
    Run b(2, lr, {}, optim::Adam(), optim::Constant(lr));  // its workers are replaced below
    psync::ServerCoreOptions so;
    so.expected_workers = 2;
    so.optimizer_schedule = optim::Constant(lr);
    b.server = std::make_unique<Run::Server>(Quadratic(dim), so, psync::Bsp{}, t0, optim::Adam());
    b.server->restore(state, t0);
    CHECK(b.server->optimizer_steps() == 5);
    CHECK(b.server->optimizer().steps() == 5);
    // The same workers (their clocks and models) rejoin the restored server.
    b.cores = std::move(a.cores);
    for (auto& c : b.cores) c->rejoin(t0);
    b.pump();
    a.cores.clear();
    Run c(2, lr, {}, optim::Adam(), optim::Constant(lr));
    for (int r = 0; r < 5 + 4; ++r) c.round();
    for (int r = 0; r < 4; ++r) b.round();
    CHECK(b.model() == c.model());
  }
  SECTION("a restore into another optimizer, or into none, is refused") {
    psync::ServerCoreOptions so;
    so.optimizer_schedule = optim::Constant(lr);
    psync::ServerCore<Quadratic, psync::Bsp, optim::Momentum> momentum(Quadratic(dim), so, {}, t0, optim::Momentum());
    CHECK_THROWS_WITH(momentum.restore(state, t0),
                      Catch::Contains("optimizer is 'adam(0.9,0.999,1e-08)', this server runs 'momentum(0.9)'"));
    psync::ServerCore<Quadratic, psync::Bsp> plain(Quadratic(dim), {}, {}, t0);
    CHECK_THROWS_WITH(plain.restore(state, t0), Catch::Contains("which this server has none of"));
    // And a checkpoint written without a server optimizer does not restore into one.
    psync::ServerCore<Quadratic, psync::Bsp, optim::Adam> adam(Quadratic(dim), so, {}, t0, optim::Adam());
    CHECK_THROWS_WITH(adam.restore(plain.checkpoint_state(), t0), Catch::Contains("holds no server-side optimizer state"));
    // A truncated state is refused, naming it.
    psync::CheckpointState cut = state;
    cut.policy_state.resize(cut.policy_state.size() - 4);
    psync::ServerCore<Quadratic, psync::Bsp, optim::Adam> adam2(Quadratic(dim), so, {}, t0, optim::Adam());
    CHECK_THROWS_WITH(adam2.restore(cut, t0), Catch::Contains("truncated"));
  }
}

// ---- per-step callback -------------------------------------------------------------

TEST_CASE("on_step is called once per step with the step, loss, the schedule's rate and the clocks", "[optim][callback]") {
  std::vector<psync::StepInfo> seen;
  const optim::Warmup schedule(5, optim::StepDecay(0.05f, 0.5f, 10));
  Cluster<psync::Ssp<2>> c;
  c.workers = 2;
  c.steps = 40;
  c.worker_lr = schedule;
  c.on_step = [&](const psync::StepInfo& s) { seen.push_back(s); };
  c.run();
  REQUIRE(seen.size() == 40);
  for (std::size_t i = 0; i < seen.size(); ++i) {
    CHECK(seen[i].step == i);
    CHECK(seen[i].learning_rate == schedule(i));
    CHECK(std::isfinite(seen[i].loss));  // Quadratic's gradient returns the loss
    if (i > 0) {
      CHECK(seen[i].clock >= seen[i - 1].clock);
      CHECK(seen[i].version >= seen[i - 1].version);
    }
    CHECK(seen[i].min_clock + 2 + 1 >= seen[i].clock);  // SSP(2)'s bound, as the worker saw it
  }
  CHECK(seen.back().clock == 40);
}

// ---- log hook ----------------------------------------------------------------------

TEST_CASE("The log hook routes every line to the installed sink, can be silenced, and is thread-safe", "[optim][log]") {
  std::mutex mutex;
  std::vector<std::pair<psync::LogLevel, std::string>> lines;
  const psync::LogHandler previous = psync::set_log_handler([&](psync::LogLevel level, std::string_view line) {
    std::lock_guard lock(mutex);
    lines.emplace_back(level, std::string(line));
  });
  psync::log(psync::LogLevel::warning, "one line");
  REQUIRE(lines.size() == 1);
  CHECK(lines[0].first == psync::LogLevel::warning);
  CHECK(lines[0].second == "one line");

  psync::set_log_handler(nullptr);
  psync::log(psync::LogLevel::error, "nobody hears this");
  CHECK(lines.size() == 1);

  // Lines logged from several threads while the handler is swapped: none lost once installed, no race.
  std::atomic<int> counted{0};
  psync::set_log_handler([&](psync::LogLevel, std::string_view) { counted.fetch_add(1); });
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([] {
      for (int i = 0; i < 200; ++i) psync::log(psync::LogLevel::info, "x");
    });
  }
  for (int i = 0; i < 20; ++i) psync::set_log_handler([&](psync::LogLevel, std::string_view) { counted.fetch_add(1); });
  for (auto& t : threads) t.join();
  CHECK(counted.load() == 800);
  psync::set_log_handler(previous);
}

// ---- choosing at run time: optim::Any, parse_optimizer, parse_schedule ---------------

namespace {

/// A few gradients of every sign, zero included, for the bit-for-bit comparisons.
std::vector<Eigen::VectorXf> gradient_sequence() {
  std::vector<Eigen::VectorXf> gs;
  for (int k = 0; k < 6; ++k) {
    Eigen::VectorXf g(dim);
    g << 1.0f - 0.3f * k, -2.0f + 0.7f * k, 0.5f * (k % 3), (k % 2 ? 3.0f : -1.25f);
    gs.push_back(g);
  }
  return gs;
}

/// The updates `o` makes of `gradient_sequence()` at a varying rate.
template <class O>
std::vector<Eigen::VectorXf> updates_of(O o) {
  std::vector<Eigen::VectorXf> out;
  o.reset(dim);
  float lr = 0.1f;
  for (const auto& g0 : gradient_sequence()) {
    Eigen::VectorXf g = g0;
    o.apply(g, lr);
    out.push_back(g);
    lr *= 0.9f;
  }
  return out;
}

/// Runs of simulate() on psync_test::Quadratic: worker w pulls towards (w + 1) * 1.
struct SimPulls {
  std::vector<Target> targets;
  explicit SimPulls(std::uint32_t workers) {
    for (std::uint32_t w = 0; w < workers; ++w) targets.push_back(Target{target_of(static_cast<int>(w))});
  }
  auto operator()(psync::PeerId w) const {
    const Target* t = &targets[w];
    return [t]() -> const Target& { return *t; };
  }
};

psync::Evaluation zero_loss(const Quadratic& m) { return psync::Evaluation{m.loss(Target{Eigen::VectorXf::Zero(dim)}), -1}; }

psync::sim::SimOptions bsp_sim(std::uint32_t workers, std::uint64_t steps, float lr) {
  psync::sim::SimOptions o;
  o.workers = workers;
  o.steps_per_worker = steps;
  o.learning_rate = lr;
  o.compute.step_s = 1e-3;
  o.network.worker_link.latency = 1ms;
  return o;
}

/// Worker-side momentum under BSP, replayed in double: every worker computes at the same
/// model, keeps its own velocity, and the round's updates are averaged.
Eigen::VectorXd bsp_momentum(int workers, int rounds, double lr, double mu, bool nesterov) {
  Eigen::VectorXd x = Eigen::VectorXd::Zero(dim);
  std::vector<Eigen::VectorXd> v(workers, Eigen::VectorXd::Zero(dim));
  for (int r = 0; r < rounds; ++r) {
    Eigen::VectorXd sum = Eigen::VectorXd::Zero(dim);
    for (int w = 0; w < workers; ++w) {
      const Eigen::VectorXd g = x - target_of(w).cast<double>();
      v[w] = mu * v[w] + g;
      sum += -lr * (nesterov ? Eigen::VectorXd(g + mu * v[w]) : v[w]);
    }
    x += sum / workers;
  }
  return x;
}

}  // namespace

TEST_CASE("optim::Any is the optimizer it holds, bit for bit, and SGD by default", "[optim][any]") {
  CHECK(optim::Any{}.name() == "sgd");
  CHECK(optim::Any{}.get_if<optim::Sgd>() != nullptr);
  CHECK(updates_of(optim::Any{}) == updates_of(optim::Sgd{}));
  CHECK(updates_of(optim::Any(optim::Momentum(0.9f))) == updates_of(optim::Momentum(0.9f)));
  CHECK(updates_of(optim::Any(optim::Momentum(0.8f, true))) == updates_of(optim::Momentum(0.8f, true)));
  CHECK(updates_of(optim::Any(optim::Adam(0.8f, 0.99f, 1e-6f))) == updates_of(optim::Adam(0.8f, 0.99f, 1e-6f)));
  CHECK(optim::Any(optim::Adam()).name() == optim::Adam().name());
  // Momentum is not SGD on this sequence: the comparisons above can tell optimizers apart.
  CHECK(updates_of(optim::Any(optim::Momentum(0.9f))) != updates_of(optim::Sgd{}));

  SECTION("in a worker core: the same model, bit for bit, as the core of the optimizer's own type") {
    const float lr = 0.05f;
    Lockstep<psync::Bsp, optim::Momentum, optim::None> typed(3, lr, optim::Momentum(0.9f, true), {});
    Lockstep<psync::Bsp, optim::Any, optim::None> chosen(3, lr, optim::parse_optimizer("nesterov:0.9"), {});
    Lockstep<psync::Bsp, optim::Adam, optim::None> typed_adam(3, lr, optim::Adam(), {});
    Lockstep<psync::Bsp, optim::Any, optim::None> chosen_adam(3, lr, optim::parse_optimizer("adam"), {});
    for (int r = 0; r < 12; ++r) {
      typed.round();
      chosen.round();
      typed_adam.round();
      chosen_adam.round();
    }
    CHECK(chosen.model() == typed.model());
    CHECK(chosen_adam.model() == typed_adam.model());
    CHECK(chosen.model() != chosen_adam.model());
  }
}

TEST_CASE("optim::Any allocates nothing per step once sized", "[optim][any][alloc]") {
  Eigen::VectorXf g = Eigen::VectorXf::Ones(1000);
  optim::Any m = optim::Momentum(0.9f, true), a = optim::Adam(), s;
  m.reset(g.size());
  a.reset(g.size());
  s.reset(g.size());
  const long before = g_allocations.load();
  for (int i = 0; i < 10; ++i) {
    m.apply(g, 0.01f);
    a.apply(g, 0.01f);
    s.apply(g, 0.01f);
  }
  CHECK(g_allocations.load() - before == 0);
}

TEST_CASE("optim::Any saves its optimizer's name with the state and refuses another's", "[optim][any][checkpoint]") {
  optim::Any adam = optim::Adam();
  (void)updates_of(adam);
  Eigen::VectorXf g = gradient_sequence()[1];
  adam.apply(g, 0.1f);
  std::vector<std::byte> saved;
  adam.save(saved);

  optim::Any back = optim::Adam();
  back.reset(dim);
  optim::StateReader in(saved);
  back.restore(in);
  CHECK(in.left() == 0);
  Eigen::VectorXf g1 = gradient_sequence()[2], g2 = g1;
  adam.apply(g1, 0.1f);
  back.apply(g2, 0.1f);
  CHECK(g1 == g2);  // the same state, so the same next update

  for (optim::Any other : {optim::Any(optim::Momentum(0.9f)), optim::Any(optim::Sgd{}), optim::Any(optim::Adam(0.8f))}) {
    INFO(other.name());
    other.reset(dim);
    optim::StateReader again(saved);
    try {
      other.restore(again);
      FAIL("restored adam's state into " << other.name());
    } catch (const psync::ConfigError& e) {
      const std::string what = e.what();
      CHECK(contains(what, "adam(0.9,0.999,1e-08)"));
      CHECK(contains(what, other.name()));
    }
  }
}

TEST_CASE("parse_optimizer: every form, its defaults, and errors naming the text", "[optim][any][parse]") {
  CHECK(optim::parse_optimizer("sgd").name() == "sgd");
  CHECK(optim::parse_optimizer("momentum").name() == "momentum(0.9)");
  CHECK(optim::parse_optimizer("momentum:0.5").name() == "momentum(0.5)");
  CHECK(optim::parse_optimizer("nesterov").name() == "nesterov(0.9)");
  CHECK(optim::parse_optimizer("nesterov:0.95").name() == "nesterov(0.95)");
  CHECK(optim::parse_optimizer("adam").name() == "adam(0.9,0.999,1e-08)");
  CHECK(optim::parse_optimizer("adam:0.8,0.99,1e-6").name() == "adam(0.8,0.99,1e-06)");
  CHECK(optim::parse_optimizer("adam:0.8").name() == "adam(0.8,0.999,1e-08)");
  // What is parsed is what runs: the hyper-parameters reach the optimizer, in order.
  CHECK(updates_of(optim::parse_optimizer("momentum:0.5")) == updates_of(optim::Momentum(0.5f)));
  CHECK(updates_of(optim::parse_optimizer("nesterov:0.7")) == updates_of(optim::Momentum(0.7f, true)));
  CHECK(updates_of(optim::parse_optimizer("adam:0.8,0.99,1e-6")) == updates_of(optim::Adam(0.8f, 0.99f, 1e-6f)));
  CHECK(updates_of(optim::parse_optimizer("adam")) == updates_of(optim::Adam()));

  for (const std::string bad : {"bogus", "", "SGD", "sgd:0.1", "momentum:", "momentum:x", "momentum:1.5",
                                "momentum:0.9,0.1", "nesterov:-0.1", "adam:0.9,0.999,0", "adam:1,2,3,4", "adam:0.9,,1e-8"}) {
    INFO("'" << bad << "'");
    try {
      (void)optim::parse_optimizer(bad);
      FAIL("accepted");
    } catch (const psync::ConfigError& e) {
      const std::string what = e.what();
      INFO(what);
      CHECK(contains(what, "optimizer '" + bad + "'"));
      if (bad == "momentum:1.5") CHECK(contains(what, "must be in [0, 1)"));
      if (bad == "bogus") CHECK(contains(what, optim::optimizer_forms));
    }
  }
}

TEST_CASE("parse_schedule: every form is the schedule it names, and errors name the text", "[optim][schedule][parse]") {
  const float lr = 0.2f;
  const auto same = [](const optim::Schedule& s, const auto& expected) {
    for (std::uint64_t k = 0; k < 300; k += 7) {
      INFO("step " << k);
      REQUIRE(s(k) == expected(k));
    }
  };
  same(optim::parse_schedule("", lr), optim::Constant(lr));
  same(optim::parse_schedule("constant", lr), optim::Constant(lr));
  same(optim::parse_schedule("step:0.5,30", lr), optim::StepDecay(lr, 0.5f, 30));
  same(optim::parse_schedule("cosine:200", lr), optim::Cosine(lr, 200));
  same(optim::parse_schedule("cosine:200,0.01", lr), optim::Cosine(lr, 200, 0.01f));
  same(optim::parse_schedule("warmup:100,cosine:900", lr), optim::Warmup(100, optim::Cosine(lr, 900)));
  same(optim::parse_schedule("warmup:10", lr), optim::Warmup(10, optim::Constant(lr)));
  same(optim::parse_schedule("warmup:10,step:0.1,50", lr), optim::Warmup(10, optim::StepDecay(lr, 0.1f, 50)));
  CHECK(optim::parse_schedule("step:0.5,30", lr)(30) == 0.1f);

  for (const std::string bad : {"linear", "constant:1", "step", "step:0.5", "step:2,10", "step:0.5,0", "step:0.5,x",
                                "cosine", "cosine:0", "cosine:-5", "cosine:10,1", "cosine:10,0.1,3", "warmup",
                                "warmup:0,cosine:10", "warmup:x", "warmup:10,cosine:abc", "warmup:10,"}) {
    INFO("'" << bad << "'");
    try {
      const auto s = optim::parse_schedule(bad, lr);
      FAIL("accepted: rate " << s(0) << " at step 0");
    } catch (const psync::ConfigError& e) {
      const std::string what = e.what();
      INFO(what);
      CHECK(contains(what, "schedule '" + bad + "'"));
      if (bad == "linear") CHECK(contains(what, optim::schedule_forms));
      if (bad == "warmup:10,cosine:abc") CHECK(contains(what, "schedule 'cosine:abc'"));
    }
  }
  CHECK_THROWS_AS(optim::parse_schedule("constant", 0.0f), psync::ConfigError);
}

TEST_CASE("simulate runs the optimizer and schedule of its options, each worker its own state", "[optim][any][sim]") {
  const std::uint32_t workers = 3;
  const int steps = 40;
  const float lr = 0.05f;
  const auto run = [&](const psync::sim::SimOptions& o) {
    return psync::sim::simulate(Quadratic(dim), SimPulls(workers), o, psync::Bsp{}, zero_loss);
  };
  const auto sgd = run(bsp_sim(workers, steps, lr));
  auto mo = bsp_sim(workers, steps, lr);
  mo.optimizer = optim::parse_optimizer("momentum:0.9");
  const auto momentum = run(mo);
  const auto again = run(mo);
  CHECK(momentum.parameters != sgd.parameters);
  CHECK(momentum.parameters == again.parameters);  // deterministic
  CHECK((sgd.parameters.cast<double>() - bsp_momentum(workers, steps, lr, 0.0, false)).cwiseAbs().maxCoeff() < 1e-5);
  CHECK((momentum.parameters.cast<double>() - bsp_momentum(workers, steps, lr, 0.9, false)).cwiseAbs().maxCoeff() < 1e-4);
  // A different mu is a different run: the text's hyper-parameter is the one used.
  mo.optimizer = optim::parse_optimizer("momentum:0.5");
  CHECK((run(mo).parameters.cast<double>() - bsp_momentum(workers, steps, lr, 0.5, false)).cwiseAbs().maxCoeff() < 1e-4);

  SECTION("the schedule sets every step's rate") {
    auto so = bsp_sim(workers, steps, 1.0f);  // the schedule's own rate wins over learning_rate
    so.schedule = optim::parse_schedule("step:0.5,10", lr);
    const auto decayed = run(so);
    Eigen::VectorXd x = Eigen::VectorXd::Zero(dim);
    for (int k = 0; k < steps; ++k) {
      Eigen::VectorXd g = Eigen::VectorXd::Zero(dim);
      for (int w = 0; w < static_cast<int>(workers); ++w) g += x - target_of(w).cast<double>();
      x -= static_cast<double>(optim::StepDecay(lr, 0.5f, 10)(static_cast<std::uint64_t>(k))) * g / workers;
    }
    CHECK((decayed.parameters.cast<double>() - x).cwiseAbs().maxCoeff() < 1e-5);
  }
}

TEST_CASE("run_local gives every worker the optimizer of its options", "[optim][any][harness]") {
  const std::uint32_t workers = 2;
  const int steps = 30;
  const float lr = 0.05f;
  psync::LocalOptions o;
  o.workers = workers;
  o.learning_rate = lr;
  o.steps_per_worker = steps;
  o.snapshot_interval = std::chrono::milliseconds(0);
  o.optimizer = optim::parse_optimizer("nesterov:0.9");
  const auto r = psync::run_local(Quadratic(dim), SimPulls(workers), o, psync::Bsp{}, zero_loss);
  CHECK((r.parameters.cast<double>() - bsp_momentum(workers, steps, lr, 0.9, true)).cwiseAbs().maxCoeff() < 1e-4);
  CHECK((r.parameters.cast<double>() - bsp_momentum(workers, steps, lr, 0.0, false)).cwiseAbs().maxCoeff() > 1e-2);
}
