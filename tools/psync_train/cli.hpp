#pragma once
// psync-train's command line: the configuration every role reads, and how flags and
// PSYNC_* environment variables become one.

// Boost 1.74's Asio needs <utility> first under C++20.
#include <utility>

#include <psync/compress/codec.hpp>
#include <psync/data/idx.hpp>
#include <psync/transport/tcp/auth.hpp>

#include <Eigen/Core>

#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace psync_train {

constexpr int exit_ok = 0;
constexpr int exit_failure = 1;
constexpr int exit_usage = 2;

constexpr const char* program = "psync-train";
/// The --optimizer text of a worker whose server runs the optimizer (--server-optimizer).
constexpr const char* on_server_optimizer = "server";

/// A mistake in the command line or the environment: exit code 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Config {
  /// "tcp" (default) or "mpi": under mpirun the rank picks the role (0 serves, rank r is worker r - 1).
  std::string transport = "tcp";
  std::string role;
  std::string server;  // as given, for messages
  std::string host;
  std::uint16_t port = 0;
  std::optional<std::uint32_t> id;
  /// Server: --shard I/K, this process serves slice I of K (docs/processes.md#sharded-servers).
  /// --transport mpi --shards K: K on every rank, and the index on server ranks 0..K-1 (K > 1).
  std::optional<std::uint32_t> shard_index;
  std::uint32_t shard_count = 1;
  /// Worker: --server HOST:PORT,HOST:PORT,...: one address per shard, in shard order
  /// (a single address: an unsharded server, also in `host`/`port`).
  std::vector<std::pair<std::string, std::uint16_t>> shard_servers;
  std::uint32_t workers = 1;
  bool workers_given = false;  // --workers or PSYNC_WORKERS was set (checked against the MPI ranks)
  std::string policy = "bsp";
  std::string model = "softmax";
  std::vector<Eigen::Index> hidden;  // empty: softmax regression
  std::string data = "fashion-mnist";
  std::string data_dir = psync::data::default_fashion_mnist_dir;
  std::uint64_t steps = 1000;
  float lr = 0.1f;
  /// Worker: how pushes are encoded (--codec; docs/compression.md). The server decodes any.
  psync::compress::Codec codec{};
  /// Worker: the optimizer (--optimizer, psync::optim::parse_optimizer's text) and the
  /// learning-rate schedule (--schedule, parse_schedule's; empty: constant --lr), both
  /// checked when parsed. docs/optimizers.md#choosing-at-run-time.
  /// `on_server_optimizer` ("server"): the server runs the optimizer and this worker
  /// pushes gradients (`psync::optim::OnServer`).
  std::string optimizer = "sgd";
  std::string schedule;
  /// Server: its own optimizer (--server-optimizer, parse_optimizer's text; empty: none,
  /// the server adds the workers' updates) and that optimizer's learning-rate schedule
  /// from --lr (--server-schedule; empty: constant --lr). With one, every worker must
  /// push gradients (--optimizer server); docs/optimizers.md#on-the-server.
  std::string server_optimizer;
  std::string server_schedule;
  /// True when this worker pushes gradients to a server-side optimizer.
  bool pushes_gradients() const { return optimizer == on_server_optimizer; }
  Eigen::Index batch = 64;
  std::uint64_t seed = 1;
  std::string metrics;
  std::string trace;  // --trace FILE: the run's timeline (Chrome trace-event JSON)
  std::chrono::milliseconds timeout{30000};
  std::chrono::milliseconds step_delay{0};
  bool quiet = false;
  psync::Secret secret;  // from --secret-file; empty: no authentication
  // TLS (docs/wire-protocol.md#tls): the server's certificate and key, the worker's CA.
  std::string tls_cert, tls_key, tls_ca, tls_server_name;
  // Checkpoints (server) and reconnecting (worker): docs/checkpoints.md.
  std::string checkpoint;
  std::chrono::milliseconds checkpoint_every{60000};
  std::size_t checkpoint_keep = 3;
  bool resume = false;
  std::chrono::milliseconds reconnect{0};
  // Measuring a run (docs/processes.md#time-to-target): the model's initial seed, the
  // server's accuracy series and target, the workers' time budget.
  std::optional<std::uint64_t> init_seed;  // unset: --seed
  std::chrono::milliseconds series_every{0};  // 0: no series
  Eigen::Index series_samples = 2000;
  std::optional<double> target;
  std::chrono::milliseconds seconds{0};  // worker: stop after this long (0: only --steps)
  std::uint64_t model_seed() const { return init_seed.value_or(seed); }
  /// True for a shard server (--shard I/K) or a worker of K > 1 shards.
  bool sharded() const { return shard_index.has_value() || shard_servers.size() > 1 || shard_count > 1; }
};

/// Prints --help.
void print_help(std::ostream& out);

/// Environment first, then flags over it; returns nullopt after --help. Throws UsageError.
std::optional<Config> parse(int argc, char** argv);

/// True when this psync-train was built with the MPI transport (`--transport mpi`).
bool mpi_available();

/// "host:port", with brackets around an IPv6 host.
std::string host_port(const std::string& host, std::uint16_t port);

/// The name of the server's optimizer (--server-optimizer), as its core reports it
/// ("momentum(0.9)"); empty without one.
std::string server_optimizer_name(const Config& c);

}  // namespace psync_train
