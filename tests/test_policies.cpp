// Each policy's decisions, one hook at a time: the read rule at its boundary,
// the compute gate on each count, the combination and install rules, DSSP's
// timing-driven bound, names and run-time parsing. Whole schedules are in
// test_cores.cpp, which drives the cores with these policies.
#include "catch.hpp"

#include <psync/core/clock_table.hpp>
#include <psync/policies/asp.hpp>
#include <psync/policies/bsp.hpp>
#include <psync/policies/dssp.hpp>
#include <psync/policies/osp.hpp>
#include <psync/policies/parse.hpp>
#include <psync/policies/ssp.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <type_traits>

namespace {

psync::ReadQuery read(std::uint64_t clock, std::uint64_t min_clock, psync::PeerId reader = 0,
                      psync::Clock::time_point now = {}) {
  return psync::ReadQuery{reader, clock, min_clock, now};
}

psync::StepCounts counts(std::uint32_t unsent, std::uint32_t in_flight, std::uint32_t uninstalled) {
  return psync::StepCounts{unsent, in_flight, uninstalled};
}

}  // namespace

TEST_CASE("SSP read rule is exact at the boundary", "[policy][ssp]") {
  const psync::Ssp<2> p;
  REQUIRE(p.read_ready(read(5, 3)));        // read at 5 needs stamps <= 2 from all: slowest clock 3 has them
  REQUIRE_FALSE(p.read_ready(read(6, 3)));  // read at 6 needs stamp 3, which the slowest has not pushed
  REQUIRE(p.read_ready(read(0, 0)));
  REQUIRE(p.name() == "ssp:2");
  // BSP's read rule is SSP(0)'s; ASP's is SSP(infinity)'s.
  for (std::uint64_t c = 0; c < 10; ++c) {
    for (std::uint64_t m = 0; m < 10; ++m) {
      REQUIRE(psync::Bsp{}.read_ready(read(c, m)) == psync::Ssp<0>{}.read_ready(read(c, m)));
      REQUIRE(psync::Asp{}.read_ready(read(c, m)));
    }
  }
}

TEST_CASE("Combination rules: BSP and OSP average a round, ASP and SSP add each push", "[policy][combine]") {
  STATIC_REQUIRE(std::is_same_v<psync::Bsp::Combiner, psync::combine::RoundAverage>);
  STATIC_REQUIRE(std::is_same_v<psync::Osp<20>::Combiner, psync::combine::RoundAverage>);
  STATIC_REQUIRE(std::is_same_v<psync::Asp::Combiner, psync::combine::Sum>);
  STATIC_REQUIRE(std::is_same_v<psync::Ssp<0>::Combiner, psync::combine::Sum>);
  STATIC_REQUIRE(std::is_same_v<psync::Dssp<1, 3>::Combiner, psync::combine::Sum>);
  REQUIRE(psync::combine::Sum::step_scale(4) == 1.0);
  REQUIRE(psync::combine::RoundAverage::step_scale(4) == 0.25);

  Eigen::VectorXf model = Eigen::VectorXf::Zero(2);
  psync::combine::RoundAverage avg;
  avg.reset(2);
  REQUIRE(avg.add(model, Eigen::Vector2f(1, 2), 1).versions == 0);
  REQUIRE(avg.add(model, Eigen::Vector2f(3, 6), 2).versions == 0);
  REQUIRE(avg.advance(model, 0).versions == 0);  // round 0 still open: the slowest clock is 0
  REQUIRE(model.isZero());
  const psync::Applied a = avg.advance(model, 1);
  REQUIRE(a.versions == 1);
  REQUIRE(a.updates == 2);
  REQUIRE(a.steps == 3);
  REQUIRE(model.isApprox(Eigen::Vector2f(2, 4)));
  REQUIRE(avg.round() == 1);

  psync::combine::Sum sum;
  sum.reset(2);
  model.setZero();
  REQUIRE(sum.add(model, Eigen::Vector2f(1, 2), 1).versions == 1);
  REQUIRE(sum.add(model, Eigen::Vector2f(3, 6), 1).versions == 1);
  REQUIRE(model.isApprox(Eigen::Vector2f(4, 8)));
}

TEST_CASE("Install rules: global as it came, or global + the unreflected updates", "[policy][install]") {
  Eigen::VectorXf model = Eigen::VectorXf::Zero(1);
  const Eigen::VectorXf global = Eigen::VectorXf::Constant(1, 10);
  const Eigen::VectorXf one = Eigen::VectorXf::Ones(1);
  psync::install::Compensated c;
  c.reset(1);
  c.on_local_update(one);      // step 1, pushed later
  c.on_local_update(one);      // step 2, pushed with it
  c.on_reply(Eigen::VectorXf::Constant(1, 1));  // reply to an older push; step 3 was unsent then
  c.on_local_update(one);      // step 4
  c.install(model, global);
  REQUIRE(model[0] == 12);     // global + step 3 (unsent at the reply) + step 4
  psync::install::Global g;
  g.on_local_update(one);
  g.install(model, global);
  REQUIRE(model[0] == 10);
}

TEMPLATE_TEST_CASE("Synchronous policies compute one step per round trip", "[policy]", psync::Bsp, psync::Asp,
                   psync::Ssp<4>, (psync::Dssp<1, 3>)) {
  const TestType p{};
  REQUIRE(p.compute_may_continue(counts(0, 0, 0)));
  REQUIRE_FALSE(p.compute_may_continue(counts(0, 1, 1)));  // its push is in flight
  REQUIRE_FALSE(p.compute_may_continue(counts(0, 0, 1)));  // the reply arrived but is not installed
  STATIC_REQUIRE(std::is_same_v<typename TestType::Install, psync::install::Global>);
}

TEMPLATE_TEST_CASE("OSP's default gate counts unsent steps only", "[policy][osp]", psync::Osp<1>, psync::Osp<5>,
                   psync::Osp<20>, psync::Losp<20>) {
  const TestType p{};
  const std::uint32_t S = p.threshold();
  for (std::uint32_t unsent = 0; unsent < S; ++unsent) {
    // In flight and uninstalled steps do not count: the reference code's `it_count`.
    REQUIRE(p.compute_may_continue(counts(unsent, S, unsent + 2 * S)));
  }
  for (std::uint32_t unsent = S; unsent < S + 30; ++unsent) REQUIRE_FALSE(p.compute_may_continue(counts(unsent, 0, unsent)));
  REQUIRE(p.read_ready(read(4, 4)));
  REQUIRE_FALSE(p.read_ready(read(5, 4)));  // a round barrier, as BSP
}

TEST_CASE("OSP's uninstalled gate counts every step not yet installed", "[policy][osp]") {
  const psync::OspUninstalled<5> p;
  REQUIRE(p.compute_may_continue(counts(0, 4, 4)));
  REQUIRE_FALSE(p.compute_may_continue(counts(1, 4, 5)));
  REQUIRE_FALSE(p.compute_may_continue(counts(0, 0, 5)));
  REQUIRE(p.name() == "osp-uninstalled:5");
  REQUIRE(psync::OspUninstalled<5, psync::install::Compensated>{}.name() == "losp-uninstalled:5");
}

TEST_CASE("OSP names and install rules", "[policy][osp]") {
  REQUIRE(psync::Osp<20>{}.name() == "osp:20");
  REQUIRE(psync::Losp<8>{}.name() == "losp:8");
  STATIC_REQUIRE(std::is_same_v<psync::Osp<20>::Install, psync::install::Global>);
  STATIC_REQUIRE(std::is_same_v<psync::Losp<20>::Install, psync::install::Compensated>);
}

TEST_CASE("DSSP extends the bound from Lo towards Hi by the reader's predicted spare iterations", "[policy][dssp]") {
  using namespace std::chrono_literals;
  const psync::Clock::time_point t0{};
  psync::Dssp<2, 6> p;
  REQUIRE(p.name() == "dssp:2:6");
  // Nothing learnt yet: SSP(Lo).
  REQUIRE(p.read_ready(read(2, 0, 0, t0)));
  REQUIRE_FALSE(p.read_ready(read(3, 0, 0, t0)));
  // Worker 0 pushes every 10 ms, worker 1 every 100 ms.
  for (int k = 1; k <= 3; ++k) p.observe_push(1, static_cast<std::uint64_t>(k), t0 + k * 100ms);
  for (int k = 1; k <= 33; ++k) p.observe_push(0, static_cast<std::uint64_t>(k), t0 + k * 10ms);
  // At 330 ms worker 1 (clock 3) is predicted to push at 400 ms: 7 of worker 0's
  // iterations fit before it, capped at Hi - Lo = 4.
  const auto now = t0 + 330ms;
  REQUIRE(p.read_ready(read(3 + 2, 3, 0, now)));
  REQUIRE(p.read_ready(read(3 + 6, 3, 0, now)));        // Lo + 4 = Hi
  REQUIRE_FALSE(p.read_ready(read(3 + 7, 3, 0, now)));  // never beyond Hi
  // At 385 ms only 1 iteration fits before the slowest worker's push.
  const auto later = t0 + 385ms;
  REQUIRE(p.read_ready(read(3 + 3, 3, 0, later)));
  REQUIRE_FALSE(p.read_ready(read(3 + 4, 3, 0, later)));
  // Past the predicted push: no extension.
  REQUIRE_FALSE(p.read_ready(read(3 + 3, 3, 0, t0 + 450ms)));
  // Dssp<s, s> is Ssp<s>.
  const psync::Dssp<3, 3> fixed;
  for (std::uint64_t c = 0; c < 12; ++c) {
    for (std::uint64_t m = 0; m < 12; ++m) REQUIRE(fixed.read_ready(read(c, m)) == psync::Ssp<3>{}.read_ready(read(c, m)));
  }
}

TEST_CASE("Policies model SyncPolicy; what is not a policy does not", "[policy]") {
  STATIC_REQUIRE(psync::SyncPolicy<psync::Bsp>);
  STATIC_REQUIRE(psync::SyncPolicy<psync::Asp>);
  STATIC_REQUIRE(psync::SyncPolicy<psync::Ssp<3>>);
  STATIC_REQUIRE(psync::SyncPolicy<psync::Dssp<1, 4>>);
  STATIC_REQUIRE(psync::SyncPolicy<psync::Osp<20>>);
  STATIC_REQUIRE(psync::SyncPolicy<psync::Losp<20>>);
  STATIC_REQUIRE(std::is_empty_v<psync::Bsp>);
  STATIC_REQUIRE(std::is_empty_v<psync::Ssp<3>>);
  STATIC_REQUIRE(std::is_empty_v<psync::Osp<20>>);
  STATIC_REQUIRE(std::is_empty_v<psync::Losp<20>>);
  STATIC_REQUIRE_FALSE(psync::SyncPolicy<int>);
  struct NoCombiner {
    using Install [[maybe_unused]] = psync::install::Global;
    bool read_ready(const psync::ReadQuery&) const { return true; }
    bool compute_may_continue(const psync::StepCounts&) const { return true; }
    std::string name() const { return "x"; }
  };
  STATIC_REQUIRE_FALSE(psync::SyncPolicy<NoCombiner>);
  // A run-time bound must be given: Ssp<runtime_bound>{} would otherwise be a silent SSP(0).
  STATIC_REQUIRE_FALSE(std::is_default_constructible_v<psync::Ssp<psync::runtime_bound>>);
  STATIC_REQUIRE_FALSE(std::is_default_constructible_v<psync::Osp<psync::runtime_bound>>);
  STATIC_REQUIRE_FALSE(std::is_default_constructible_v<psync::Dssp<psync::runtime_bound, psync::runtime_bound>>);
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

TEST_CASE("Policies parse from strings and behave like their compile-time twins", "[policy][parse]") {
  REQUIRE(std::holds_alternative<psync::Bsp>(psync::parse_policy("bsp")));
  REQUIRE(std::holds_alternative<psync::Asp>(psync::parse_policy("asp")));
  for (const char* spec : {"bsp", "asp", "ssp:0", "ssp:3", "dssp:1:5", "osp:20", "losp:7", "osp-uninstalled:4",
                           "losp-uninstalled:9"}) {
    REQUIRE(psync::with_policy(spec, [](auto p) { return p.name(); }) == spec);
  }
  const auto ssp = std::get<psync::Ssp<psync::runtime_bound>>(psync::parse_policy("ssp:3"));
  const psync::Ssp<3> fixed;
  for (std::uint64_t c = 0; c < 12; ++c) {
    for (std::uint64_t m = 0; m < 12; ++m) REQUIRE(ssp.read_ready(read(c, m)) == fixed.read_ready(read(c, m)));
  }
  const auto osp = std::get<psync::Osp<psync::runtime_bound>>(psync::parse_policy("osp:5"));
  for (std::uint32_t u = 0; u < 10; ++u) {
    REQUIRE(osp.compute_may_continue(counts(u, 3, u + 3)) == psync::Osp<5>{}.compute_may_continue(counts(u, 3, u + 3)));
  }
  STATIC_REQUIRE(std::is_same_v<psync::Losp<psync::runtime_bound>::Install, psync::install::Compensated>);
  STATIC_REQUIRE(psync::SyncPolicy<psync::Ssp<psync::runtime_bound>>);
  STATIC_REQUIRE(psync::SyncPolicy<psync::Osp<psync::runtime_bound>>);
  STATIC_REQUIRE(psync::SyncPolicy<psync::Dssp<psync::runtime_bound, psync::runtime_bound>>);
}

TEST_CASE("Bad policy strings are refused with the reason", "[policy][parse]") {
  using psync_test::Contains;
  REQUIRE_THROWS_WITH(psync::parse_policy("bps"), Contains("'bps'") && Contains("unknown policy"));
  REQUIRE_THROWS_WITH(psync::parse_policy("ssp:"), Contains("non-negative integer"));
  REQUIRE_THROWS_WITH(psync::parse_policy("ssp:-1"), Contains("non-negative integer"));
  REQUIRE_THROWS_WITH(psync::parse_policy("ssp:3x"), Contains("non-negative integer"));
  REQUIRE_THROWS_WITH(psync::parse_policy("osp:0"), Contains("at least 1"));
  REQUIRE_THROWS_WITH(psync::parse_policy("fsp:3"), Contains("unknown policy"));
  REQUIRE_THROWS_WITH(psync::parse_policy("ssp:4294967295"), Contains("non-negative integer"));
  REQUIRE_THROWS_WITH(psync::parse_policy("dssp:3"), Contains("two bounds"));
  REQUIRE_THROWS_WITH(psync::parse_policy("dssp:5:2"), Contains("LO <= HI"));
  REQUIRE_THROWS_AS(psync::parse_policy(""), psync::ConfigError);
}
