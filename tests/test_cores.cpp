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
          s.last_global = model->values();
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
  const auto run = [&](int steps) { psync_test::drive_one_worker(server, worker, t, steps, now); };
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

// ---- checkpoints: a core restored from its checkpoint continues exactly ----

namespace {

struct Lockstep {
  int workers = 3;
  std::uint64_t steps = 24;  // local steps per worker
  // Replies reach a worker the moment the server sends them; otherwise at the worker's
  // next turn (so a crash can drop replies already sent).
  bool instant_replies = false;
  std::int64_t checkpoint_at = -1;  // tick whose server state is saved
  std::int64_t crash_at = -1;       // tick at which the server dies and one restored from the save replaces it
};

struct LockstepRun {
  Eigen::VectorXf model;
  std::uint64_t steps_applied = 0;
  std::uint64_t steps_taken = 0;
  std::uint64_t rejoins = 0;
  std::uint64_t pushes_lost = 0;
  std::uint64_t steps_discarded = 0;
  std::uint64_t saved_steps = 0;  // steps_applied in the checkpoint the crash restored
  std::int64_t ticks = 0;
};

// A deterministic drive with no randomness: at tick t, worker w acts when t % (w + 1) == 0
// (worker w is w + 1 times slower): it takes the replies that reached it, then one
// step if its gate allows. Pushes reach the server at once. A crash drops every
// message the old server had sent and every read it held; the new core restores
// the checkpoint (through the file format: encode, then decode) and every worker
// that has not left rejoins.
template <class P>
LockstepRun lockstep(const P& policy, const Lockstep& o) {
  using namespace std::chrono_literals;
  const Eigen::Index dim = 4;
  auto now = psync::Clock::time_point{} + 1h;
  psync::ServerCoreOptions so;
  so.expected_workers = static_cast<std::uint32_t>(o.workers);
  so.peer_timeout = 2ms;  // 200 ticks: a worker that left after the checkpoint is given up quickly
  auto server = std::make_unique<psync::ServerCore<Quadratic, P>>(Quadratic(dim), so, policy, now);
  std::vector<std::unique_ptr<psync::WorkerCore<Quadratic, P>>> workers;
  std::vector<Target> targets;
  for (int w = 0; w < o.workers; ++w) {
    workers.push_back(std::make_unique<psync::WorkerCore<Quadratic, P>>(Quadratic(dim), static_cast<psync::PeerId>(w),
                                                                         0.1f, policy));
    // Irregular optima, so the order in which floats are summed shows in the last bits.
    Eigen::VectorXf t = Eigen::VectorXf::LinSpaced(dim, 0.3f, 1.7f) * static_cast<float>(w + 1);
    t(w % dim) += 0.123f * static_cast<float>(w + 1);
    targets.push_back(Target{t});
  }
  std::vector<std::deque<psync::Message>> down(workers.size());
  std::vector<std::uint64_t> computed(workers.size(), 0);
  std::optional<std::vector<std::byte>> saved;
  LockstepRun run;

  const auto pump = [&] {
    for (bool moved = true; moved;) {
      moved = false;
      for (std::size_t w = 0; w < workers.size(); ++w) {
        while (auto t = workers[w]->poll_transmit()) {
          server->on_message(static_cast<psync::PeerId>(w), std::move(t->message), now);
          moved = true;
        }
      }
      while (auto t = server->poll_transmit()) {
        down[t->to].push_back(std::move(t->message));
        moved = true;
      }
      if (!o.instant_replies) continue;
      for (std::size_t w = 0; w < workers.size(); ++w) {
        for (; !down[w].empty(); down[w].pop_front(), moved = true) workers[w]->on_message(std::move(down[w].front()), now);
      }
    }
  };

  for (auto& w : workers) w->start(now);
  pump();
  for (std::int64_t tick = 0; tick < 100000; ++tick) {
    now += 10us;
    if (now >= server->next_deadline()) {
      server->on_timer(now);
      pump();
    }
    if (tick == o.checkpoint_at) saved = psync::checkpoint::encode(server->checkpoint_state(), 1);
    if (tick == o.crash_at) {
      REQUIRE(saved);
      const psync::CheckpointState state = psync::checkpoint::decode(*saved).state;
      run.saved_steps = state.steps_applied;
      for (auto& d : down) d.clear();
      Quadratic blank(dim);
      blank.parameters().setConstant(7.0f);  // restore must replace it
      server = std::make_unique<psync::ServerCore<Quadratic, P>>(blank, so, policy, now);
      server->restore(state, now);
      for (auto& w : workers) {
        if (!w->finished()) {
          w->rejoin(now);
          continue;
        }
        // Gone before the crash: the pushes it made after the checkpoint are lost with no rejoin to count them.
        for (const auto& e : state.workers) {
          if (e.worker == w->id()) run.pushes_lost += w->clock() - e.clock;
        }
      }
      pump();
    }
    bool all_done = true;
    for (std::size_t w = 0; w < workers.size(); ++w) {
      auto& core = *workers[w];
      if (tick % static_cast<std::int64_t>(w + 1) == 0) {
        for (; !down[w].empty(); down[w].pop_front()) core.on_message(std::move(down[w].front()), now);
        pump();
        if (core.joined() && !core.finished()) {
          if (computed[w] == o.steps) {
            core.finish(now);
          } else if (core.begin_step(now)) {
            core.model().gradient(targets[w], core.gradient());
            core.end_step(1, 0.0, now);
            ++computed[w];
          }
          pump();
        }
      }
      all_done = all_done && core.finished();
    }
    run.ticks = tick;
    if (all_done && server->done()) break;
  }
  REQUIRE(server->done());
  server->shutdown(now);
  run.model = server->model().parameters();
  run.steps_applied = server->report().steps_applied;
  for (std::size_t w = 0; w < workers.size(); ++w) {
    run.steps_taken += computed[w];
    run.rejoins += workers[w]->report().rejoins;
    run.pushes_lost += workers[w]->report().pushes_lost;
    run.steps_discarded += workers[w]->report().steps_discarded;
  }
  return run;
}

template <class P>
void require_transparent_restarts(bool instant_replies) {
  Lockstep o;
  o.instant_replies = instant_replies;
  const LockstepRun reference = lockstep(P{}, o);
  REQUIRE(reference.steps_applied == reference.steps_taken);
  REQUIRE(reference.steps_taken == static_cast<std::uint64_t>(o.workers) * o.steps);
  int restarts = 0;
  for (std::int64_t tick = 1; tick < reference.ticks; tick += 2) {
    o.checkpoint_at = o.crash_at = tick;
    const LockstepRun r = lockstep(P{}, o);
    INFO("crash and restore at tick " << tick << " of " << reference.ticks);
    REQUIRE(r.rejoins > 0);
    REQUIRE(r.pushes_lost == 0);
    REQUIRE(r.steps_discarded == 0);
    REQUIRE(r.steps_applied == reference.steps_applied);
    // Bit for bit: the restored core is the core that was saved.
    REQUIRE((r.model.array() == reference.model.array()).all());
    ++restarts;
  }
  REQUIRE(restarts > 20);
}

}  // namespace

TEMPLATE_TEST_CASE("A server restored from a checkpoint continues bit-identically (BSP, OSP)", "[cores][checkpoint]",
                   psync::Bsp, psync::Osp<3>, psync::Losp<3>) {
  SECTION("replies still in flight are lost at the crash") { require_transparent_restarts<TestType>(false); }
  SECTION("replies delivered at once") { require_transparent_restarts<TestType>(true); }
}

TEMPLATE_TEST_CASE("A server restored from a checkpoint continues bit-identically (ASP, SSP)", "[cores][checkpoint]",
                   psync::Asp, psync::Ssp<1>) {
  // Sum policies answer a read with whatever is current, so a reply lost in flight is
  // answered again with a newer model: a valid read, not the same one. With replies
  // delivered at once, only reads the policy held are in flight at a crash.
  require_transparent_restarts<TestType>(true);
}

TEMPLATE_TEST_CASE("Restored from an older checkpoint, workers drop what the server lost and finish",
                   "[cores][checkpoint]", psync::Bsp, psync::Asp, psync::Osp<3>) {
  Lockstep o;
  const LockstepRun reference = lockstep(TestType{}, o);
  for (std::int64_t at = 3; at < reference.ticks * 2 / 3; at += 5) {
    o.checkpoint_at = at;
    o.crash_at = at + 9;
    const LockstepRun r = lockstep(TestType{}, o);
    INFO("checkpoint at tick " << o.checkpoint_at << ", crash at " << o.crash_at);
    REQUIRE(r.steps_taken == static_cast<std::uint64_t>(o.workers) * o.steps);
    REQUIRE(r.steps_applied < r.steps_taken);
    REQUIRE(r.pushes_lost > 0);
    if constexpr (!std::is_same_v<TestType, psync::Osp<3>>) {
      // One step a push: every step lost is in a push the server lost.
      REQUIRE(r.steps_taken - r.steps_applied == r.pushes_lost);
    }
    REQUIRE(r.steps_applied >= r.saved_steps);
    REQUIRE(r.model.allFinite());
  }
}

namespace {

template <class P>
struct Pair {
  psync::ServerCore<Quadratic, P> server;
  psync::WorkerCore<Quadratic, P> w0, w1;
  explicit Pair(psync::Clock::time_point t, std::chrono::milliseconds peer_timeout = std::chrono::milliseconds(60000))
      : server(Quadratic(3), options(peer_timeout), P{}, t), w0(Quadratic(3), 0, 0.5f, P{}), w1(Quadratic(3), 1, 0.5f, P{}) {}
  static psync::ServerCoreOptions options(std::chrono::milliseconds peer_timeout) {
    psync::ServerCoreOptions o;
    o.expected_workers = 2;
    o.peer_timeout = peer_timeout;
    return o;
  }
};

// Moves worker -> server messages; returns how many.
template <class Worker, class Server>
int up(Worker& worker, psync::PeerId id, Server& server, psync::Clock::time_point t) {
  int n = 0;
  for (; auto m = worker.poll_transmit(); ++n) server.on_message(id, std::move(m->message), t);
  return n;
}

template <class P>
void step(psync::WorkerCore<Quadratic, P>& w, float target, psync::Clock::time_point t) {
  REQUIRE(w.begin_step(t));
  w.model().gradient(Target{Eigen::VectorXf::Constant(3, target)}, w.gradient());
  w.end_step(1, 0.0, t);
}

// Delivers `server`'s replies to the workers of `c`; returns the replies (models) to each.
template <class P>
std::map<psync::PeerId, int> down(psync::ServerCore<Quadratic, P>& server, Pair<P>& c, psync::Clock::time_point t) {
  std::map<psync::PeerId, int> n;
  while (auto m = server.poll_transmit()) {
    if (std::holds_alternative<psync::msg::Model>(m->message)) ++n[m->to];
    (m->to == 0 ? c.w0 : c.w1).on_message(std::move(m->message), t);
  }
  return n;
}

// Both workers start and join; the server answers both joins.
template <class P>
void join_both(Pair<P>& a, psync::Clock::time_point t) {
  a.w0.start(t);
  a.w1.start(t);
  up(a.w0, 0, a.server, t);
  up(a.w1, 1, a.server, t);
  down(a.server, a, t);
}

}  // namespace

TEST_CASE("A returning worker's join reply carries its own saved clock: BSP holds it for its round",
          "[cores][checkpoint]") {
  using namespace std::chrono_literals;
  const auto t0 = psync::Clock::time_point{} + 1h;
  Pair<psync::Bsp> a(t0);
  join_both(a, t0);
  REQUIRE((a.w0.joined() && a.w1.joined()));

  SECTION("the push accepted just before the crash is kept: the worker waits for its round and goes on") {
    step(a.w0, 1.0f, t0);  // round 0 push from worker 0, accepted, held for worker 1
    up(a.w0, 0, a.server, t0);
    REQUIRE(a.server.held_reads() == 1);
    const psync::CheckpointState saved = a.server.checkpoint_state();
    CHECK(saved.workers == std::vector<psync::WorkerClock>{{0, 1, true}, {1, 0, true}});
    CHECK(saved.round.pushes == 1);

    Pair<psync::Bsp> b(t0 + 1s);  // the restarted server (and two spare workers we do not use)
    b.server.restore(saved, t0 + 1s);
    CHECK(b.server.awaited_workers() == 2);
    a.w0.rejoin(t0 + 1s);
    CHECK(up(a.w0, 0, b.server, t0 + 1s) == 1);
    // Its read is at clock 1: BSP holds it until round 0 closes.
    CHECK(b.server.held_reads() == 1);
    CHECK_FALSE(b.server.poll_transmit());
    // The same id again while it is back: refused.
    b.server.on_message(0, psync::msg::Join{0, 3, "bsp"}, t0 + 1s);
    auto refused = b.server.poll_transmit();
    REQUIRE(refused);
    REQUIRE(std::holds_alternative<psync::msg::Error>(refused->message));
    CHECK(std::get<psync::msg::Error>(refused->message).code == psync::msg::ErrorCode::duplicate_worker);
  }

  SECTION("BSP: the returning workers complete the open round") {
    step(a.w0, 1.0f, t0);
    up(a.w0, 0, a.server, t0);
    const psync::CheckpointState saved = a.server.checkpoint_state();
    Pair<psync::Bsp> b(t0 + 1s);
    b.server.restore(saved, t0 + 1s);
    a.w0.rejoin(t0 + 1s);
    up(a.w0, 0, b.server, t0 + 1s);
    a.w1.rejoin(t0 + 1s);
    up(a.w1, 1, b.server, t0 + 1s);
    // Worker 1 (clock 0) is answered at once with its own clock; worker 0 still waits.
    auto first = b.server.poll_transmit();
    REQUIRE(first);
    CHECK(first->to == 1);
    REQUIRE(std::holds_alternative<psync::msg::Model>(first->message));
    CHECK(std::get<psync::msg::Model>(first->message).min_clock == 0);
    a.w1.on_message(std::move(first->message), t0 + 1s);
    CHECK_FALSE(b.server.poll_transmit());
    CHECK(a.w1.clock() == 0);
    step(a.w1, 3.0f, t0 + 1s);  // worker 1's round 0 push, at clock 0: accepted
    up(a.w1, 1, b.server, t0 + 1s);
    // Round 0 closes: worker 0's join reply carries clock 1 (its own), version 1.
    std::optional<psync::msg::Model> to0;
    while (auto m = b.server.poll_transmit()) {
      REQUIRE(std::holds_alternative<psync::msg::Model>(m->message));
      if (m->to == 0) to0 = std::get<psync::msg::Model>(m->message);
      (m->to == 0 ? a.w0 : a.w1).on_message(std::move(m->message), t0 + 1s);
    }
    REQUIRE(to0);
    CHECK(to0->min_clock == 1);
    CHECK(to0->version == 1);
    CHECK(a.w0.clock() == 1);
    CHECK(a.w0.report().pushes_lost == 0);
    // Round 0 = mean of the two pushes, each -0.5 * (0 - target).
    CHECK((b.server.model().parameters().array() == Eigen::ArrayXf::Constant(3, 1.0f)).all());
    // Both go on at clock 1 with no refusal.
    step(a.w0, 1.0f, t0 + 1s);
    step(a.w1, 3.0f, t0 + 1s);
    up(a.w0, 0, b.server, t0 + 1s);
    up(a.w1, 1, b.server, t0 + 1s);
    CHECK(down(b.server, a, t0 + 1s) == std::map<psync::PeerId, int>{{0, 1}, {1, 1}});
    CHECK(b.server.version() == 2);
  }

  SECTION("the push came after the checkpoint: the worker takes the saved clock and pushes again") {
    const psync::CheckpointState saved = a.server.checkpoint_state();
    step(a.w0, 1.0f, t0);
    up(a.w0, 0, a.server, t0);  // accepted by the server that dies
    Pair<psync::Bsp> b(t0 + 1s);
    b.server.restore(saved, t0 + 1s);
    a.w0.rejoin(t0 + 1s);
    up(a.w0, 0, b.server, t0 + 1s);
    CHECK(down(b.server, a, t0 + 1s) == std::map<psync::PeerId, int>{{0, 1}});  // clock 0: answered at once
    CHECK(a.w0.clock() == 0);
    CHECK(a.w0.report().pushes_lost == 1);
    CHECK(a.w0.report().steps_discarded == 1);
    step(a.w0, 1.0f, t0 + 1s);
    CHECK(up(a.w0, 0, b.server, t0 + 1s) == 1);
    CHECK(b.server.held_reads() == 1);  // accepted at clock 0, waiting for worker 1
    CHECK_FALSE(b.server.poll_transmit());
  }
}

TEST_CASE("OSP: a returning worker computes on while its round closes, then pushes at its saved clock",
          "[cores][checkpoint]") {
  using namespace std::chrono_literals;
  using P = psync::Osp<3>;
  const auto t0 = psync::Clock::time_point{} + 1h;
  Pair<P> a(t0);
  join_both(a, t0);
  step(a.w0, 1.0f, t0);  // pushed at once (round 0), held for worker 1
  step(a.w0, 1.0f, t0);  // unsent
  up(a.w0, 0, a.server, t0);
  const psync::CheckpointState saved = a.server.checkpoint_state();
  Pair<P> b(t0 + 1s);
  b.server.restore(saved, t0 + 1s);
  a.w0.rejoin(t0 + 1s);
  up(a.w0, 0, b.server, t0 + 1s);
  CHECK(a.w0.clock() == 1);
  step(a.w0, 1.0f, t0 + 1s);  // OSP computes while the rejoin waits: 2 unsent
  CHECK(a.w0.counts().unsent == 2);
  CHECK_FALSE(a.w0.poll_transmit());  // nothing is pushed before the join reply
  a.w1.rejoin(t0 + 1s);
  up(a.w1, 1, b.server, t0 + 1s);
  down(b.server, a, t0 + 1s);
  step(a.w1, 3.0f, t0 + 1s);
  up(a.w1, 1, b.server, t0 + 1s);
  // Round 0 closes; worker 0's join reply (clock 1) answers its round-0 push, and its
  // two unsent steps leave at once as its push at clock 1.
  while (auto m = b.server.poll_transmit()) {
    if (m->to == 0) CHECK(std::get<psync::msg::Model>(m->message).min_clock == 1);
    (m->to == 0 ? a.w0 : a.w1).on_message(std::move(m->message), t0 + 1s);
  }
  auto push = a.w0.poll_transmit();
  REQUIRE(push);
  REQUIRE(std::holds_alternative<psync::msg::Push>(push->message));
  CHECK(std::get<psync::msg::Push>(push->message).clock == 1);
  CHECK(std::get<psync::msg::Push>(push->message).steps == 2);
  b.server.on_message(0, std::move(push->message), t0 + 1s);
  CHECK(b.server.live_workers() == 2);  // accepted, no refusal
  CHECK(b.server.report().steps_applied == 2);
  CHECK(a.w0.report().pushes_lost == 0);
}

TEST_CASE("ASP: a returning worker ahead of the others is answered at once with its own clock",
          "[cores][checkpoint]") {
  using namespace std::chrono_literals;
  const auto t0 = psync::Clock::time_point{} + 1h;
  Pair<psync::Asp> a(t0, 500ms);
  join_both(a, t0);
  for (int i = 0; i < 3; ++i) {
    step(a.w0, 1.0f, t0);
    up(a.w0, 0, a.server, t0);
    down(a.server, a, t0);
  }
  const psync::CheckpointState saved = a.server.checkpoint_state();
  Pair<psync::Asp> b(t0 + 1s, 500ms);
  b.server.restore(saved, t0 + 1s);
  CHECK(b.server.next_deadline() == t0 + 1s + 500ms);  // both restored workers are expected back
  const auto t1 = t0 + 1300ms;
  a.w0.rejoin(t1);
  up(a.w0, 0, b.server, t1);
  auto reply = b.server.poll_transmit();
  REQUIRE(reply);
  CHECK(std::get<psync::msg::Model>(reply->message).min_clock == 3);  // not the slowest clock, 0
  a.w0.on_message(std::move(reply->message), t1);
  CHECK(a.w0.clock() == 3);
  CHECK(a.w0.report().rejoins == 1);
  step(a.w0, 1.0f, t1);
  CHECK(up(a.w0, 0, b.server, t1) == 1);
  CHECK(down(b.server, a, t1) == std::map<psync::PeerId, int>{{0, 1}});
  CHECK(b.server.version() == saved.version + 1);
  // Worker 1 never comes back: removed one peer_timeout after the restore.
  b.server.on_timer(t0 + 1s + 600ms);
  CHECK(b.server.live_workers() == 1);
  CHECK(b.server.awaited_workers() == 0);
}

TEST_CASE("restore refuses a core in use and a checkpoint of another policy or size", "[cores][checkpoint]") {
  using namespace std::chrono_literals;
  const auto t0 = psync::Clock::time_point{} + 1h;
  Pair<psync::Bsp> a(t0);
  a.w0.start(t0);
  up(a.w0, 0, a.server, t0);
  const psync::CheckpointState saved = a.server.checkpoint_state();
  CHECK_THROWS_AS(a.server.restore(saved, t0), psync::ConfigError);  // already has a worker
  Pair<psync::Asp> other(t0);
  CHECK_THROWS_WITH(other.server.restore(saved, t0), psync_test::Contains("policy 'bsp'"));
  psync::ServerCore<Quadratic, psync::Bsp> wider(Quadratic(4), Pair<psync::Bsp>::options(1000ms), psync::Bsp{}, t0);
  CHECK_THROWS_WITH(wider.restore(saved, t0), psync_test::Contains("holds 3 parameters"));
  CHECK(wider.state_changes() == 0);  // a refused restore changes nothing
}

TEST_CASE("A worker whose connection dropped comes back at its own clock, not pushing its round twice",
          "[cores][checkpoint]") {
  using namespace std::chrono_literals;
  const auto t0 = psync::Clock::time_point{} + 1h;
  Pair<psync::Bsp> a(t0);
  join_both(a, t0);
  step(a.w0, 1.0f, t0);
  up(a.w0, 0, a.server, t0);  // round 0: worker 0's push is in the open sum
  a.server.on_peer_lost(0, psync::msg::LeaveReason::disconnected, t0 + 1ms);
  CHECK(a.server.live_workers() == 1);
  a.w0.rejoin(t0 + 2ms);  // the same server, a new connection
  up(a.w0, 0, a.server, t0 + 2ms);
  CHECK_FALSE(a.server.poll_transmit());  // at clock 1: held until round 0 closes
  step(a.w1, 3.0f, t0 + 3ms);
  up(a.w1, 1, a.server, t0 + 3ms);
  CHECK(down(a.server, a, t0 + 3ms) == std::map<psync::PeerId, int>{{0, 1}, {1, 1}});
  CHECK(a.w0.clock() == 1);
  CHECK(a.w0.report().pushes_lost == 0);
  CHECK(a.server.report().updates_applied == 2);  // not 3: the round holds each worker once
  CHECK((a.server.model().parameters().array() == Eigen::ArrayXf::Constant(3, 1.0f)).all());
}

// ---- replies share one immutable snapshot per model version ----

namespace {

// Every model the core queued, by worker; anything else fails the test.
template <class Core>
std::map<psync::PeerId, psync::msg::Model> take_models(Core& core) {
  std::map<psync::PeerId, psync::msg::Model> out;
  while (auto t = core.poll_transmit()) {
    auto* m = std::get_if<psync::msg::Model>(&t->message);
    INFO("the core sent a " << psync::message_name(t->message));
    REQUIRE(m != nullptr);
    out[t->to] = std::move(*m);
  }
  return out;
}

}  // namespace

TEST_CASE("Replies of one model version share one snapshot, and a held snapshot never changes", "[cores][snapshot]") {
  const Eigen::Index dim = 1000;
  auto now = std::chrono::steady_clock::time_point{};
  psync::ServerCoreOptions so;
  so.expected_workers = 2;
  psync::ServerCore<Quadratic, psync::Bsp> server(Quadratic(dim), so, psync::Bsp{}, now);
  for (psync::PeerId w : {0u, 1u}) server.on_message(w, psync::msg::Join{w, static_cast<std::uint64_t>(dim), "bsp"}, now);
  auto joined = take_models(server);
  REQUIRE(joined.size() == 2);
  // Both join replies read one vector: the model was copied once, not once per reply.
  REQUIRE(joined[0].shared);
  CHECK(joined[0].parameters.size() == 0);
  CHECK(joined[0].values().data() == joined[1].values().data());
  CHECK(server.report().model_replies == 2);
  CHECK(server.report().model_copies == 1);

  // Worker 0 keeps its join reply (version 0) while both push round 0.
  const psync::msg::Model old = std::move(joined[0]);
  joined.clear();
  const Eigen::VectorXf old_values = old.values();
  for (psync::PeerId w : {0u, 1u}) {
    server.on_message(w, psync::msg::Push{0, 0, 1, Eigen::VectorXf::Constant(dim, 0.5f * static_cast<float>(w + 1))}, now);
  }
  auto round0 = take_models(server);
  REQUIRE(round0.size() == 2);
  CHECK(round0[0].version == 1);
  CHECK(round0[0].values().data() == round0[1].values().data());
  CHECK(server.report().model_copies == 2);
  // The server moved on (average of 0.5 and 1.0); the reply worker 0 still holds did not.
  CHECK(round0[0].values() == old_values + Eigen::VectorXf::Constant(dim, 0.75f));
  CHECK(old.version == 0);
  CHECK(old.values() == old_values);
  CHECK(old.values().data() != round0[0].values().data());
  // The push vectors come back unread, for the workers' next pushes.
  CHECK(round0[0].spare.size() == dim);

  // Round 1 while worker 0 still holds versions 0 and 1: neither changes.
  const psync::msg::Model held = std::move(round0[0]);
  const Eigen::VectorXf held_values = held.values();
  round0.clear();
  for (psync::PeerId w : {0u, 1u}) server.on_message(w, psync::msg::Push{1, 1, 1, Eigen::VectorXf::Constant(dim, -2.0f)}, now);
  auto round1 = take_models(server);
  REQUIRE(round1.size() == 2);
  CHECK(round1[1].values() == held_values - Eigen::VectorXf::Constant(dim, 2.0f));
  CHECK(held.values() == held_values);
  CHECK(old.values() == old_values);
  CHECK(server.model().parameters() == round1[1].values());
}

TEMPLATE_TEST_CASE("Snapshot storage nobody holds is reused: steady state keeps a fixed set of vectors",
                   "[cores][snapshot]", psync::Asp, psync::Bsp) {
  const Eigen::Index dim = 100;
  auto now = std::chrono::steady_clock::time_point{};
  psync::ServerCoreOptions so;
  psync::ServerCore<Quadratic, TestType> server(Quadratic(dim), so, TestType{}, now);
  const std::string name = TestType{}.name();
  server.on_message(0, psync::msg::Join{0, static_cast<std::uint64_t>(dim), name}, now);
  auto m = take_models(server);
  for (std::uint64_t clock = 0; clock < 100; ++clock) {
    const Eigen::VectorXf before = m[0].values();
    const std::uint64_t version = m[0].version;
    m.clear();  // the worker installed it and let go
    server.on_message(0, psync::msg::Push{clock, version, 1, Eigen::VectorXf::Ones(dim)}, now);
    m = take_models(server);
    REQUIRE(m[0].values() == before + Eigen::VectorXf::Ones(dim));
  }
  // One vector for the reply in hand, at most one more while a new one is made.
  CHECK(server.snapshot_buffers() <= 2);
  CHECK(server.report().model_copies == 101);
}

TEST_CASE("share_replies = false copies the model into every reply, as before snapshots", "[cores][snapshot]") {
  const Eigen::Index dim = 10;
  auto now = std::chrono::steady_clock::time_point{};
  psync::ServerCoreOptions so;
  so.expected_workers = 2;
  so.share_replies = false;
  psync::ServerCore<Quadratic, psync::Bsp> server(Quadratic(dim), so, psync::Bsp{}, now);
  for (psync::PeerId w : {0u, 1u}) server.on_message(w, psync::msg::Join{w, static_cast<std::uint64_t>(dim), "bsp"}, now);
  auto joined = take_models(server);
  REQUIRE(joined.size() == 2);
  CHECK_FALSE(joined[0].shared);
  CHECK(joined[0].parameters.size() == dim);
  CHECK(joined[0].values().data() != joined[1].values().data());
  CHECK(joined[0].values() == joined[1].values());
  CHECK(server.report().model_copies == 2);
}
