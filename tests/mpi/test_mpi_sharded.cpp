// Sharded servers over MPI, run by CTest as `mpiexec -n 4 test_mpi_sharded`
// (tests/CMakeLists.txt): ranks 0 and 1 each serve one shard of the model, ranks 2
// and 3 are workers 0 and 1, each holding one endpoint per server rank behind a
// `Sharded<Mpi>`. Every rank runs every case in the same order, each on its own
// tags; a failure on any rank fails the run.
#include "catch.hpp"
#include "mpi/mpi_session.hpp"
#include "toy_model.hpp"

#include <psync/core/server.hpp>
#include <psync/core/sharding.hpp>
#include <psync/core/worker.hpp>
#include <psync/policies/asp.hpp>
#include <psync/policies/bsp.hpp>
#include <psync/transport/mpi.hpp>
#include <psync/transport/sharded.hpp>

#include <chrono>
#include <string>
#include <vector>

namespace {

using namespace std::chrono_literals;
using psync::Clock;
using psync::server_peer;
using psync_test::Quadratic;
using psync_test::Target;
namespace msg = psync::msg;

constexpr int shards = 2;
// Odd, so the two slices differ in size (4 and 3): a worker routed to the wrong shard
// rank is refused for its dimension, not silently relabelled.
constexpr Eigen::Index dimension = 7;
constexpr std::uint64_t steps = 40;

psync::MpiOptions options(int tag_base) {
  psync_test::mpi_session();
  psync::MpiOptions o;
  o.servers = shards;
  o.tag_base = tag_base;
  return o;
}

int world_rank() {
  psync_test::mpi_session();
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

// The target differs in every coordinate, so each shard's converged slice shows which
// part of the model it served.
Eigen::VectorXf target_vector() { return Eigen::VectorXf::LinSpaced(dimension, 1.0f, 7.0f); }

template <class Policy>
void train(int tag_base, float lr) {
  const psync::ShardLayout layout(dimension, shards);
  if (world_rank() < shards) {
    psync::Mpi t(options(tag_base));
    REQUIRE(t.size() == 4);
    REQUIRE(t.self() == server_peer);
    const auto i = static_cast<std::uint32_t>(t.rank());
    psync::ServerOptions so;
    so.expected_workers = t.workers();
    so.join_timeout = 20s;
    so.peer_timeout = 20s;
    psync::Server<psync::ParameterSlice, Policy> server(
        psync::ParameterSlice::of(Eigen::VectorXf::Zero(dimension), layout, i), so);
    const psync::ServerReport r = server.run(t);
    CHECK(r.steps_applied == t.workers() * steps);  // every worker's every step reached this shard
    CHECK(r.peers.size() == t.workers());
    for (const auto& p : r.peers) CHECK(p.left == msg::LeaveReason::finished);
    // This rank converged to its own slice of the target, not another shard's.
    const Eigen::VectorXf mine = target_vector().segment(layout.offset(i), layout.size(i));
    CHECK(server.model().parameters().size() == mine.size());
    if (server.model().parameters().size() == mine.size()) {
      CHECK((server.model().parameters() - mine).cwiseAbs().maxCoeff() < 0.02f);
    }
    CHECK(t.failures().empty());
  } else {
    std::vector<psync::Mpi> endpoints = psync::mpi_shard_endpoints(options(tag_base));
    REQUIRE(endpoints.size() == shards);
    for (int i = 0; i < shards; ++i) {
      CHECK(endpoints[static_cast<std::size_t>(i)].rank_of(server_peer) == i);
      CHECK(endpoints[static_cast<std::size_t>(i)].self() == static_cast<psync::PeerId>(world_rank() - shards));
    }
    psync::ShardedOptions sho;
    sho.equal_versions = psync::shard_versions_agree<Policy>;
    psync::Sharded<psync::Mpi> transport(std::move(endpoints), {}, dimension, sho);
    psync::WorkerOptions wo;
    wo.learning_rate = lr;
    wo.max_steps = steps;
    wo.reply_timeout = 20s;
    psync::Worker<Quadratic, psync::Sharded<psync::Mpi>, Policy> w(Quadratic(dimension), std::move(transport), wo);
    const Target target{target_vector()};
    const psync::WorkerReport r = w.run([&]() -> const Target& { return target; });
    CHECK(r.steps == steps);
    CHECK(r.pushes == steps);
    CHECK((w.model().parameters() - target_vector()).cwiseAbs().maxCoeff() < 0.1f);
  }
}

}  // namespace

TEST_CASE("two server ranks and two workers train under BSP over Sharded<Mpi>", "[mpi][sharding]") {
  train<psync::Bsp>(2000, 0.2f);
}

TEST_CASE("two server ranks and two workers train under ASP over Sharded<Mpi>", "[mpi][sharding]") {
  train<psync::Asp>(2010, 0.1f);
}

TEST_CASE("a worker's shard endpoints hear only their own server rank", "[mpi][sharding]") {
  // Each server rank sends each worker one error naming itself; the worker's endpoint i
  // must get shard i's and nothing else, even though both arrive on the same tag.
  const int tag = 2020;
  if (world_rank() < shards) {
    psync::Mpi t(options(tag));
    for (psync::PeerId w = 0; w < t.workers(); ++w) {
      t.send(w, msg::Error{msg::ErrorCode::internal, "from shard " + std::to_string(t.rank())});
    }
    for (psync::PeerId n = 0; n < t.workers(); ++n) {
      const auto e = t.receive(Clock::now() + 20s);
      REQUIRE(e);
      CHECK(std::holds_alternative<msg::Leave>(e->message));
    }
  } else {
    std::vector<psync::Mpi> endpoints = psync::mpi_shard_endpoints(options(tag));
    // Both errors are on their way; shard 1's endpoint is read first.
    for (int i = shards - 1; i >= 0; --i) {
      auto& t = endpoints[static_cast<std::size_t>(i)];
      const auto e = t.receive(Clock::now() + 20s);
      REQUIRE(e);
      const auto* err = std::get_if<msg::Error>(&e->message);
      REQUIRE(err);
      CHECK(err->text == "from shard " + std::to_string(i));
      CHECK_FALSE(t.try_receive());
    }
    for (auto& t : endpoints) t.send(server_peer, msg::Leave{});
  }
}

TEST_CASE("bad shard options are configuration errors naming what is wrong", "[mpi][sharding]") {
  psync_test::mpi_session();
  psync::MpiOptions o = options(2030);
  o.shard = shards;
  CHECK_THROWS_WITH(psync::Mpi(o), psync_test::Contains("shard 2 is not a server rank"));
  o.shard = 0;
  o.servers = 0;
  CHECK_THROWS_WITH(psync::Mpi(o), psync_test::Contains("at least one rank must serve"));
  o.servers = 4;  // all four ranks
  CHECK_THROWS_WITH(psync::Mpi(o), psync_test::Contains("none is left for a worker"));
  o.servers = shards;
  CHECK_THROWS_WITH(psync::mpi_shard_endpoints(o, {4}), psync_test::Contains("1 shard dimensions for 2"));
  if (world_rank() < shards) {
    CHECK_THROWS_WITH(psync::mpi_shard_endpoints(o), psync_test::Contains("is a server rank"));
  }
}
