#pragma once
/// @file
/// @brief Virtual-time runs: the same `ServerCore` and `WorkerCore` as a real
/// cluster, driven by a discrete-event loop on one thread. The math is real (every
/// gradient is computed on the real data, so accuracy is real); only time is
/// modelled: compute cost per step, the network (fair-shared server NIC, per-link
/// bandwidth, latency, jitter), and the server's cost per message. The same seed
/// and scenario give bit-identical trajectories on any machine, whatever its load.

#include "psync/compress/codec.hpp"
#include "psync/concepts.hpp"
#include "psync/core/error.hpp"
#include "psync/core/metrics.hpp"
#include "psync/core/server_core.hpp"
#include "psync/core/sharding.hpp"
#include "psync/core/worker_core.hpp"
#include "psync/harness/local_cluster.hpp"
#include "psync/optim/any.hpp"
#include "psync/optim/schedule.hpp"
#include "psync/sim/network.hpp"
#include "psync/transport/emulated.hpp"
#include "psync/transport/sharded.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <queue>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace psync::sim {

/// @brief What a local step costs in virtual time.
struct ComputeCost {
  /// @brief Median seconds per local step of a worker at speed 1 (measure it with
  /// `calibrate_step`, or give it).
  double step_s = 1e-3;
  /// @brief Spread of a step's cost: each step costs `step_s` times a lognormal factor
  /// with median 1 and this coefficient of variation (seeded per worker; 0: every
  /// step costs exactly `step_s`). Real steps vary (a quiet 2-core machine measured
  /// 4.5-7% for the MLP, see `calibrate_step_spread`), and the variation matters: with
  /// none, identical workers stay in lockstep and push at the same instant on a shared
  /// NIC, which real workers do not.
  double step_cv = 0;
  /// @brief Per-worker slowdown factors (>= 1), by worker index; missing entries are 1.
  std::vector<double> slowdown;
  /// @brief With this probability a step takes `random_factor` times as long (seeded).
  double random_probability = 0;
  /// @brief Slowdown of an unlucky step.
  double random_factor = 1;
};

/// @brief The host the cluster runs on, when its processes share cores (a test box
/// running every worker and the server, as `scripts/netns_crosscheck.sh --validate`
/// does on 2 cores). By default (`cores` = 0) every worker and server shard has cores
/// of its own and communication costs no compute: a real cluster.
///
/// With `cores` > 0, every worker's steps, every server shard's message handling and
/// the CPU work of communication run as jobs on `cores` processor-shared cores, as the
/// kernel's scheduler shares them between runnable threads: n jobs on c cores each run
/// at min(1, c / n) of a core. A step of cost t takes t alone, and longer while more
/// jobs than cores are runnable.
struct HostCpu {
  /// @brief Cores the whole cluster shares (0: none shared).
  double cores = 0;
  /// @brief CPU seconds each byte of a message costs its sender, and again its receiver
  /// (serialization, the kernel's TCP stack and its soft interrupts, copies). Each side
  /// is a job of its own that starts with the transfer and runs beside it, as the kernel
  /// handles packets while they stream; the message is delivered once the transfer
  /// (and latency) and both jobs are done. So communication takes cores from compute,
  /// and a host short of cores slows communication down too.
  double s_per_byte = 0;
};

/// @brief When a worker that is computing takes a reply that arrived mid-step.
enum class Replies {
  /// At once, as a dedicated sender/receiver thread would (the OSP authors' reference
  /// code): the next push leaves the moment the reply lands. The default.
  on_arrival,
  /// At the end of the step, as psync's own `Worker` driver does (it takes replies at
  /// step boundaries): the next push leaves then and holds the step that was running.
  at_step_end,
};

/// @brief A virtual-time run's set-up.
struct SimOptions {
  std::uint32_t workers = 4;
  float learning_rate = 0.1f;
  /// @brief Every worker's optimizer (docs/optimizers.md), chosen at run time: each
  /// worker's `WorkerCore` starts from its own copy, so each keeps its own state.
  /// Default `optim::Sgd`, the plain `-learning_rate * g` update.
  optim::Any optimizer{};
  /// @brief Every worker's learning-rate schedule, of the worker's step count (e.g.
  /// `optim::parse_schedule("warmup:100,cosine:900", 0.1f)`); empty (default): the
  /// constant `learning_rate`. A schedule carries its own starting rate, so when one
  /// is set `learning_rate` is not used.
  optim::Schedule schedule{};
  /// @brief Local steps per worker (the run may stop earlier on `budget_s`).
  std::uint64_t steps_per_worker = 1000;
  /// @brief Virtual seconds per worker from the start (0: none).
  double budget_s = 0;
  ComputeCost compute;
  /// @brief Links, server NIC and jitter (the same description as `Emulated`'s);
  /// the NIC is shared fairly between concurrent transfers, not first come first served.
  NetworkSpec network;
  /// @brief How the server NIC divides its bandwidth: `fair` (the kernel's TCP
  /// behaviour, the default) or `fifo` (as the real-time `Emulated` transport).
  Sharing sharing = Sharing::fair;
  /// @brief Server seconds per float of a push (apply and copy into the reply; calibrate or give it).
  double server_s_per_float = 0;
  /// @brief Shared cores and the CPU cost of communication (default: none shared, as in a real cluster).
  HostCpu host{};
  /// @brief When a computing worker takes a reply (only OSP's workers compute while
  /// one is due): `on_arrival` (default) or, to model psync's `Worker`, `at_step_end`.
  Replies replies = Replies::on_arrival;
  /// @brief Server shards (K): shard i owns a contiguous slice of the parameters
  /// (`ShardLayout`), runs its own `ServerCore` on its own thread and NIC (each
  /// direction at `network.server_nic_bytes_per_s`, shared as `sharing` says), and
  /// spends `server_s_per_float` per float of its slice. Each worker talks to them
  /// through the same `Sharded` adapter a real sharded worker uses; its K slices in
  /// flight share its own link equally (each is capped at the link's bandwidth / K).
  std::uint32_t shards = 1;
  /// @brief How every worker encodes its pushes (docs/compression.md); the network
  /// charges the encoded size. With `shards` > 1 each push is cut into one payload per
  /// shard (`compress::split`), each shard's link charged its own.
  compress::Codec codec{};
  /// @brief Virtual seconds between two snapshots of the global model for the series.
  double snapshot_interval_s = 0.5;
  /// @brief Seeds the compute slowdowns (the network has `network.seed`).
  std::uint64_t seed = 1;
  /// @brief Optional early stop, asked after each snapshot with the series so far:
  /// when it returns true, every worker finishes at its next step boundary, as if
  /// the budget had ended then (e.g. "the target is reached and held").
  std::function<bool(const std::vector<SeriesPoint>&)> stop_when;
};

/// @brief What a virtual-time run cost in real time, and what it held: the
/// simulator's own overhead is `(real_s - evaluate_s) / gradient_s` (1 would be
/// the gradient math alone).
struct SimStats {
  /// @brief Real seconds of the whole `simulate` call.
  double real_s = 0;
  /// @brief Real seconds inside the model's `gradient` (the math a real run does too).
  double gradient_s = 0;
  /// @brief Real seconds inside the snapshot evaluator (not the simulator's work).
  double evaluate_s = 0;
  /// @brief Local steps computed, all workers.
  std::uint64_t steps = 0;
  /// @brief Events processed by the loop.
  std::uint64_t events = 0;
  /// @brief The most messages in flight at once (each holds at most one model-sized vector).
  std::size_t peak_in_flight = 0;

  /// @brief Adds another run's costs (the peak is the larger of the two).
  SimStats& operator+=(const SimStats& o) noexcept {
    real_s += o.real_s;
    gradient_s += o.gradient_s;
    evaluate_s += o.evaluate_s;
    steps += o.steps;
    events += o.events;
    peak_in_flight = std::max(peak_in_flight, o.peak_in_flight);
    return *this;
  }

  /// @brief Real time per unit of gradient time, evaluation excluded (>= 1).
  double overhead() const { return gradient_s > 0 ? (real_s - evaluate_s) / gradient_s : 0; }
};

/// @brief What `calibrate_step_spread` measured: the median step and how much steps vary.
struct StepCalibration {
  /// @brief Median seconds of one gradient step (`ComputeCost::step_s`).
  double median_s = 0;
  /// @brief Coefficient of variation of a lognormal fitted to the middle half of the
  /// times (`ComputeCost::step_cv`): sigma = (ln q75 - ln q25) / 1.349, cv =
  /// sqrt(exp(sigma^2) - 1). The interquartile fit ignores the rare long step a
  /// preempted thread takes, which is the machine's noise, not the step's.
  double cv = 0;
};

/// @brief Times `repetitions` gradient steps of `model` on batches from `next` after
/// `warmup` untimed ones (which also touch the data): their median and spread.
template <Model M, class NextBatch>
  requires BatchSource<NextBatch, typename M::Batch>
StepCalibration calibrate_step_spread(const M& model, NextBatch&& next, int repetitions = 30, int warmup = 5) {
  if (repetitions < 1 || warmup < 0) {
    throw ConfigError("calibrate_step: repetitions must be at least 1 and warmup at least 0, got " +
                      std::to_string(repetitions) + " and " + std::to_string(warmup));
  }
  Eigen::VectorXf g = Eigen::VectorXf::Zero(model.parameters().size());
  std::vector<double> times;
  times.reserve(static_cast<std::size_t>(repetitions));
  for (int i = 0; i < warmup + repetitions; ++i) {
    const auto& batch = next();
    const auto t0 = std::chrono::steady_clock::now();
    model.gradient(batch, g);
    const auto t1 = std::chrono::steady_clock::now();
    if (i >= warmup) times.push_back(std::chrono::duration<double>(t1 - t0).count());
  }
  std::sort(times.begin(), times.end());
  const auto at = [&](double q) { return times[static_cast<std::size_t>(q * static_cast<double>(times.size() - 1))]; };
  StepCalibration c;
  c.median_s = at(0.5);
  const double q25 = at(0.25), q75 = at(0.75);
  if (q25 > 0 && q75 > q25) {
    const double sigma = (std::log(q75) - std::log(q25)) / 1.349;
    c.cv = std::sqrt(std::expm1(sigma * sigma));
  }
  return c;
}

/// @brief Median seconds of one gradient step of `model` on batches from `next`,
/// over `repetitions` steps after `warmup` untimed ones (see `calibrate_step_spread`).
template <Model M, class NextBatch>
  requires BatchSource<NextBatch, typename M::Batch>
double calibrate_step(const M& model, NextBatch&& next, int repetitions = 30, int warmup = 5) {
  return calibrate_step_spread(model, std::forward<NextBatch>(next), repetitions, warmup).median_s;
}

namespace detail {

/// @brief A worker's endpoint to one server shard inside the simulator: `send`
/// queues the message for the event loop, `receive` never blocks (the loop delivers
/// each answer into `inbox` when the network says it arrived).
struct SimShardEndpoint {
  PeerId id = 0;
  std::uint32_t shard = 0;
  std::vector<std::pair<std::uint32_t, Message>>* outbox = nullptr;  // the worker's sends, with their shard
  std::deque<Message> inbox;

  PeerId self() const noexcept { return id; }
  void send(PeerId, Message&& m) { outbox->emplace_back(shard, std::move(m)); }
  std::optional<Envelope> receive(Clock::time_point) { return try_receive(); }
  std::optional<Envelope> try_receive() {
    if (inbox.empty()) return std::nullopt;
    Envelope e{server_peer, std::move(inbox.front())};
    inbox.pop_front();
    return e;
  }
};
static_assert(Transport<SimShardEndpoint>);

}  // namespace detail

/// @brief Runs `options.workers` workers and `options.shards` server shards under policy `P` in
/// virtual time and returns the same report as `run_local` (times in virtual
/// seconds). `batches_for(w)` gives worker w's batch source; `evaluate(model)` turns
/// each snapshot of the server's model into a point of the series.
///
/// Each snapshot is evaluated when it is taken (virtual time does not move while
/// it is), so a run holds the server's model, each worker's model, gradient and
/// buffers, and the messages in flight: O(P) model copies, whatever its length.
/// `stats`, when given, receives the run's real cost (see `SimStats`).
template <Model M, SyncPolicy P, class BatchesFor, class Evaluate>
  requires BatchSourceFactory<BatchesFor, typename M::Batch> && SnapshotEvaluator<Evaluate, M>
RunReport simulate(const M& model, BatchesFor&& batches_for, const SimOptions& options, P policy,
                   Evaluate&& evaluate, SimStats* stats = nullptr) {
  using RealClock = std::chrono::steady_clock;
  const auto real_start = RealClock::now();
  const auto real_since = [](RealClock::time_point t0) {
    return std::chrono::duration<double>(RealClock::now() - t0).count();
  };
  SimStats st;
  if (options.workers == 0) throw ConfigError("simulate: workers must be at least 1");
  if (!(options.compute.step_s > 0)) throw ConfigError("simulate: compute.step_s must be positive");
  if (!(options.compute.step_cv >= 0 && options.compute.step_cv <= 10)) {
    throw ConfigError("simulate: compute.step_cv must be in [0, 10], got " + std::to_string(options.compute.step_cv));
  }
  if (!(options.snapshot_interval_s > 0)) throw ConfigError("simulate: snapshot_interval_s must be positive");
  if (options.shards == 0) throw ConfigError("simulate: shards must be at least 1");
  if (!(options.host.cores >= 0) || std::isinf(options.host.cores)) {
    throw ConfigError("simulate: host.cores must be finite and at least 0, got " + std::to_string(options.host.cores));
  }
  if (!(options.host.s_per_byte >= 0) || std::isinf(options.host.s_per_byte)) {
    throw ConfigError("simulate: host.s_per_byte must be finite and at least 0, got " +
                      std::to_string(options.host.s_per_byte));
  }
  if (options.host.s_per_byte > 0 && options.host.cores == 0) {
    throw ConfigError("simulate: host.s_per_byte needs host.cores > 0 (communication takes compute only from shared cores)");
  }
  const std::uint32_t K = options.shards;
  const ShardLayout layout(model.parameters().size(), K);  // ConfigError if K > the model's size

  using Batches = std::decay_t<std::invoke_result_t<BatchesFor&, PeerId>>;
  const auto to_ns = [](double s) { return static_cast<Nanos>(std::llround(s * 1e9)); };
  const auto at = [](Nanos t) { return Clock::time_point(std::chrono::nanoseconds(t)); };

  enum class Kind { step_done, arrive_server, arrive_worker, net_up, net_down, server_free, cpu, snapshot };
  struct Event {
    Nanos time;
    std::uint64_t seq;
    Kind kind;
    std::uint64_t a;    // worker, message handle or generation
    std::uint32_t b;    // the shard of a net_up, net_down or server_free
    bool operator>(const Event& o) const { return time != o.time ? time > o.time : seq > o.seq; }
  };
  std::priority_queue<Event, std::vector<Event>, std::greater<>> events;
  std::uint64_t seq = 0;
  std::uint64_t pending = 0;  // events other than snapshots: none left means nothing can happen any more
  const auto schedule = [&](Nanos t, Kind k, std::uint64_t a, std::uint32_t b = 0) {
    if (k != Kind::snapshot) ++pending;
    events.push(Event{t, seq++, k, a, b});
  };

  ServerCoreOptions so;
  so.expected_workers = options.workers;
  so.join_timeout = std::chrono::hours(24 * 365);
  so.peer_timeout = std::chrono::hours(24 * 365);
  // One server core per shard, each holding its slice (K = 1: the whole model).
  std::vector<std::unique_ptr<ServerCore<ParameterSlice, P>>> servers;
  for (std::uint32_t k = 0; k < K; ++k) {
    servers.push_back(std::make_unique<ServerCore<ParameterSlice, P>>(ParameterSlice::of(model.parameters(), layout, k),
                                                                      so, policy, at(0)));
  }
  const auto servers_done = [&] {
    return std::all_of(servers.begin(), servers.end(), [](const auto& sv) { return sv->done(); });
  };
  // The global model as a reader would see it now: every shard's slice, each at its own version.
  const auto global_version = [&] {
    std::uint64_t v = servers[0]->version();
    for (const auto& sv : servers) v = std::min(v, sv->version());
    return v;
  };
  const auto assemble = [&](Eigen::Ref<Eigen::VectorXf> out) {
    for (std::uint32_t k = 0; k < K; ++k) out.segment(layout.offset(k), layout.size(k)) = servers[k]->model().parameters();
  };

  struct WorkerState {
    // One core type whatever the optimizer (optim::Any), so the choice costs no instantiation.
    std::unique_ptr<WorkerCore<M, P, optim::Any>> core;
    std::optional<Batches> batches;
    bool computing = false;
    bool blocked = false;
    Nanos blocked_since = 0;
    Nanos step_started = 0;
    double compute_s = 0;
    double wait_s = 0;
    Nanos finished_at = 0;
    std::mt19937_64 rng;
    std::mt19937_64 spread_rng;  // step_cv's draws: their own stream, so step_cv = 0 leaves `rng`'s draws as they were
    // The worker's side of the shards: splits its messages, reassembles the answers.
    std::unique_ptr<std::vector<std::pair<std::uint32_t, Message>>> outbox;
    std::unique_ptr<Sharded<detail::SimShardEndpoint>> shards;
    // Replies::at_step_end: what arrived during the running step, with its shard.
    std::vector<std::pair<std::uint32_t, Message>> held;
  };
  std::vector<WorkerState> workers(options.workers);
  for (PeerId w = 0; w < options.workers; ++w) {
    auto& ws = workers[w];
    ws.core = std::make_unique<WorkerCore<M, P, optim::Any>>(model, w, options.learning_rate, policy, options.optimizer,
                                                             options.schedule);
    ws.batches.emplace(batches_for(w));
    ws.rng.seed(options.seed * 0x9E3779B97F4A7C15ull + w + 1);
    ws.spread_rng.seed(options.seed * 0xD1B54A32D192ED03ull + w + 1);
    ws.outbox = std::make_unique<std::vector<std::pair<std::uint32_t, Message>>>();
    std::vector<detail::SimShardEndpoint> ends(K);
    for (std::uint32_t k = 0; k < K; ++k) {
      ends[k].id = w;
      ends[k].shard = k;
      ends[k].outbox = ws.outbox.get();
    }
    ShardedOptions sho;
    sho.equal_versions = shard_versions_agree<P>;
    ws.shards = std::make_unique<Sharded<detail::SimShardEndpoint>>(std::move(ends), std::vector<std::string>{},
                                                                    layout.dimension(), sho);
    if (options.codec.encoding != Encoding::dense) {
      // K > 1: each push is cut into the shards' slices (qsgd8's buckets restart at each).
      ws.core->use_codec(options.codec, options.seed * 0xC2B2AE3D27D4EB4Full + w + 1, ws.shards->push_segments());
    }
  }
  // The lognormal's sigma for a coefficient of variation cv: cv^2 = exp(sigma^2) - 1.
  const double spread_sigma = std::sqrt(std::log1p(options.compute.step_cv * options.compute.step_cv));

  // Messages in flight, by handle.
  struct InFlight {
    PeerId worker;
    std::uint32_t shard;
    bool to_server;
    Message message;
    int cpu_left = 0;      // HostCpu: the message's CPU jobs (sender, receiver) still running
    Nanos arrival = -1;    // when the network has delivered it (-1: not yet)
  };
  std::map<std::uint64_t, InFlight> flying;
  std::uint64_t next_handle = 0;
  // Each shard's NIC, one link per direction.
  std::vector<SharedLink> up, down;
  for (std::uint32_t k = 0; k < K; ++k) {
    up.emplace_back(options.network.server_nic_bytes_per_s, options.sharing);
    down.emplace_back(options.network.server_nic_bytes_per_s, options.sharing);
  }
  std::vector<std::uint64_t> up_gen(K, 0), down_gen(K, 0);
  std::vector<std::mt19937_64> jitter_rng;
  for (PeerId w = 0; w <= options.workers; ++w) jitter_rng.emplace_back(options.network.seed ^ (w + 1));

  // The shared host (HostCpu): one processor-shared resource whose amounts are
  // core-nanoseconds, each job running on at most one core.
  const bool shared_host = options.host.cores > 0;
  SharedLink cpu(shared_host ? options.host.cores * 1e9 : 0, Sharing::fair);
  std::uint64_t cpu_gen = 0;
  constexpr std::uint64_t job_step = 0, job_server = 1, job_comm = 2;  // a job's id: type << 60 | index
  const auto reschedule_cpu = [&](Nanos now) {
    ++cpu_gen;
    const Nanos t = cpu.next_finish();
    if (t != std::numeric_limits<Nanos>::max()) schedule(std::max(t, now), Kind::cpu, cpu_gen);
  };
  const auto run_on_cpu = [&](std::uint64_t type, std::uint64_t index, double seconds, Nanos now) {
    cpu.add(type << 60 | index, seconds * 1e9, 1e9, now);
    reschedule_cpu(now);
  };
  const bool comm_costs_cpu = shared_host && options.host.s_per_byte > 0;
  // Message h reaches its receiver at time t.
  const auto schedule_arrival = [&](std::uint64_t h, Nanos t) {
    schedule(t, flying.at(h).to_server ? Kind::arrive_server : Kind::arrive_worker, h);
  };

  const auto reschedule_net = [&](std::uint32_t k, bool to_server, Nanos now) {
    SharedLink& link = to_server ? up[k] : down[k];
    std::uint64_t& gen = to_server ? up_gen[k] : down_gen[k];
    ++gen;
    const Nanos t = link.next_finish();
    if (t != std::numeric_limits<Nanos>::max()) schedule(std::max(t, now), to_server ? Kind::net_up : Kind::net_down, gen, k);
  };
  const auto send = [&](PeerId worker, std::uint32_t k, bool to_server, Message&& m, Nanos now) {
    const std::uint64_t h = next_handle++;
    const double bytes = static_cast<double>(emulated_size(m));
    InFlight& f = flying.emplace(h, InFlight{worker, k, to_server, std::move(m)}).first->second;
    if (comm_costs_cpu) {
      // Its sender's and its receiver's CPU work, each a job of its own, running while
      // the bytes cross (the kernel handles packets as they stream).
      f.cpu_left = 2;
      run_on_cpu(job_comm, h, bytes * options.host.s_per_byte, now);
      run_on_cpu(job_comm, h, bytes * options.host.s_per_byte, now);
    }
    st.peak_in_flight = std::max(st.peak_in_flight, flying.size());
    const double link_bw = options.network.link(worker).bandwidth_bytes_per_s;
    (to_server ? up[k] : down[k]).add(h, bytes, link_bw > 0 ? link_bw / K : link_bw, now);
    reschedule_net(k, to_server, now);
  };
  const auto delivered = [&](std::uint32_t k, bool to_server, Nanos now) {
    std::vector<std::uint64_t> done;
    (to_server ? up[k] : down[k]).finish_until(now, done);
    for (std::uint64_t h : done) {
      const InFlight& f = flying.at(h);
      const LinkSpec& link = options.network.link(f.worker);
      Nanos delay = std::chrono::duration_cast<std::chrono::nanoseconds>(link.latency).count();
      if (link.jitter.count() > 0) {
        auto& rng = jitter_rng[to_server ? f.worker : options.workers];
        delay += static_cast<Nanos>(std::uniform_real_distribution<double>(0.0, 1.0)(rng) *
                                    static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(link.jitter).count()));
      }
      // With communication's CPU modelled, a message is delivered once both ends' CPU work is done too.
      InFlight& g = flying.at(h);
      if (g.cpu_left == 0) {
        schedule_arrival(h, now + delay);
      } else {
        g.arrival = now + delay;
      }
    }
    reschedule_net(k, to_server, now);
  };

  // Each shard's server is one thread: messages queue and each costs its processing time.
  struct ShardQueue {
    std::vector<std::uint64_t> queue;
    std::size_t head = 0;
    bool busy = false;
  };
  std::vector<ShardQueue> shard_queues(K);
  const auto server_cost = [&](const Message& m) {
    // Per float of the update, encoded or not: the server decodes to dense, then combines.
    if (const auto* p = std::get_if<msg::Push>(&m)) return to_ns(options.server_s_per_float * static_cast<double>(p->dimension()));
    return Nanos{0};
  };
  const auto drain_server = [&](std::uint32_t k, Nanos now) {
    while (auto t = servers[k]->poll_transmit()) send(t->to, k, false, std::move(t->message), now);
  };
  const auto start_server = [&](std::uint32_t k, Nanos now) {
    ShardQueue& q = shard_queues[k];
    if (q.busy || q.head == q.queue.size()) return;
    q.busy = true;
    const Nanos cost = server_cost(flying.at(q.queue[q.head]).message);
    if (shared_host) {
      run_on_cpu(job_server, k, static_cast<double>(cost) * 1e-9, now);
    } else {
      schedule(now + cost, Kind::server_free, 0, k);
    }
  };

  const auto drain_worker = [&](PeerId w, Nanos now) {
    auto& ws = workers[w];
    while (auto t = ws.core->poll_transmit()) ws.shards->send(t->to, std::move(t->message));
    for (auto& [k, m] : *ws.outbox) send(w, k, true, std::move(m), now);
    ws.outbox->clear();
  };
  Nanos stop_at = options.budget_s > 0 ? to_ns(options.budget_s) : std::numeric_limits<Nanos>::max();
  const auto out_of_budget = [&](const WorkerState& ws, Nanos now) {
    if (ws.core->report().steps >= options.steps_per_worker) return true;
    return now >= stop_at;
  };
  const auto step_cost = [&](PeerId w) {
    auto& ws = workers[w];
    double factor = w < options.compute.slowdown.size() ? options.compute.slowdown[w] : 1.0;
    if (options.compute.random_probability > 0 &&
        std::uniform_real_distribution<double>(0.0, 1.0)(ws.rng) < options.compute.random_probability) {
      factor *= options.compute.random_factor;
    }
    if (spread_sigma > 0) factor *= std::exp(spread_sigma * std::normal_distribution<double>(0.0, 1.0)(ws.spread_rng));
    return options.compute.step_s * factor;
  };
  // A worker at a step boundary: start the next step, block, or finish.
  const auto advance_worker = [&](PeerId w, Nanos now) {
    auto& ws = workers[w];
    auto& core = *ws.core;
    if (ws.computing || !core.joined() || core.finished()) return;
    if (out_of_budget(ws, now)) {
      core.finish(at(now));
      drain_worker(w, now);
      if (core.finished()) ws.finished_at = now;
      return;
    }
    if (!core.begin_step(at(now))) {
      if (!ws.blocked) {
        ws.blocked = true;
        ws.blocked_since = now;
      }
      return;
    }
    if (ws.blocked) {
      ws.blocked = false;
      ws.wait_s += static_cast<double>(now - ws.blocked_since) * 1e-9;
    }
    ws.computing = true;
    const double cost = step_cost(w);
    if (shared_host) {
      ws.step_started = now;  // compute_s counts the step's duration, as a real worker's clock does
      run_on_cpu(job_step, w, cost, now);
    } else {
      ws.compute_s += cost;
      schedule(now + to_ns(cost), Kind::step_done, w);
    }
  };

  for (PeerId w = 0; w < options.workers; ++w) {
    workers[w].core->start(at(0));
    drain_worker(w, 0);
  }
  // Evaluated as they are taken: no model copy per snapshot is kept.
  std::vector<SeriesPoint> series;
  M global = model;  // the evaluated model: the shards' slices assembled
  std::vector<std::uint64_t> last_versions(K, std::numeric_limits<std::uint64_t>::max());
  const auto snapshot = [&](Nanos now) {
    bool changed = series.empty();
    for (std::uint32_t k = 0; k < K; ++k) {
      changed = changed || servers[k]->version() != last_versions[k];
      last_versions[k] = servers[k]->version();
    }
    if (!changed) return;
    assemble(global.parameters());
    const auto t0 = RealClock::now();
    const Evaluation e = std::invoke(evaluate, std::as_const(global));
    st.evaluate_s += real_since(t0);
    SeriesPoint p;
    p.seconds = static_cast<double>(now) * 1e-9;
    p.version = global_version();
    p.steps = servers[0]->report().steps_applied;
    for (const auto& sv : servers) p.steps = std::min(p.steps, sv->report().steps_applied);
    p.train_loss = e.train_loss;
    p.test_accuracy = e.test_accuracy;
    series.push_back(p);
  };
  snapshot(0);
  schedule(to_ns(options.snapshot_interval_s), Kind::snapshot, 0);

  // Worker w takes a message from shard k.
  const auto take = [&](PeerId w, std::uint32_t k, Message&& m, Nanos now) {
    auto& ws = workers[w];
    // The adapter hands the core a whole answer once every shard has sent its part.
    ws.shards->shard(k).inbox.push_back(std::move(m));
    while (auto env = ws.shards->try_receive()) ws.core->on_message(std::move(env->message), at(now));
    drain_worker(w, now);
    if (ws.core->finished() && ws.finished_at == 0) ws.finished_at = now;
  };
  // A worker's step ends: its gradient is computed now (real math), then the core goes on.
  const auto step_done = [&](PeerId w, Nanos now) {
    auto& ws = workers[w];
    auto& core = *ws.core;
    const auto& batch = (*ws.batches)();
    double loss = std::numeric_limits<double>::quiet_NaN();
    const auto t0 = RealClock::now();
    if constexpr (psync::detail::GradientReturnsLoss<M>) {
      loss = static_cast<double>(core.model().gradient(batch, core.gradient()));
    } else {
      core.model().gradient(batch, core.gradient());
    }
    st.gradient_s += real_since(t0);
    ++st.steps;
    if (shared_host) ws.compute_s += static_cast<double>(now - ws.step_started) * 1e-9;
    core.end_step(psync::detail::samples_in(batch), loss, at(now));
    ws.computing = false;
    drain_worker(w, now);
    // Replies::at_step_end: what arrived during the step is taken now, as Worker::run does.
    for (auto& [k, m] : ws.held) take(w, k, std::move(m), now);
    ws.held.clear();
    advance_worker(w, now);
  };
  // Shard k's server has handled the message at the head of its queue.
  const auto server_free = [&](std::uint32_t k, Nanos now) {
    ShardQueue& q = shard_queues[k];
    const std::uint64_t h = q.queue[q.head++];
    auto node = flying.extract(h);
    servers[k]->on_message(node.mapped().worker, std::move(node.mapped().message), at(now));
    drain_server(k, now);
    q.busy = false;
    if (q.head == q.queue.size()) {
      q.queue.clear();
      q.head = 0;
    }
    start_server(k, now);
  };
  std::vector<std::uint64_t> cpu_done;

  Nanos now = 0;
  while (pending > 0 && !servers_done()) {
    const Event e = events.top();
    events.pop();
    ++st.events;
    if (e.kind != Kind::snapshot) --pending;
    now = e.time;
    switch (e.kind) {
      case Kind::step_done:
        step_done(static_cast<PeerId>(e.a), now);
        break;
      case Kind::cpu:
        if (e.a == cpu_gen) {
          cpu_done.clear();
          cpu.finish_until(now, cpu_done);
          for (const std::uint64_t id : cpu_done) {
            const std::uint64_t index = id & ((std::uint64_t{1} << 60) - 1);
            if (id >> 60 == job_step) step_done(static_cast<PeerId>(index), now);
            if (id >> 60 == job_server) server_free(static_cast<std::uint32_t>(index), now);
            if (id >> 60 == job_comm) {
              InFlight& f = flying.at(index);
              if (--f.cpu_left == 0 && f.arrival >= 0) schedule_arrival(index, std::max(f.arrival, now));
            }
          }
          reschedule_cpu(now);
        }
        break;
      case Kind::net_up:
        if (e.a == up_gen[e.b]) delivered(e.b, true, now);
        break;
      case Kind::net_down:
        if (e.a == down_gen[e.b]) delivered(e.b, false, now);
        break;
      case Kind::arrive_server: {
        const std::uint32_t k = flying.at(e.a).shard;
        shard_queues[k].queue.push_back(e.a);
        start_server(k, now);
        break;
      }
      case Kind::server_free:
        server_free(e.b, now);
        break;
      case Kind::arrive_worker: {
        auto node = flying.extract(e.a);
        const PeerId w = node.mapped().worker;
        auto& ws = workers[w];
        if (ws.computing && options.replies == Replies::at_step_end) {
          ws.held.emplace_back(node.mapped().shard, std::move(node.mapped().message));
          break;
        }
        take(w, node.mapped().shard, std::move(node.mapped().message), now);
        advance_worker(w, now);
        break;
      }
      case Kind::snapshot:
        snapshot(now);
        if (options.stop_when && now < stop_at && options.stop_when(std::as_const(series))) {
          // Workers blocked at a gate are finished now; computing ones at their step's end.
          stop_at = now;
          for (PeerId w = 0; w < options.workers; ++w) advance_worker(w, now);
        }
        schedule(now + to_ns(options.snapshot_interval_s), Kind::snapshot, 0);
        break;
    }
  }
  if (!servers_done()) throw Error("simulate: the run stopped with workers still live (a policy deadlocked)");
  snapshot(now);

  RunReport report;
  report.policy = policy.name();
  report.wall_s = static_cast<double>(now) * 1e-9;
  for (auto& ws : workers) {
    WorkerReport r = ws.core->report();
    r.compute_s = ws.compute_s;
    r.wait_s = ws.wait_s;
    r.wall_s = static_cast<double>(ws.finished_at) * 1e-9;
    report.workers.push_back(r);
  }
  // Shard 0's report (every shard sees the same joins, pushes and leaves), with the
  // replies and copies of every shard.
  report.server = servers[0]->finish_report();
  for (std::uint32_t k = 1; k < K; ++k) {
    const ServerReport r = servers[k]->finish_report();
    report.server.version = std::min(report.server.version, r.version);
    report.server.model_replies += r.model_replies;
    report.server.model_copies += r.model_copies;
  }
  report.server.wall_s = report.wall_s;
  report.parameters.resize(layout.dimension());
  assemble(report.parameters);
  report.series = std::move(series);
  st.real_s = real_since(real_start);
  if (stats) *stats = st;
  return report;
}

}  // namespace psync::sim
