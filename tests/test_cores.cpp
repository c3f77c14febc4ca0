// The sans-I/O cores driven without a thread: one ServerCore and N WorkerCores
// exchange messages through per-link FIFO queues, and a seeded scheduler picks
// at random which worker steps, which message is delivered, when a worker stops.
// Thousands of schedules per policy check each policy's rule from the outside
// (from the messages the test itself moved, not from the cores' counters):
// the read bound holds and is reached, the round average and the sum are exact,
// OSP's gate counts unsent steps, LOSP installs global + every unreflected update,
// no step is lost and no schedule deadlocks.
#include "alloc_counter.hpp"
#include "catch.hpp"
#include "toy_model.hpp"

#include <psync/core/server_core.hpp>
#include <psync/core/worker_core.hpp>
#include <psync/policies/asp.hpp>
#include <psync/policies/bsp.hpp>
#include <psync/policies/dssp.hpp>
#include <psync/policies/osp.hpp>
#include <psync/policies/ssp.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

using psync_test::Quadratic;
using psync_test::Target;

namespace {

constexpr std::uint64_t unbounded = std::numeric_limits<std::uint64_t>::max();

struct Scenario {
  int workers = 4;
  std::uint64_t steps = 30;        // local steps per worker
  double network = 1.0;            // weight of a delivery against a step of the fastest worker
  float lr = 0.1f;
  Eigen::Index dim = 3;
};

struct Outcome {
  std::uint64_t max_gap = 0;            // largest (reader clock - slowest live push count) of an answered read
  std::uint64_t blocked_steps = 0;      // step boundaries where compute had to wait
  std::uint32_t max_unsent_at_block = 0;
  std::uint32_t min_unsent_at_block = std::numeric_limits<std::uint32_t>::max();
  std::uint32_t max_unsent_at_step = 0;  // largest unsent count with which a step was still allowed
  std::uint64_t max_steps_per_push = 0;
  std::uint64_t installs_checked = 0;
  double max_install_error = 0;          // |installed - expected| over every install
  Eigen::VectorXf expected_model;        // the combination rule replayed over the delivered pushes
  Eigen::VectorXf model;                 // the server core's final model
  std::uint64_t steps_taken = 0;
  std::uint64_t steps_applied = 0;
  bool deadlock = false;
};

// What the test knows about one worker from the messages it moved.
struct Shadow {
  std::uint64_t computed = 0;             // steps taken
  std::uint64_t pushed_steps = 0;         // steps carried by pushes that left the worker
  std::uint64_t pushes_sent = 0;
  std::uint64_t pushes_delivered = 0;     // pushes the server has received
  std::uint64_t replies_delivered = 0;    // models (after the join reply) the worker has received
  bool joined = false;
  bool finishing = false;
  bool left = false;                      // its Leave reached the server
  std::deque<Eigen::VectorXf> unanswered; // updates pushed and not yet answered
  Eigen::VectorXf unsent;                 // updates taken since the last push
  Eigen::VectorXf last_global;            // the newest model received
  std::uint64_t installs_seen = 0;
};

template <class P>
Outcome simulate(const P& policy, const Scenario& sc, std::uint64_t bound, unsigned seed) {
  using namespace std::chrono;
  std::mt19937_64 rng(seed);
  auto now = steady_clock::time_point{};
  const auto tick = [&] { now += microseconds(10); };

  psync::ServerCoreOptions so;
  so.expected_workers = static_cast<std::uint32_t>(sc.workers);
  psync::ServerCore<Quadratic, P> server(Quadratic(sc.dim), so, policy, now);
  std::vector<std::unique_ptr<psync::WorkerCore<Quadratic, P>>> workers;
  std::vector<Shadow> shadow(static_cast<std::size_t>(sc.workers));
  std::vector<Target> targets;
  std::vector<double> speed;
  std::vector<std::deque<psync::Message>> up(static_cast<std::size_t>(sc.workers)), down(up.size());
  for (int w = 0; w < sc.workers; ++w) {
    workers.push_back(std::make_unique<psync::WorkerCore<Quadratic, P>>(Quadratic(sc.dim), static_cast<psync::PeerId>(w),
                                                                         sc.lr, policy));
    // Different optima: a wrong combination rule lands somewhere else.
    targets.push_back(Target{Eigen::VectorXf::LinSpaced(sc.dim, 1.0f, 2.0f) * static_cast<float>(w + 1)});
    speed.push_back(1.0 / (1.0 + 2.0 * w));  // worker w is (1 + 2w) times slower
    shadow[static_cast<std::size_t>(w)].unsent = Eigen::VectorXf::Zero(sc.dim);
  }
  Outcome out;
  Eigen::VectorXf expected = Eigen::VectorXf::Zero(sc.dim);
  std::map<std::uint64_t, std::vector<Eigen::VectorXf>> rounds;  // pushes by clock, for the average rule

  const auto drain_worker = [&](std::size_t w) {
    while (auto t = workers[w]->poll_transmit()) {
      if (auto* p = std::get_if<psync::msg::Push>(&t->message)) {
        auto& s = shadow[w];
        s.pushed_steps += p->steps;
        ++s.pushes_sent;
        out.max_steps_per_push = std::max<std::uint64_t>(out.max_steps_per_push, p->steps);
        s.unanswered.push_back(p->update);
        s.unsent.setZero();
      }
      up[w].push_back(std::move(t->message));
    }
  };
  const auto drain_server = [&] {
    while (auto t = server.poll_transmit()) {
      const auto w = static_cast<std::size_t>(t->to);
      if (std::holds_alternative<psync::msg::Model>(t->message) && shadow[w].joined) {
        // The read at clock c (the reader's pushes so far) must include every push
        // stamped <= c - bound - 1 of every worker still live: count them ourselves.
        const std::uint64_t c = shadow[w].pushes_sent;
        for (std::size_t v = 0; v < shadow.size(); ++v) {
          if (v == w || shadow[v].left) continue;
          const std::uint64_t have = shadow[v].pushes_delivered;
          if (c > have) out.max_gap = std::max(out.max_gap, c - have);
          if (bound != unbounded) REQUIRE(have + bound >= c);
        }
      }
      down[w].push_back(std::move(t->message));
    }
  };

  for (std::size_t w = 0; w < workers.size(); ++w) {
    workers[w]->start(now);
    drain_worker(w);
  }
  for (int guard = 0; guard < 1000000; ++guard) {
    // Enumerate what may happen next, each with a weight.
    struct Action {
      int kind;  // 0 step, 1 deliver up, 2 deliver down, 3 finish
      std::size_t w;
      double weight;
    };
    std::vector<Action> actions;
    for (std::size_t w = 0; w < workers.size(); ++w) {
      auto& core = *workers[w];
      auto& s = shadow[w];
      if (!up[w].empty()) actions.push_back({1, w, sc.network});
      if (!down[w].empty()) actions.push_back({2, w, sc.network});
      if (!s.joined || s.finishing) continue;
      if (s.computed == sc.steps) {
        actions.push_back({3, w, speed[w]});
        continue;
      }
      const auto installs = core.report().installs;
      const bool may = core.begin_step(now);
      const std::uint32_t unsent = static_cast<std::uint32_t>(s.computed - s.pushed_steps);
      if (core.report().installs != installs) {
        // An install just happened: check what was installed against the rule.
        Eigen::VectorXf want = s.last_global;
        if constexpr (std::is_same_v<typename P::Install, psync::install::Compensated>) {
          for (const auto& u : s.unanswered) want += u;
          want += s.unsent;
        }
        out.max_install_error =
            std::max(out.max_install_error, static_cast<double>((core.model().parameters() - want).cwiseAbs().maxCoeff()));
        ++out.installs_checked;
      }
      if (may) {
        out.max_unsent_at_step = std::max(out.max_unsent_at_step, unsent);
        actions.push_back({0, w, speed[w]});
      } else {
        ++out.blocked_steps;
        out.max_unsent_at_block = std::max(out.max_unsent_at_block, unsent);
        out.min_unsent_at_block = std::min(out.min_unsent_at_block, unsent);
      }
    }
    if (actions.empty()) {
      const bool all_left = std::all_of(shadow.begin(), shadow.end(), [](const Shadow& s) { return s.left; });
      out.deadlock = !all_left;
      break;
    }
    double total = 0;
    for (const auto& a : actions) total += a.weight;
    double pick = std::uniform_real_distribution<double>(0.0, total)(rng);
    const Action* chosen = &actions.back();
    for (const auto& a : actions) {
      if (pick < a.weight) {
        chosen = &a;
        break;
      }
      pick -= a.weight;
    }
    tick();
    const std::size_t w = chosen->w;
    auto& core = *workers[w];
    auto& s = shadow[w];
    switch (chosen->kind) {
      case 0: {
        core.model().gradient(targets[w], core.gradient());
        const Eigen::VectorXf u = -sc.lr * core.gradient();
        core.end_step(1, 0.0, now);
        ++s.computed;
        s.unsent += u;  // a push taken by end_step clears it again in drain_worker
        drain_worker(w);
        break;
      }
      case 1: {
        psync::Message m = std::move(up[w].front());
        up[w].pop_front();
        if (auto* p = std::get_if<psync::msg::Push>(&m)) {
          ++s.pushes_delivered;
          if constexpr (std::is_same_v<typename P::Combiner, psync::combine::Sum>) {
            expected += p->update;
          } else {
            rounds[p->clock].push_back(p->update);
          }
        }
        if (std::holds_alternative<psync::msg::Leave>(m)) s.left = true;
        server.on_message(static_cast<psync::PeerId>(w), std::move(m), now);
        drain_server();
        break;
      }
      case 2: {
        psync::Message m = std::move(down[w].front());
        down[w].pop_front();
        if (auto* model = std::get_if<psync::msg::Model>(&m)) {
          s.last_global = model->parameters;
          if (s.joined) {
            ++s.replies_delivered;
            REQUIRE_FALSE(s.unanswered.empty());
            s.unanswered.pop_front();
          }
          s.joined = true;
        }
        core.on_message(std::move(m), now);
        drain_worker(w);
        break;
      }
      case 3:
        s.finishing = true;
        core.finish(now);
        drain_worker(w);
        break;
    }
  }
  for (auto& [clock, pushes] : rounds) {
    Eigen::VectorXf sum = Eigen::VectorXf::Zero(sc.dim);
    for (const auto& u : pushes) sum += u;
    expected += sum / static_cast<float>(pushes.size());
  }
  out.expected_model = expected;
  out.model = server.model().parameters();
  for (const auto& s : shadow) out.steps_taken += s.computed;
  out.steps_applied = server.report().steps_applied;
  for (auto& w : workers) REQUIRE(w->finished());
  return out;
}

template <class P>
void require_complete(const Outcome& o) {
  REQUIRE_FALSE(o.deadlock);
  REQUIRE(o.steps_applied == o.steps_taken);
  REQUIRE((o.model - o.expected_model).cwiseAbs().maxCoeff() < 1e-4f);
}

constexpr unsigned schedules = 300;

}  // namespace

TEMPLATE_TEST_CASE("Read bounds hold in every schedule and are reached in some", "[cores][bound]", psync::Bsp,
                   psync::Ssp<0>, psync::Ssp<1>, psync::Ssp<3>, (psync::Dssp<2, 2>), (psync::Dssp<1, 4>)) {
  std::uint64_t bound = 0;
  std::uint64_t reached = 0;  // the gap some schedule must show
  if constexpr (requires { TestType{}.staleness(); }) bound = reached = TestType{}.staleness();
  // DSSP: never beyond Hi, and beyond Lo whenever the timing predicts spare iterations.
  if constexpr (requires { TestType{}.high(); }) {
    bound = TestType{}.high();
    reached = TestType{}.low() < bound ? TestType{}.low() + 1 : bound;
  }
  std::uint64_t widest = 0;
  for (unsigned seed = 1; seed <= schedules; ++seed) {
    Scenario sc;
    sc.network = seed % 3 == 0 ? 0.2 : 2.0;
    const Outcome o = simulate(TestType{}, sc, bound, seed);
    require_complete<TestType>(o);
    REQUIRE(o.max_gap <= bound);
    widest = std::max(widest, o.max_gap);
  }
  // Not stricter than promised: with a 7x slower worker the gap reaches the bound.
  REQUIRE(widest >= reached);
}

TEST_CASE("BSP is averaged gradient descent, exactly", "[cores][bsp]") {
  for (unsigned seed = 1; seed <= 50; ++seed) {
    Scenario sc;
    const Outcome o = simulate(psync::Bsp{}, sc, 0, seed);
    require_complete<psync::Bsp>(o);
    // Replay: every worker computes round r on the same x_r.
    Eigen::VectorXf x = Eigen::VectorXf::Zero(sc.dim);
    for (std::uint64_t r = 0; r < sc.steps; ++r) {
      Eigen::VectorXf mean_grad = Eigen::VectorXf::Zero(sc.dim);
      for (int w = 0; w < sc.workers; ++w) mean_grad += x - Eigen::VectorXf::LinSpaced(sc.dim, 1.0f, 2.0f) * float(w + 1);
      x -= sc.lr * mean_grad / static_cast<float>(sc.workers);
    }
    REQUIRE((o.model - x).cwiseAbs().maxCoeff() < 1e-5f);
  }
}

TEST_CASE("ASP never holds a read and lets the gap grow", "[cores][asp]") {
  std::uint64_t widest = 0;
  for (unsigned seed = 1; seed <= schedules; ++seed) {
    const Outcome o = simulate(psync::Asp{}, Scenario{}, unbounded, seed);
    require_complete<psync::Asp>(o);
    widest = std::max(widest, o.max_gap);
    // A synchronous worker blocks only on its own round trip, never with unsent steps.
    REQUIRE(o.max_unsent_at_step == 0);
  }
  REQUIRE(widest > 7);
}

TEMPLATE_TEST_CASE("OSP's gate counts unsent steps: never blocks below S, always at S", "[cores][osp]", psync::Osp<1>,
                   psync::Osp<3>, psync::Osp<6>, psync::Losp<3>) {
  const TestType policy{};
  const std::uint32_t S = policy.threshold();
  std::uint32_t widest_step = 0;
  std::uint64_t widest_push = 0;
  for (unsigned seed = 1; seed <= schedules; ++seed) {
    Scenario sc;
    sc.network = seed % 2 ? 0.05 : 1.0;  // a slow network fills the gate
    const Outcome o = simulate(policy, sc, 0, seed);
    require_complete<TestType>(o);
    REQUIRE(o.max_gap == 0);  // the server side is a round barrier
    REQUIRE(o.max_unsent_at_step < S);
    if (o.blocked_steps > 0) {
      REQUIRE(o.min_unsent_at_block == S);
      REQUIRE(o.max_unsent_at_block == S);
    }
    widest_step = std::max(widest_step, o.max_unsent_at_step);
    widest_push = std::max(widest_push, o.max_steps_per_push);
  }
  REQUIRE(widest_step == S - 1);
  // Up to S steps accumulate while a push is in flight and go out together.
  REQUIRE(widest_push == S);
}

TEST_CASE("OSP's uninstalled gate is the stricter option", "[cores][osp]") {
  const psync::OspUninstalled<4> policy;
  std::uint64_t widest_push = 0;
  for (unsigned seed = 1; seed <= schedules; ++seed) {
    Scenario sc;
    sc.network = 0.05;
    const Outcome o = simulate(policy, sc, 0, seed);
    require_complete<psync::OspUninstalled<4>>(o);
    widest_push = std::max(widest_push, o.max_steps_per_push);
  }
  // The in-flight steps count against S too, so a push carries fewer than S.
  REQUIRE(widest_push < 4);
  REQUIRE(widest_push >= 2);
}

TEMPLATE_TEST_CASE("Install rule: OSP installs the global model, LOSP global + every unreflected update",
                   "[cores][install]", psync::Osp<4>, psync::Losp<4>, (psync::OspUninstalled<4, psync::install::Compensated>),
                   psync::Bsp, psync::Ssp<2>) {
  std::uint64_t checked = 0;
  for (unsigned seed = 1; seed <= schedules; ++seed) {
    Scenario sc;
    sc.network = seed % 2 ? 0.1 : 1.0;
    const Outcome o = simulate(TestType{}, sc, unbounded, seed);
    require_complete<TestType>(o);
    REQUIRE(o.max_install_error < 1e-4);
    checked += o.installs_checked;
  }
  REQUIRE(checked > 1000);
}

TEMPLATE_TEST_CASE("Cores allocate nothing per step or per message once running", "[cores][alloc]", psync::Bsp,
                   psync::Ssp<2>, psync::Osp<3>, psync::Losp<3>) {
  const Eigen::Index dim = 1000;
  auto now = std::chrono::steady_clock::time_point{};
  psync::ServerCoreOptions so;
  psync::ServerCore<Quadratic, TestType> server(Quadratic(dim), so, TestType{}, now);
  psync::WorkerCore<Quadratic, TestType> worker(Quadratic(dim), 0, 0.1f, TestType{});
  Target t{Eigen::VectorXf::Ones(dim)};
  // Replies are delivered every other step, so OSP accumulates while a push is in flight.
  const auto run = [&](int steps) {
    for (int i = 0; i < steps; ++i) {
      while (auto m = worker.poll_transmit()) server.on_message(0, std::move(m->message), now);
      if (i % 2 == 0) {
        while (auto m = server.poll_transmit()) worker.on_message(std::move(m->message), now);
      }
      while (!worker.begin_step(now)) {
        while (auto m = server.poll_transmit()) worker.on_message(std::move(m->message), now);
      }
      worker.model().gradient(t, worker.gradient());
      worker.end_step(1, 0, now);
    }
  };
  worker.start(now);
  run(10);  // warm-up: buffers and queues reach their working sizes
  const long before = g_allocations.load();
  run(200);
  REQUIRE(g_allocations.load() - before == 0);
  REQUIRE(worker.report().pushes > 50);
}

// ---- liveness: a worker is judged by its own silence, never by the server's ----

namespace {

// Drains the core's outbox; returns how many models went to each worker.
template <class Core>
std::map<psync::PeerId, int> drain_models(Core& core) {
  std::map<psync::PeerId, int> n;
  while (auto t = core.poll_transmit()) {
    if (std::holds_alternative<psync::msg::Model>(t->message)) ++n[t->to];
  }
  return n;
}

}  // namespace

TEST_CASE("A held read is not silence: the healthy worker outlives the frozen one", "[cores][liveness]") {
  using namespace std::chrono_literals;
  namespace msg = psync::msg;
  const auto t0 = psync::Clock::time_point{} + 1h;
  psync::ServerCoreOptions o;
  o.expected_workers = 2;
  o.peer_timeout = 1000ms;
  psync::ServerCore<Quadratic, psync::Bsp> core(Quadratic(3), o, psync::Bsp{}, t0);
  core.on_message(0, msg::Join{0, 3, "bsp"}, t0);
  core.on_message(1, msg::Join{1, 3, "bsp"}, t0);
  CHECK(drain_models(core) == std::map<psync::PeerId, int>{{0, 1}, {1, 1}});
  // Worker 0 pushes at once and waits for round 0; worker 1 is frozen (SIGSTOP) from here.
  core.on_message(0, msg::Push{0, 0, 1, Eigen::VectorXf::Ones(3)}, t0 + 10ms);
  // Worker 0's read is held for 1.5 s: it is waiting, not silent.
  core.on_timer(t0 + 900ms);
  CHECK(core.live_workers() == 2);
  // Worker 1 (last heard at t0) passes the timeout: removed, and worker 0 is answered.
  REQUIRE(core.next_deadline() <= t0 + 1001ms);
  core.on_timer(t0 + 1500ms);
  CHECK(core.live_workers() == 1);
  CHECK(drain_models(core) == std::map<psync::PeerId, int>{{0, 1}});
  // Worker 0's last message is 1.49 s old, but its silence counts from the answer.
  core.on_timer(t0 + 1600ms);
  core.on_timer(t0 + 2400ms);
  CHECK(core.live_workers() == 1);
  CHECK(core.next_deadline() == t0 + 2500ms);
  // It does go silent for real: removed one timeout after the answer.
  core.on_timer(t0 + 2501ms);
  CHECK(core.live_workers() == 0);
}

TEST_CASE("Worker ids past max_workers are refused; the admitted keep training", "[cores][bounds]") {
  using namespace std::chrono_literals;
  namespace msg = psync::msg;
  const auto t0 = psync::Clock::time_point{} + 1h;
  psync::ServerCoreOptions o;
  o.expected_workers = 1;
  o.max_workers = 2;
  psync::ServerCore<Quadratic, psync::Asp> core(Quadratic(3), o, psync::Asp{}, t0);
  core.on_message(0, msg::Join{0, 3, "asp"}, t0);
  core.on_message(1, msg::Join{1, 3, "asp"}, t0);
  while (core.poll_transmit()) {
  }
  core.on_message(2, msg::Join{2, 3, "asp"}, t0);
  auto t = core.poll_transmit();
  REQUIRE(t);
  CHECK(t->to == 2);
  const auto* e = std::get_if<msg::Error>(&t->message);
  REQUIRE(e);
  CHECK(e->code == msg::ErrorCode::limit_exceeded);
  CHECK(e->text == "server: 2 worker ids already admitted (max_workers 2)");
  CHECK(core.live_workers() == 2);
  // A known id may rejoin after leaving: the bound counts ids, not joins.
  core.on_message(1, msg::Leave{msg::LeaveReason::finished}, t0 + 1ms);
  core.on_message(1, msg::Join{1, 3, "asp"}, t0 + 2ms);
  CHECK(core.live_workers() == 2);
}
