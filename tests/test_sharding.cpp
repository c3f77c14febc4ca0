// Sharded servers: K shard servers, each a Server<ParameterSlice, P> owning a
// contiguous slice, and workers talking to them through Sharded<T>. Every policy
// must behave exactly as with one server: BSP gives bit-identical parameters for
// K = 1..4 (in-process and over loopback TCP), SSP keeps its bound, OSP its gate,
// every shard applies every step. A shard that dies ends every worker with an
// error naming it, within the worker's reply deadline.
//
// Worker w pulls towards its own target, different in every coordinate
// ((w + 1) * (1 + 0.37 j)), and the model starts from a ramp: a slice cut or put
// back one place off, or a wrong combination, moves the result.
#include "catch.hpp"
#include "toy_model.hpp"

#include <psync/core/server.hpp>
#include <psync/core/sharding.hpp>
#include <psync/core/worker.hpp>
#include <psync/policies/asp.hpp>
#include <psync/policies/bsp.hpp>
#include <psync/policies/osp.hpp>
#include <psync/policies/ssp.hpp>
#include <psync/transport/any.hpp>
#include <psync/transport/in_process.hpp>
#include <psync/transport/sharded.hpp>
#include <psync/transport/tcp.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using psync::Clock;
using psync::server_peer;
using psync_test::Quadratic;
using psync_test::Target;
namespace msg = psync::msg;

static_assert(psync::Transport<psync::Sharded<psync::InProcess>>);
static_assert(psync::Transport<psync::Sharded<psync::Tcp>>);
static_assert(psync::shard_versions_agree<psync::Bsp> && psync::shard_versions_agree<psync::Osp<4>>);
static_assert(!psync::shard_versions_agree<psync::Asp> && !psync::shard_versions_agree<psync::Ssp<2>>);

namespace {

constexpr Eigen::Index dim = 11;  // not a multiple of 2, 3 or 4: slices of unequal size

Eigen::VectorXf initial_model() {
  Eigen::VectorXf v(dim);
  for (Eigen::Index j = 0; j < dim; ++j) v[j] = 0.1f * static_cast<float>(j) - 0.3f;
  return v;
}

Eigen::VectorXf target_of(int w) {
  Eigen::VectorXf v(dim);
  for (Eigen::Index j = 0; j < dim; ++j) v[j] = static_cast<float>(w + 1) * (1.0f + 0.37f * static_cast<float>(j));
  return v;
}

Quadratic start_model() {
  Quadratic q(dim);
  q.parameters() = initial_model();
  return q;
}

struct Spec {
  int shards = 0;  // 0: one unsharded server
  int workers = 2;
  std::uint64_t steps = 60;
  float lr = 0.05f;
  bool tcp = false;
  std::vector<std::chrono::microseconds> step_delay;  // by worker
  std::chrono::milliseconds reply_timeout{10000};
};

struct Run {
  std::vector<psync::WorkerReport> workers;
  std::vector<psync::ServerReport> servers;
  Eigen::VectorXf final_parameters;

  std::uint64_t total(std::uint64_t psync::WorkerReport::*field) const {
    std::uint64_t s = 0;
    for (const auto& w : workers) s += w.*field;
    return s;
  }
};

psync::ServerOptions server_options(int workers) {
  psync::ServerOptions so;
  so.expected_workers = static_cast<std::uint32_t>(workers);
  so.join_timeout = 10s;
  so.peer_timeout = 10s;
  return so;
}

psync::WorkerOptions worker_options(const Spec& spec) {
  psync::WorkerOptions wo;
  wo.learning_rate = spec.lr;
  wo.max_steps = spec.steps;
  wo.reply_timeout = spec.reply_timeout;
  return wo;
}

std::chrono::microseconds delay_of(const Spec& spec, int w) {
  const auto i = static_cast<std::size_t>(w);
  return i < spec.step_delay.size() ? spec.step_delay[i] : std::chrono::microseconds{0};
}

/// A step hook: (worker, step) before each step.
using OnStep = std::function<void(int, std::uint64_t)>;

/// Worker `w` over `transport` (a Sharded<InProcess> or Sharded<Tcp>, held in an
/// AnyTransport so each policy compiles one worker, not one per transport).
template <class P>
psync::WorkerReport train(psync::AnyTransport transport, const Spec& spec, int w, P policy, const OnStep& on_step) {
  psync::Worker<Quadratic, psync::AnyTransport, P> worker(start_model(), std::move(transport), worker_options(spec),
                                                          policy);
  const Target t{target_of(w)};
  const auto delay = delay_of(spec, w);
  std::uint64_t steps = 0;
  return worker.run([&]() -> const Target& {
    if (delay.count() > 0) std::this_thread::sleep_for(delay);  // a slow worker, not synchronization
    on_step(w, ++steps);
    return t;
  });
}

/// The reference: one unsharded server and `spec.workers` workers, in-process.
template <class P>
Run run_unsharded(const Spec& spec, P policy = {}) {
  psync::InProcessHub hub;
  psync::Server<Quadratic, P> server(start_model(), server_options(spec.workers), policy);
  psync::InProcess server_ep = hub.endpoint(server_peer);
  auto server_done = std::async(std::launch::async, [&] { return server.run(server_ep); });
  std::vector<std::future<psync::WorkerReport>> futures;
  for (int w = 0; w < spec.workers; ++w) {
    futures.push_back(std::async(std::launch::async, [&, w] {
      psync::Worker<Quadratic, psync::InProcess, P> worker(start_model(), hub.endpoint(static_cast<psync::PeerId>(w)),
                                                           worker_options(spec), policy);
      const Target t{target_of(w)};
      const auto delay = delay_of(spec, w);
      return worker.run([&]() -> const Target& {
        if (delay.count() > 0) std::this_thread::sleep_for(delay);
        return t;
      });
    }));
  }
  Run r;
  for (auto& f : futures) r.workers.push_back(f.get());
  r.servers.push_back(server_done.get());
  r.final_parameters = server.model().parameters();
  return r;
}

/// K shard servers (each its own thread and endpoint) and `spec.workers` workers
/// over Sharded<InProcess> or Sharded<Tcp>. `on_step(w, step)` runs before each step.
template <class P>
struct ShardedCluster {
  Spec spec;
  P policy;
  psync::ShardLayout layout;
  std::vector<psync::InProcessHub> hubs;
  std::vector<psync::InProcess> in_process;            // the shards' in-process endpoints
  std::vector<std::unique_ptr<psync::TcpServer>> tcp;  // or their TCP endpoints
  std::vector<std::unique_ptr<psync::Server<psync::ParameterSlice, P>>> servers;
  std::vector<std::future<psync::ServerReport>> server_done;
  std::vector<std::future<psync::WorkerReport>> worker_done;

  ShardedCluster(const Spec& s, P p, OnStep on_step)
      : spec(s), policy(p), layout(dim, static_cast<std::uint32_t>(s.shards)), hubs(static_cast<std::size_t>(s.shards)) {
    const auto k = static_cast<std::size_t>(spec.shards);
    in_process.reserve(k);
    for (std::size_t i = 0; i < k; ++i) {
      servers.push_back(std::make_unique<psync::Server<psync::ParameterSlice, P>>(
          psync::ParameterSlice::of(initial_model(), layout, static_cast<std::uint32_t>(i)),
          server_options(spec.workers), policy));
      if (spec.tcp) {
        tcp.push_back(std::make_unique<psync::TcpServer>());
      } else {
        in_process.push_back(hubs[i].endpoint(server_peer));
      }
    }
    for (std::size_t i = 0; i < k; ++i) {
      server_done.push_back(std::async(std::launch::async, [this, i] {
        // Through AnyTransport views: one Server::run per policy, whichever the transport.
        if (spec.tcp) {
          psync::AnyTransport ep(std::ref(*tcp[i]));
          return servers[i]->run(ep);
        }
        psync::AnyTransport ep(std::ref(in_process[i]));
        auto r = servers[i]->run(ep);
        in_process[i].close();  // a stopped shard is gone: its workers see it leave
        return r;
      }));
    }
    for (int w = 0; w < spec.workers; ++w) {
      worker_done.push_back(std::async(std::launch::async, [this, w, on_step] {
        const auto id = static_cast<psync::PeerId>(w);
        const psync::ShardedOptions so{psync::shard_versions_agree<P>};
        std::vector<std::string> names;
        if (spec.tcp) {
          std::vector<psync::Tcp> eps;
          for (auto& t : tcp) {
            eps.emplace_back("127.0.0.1", t->port(), id);
            names.push_back("127.0.0.1:" + std::to_string(t->port()));
          }
          return train(psync::Sharded<psync::Tcp>(std::move(eps), names, dim, so), spec, w, policy, on_step);
        }
        std::vector<psync::InProcess> eps;
        for (auto& h : hubs) {
          eps.push_back(h.endpoint(id));
          names.push_back("in-process shard " + std::to_string(names.size()));
        }
        return train(psync::Sharded<psync::InProcess>(std::move(eps), names, dim, so), spec, w, policy, on_step);
      }));
    }
  }

  Eigen::VectorXf parameters() const {
    Eigen::VectorXf v(dim);
    for (std::uint32_t i = 0; i < layout.shards(); ++i) {
      v.segment(layout.offset(i), layout.size(i)) = servers[i]->model().parameters();
    }
    return v;
  }
};

template <class P>
Run run_sharded(const Spec& spec, P policy = {}) {
  ShardedCluster<P> c(spec, policy, [](int, std::uint64_t) {});
  Run r;
  for (auto& f : c.worker_done) r.workers.push_back(f.get());
  for (auto& f : c.server_done) r.servers.push_back(f.get());
  r.final_parameters = c.parameters();
  return r;
}

bool bit_identical(const Eigen::VectorXf& a, const Eigen::VectorXf& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0;
}

/// Every shard applied every step and push, and they agree on the version when it counts rounds.
template <class P>
void require_every_shard_applied_everything(const Run& r) {
  for (const auto& s : r.servers) {
    REQUIRE(s.steps_applied == r.total(&psync::WorkerReport::steps));
    REQUIRE(s.updates_applied == r.total(&psync::WorkerReport::pushes));
    REQUIRE(s.peers.size() == r.workers.size());
    if constexpr (psync::shard_versions_agree<P>) REQUIRE(s.version == r.servers.front().version);
  }
}

}  // namespace

TEST_CASE("Slices are contiguous, cover the model and differ in size by at most one", "[sharding]") {
  for (Eigen::Index n : {1, 2, 7, 11, 100, 1001}) {
    for (std::uint32_t k = 1; k <= 8 && static_cast<Eigen::Index>(k) <= n; ++k) {
      const psync::ShardLayout l(n, k);
      Eigen::Index next = 0, smallest = n, largest = 0;
      for (std::uint32_t i = 0; i < k; ++i) {
        REQUIRE(l.offset(i) == next);
        next += l.size(i);
        smallest = std::min(smallest, l.size(i));
        largest = std::max(largest, l.size(i));
      }
      REQUIRE(next == n);
      REQUIRE(largest - smallest <= 1);
      REQUIRE(smallest >= 1);
    }
  }
  REQUIRE_THROWS_AS(psync::ShardLayout(10, 0), psync::ConfigError);
  REQUIRE_THROWS_AS(psync::ShardLayout(3, 4), psync::ConfigError);
  const psync::ShardLayout l(dim, 3);
  REQUIRE_THROWS_AS(psync::ParameterSlice::of(Eigen::VectorXf::Zero(dim + 1), l, 0), psync::ConfigError);
  REQUIRE_THROWS_AS(psync::ParameterSlice::of(Eigen::VectorXf::Zero(dim), l, 3), psync::ConfigError);
  const Eigen::VectorXf full = initial_model();
  REQUIRE(psync::ParameterSlice::of(full, l, 1).parameters() == full.segment(l.offset(1), l.size(1)));
}

// The adapter on its own, the test thread playing both shards: what a push sends
// each shard, how the answers are put back together, and what is refused.
TEST_CASE("Sharded cuts a push into slices and reassembles the answers in place", "[sharding]") {
  std::vector<psync::InProcessHub> hubs(3);
  std::vector<psync::InProcess> shard_eps;
  for (auto& h : hubs) shard_eps.push_back(h.endpoint(server_peer));
  std::vector<psync::InProcess> eps;
  for (auto& h : hubs) eps.push_back(h.endpoint(7));
  psync::ShardedOptions options;
  options.equal_versions = true;
  psync::Sharded<psync::InProcess> t(std::move(eps), {"a", "b", "c"}, dim, options);
  const psync::ShardLayout& l = t.layout();
  REQUIRE(t.self() == 7);

  const auto take = [](psync::InProcess& ep) {
    auto e = ep.try_receive();
    REQUIRE(e.has_value());
    REQUIRE(e->from == 7);
    return std::move(e->message);
  };
  // Each shard answers with its slice of `full` at `version`, min clock `clock`.
  const auto answer = [&](const Eigen::VectorXf& full, std::uint64_t version, std::uint64_t clock) {
    for (std::uint32_t i = 0; i < 3; ++i) {
      shard_eps[i].send(7, msg::Model{version, clock, 0, full.segment(l.offset(i), l.size(i)), 7});
    }
  };

  t.send(server_peer, msg::Join{7, static_cast<std::uint64_t>(dim), "bsp"});
  for (std::uint32_t i = 0; i < 3; ++i) {
    const auto j = std::get<msg::Join>(take(shard_eps[i]));
    REQUIRE(j.dimension == static_cast<std::uint64_t>(l.size(i)));
    REQUIRE(j.policy == "bsp");
  }
  const Eigen::VectorXf model = initial_model();
  answer(model, 0, 0);
  auto joined = t.receive(Clock::now() + 2s);
  REQUIRE(joined.has_value());
  REQUIRE(joined->from == server_peer);
  REQUIRE(bit_identical(std::get<msg::Model>(joined->message).values(), model));

  const Eigen::VectorXf update = target_of(2);
  t.send(server_peer, msg::Push{0, 0, 1, update});
  for (std::uint32_t i = 0; i < 3; ++i) {
    const auto p = std::get<msg::Push>(take(shard_eps[i]));
    REQUIRE(p.clock == 0);
    REQUIRE(p.steps == 1);
    REQUIRE(bit_identical(p.update, update.segment(l.offset(i), l.size(i))));
  }
  // Answers from two of three shards are not an answer yet.
  shard_eps[2].send(7, msg::Model{1, 1, 0, update.segment(l.offset(2), l.size(2)), 7});
  shard_eps[0].send(7, msg::Model{1, 1, 0, update.segment(l.offset(0), l.size(0)), 7});
  REQUIRE_FALSE(t.try_receive().has_value());
  shard_eps[1].send(7, msg::Model{1, 1, 0, update.segment(l.offset(1), l.size(1)), 7});
  auto reply = t.try_receive();
  REQUIRE(reply.has_value());
  REQUIRE(bit_identical(std::get<msg::Model>(reply->message).values(), update));
  REQUIRE(std::get<msg::Model>(reply->message).version == 1);

  SECTION("versions that differ under a round-based policy are refused, naming the shards") {
    t.send(server_peer, msg::Push{1, 1, 1, update});
    for (auto& ep : shard_eps) take(ep);
    shard_eps[0].send(7, msg::Model{2, 2, 0, update.segment(l.offset(0), l.size(0)), 7});
    shard_eps[1].send(7, msg::Model{3, 2, 0, update.segment(l.offset(1), l.size(1)), 7});
    shard_eps[2].send(7, msg::Model{2, 2, 0, update.segment(l.offset(2), l.size(2)), 7});
    REQUIRE_THROWS_WITH(t.try_receive(), psync_test::Contains("shard 0 of 3 (a) says 2, shard 1 of 3 (b) says 3"));
  }
  SECTION("a refusal reaches the worker at once, naming the shard") {
    t.send(server_peer, msg::Push{1, 1, 1, update});
    for (auto& ep : shard_eps) take(ep);
    shard_eps[1].send(7, msg::Error{msg::ErrorCode::bad_clock, "nope"});
    auto e = t.try_receive();
    REQUIRE(e.has_value());
    REQUIRE(std::get<msg::Error>(e->message).code == msg::ErrorCode::bad_clock);
    REQUIRE(std::get<msg::Error>(e->message).text == "shard 1 of 3 (b): nope");
  }
  SECTION("a slice of the wrong size is refused") {
    t.send(server_peer, msg::Push{1, 1, 1, update});
    for (auto& ep : shard_eps) take(ep);
    shard_eps[2].send(7, msg::Model{2, 2, 0, Eigen::VectorXf::Zero(l.size(2) + 1), 7});
    REQUIRE_THROWS_WITH(t.try_receive(), psync_test::Contains("shard 2 of 3 (c) sent"));
  }
  SECTION("a deadline that passes names the shards that did not answer") {
    t.send(server_peer, msg::Push{1, 1, 1, update});
    for (auto& ep : shard_eps) take(ep);
    shard_eps[1].send(7, msg::Model{2, 2, 0, update.segment(l.offset(1), l.size(1)), 7});
    REQUIRE_THROWS_WITH(t.receive(Clock::now() + 50ms),
                        psync_test::Contains("shard 0 of 3 (a), shard 2 of 3 (c) (1 of 3 shards answered)"));
  }
  SECTION("a lost shard is named") {
    shard_eps[2].close();
    REQUIRE_THROWS_WITH(t.receive(Clock::now() + 2s), psync_test::Contains("worker 7: lost shard 2 of 3 (c)"));
    REQUIRE_THROWS_WITH(t.send(server_peer, msg::Push{1, 1, 1, update}), psync_test::Contains("shard 2 of 3 (c)"));
  }
  SECTION("a model nobody asked for is refused") {
    shard_eps[0].send(7, msg::Model{1, 1, 0, update.segment(l.offset(0), l.size(0)), 7});
    REQUIRE_THROWS_WITH(t.try_receive(), psync_test::Contains("shard 0 of 3 (a) sent a model no request asked for"));
  }
}

TEST_CASE("Shards that disagree on a joiner's start clock are refused, naming them", "[sharding]") {
  std::vector<psync::InProcessHub> hubs(2);
  std::vector<psync::InProcess> shard_eps;
  for (auto& h : hubs) shard_eps.push_back(h.endpoint(server_peer));
  std::vector<psync::InProcess> eps;
  for (auto& h : hubs) eps.push_back(h.endpoint(0));
  psync::Sharded<psync::InProcess> t(std::move(eps), {}, dim);
  REQUIRE_THROWS_AS(t.send(server_peer, msg::Join{0, static_cast<std::uint64_t>(dim + 1), "asp"}), psync::ProtocolError);
  t.send(server_peer, msg::Join{0, static_cast<std::uint64_t>(dim), "asp"});
  const psync::ShardLayout& l = t.layout();
  shard_eps[0].send(0, msg::Model{5, 4, 0, Eigen::VectorXf::Zero(l.size(0)), 0});
  shard_eps[1].send(0, msg::Model{5, 5, 0, Eigen::VectorXf::Zero(l.size(1)), 0});
  REQUIRE_THROWS_WITH(t.receive(Clock::now() + 2s),
                      psync_test::Contains("start clock of one answer: shard 0 of 2 (shard 0) says 4, shard 1 of 2 (shard 1) says 5"));

  std::vector<psync::InProcessHub> other(2);
  std::vector<psync::InProcess> mixed;
  mixed.push_back(other[0].endpoint(0));
  mixed.push_back(other[1].endpoint(1));
  REQUIRE_THROWS_AS(psync::Sharded<psync::InProcess>(std::move(mixed), {}, dim), psync::ConfigError);
}

TEST_CASE("BSP over K = 1..4 in-process shards gives bit-identical parameters to one server", "[sharding][bsp]") {
  Spec spec;
  spec.workers = 2;  // two workers: a round's sum a + b is the same float in either arrival order
  spec.steps = 60;
  spec.lr = 0.1f;
  const Run reference = run_unsharded<psync::Bsp>(spec);
  REQUIRE(reference.servers.front().version == spec.steps);
  for (int k = 1; k <= 4; ++k) {
    spec.shards = k;
    const Run r = run_sharded<psync::Bsp>(spec);
    INFO("K = " << k << ": " << r.final_parameters.transpose() << " vs " << reference.final_parameters.transpose());
    REQUIRE(bit_identical(r.final_parameters, reference.final_parameters));
    require_every_shard_applied_everything<psync::Bsp>(r);
    for (const auto& s : r.servers) REQUIRE(s.version == spec.steps);
    for (const auto& w : r.workers) {
      REQUIRE(w.steps == spec.steps);
      REQUIRE(w.clock_staleness.max == 0);
      // The worker's installed model is the reassembled global one.
      REQUIRE(w.installs == spec.steps);
    }
  }
}

TEST_CASE("BSP over three shards and three workers is averaged SGD", "[sharding][bsp]") {
  Spec spec;
  spec.workers = 3;
  spec.shards = 3;
  spec.steps = 40;
  spec.lr = 0.1f;
  const Run r = run_sharded<psync::Bsp>(spec);
  Eigen::VectorXf x = initial_model();
  for (std::uint64_t s = 0; s < spec.steps; ++s) {
    Eigen::VectorXf sum = Eigen::VectorXf::Zero(dim);
    for (int w = 0; w < spec.workers; ++w) sum += -spec.lr * (x - target_of(w));
    x += sum / static_cast<float>(spec.workers);
  }
  REQUIRE((r.final_parameters - x).cwiseAbs().maxCoeff() < 1e-4f);
  require_every_shard_applied_everything<psync::Bsp>(r);
}

TEST_CASE("SSP over shards keeps its clock bound and applies every push on every shard", "[sharding][ssp]") {
  Spec spec;
  spec.workers = 3;
  spec.shards = 3;
  spec.steps = 40;
  spec.step_delay = {1000us};  // a straggler: the others run into the bound
  const Run r = run_sharded<psync::Ssp<2>>(spec);
  std::uint64_t worst = 0;
  for (const auto& w : r.workers) {
    REQUIRE(w.steps == spec.steps);
    worst = std::max(worst, w.clock_staleness.max);
  }
  REQUIRE(worst <= 2);
  REQUIRE(worst >= 1);  // the straggler did hold the others back to the bound's edge
  require_every_shard_applied_everything<psync::Ssp<2>>(r);
  for (const auto& s : r.servers) REQUIRE(s.version == r.total(&psync::WorkerReport::pushes));
}

TEST_CASE("ASP over shards applies every push on every shard", "[sharding][asp]") {
  Spec spec;
  spec.workers = 3;
  spec.shards = 2;
  spec.steps = 50;
  const Run r = run_sharded<psync::Asp>(spec);
  for (const auto& w : r.workers) REQUIRE(w.steps == spec.steps);
  require_every_shard_applied_everything<psync::Asp>(r);
  REQUIRE(r.final_parameters.allFinite());
}

TEST_CASE("OSP over shards keeps its gate, one round a version on every shard", "[sharding][osp]") {
  Spec spec;
  spec.workers = 2;
  spec.shards = 3;
  spec.steps = 60;
  spec.step_delay = {0us, 300us};
  const Run r = run_sharded<psync::Osp<4>>(spec);
  std::uint64_t rounds = 0;
  for (const auto& w : r.workers) {
    REQUIRE(w.steps == spec.steps);
    REQUIRE(w.max_unsent <= 4);
    rounds = std::max(rounds, w.pushes);
  }
  require_every_shard_applied_everything<psync::Osp<4>>(r);
  for (const auto& s : r.servers) REQUIRE(s.version == rounds);
}

TEST_CASE("BSP over two loopback TCP shards gives bit-identical parameters to one server", "[sharding][tcp]") {
  Spec spec;
  spec.workers = 2;
  spec.steps = 40;
  spec.lr = 0.1f;
  const Run reference = run_unsharded<psync::Bsp>(spec);
  spec.shards = 2;
  spec.tcp = true;
  const Run r = run_sharded<psync::Bsp>(spec);
  REQUIRE(bit_identical(r.final_parameters, reference.final_parameters));
  require_every_shard_applied_everything<psync::Bsp>(r);
}

namespace {

/// Trains 2 workers on 2 shards with no step limit; once worker 0 has taken 20
/// steps, `kill(cluster)` takes shard 1 down. Every worker must fail naming shard 1
/// within its reply deadline.
template <class Kill>
void shard_dies(bool tcp, Kill kill) {
  Spec spec;
  spec.workers = 2;
  spec.shards = 2;
  spec.steps = 1'000'000'000;
  spec.tcp = tcp;
  spec.reply_timeout = 2000ms;
  std::promise<void> started;
  std::atomic<bool> signalled{false};
  auto on_step = [&](int w, std::uint64_t step) {
    if (w == 0 && step == 20 && !signalled.exchange(true)) started.set_value();
  };
  ShardedCluster<psync::Bsp> c(spec, psync::Bsp{}, on_step);
  // A worker option of the cluster: the deadline every worker must meet.
  const auto reply_timeout = worker_options(spec).reply_timeout;
  REQUIRE(started.get_future().wait_for(10s) == std::future_status::ready);
  const auto killed = Clock::now();
  kill(c);
  for (auto& f : c.worker_done) {
    REQUIRE(f.wait_for(reply_timeout) == std::future_status::ready);
    REQUIRE(Clock::now() - killed < reply_timeout);
    REQUIRE_THROWS_WITH(f.get(), psync_test::Contains("shard 1 of 2 (" +
                                                      (tcp ? "127.0.0.1:" + std::to_string(c.tcp[1]->port())
                                                           : std::string("in-process shard 1")) +
                                                      ")"));
  }
  // The surviving shard sees its workers go and ends; the dead one may end with an error.
  REQUIRE(c.server_done[0].wait_for(reply_timeout) == std::future_status::ready);
  REQUIRE(c.server_done[0].get().peers.size() == 2);
  REQUIRE(c.server_done[1].wait_for(reply_timeout) == std::future_status::ready);
  try {
    c.server_done[1].get();
  } catch (const psync::Error&) {
  }
}

}  // namespace

TEST_CASE("A shard that stops ends every worker with an error naming it, in time", "[sharding][faults]") {
  shard_dies(false, [](auto& c) { c.servers[1]->stop(); });
}

TEST_CASE("A TCP shard whose endpoint dies ends every worker with an error naming it, in time",
          "[sharding][faults][tcp]") {
  shard_dies(true, [](auto& c) { c.tcp[1]->close(); });
}
