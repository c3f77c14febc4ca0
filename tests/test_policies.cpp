// The policies are pure decisions; these tests drive them with a virtual-time
// simulator (no threads) and check each policy's defining invariant, and that the
// bound is reached (a policy stricter than its definition fails too).
#include "catch.hpp"

#include <psync/core/clock_table.hpp>
#include <psync/policies/asp.hpp>
#include <psync/policies/bsp.hpp>
#include <psync/policies/osp.hpp>
#include <psync/policies/ssp.hpp>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace {

struct SimResult {
  std::uint64_t max_gap = 0;          // largest (reader clock - slowest clock) of an answered read
  std::uint64_t blocked_reads = 0;    // reads that had to wait
  std::uint64_t answered_reads = 0;
  bool read_missed_update = false;    // an answered read at c while some worker had pushed < c-s stamps
  std::uint64_t total_pushes = 0;
};

// Workers with different speeds push in virtual time; a read at clock c is answered
// only when the policy says so. `bound` is the staleness the policy promises.
template <class P>
SimResult simulate(const P& policy, std::uint64_t bound, int workers, std::uint64_t pushes_each, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> jitter(0.5, 1.5);
  psync::ClockTable table;
  for (int w = 0; w < workers; ++w) table.join(static_cast<psync::PeerId>(w), 0);
  std::vector<double> speed(static_cast<std::size_t>(workers));
  for (int w = 0; w < workers; ++w) speed[static_cast<std::size_t>(w)] = 1.0 + 2.0 * w;  // worker w is (1+2w)x slower
  std::vector<double> ready_at(speed);                  // when each worker's current step ends
  std::vector<bool> waiting(static_cast<std::size_t>(workers), false);
  std::vector<std::uint64_t> done(static_cast<std::size_t>(workers), 0);
  SimResult r;
  auto try_answer = [&](int w) {
    const auto c = table.clock(static_cast<psync::PeerId>(w));
    const auto m = table.min_clock();
    if (!policy.read_ready(c, m)) return false;
    r.max_gap = std::max(r.max_gap, c - std::min(c, m));
    // Every worker must have pushed all stamps <= c - bound - 1, i.e. have clock >= c - bound.
    if (bound != std::numeric_limits<std::uint64_t>::max() && m + bound < c) r.read_missed_update = true;
    ++r.answered_reads;
    return true;
  };
  double now = 0;
  while (true) {
    int next = -1;
    for (int w = 0; w < workers; ++w) {
      const auto i = static_cast<std::size_t>(w);
      if (!waiting[i] && done[i] < pushes_each && (next < 0 || ready_at[i] < ready_at[static_cast<std::size_t>(next)])) next = w;
    }
    if (next < 0) break;
    const auto i = static_cast<std::size_t>(next);
    now = ready_at[i];
    table.tick(static_cast<psync::PeerId>(next));
    ++done[i];
    ++r.total_pushes;
    if (done[i] == pushes_each) table.leave(static_cast<psync::PeerId>(next));  // finished workers stop holding others
    else if (!try_answer(next)) {
      waiting[i] = true;
      ++r.blocked_reads;
    } else {
      ready_at[i] = now + speed[i] * jitter(rng);
    }
    for (int w = 0; w < workers; ++w) {
      const auto j = static_cast<std::size_t>(w);
      if (waiting[j] && try_answer(w)) {
        waiting[j] = false;
        ready_at[j] = now + speed[j] * jitter(rng);
      }
    }
  }
  return r;
}

}  // namespace

TEST_CASE("BSP never answers a read before every worker reached the reader's clock", "[policy][bsp]") {
  for (unsigned seed = 1; seed <= 20; ++seed) {
    const auto r = simulate(psync::Bsp{}, 0, 4, 50, seed);
    REQUIRE(r.max_gap == 0);
    REQUIRE_FALSE(r.read_missed_update);
    REQUIRE(r.total_pushes == 200);  // never deadlocks: every push happened
  }
  REQUIRE(psync::Bsp::server_mode == psync::ServerMode::round_barrier);
}

TEMPLATE_TEST_CASE("SSP(s) keeps reads within s clocks and reaches the bound", "[policy][ssp]", psync::Ssp<0>,
                   psync::Ssp<1>, psync::Ssp<3>, psync::Ssp<7>) {
  const TestType policy{};
  std::uint64_t widest = 0;
  for (unsigned seed = 1; seed <= 20; ++seed) {
    const auto r = simulate(policy, TestType::staleness, 4, 60, seed);
    REQUIRE_FALSE(r.read_missed_update);
    REQUIRE(r.max_gap <= TestType::staleness);
    REQUIRE(r.total_pushes == 240);
    widest = std::max(widest, r.max_gap);
  }
  // Not stricter than promised: with a 7x slower worker, the gap reaches s.
  REQUIRE(widest == TestType::staleness);
  REQUIRE(TestType::server_mode == psync::ServerMode::apply_on_arrival);
}

TEST_CASE("SSP read rule is exact at the boundary", "[policy][ssp]") {
  const psync::Ssp<2> p;
  REQUIRE(p.read_ready(5, 3));        // read at 5 needs stamps <= 2 from all: slowest clock 3 has them
  REQUIRE_FALSE(p.read_ready(6, 3));  // read at 6 needs stamp 3, which the slowest has not pushed
  REQUIRE(p.read_ready(0, 0));
  REQUIRE(p.name() == "ssp:2");
}

TEST_CASE("ASP never blocks and lets the gap grow", "[policy][asp]") {
  const auto r = simulate(psync::Asp{}, std::numeric_limits<std::uint64_t>::max(), 4, 60, 3);
  REQUIRE(r.blocked_reads == 0);
  REQUIRE(r.max_gap > 7);  // the 7x slower worker falls far behind: no bound is enforced
  for (std::uint64_t c = 0; c < 1000; c += 97) REQUIRE(psync::Asp{}.read_ready(c, 0));
  REQUIRE(psync::Asp::server_mode == psync::ServerMode::apply_on_arrival);
}

TEMPLATE_TEST_CASE("OSP compute never blocks below S pending steps and always blocks at S", "[policy][osp]",
                   psync::Osp<1>, psync::Osp<5>, psync::Osp<20>, psync::Losp<20>) {
  const TestType p{};
  for (std::uint32_t pending = 0; pending < TestType::threshold; ++pending) REQUIRE_FALSE(p.compute_must_wait(pending));
  for (std::uint32_t pending = TestType::threshold; pending < TestType::threshold + 50; ++pending) {
    REQUIRE(p.compute_must_wait(pending));
  }
  REQUIRE(TestType::overlaps);
  REQUIRE(TestType::server_mode == psync::ServerMode::round_barrier);
  // The server side is a per-round barrier: the same read rule as BSP.
  const auto r = simulate(p, 0, 4, 40, 5);
  REQUIRE(r.max_gap == 0);
  REQUIRE(r.total_pushes == 160);
}

TEST_CASE("OSP names and compensation flag", "[policy][osp]") {
  REQUIRE(psync::Osp<20>{}.name() == "osp:20");
  REQUIRE(psync::Losp<8>{}.name() == "losp:8");
  REQUIRE_FALSE(psync::Osp<20>::local_compensation);
  REQUIRE(psync::Losp<20>::local_compensation);
}

TEST_CASE("Synchronous policies wait for every reply", "[policy]") {
  REQUIRE_FALSE(psync::Bsp{}.compute_must_wait(0));
  REQUIRE(psync::Bsp{}.compute_must_wait(1));
  REQUIRE(psync::Asp{}.compute_must_wait(1));
  REQUIRE(psync::Ssp<4>{}.compute_must_wait(1));
  REQUIRE_FALSE(psync::Bsp::overlaps);
  REQUIRE_FALSE(psync::Ssp<4>::overlaps);
}

TEST_CASE("Policies are empty and model SyncPolicy", "[policy]") {
  STATIC_REQUIRE(psync::SyncPolicy<psync::Bsp>);
  STATIC_REQUIRE(psync::SyncPolicy<psync::Asp>);
  STATIC_REQUIRE(psync::SyncPolicy<psync::Ssp<3>>);
  STATIC_REQUIRE(psync::SyncPolicy<psync::Osp<20>>);
  STATIC_REQUIRE(psync::SyncPolicy<psync::Losp<20>>);
  STATIC_REQUIRE(std::is_empty_v<psync::Bsp>);
  STATIC_REQUIRE(std::is_empty_v<psync::Osp<20>>);
  STATIC_REQUIRE_FALSE(psync::SyncPolicy<int>);
}

TEST_CASE("Clock table: minimum over live workers only", "[policy][clock]") {
  psync::ClockTable t;
  REQUIRE(t.join(0, 0));
  REQUIRE(t.join(1, 0));
  REQUIRE_FALSE(t.join(1, 0));
  t.tick(0);
  t.tick(0);
  REQUIRE(t.min_clock() == 0);
  REQUIRE(t.leave(1));
  REQUIRE_FALSE(t.leave(1));
  REQUIRE(t.min_clock() == 2);
  REQUIRE(t.live_count() == 1);
  REQUIRE(t.leave(0));
  REQUIRE(t.min_clock() == 2);  // nobody live: nothing may be held back by the departed
}

#include <psync/policies/parse.hpp>

TEST_CASE("Policies parse from strings and behave like their compile-time twins", "[policy][parse]") {
  REQUIRE(std::holds_alternative<psync::Bsp>(psync::parse_policy("bsp")));
  REQUIRE(std::holds_alternative<psync::Asp>(psync::parse_policy("asp")));
  for (const char* spec : {"bsp", "asp", "ssp:0", "ssp:3", "osp:20", "losp:7"}) {
    REQUIRE(psync::with_policy(spec, [](auto p) { return p.name(); }) == spec);
  }
  const auto ssp = std::get<psync::Ssp<psync::runtime_bound>>(psync::parse_policy("ssp:3"));
  const psync::Ssp<3> fixed;
  for (std::uint64_t c = 0; c < 12; ++c) {
    for (std::uint64_t m = 0; m < 12; ++m) REQUIRE(ssp.read_ready(c, m) == fixed.read_ready(c, m));
  }
  const auto osp = std::get<psync::Osp<psync::runtime_bound>>(psync::parse_policy("osp:5"));
  for (std::uint32_t p = 0; p < 10; ++p) REQUIRE(osp.compute_must_wait(p) == psync::Osp<5>{}.compute_must_wait(p));
  REQUIRE(psync::Losp<psync::runtime_bound>::local_compensation);
  STATIC_REQUIRE(psync::SyncPolicy<psync::Ssp<psync::runtime_bound>>);
  STATIC_REQUIRE(psync::SyncPolicy<psync::Osp<psync::runtime_bound>>);
}

TEST_CASE("Bad policy strings are refused with the reason", "[policy][parse]") {
  using psync_test::Contains;
  REQUIRE_THROWS_WITH(psync::parse_policy("bps"), Contains("'bps'") && Contains("unknown policy"));
  REQUIRE_THROWS_WITH(psync::parse_policy("ssp:"), Contains("non-negative integer"));
  REQUIRE_THROWS_WITH(psync::parse_policy("ssp:-1"), Contains("non-negative integer"));
  REQUIRE_THROWS_WITH(psync::parse_policy("ssp:3x"), Contains("non-negative integer"));
  REQUIRE_THROWS_WITH(psync::parse_policy("osp:0"), Contains("at least 1"));
  REQUIRE_THROWS_WITH(psync::parse_policy("fsp:3"), Contains("unknown policy"));
  REQUIRE_THROWS_AS(psync::parse_policy(""), psync::ConfigError);
}
