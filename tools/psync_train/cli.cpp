// psync-train's command line (see cli.hpp).

#include "cli.hpp"

#include <psync/optim/parse.hpp>
#include <psync/policies/parse.hpp>
#include <psync/transport/tcp/tls.hpp>

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <ostream>
#include <string_view>
#include <type_traits>
#include <variant>

namespace psync_train {

void print_help(std::ostream& out) {
  out << R"(psync-train: one process of a psync parameter-server cluster over TCP.

usage: psync-train --role server --server HOST:PORT --workers N [options]
       psync-train --role worker --server HOST:PORT [--id I] --workers N [options]
       psync-train --role server --server HOST:PORT --shard I/K --workers N [options]
       psync-train --role worker --server HOST:PORT,HOST:PORT,... --id I --workers N [options]
       mpirun -np 1+N psync-train --transport mpi [options]
       mpirun -np K+N psync-train --transport mpi --shards K [options]

  --transport tcp|mpi       tcp (default): the flags below say each process's
                            role and address. mpi: run under mpirun/srun; rank 0
                            serves, rank r is worker r-1, --workers is the number
                            of ranks - 1; no --role, --server, --id, TLS, secret
                            or --reconnect-ms (exit 2 if this build has no MPI) PSYNC_TRANSPORT
  --shards K                mpi only: ranks 0..K-1 each serve shard I/K of the
                            model, rank r >= K is worker r-K (--workers is the
                            ranks - K); K from 1 (default) to ranks - 1; with
                            K > 1 no --series-ms, --target or --checkpoint
                            (as --shard)                               PSYNC_SHARDS

  --role server|worker      which process this is                     PSYNC_ROLE
  --server HOST:PORT        server: address to listen on (port 0: any free port,
                            printed as "psync-train: listening on HOST:PORT");
                            worker: where the server is (K shards: K
                            addresses, comma-separated)               PSYNC_SERVER
  --shard I/K               server: serve slice I (0 <= I < K) of the model, split
                            over K shard servers (no --series-ms, --target or
                            --checkpoint); each worker names all K, in shard order,
                            as --server HOST:PORT,HOST:PORT,... with --id  PSYNC_SHARD
  --id N                    worker id, 0 <= N < workers (worker only; picks the
                            data shard). Omitted: the server assigns the lowest
                            id not yet taken, and the worker keeps it  PSYNC_ID
  --workers N               number of workers in the cluster (default 1) PSYNC_WORKERS
  --policy P                bsp | asp | ssp:S | dssp:LO:HI | osp:S | losp:S |
                            osp-uninstalled:S | losp-uninstalled:S (default bsp) PSYNC_POLICY
  --model M                 softmax | mlp:H1,H2,... (default softmax)  PSYNC_MODEL
  --data D                  fashion-mnist | synthetic (default fashion-mnist) PSYNC_DATA
  --data-dir DIR            Fashion-MNIST IDX files (default /usr/share/datasets/fashion-mnist) PSYNC_DATA_DIR
  --steps N                 local SGD steps per worker (default 1000)  PSYNC_STEPS
  --lr X                    learning rate (default 0.1); bsp/osp average each
                            round, asp/ssp/dssp add every push: divide by the
                            workers for the same step per round          PSYNC_LR
  --batch N                 minibatch size (default 64)                PSYNC_BATCH
  --codec C                 worker: how pushes are encoded: none | fp16 |
                            topk:R | qsgd8 (default none; error feedback on the
                            lossy ones; the server decodes any; sharded servers
                            each get their slice; docs/compression.md) PSYNC_CODEC
  --optimizer O             worker: sgd | momentum[:MU] | nesterov[:MU] |
                            adam[:B1,B2,EPS] (default sgd; MU 0.9, adam
                            0.9,0.999,1e-8); each worker keeps its own state.
                            server: the server runs the optimizer (its
                            --server-optimizer) and this worker pushes gradients
                            (not with losp; docs/optimizers.md)        PSYNC_OPTIMIZER
  --schedule S              worker: learning rate per local step, from --lr:
                            constant | step:GAMMA,EVERY | cosine:STEPS[,MIN_LR] |
                            warmup:N[,SCHEDULE] (e.g. warmup:100,cosine:900;
                            default constant)                          PSYNC_SCHEDULE
  --server-optimizer O      server: apply this optimizer (the --optimizer forms)
                            to the combined gradient: once per round under
                            bsp/osp, once per push under asp/ssp/dssp (MXNet's
                            set_optimizer; not with losp). Every worker then
                            needs --optimizer server (default: none, the server
                            adds the workers' updates)          PSYNC_SERVER_OPTIMIZER
  --server-schedule S       server: that optimizer's learning rate by optimizer
                            step, from --lr (the --schedule forms; default
                            constant)                           PSYNC_SERVER_SCHEDULE
  --seed N                  shards, batch order, initial model (default 1) PSYNC_SEED
  --metrics FILE            write this process's report as JSON       PSYNC_METRICS
  --trace FILE              write this process's timeline as Chrome trace-event
                            JSON (worker: each step, wait and push round trip;
                            server: each push applied; opens in ui.perfetto.dev)
                                                                       PSYNC_TRACE
  --timeout-ms N            deadline of every wait (default 30000)     PSYNC_TIMEOUT_MS
  --step-delay-ms N         sleep N ms before each step (emulates slow compute) PSYNC_STEP_DELAY_MS
  --quiet                   no progress lines or event log             PSYNC_QUIET=1
  --secret-file FILE        the cluster's shared secret (mode 600): the server
                            admits only workers that prove it at join (HMAC-SHA256
                            over a random challenge); workers prove it  PSYNC_SECRET_FILE
  --tls-cert FILE           server: TLS on every connection, with this PEM
                            certificate chain (needs --tls-key)        PSYNC_TLS_CERT
  --tls-key FILE            server: the certificate's PEM private key  PSYNC_TLS_KEY
  --tls-ca FILE             worker: TLS, accepting only a server whose certificate
                            chains to a CA in this PEM file and names the
                            --server host                              PSYNC_TLS_CA
  --tls-server-name NAME    worker: the name the server's certificate must carry,
                            if not the --server host                   PSYNC_TLS_SERVER_NAME
  --checkpoint DIR          server: write checkpoints into DIR         PSYNC_CHECKPOINT
  --checkpoint-every S      server: at most every S seconds while training, and
                            at the end (default 60; 0: only at the end) PSYNC_CHECKPOINT_EVERY
  --checkpoint-keep N       server: keep the newest N (default 3)      PSYNC_CHECKPOINT_KEEP
  --resume                  server: start from the newest valid checkpoint in the
                            --checkpoint DIR (none: error, exit 1)     PSYNC_RESUME=1
  --reconnect-ms N          worker: when the server is lost, reconnect with
                            backoff for up to N ms, rejoin and go on (default 0: off) PSYNC_RECONNECT_MS
  --init-seed N             seed of the initial model (default: --seed)  PSYNC_INIT_SEED
  --seconds S               worker: also stop S seconds after the first step
                            (default 0: --steps only)                   PSYNC_SECONDS
  --series-ms N             server: copy the model every N ms; after the run,
                            evaluate each copy and write the accuracy series
                            to --metrics (default 0: off)                PSYNC_SERIES_MS
  --series-samples N        server: test samples each series point is
                            evaluated on, the first N (default 2000)     PSYNC_SERIES_SAMPLES
  --target ACC              server: report the time to this test accuracy: the
                            first series point where the mean of the last 3
                            reached it, in seconds from the start of training
                            (needs --series-ms)                          PSYNC_TARGET
  --help                    this text

Server and workers must agree on --workers, --policy, --model, --data and --seed.
Flags win over environment variables; "--flag=value" works too.
Exit codes: 0 success, 1 runtime failure, 2 usage error.
)";
}

namespace {

// ---- parsing -------------------------------------------------------------

std::string describe(std::string_view name, std::string_view value) {
  return std::string(name) + " '" + std::string(value) + "'";
}

template <class Int>
Int parse_integer(std::string_view source, std::string_view text, Int min, Int max) {
  Int value{};
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || value < min || value > max) {
    throw UsageError(describe(source, text) + ": expected an integer from " + std::to_string(min) + " to " +
                     std::to_string(max));
  }
  return value;
}

float parse_positive_float(std::string_view source, std::string_view text) {
  const std::string s(text);
  char* end = nullptr;
  errno = 0;
  const float value = std::strtof(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || errno != 0 || !std::isfinite(value) || !(value > 0)) {
    throw UsageError(describe(source, text) + ": expected a positive finite number");
  }
  return value;
}

/// A duration in seconds, decimals allowed, from 0 to `max`, as milliseconds; the error
/// says what was `expected`.
std::chrono::milliseconds parse_seconds(std::string_view source, std::string_view text, double max,
                                        const std::string& expected) {
  const std::string s(text);
  char* end = nullptr;
  const double seconds = std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || !(seconds >= 0) || seconds > max) {
    throw UsageError(describe(source, text) + ": expected " + expected);
  }
  return std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(seconds * 1000)));
}

/// "host:port" or "[v6]:port"; `allow_zero` for the server's listening port.
void parse_address(std::string_view source, std::string_view text, bool allow_zero, Config& c) {
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0) {
    throw UsageError(describe(source, text) + ": expected HOST:PORT, e.g. 127.0.0.1:7000");
  }
  std::string_view host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty()) throw UsageError(describe(source, text) + ": the host is empty");
  c.host = std::string(host);
  c.port = parse_integer<std::uint16_t>(std::string(source) + " port", text.substr(colon + 1),
                                        allow_zero ? 0 : 1, 65535);
  c.server = std::string(text);
}

/// --shard I/K: 0 <= I < K, K from 1 to 1024.
void parse_shard(std::string_view source, std::string_view text, Config& c) {
  const auto slash = text.find('/');
  if (slash == std::string_view::npos) {
    throw UsageError(describe(source, text) + ": expected I/K, this server's shard index and the shard count (e.g. 0/2)");
  }
  const auto count = parse_integer<std::uint32_t>(std::string(source) + " shard count", text.substr(slash + 1), 1, 1024);
  const auto index = parse_integer<std::uint32_t>(std::string(source) + " shard index", text.substr(0, slash), 0,
                                                  count - 1);
  c.shard_index = index;
  c.shard_count = count;
}

/// A worker's --server: one HOST:PORT, or a comma list of them (one per shard, in shard order).
void parse_worker_servers(std::string_view source, std::string_view text, Config& c) {
  std::string_view rest = text;
  while (true) {
    const auto comma = rest.find(',');
    Config one;
    parse_address(source, rest.substr(0, comma), /*allow_zero=*/false, one);
    c.shard_servers.emplace_back(one.host, one.port);
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  c.host = c.shard_servers.front().first;
  c.port = c.shard_servers.front().second;
  c.server = std::string(text);
  if (c.shard_servers.size() > 1024) throw UsageError(describe(source, text) + ": more than 1024 shard servers");
}

std::vector<Eigen::Index> parse_model(std::string_view source, std::string_view text) {
  if (text == "softmax") return {};
  if (text.substr(0, 4) != "mlp:" || text.size() == 4) {
    throw UsageError(describe(source, text) + ": expected softmax or mlp:H1,H2,... (hidden widths)");
  }
  std::vector<Eigen::Index> hidden;
  std::string_view rest = text.substr(4);
  while (true) {
    const auto comma = rest.find(',');
    hidden.push_back(parse_integer<Eigen::Index>(std::string(source) + " hidden width", rest.substr(0, comma), 1,
                                                 1 << 16));
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  return hidden;
}

bool parse_bool(std::string_view source, std::string_view text) {
  if (text == "1" || text == "true" || text == "yes" || text == "on") return true;
  if (text == "0" || text == "false" || text == "no" || text == "off" || text.empty()) return false;
  throw UsageError(describe(source, text) + ": expected 1/0, true/false, yes/no or on/off");
}

/// --checkpoint, --checkpoint-every, --checkpoint-keep, --resume, --reconnect-ms.
template <class Get>
void parse_resilience(const Get& get, Config& c) {
  if (const auto* v = get("--checkpoint")) {
    if (v->value.empty()) throw UsageError(v->source + " is empty");
    c.checkpoint = v->value;
  }
  if (const auto* v = get("--checkpoint-every")) {
    c.checkpoint_every = parse_seconds(v->source, v->value, 30 * 86400.0, "seconds, 0 or more (e.g. 0.5)");
  }
  if (const auto* v = get("--checkpoint-keep")) c.checkpoint_keep = parse_integer<std::size_t>(v->source, v->value, 1, 1000);
  if (const auto* v = get("--resume")) c.resume = v->value == "1";
  if (c.resume && c.checkpoint.empty()) throw UsageError("--resume needs --checkpoint DIR (where the checkpoints are)");
  if (const auto* v = get("--reconnect-ms")) {
    c.reconnect = std::chrono::milliseconds(parse_integer<std::int64_t>(v->source, v->value, 0, 24LL * 3600 * 1000));
  }
}

// TLS files: the server's certificate and key, the worker's CA (docs/wire-protocol.md#tls).
// A flag of the other role is a usage error, not silently ignored; the files are read
// (and checked) when the endpoint is made, which names any that cannot be used.
template <class Get>
void parse_tls(const Get& get, bool is_server, Config& c) {
  auto file = [&](const char* flag, bool server_flag) -> std::string {
    const auto* v = get(flag);
    if (!v) return {};
    if (v->value.empty()) throw UsageError(v->source + " is empty");
    if (server_flag != is_server) {
      throw UsageError(v->source + " is a " + (server_flag ? "server" : "worker") + " option (this is a " +
                       (is_server ? "server" : "worker") + ")");
    }
    return v->value;
  };
  c.tls_cert = file("--tls-cert", true);
  c.tls_key = file("--tls-key", true);
  c.tls_ca = file("--tls-ca", false);
  if (const auto* v = get("--tls-server-name")) {
    if (is_server) throw UsageError(v->source + " is a worker option (this is a server)");
    if (v->value.empty()) throw UsageError(v->source + " is empty");
    if (c.tls_ca.empty()) throw UsageError(v->source + " needs --tls-ca (the CA the server's certificate must chain to)");
    c.tls_server_name = v->value;
  }
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    throw UsageError(c.tls_cert.empty() ? "--tls-key needs --tls-cert (the certificate it belongs to)"
                                        : "--tls-cert needs --tls-key (its private key)");
  }
  if ((!c.tls_cert.empty() || !c.tls_ca.empty()) && !psync::tcp_tls_available) {
    throw UsageError("TLS flags given, but this psync-train was built without OpenSSL's libssl");
  }
}

// The accuracy series, the target, the time budget and the initial model's seed:
// what a run is measured with (docs/processes.md#time-to-target).
// `is_server` empty: the role is not known yet (--transport mpi, where every rank gets
// the same flags and the rank picks the role), so each role's flags are accepted.
template <class Get>
void parse_measurement(const Get& get, std::optional<bool> is_server, Config& c) {
  const auto server_only = [&](const char* flag) {
    const auto* v = get(flag);
    if (v && is_server == false) throw UsageError(v->source + " is a server option (this is a worker)");
    return v;
  };
  if (const auto* v = get("--init-seed")) {
    c.init_seed = parse_integer<std::uint64_t>(v->source, v->value, 0, std::numeric_limits<std::uint64_t>::max());
  }
  if (const auto* v = get("--seconds")) {
    if (is_server == true) throw UsageError(v->source + " is a worker option (this is a server)");
    c.seconds = parse_seconds(v->source, v->value, 7 * 86400.0, "seconds from 0 to " + std::to_string(7 * 86400.0));
  }
  if (const auto* v = server_only("--series-ms")) {
    c.series_every = std::chrono::milliseconds(parse_integer<std::int64_t>(v->source, v->value, 0, 3600 * 1000));
  }
  if (const auto* v = server_only("--series-samples")) {
    c.series_samples = parse_integer<Eigen::Index>(v->source, v->value, 1, 1 << 24);
  }
  if (const auto* v = server_only("--target")) {
    const std::string s = v->value;
    char* end = nullptr;
    const double t = std::strtod(s.c_str(), &end);
    if (s.empty() || end != s.c_str() + s.size() || !(t > 0) || !(t < 1)) {
      throw UsageError(describe(v->source, v->value) + ": expected an accuracy between 0 and 1 (e.g. 0.85)");
    }
    if (c.series_every.count() == 0) throw UsageError(v->source + " needs --series-ms (the series it is read from)");
    c.target = t;
  }
}

struct OptionSpec {
  const char* flag;
  const char* env;
  bool takes_value;
};

constexpr OptionSpec option_specs[] = {
    {"--transport", "PSYNC_TRANSPORT", true},
    {"--role", "PSYNC_ROLE", true},         {"--server", "PSYNC_SERVER", true},
    {"--shard", "PSYNC_SHARD", true},       {"--shards", "PSYNC_SHARDS", true},
    {"--id", "PSYNC_ID", true},             {"--workers", "PSYNC_WORKERS", true},
    {"--policy", "PSYNC_POLICY", true},     {"--model", "PSYNC_MODEL", true},
    {"--data", "PSYNC_DATA", true},         {"--data-dir", "PSYNC_DATA_DIR", true},
    {"--steps", "PSYNC_STEPS", true},       {"--lr", "PSYNC_LR", true},
    {"--batch", "PSYNC_BATCH", true},       {"--seed", "PSYNC_SEED", true},
    {"--codec", "PSYNC_CODEC", true},
    {"--optimizer", "PSYNC_OPTIMIZER", true}, {"--schedule", "PSYNC_SCHEDULE", true},
    {"--server-optimizer", "PSYNC_SERVER_OPTIMIZER", true}, {"--server-schedule", "PSYNC_SERVER_SCHEDULE", true},
    {"--metrics", "PSYNC_METRICS", true},   {"--trace", "PSYNC_TRACE", true},
    {"--timeout-ms", "PSYNC_TIMEOUT_MS", true},
    {"--step-delay-ms", "PSYNC_STEP_DELAY_MS", true}, {"--quiet", "PSYNC_QUIET", false},
    {"--secret-file", "PSYNC_SECRET_FILE", true},
    {"--tls-cert", "PSYNC_TLS_CERT", true},         {"--tls-key", "PSYNC_TLS_KEY", true},
    {"--tls-ca", "PSYNC_TLS_CA", true},             {"--tls-server-name", "PSYNC_TLS_SERVER_NAME", true},
    {"--checkpoint", "PSYNC_CHECKPOINT", true},     {"--checkpoint-every", "PSYNC_CHECKPOINT_EVERY", true},
    {"--checkpoint-keep", "PSYNC_CHECKPOINT_KEEP", true}, {"--resume", "PSYNC_RESUME", false},
    {"--reconnect-ms", "PSYNC_RECONNECT_MS", true},
    {"--init-seed", "PSYNC_INIT_SEED", true},       {"--seconds", "PSYNC_SECONDS", true},
    {"--series-ms", "PSYNC_SERIES_MS", true},       {"--series-samples", "PSYNC_SERIES_SAMPLES", true},
    {"--target", "PSYNC_TARGET", true},
};

struct RawValue {
  std::string value;
  std::string source;  // "--steps" or "PSYNC_STEPS", for messages
};

/// `parse(v.value)`, a library parser's `ConfigError` turned into a usage error that
/// names the flag (or variable), with `hint` after the library's message.
template <class F>
auto parsed(const RawValue& v, F&& parse, const std::string& hint = "") {
  try {
    return parse(v.value);
  } catch (const psync::ConfigError& e) {
    throw UsageError(v.source + ": " + e.what() + hint);
  }
}

/// The flags both transports share (after the role and address are known).
// --server-optimizer and --server-schedule (the server's own optimizer, whose workers
// push gradients: --optimizer server), checked against each other and the policy.
// Under --transport mpi every rank gets the same flags: the server ranks take the
// optimizer and the worker ranks push gradients to it.
template <class Get>
void parse_server_optimizer(const Get& get, bool is_server, Config& c) {
  const bool mpi = c.transport == "mpi";
  for (const char* flag : {"--server-optimizer", "--server-schedule"}) {
    if (const auto* v = get(flag); v && !is_server && !mpi) {
      throw UsageError(v->source + " is a server option (this is a worker: give it --optimizer " +
                       on_server_optimizer + " to push gradients to the server's optimizer)");
    }
  }
  if (const auto* v = get("--server-optimizer")) {
    (void)parsed(*v, [](const std::string& t) { return psync::optim::parse_optimizer(t); });
    c.server_optimizer = v->value;
  }
  if (const auto* v = get("--server-schedule")) {
    if (c.server_optimizer.empty()) throw UsageError(v->source + " needs --server-optimizer (the optimizer it sets the rate of)");
    (void)parsed(*v, [&](const std::string& t) { return psync::optim::parse_schedule(t, c.lr); });
    c.server_schedule = v->value;
  }
  if (mpi && !c.server_optimizer.empty()) {
    if (const auto* v = get("--optimizer"); v && v->value != on_server_optimizer) {
      throw UsageError(v->source + " '" + v->value + "' with --server-optimizer: under --transport mpi the worker "
                       "ranks push gradients to the server's optimizer (drop " + v->source + ")");
    }
    c.optimizer = on_server_optimizer;
  }
  // LOSP installs global + the worker's own unsent updates, which a worker pushing
  // gradients to a server-side optimizer does not know (ServerCore refuses it too).
  const bool compensated = std::visit(
      [](const auto& policy) {
        return !psync::installs_global<std::decay_t<decltype(policy)>>;
      },
      psync::parse_policy(c.policy));
  if ((c.pushes_gradients() || !c.server_optimizer.empty()) && compensated) {
    throw UsageError("--policy " + c.policy + " (LOSP's local compensation) cannot run with a server-side optimizer (" +
                     (c.pushes_gradients() && c.server_optimizer.empty() ? "--optimizer " + std::string(on_server_optimizer)
                                                                          : "--server-optimizer " + c.server_optimizer) +
                     "): run the optimizer on the workers (--optimizer)");
  }
}

template <class Get>
void parse_common(const Get& get, bool is_server, Config& c) {
  if (const auto* v = get("--workers")) {
    c.workers = parse_integer<std::uint32_t>(v->source, v->value, 1, 65535);
    c.workers_given = true;
  }
  if (const auto* v = get("--id")) c.id = parse_integer<std::uint32_t>(v->source, v->value, 0, 65534);
  if (!is_server) {
    // Without --id the server assigns one at join (worker_role.cpp).
    if (c.id && *c.id >= c.workers) {
      throw UsageError("--id " + std::to_string(*c.id) + " is not below --workers " + std::to_string(c.workers));
    }
  }
  if (const auto* v = get("--policy")) {
    (void)parsed(*v, [](const std::string& t) { return psync::parse_policy(t); });
    c.policy = v->value;
  }
  if (const auto* v = get("--model")) {
    c.hidden = parse_model(v->source, v->value);
    c.model = v->value;
  }
  if (const auto* v = get("--data")) {
    if (v->value != "fashion-mnist" && v->value != "synthetic") {
      throw UsageError(describe(v->source, v->value) + ": expected fashion-mnist or synthetic");
    }
    c.data = v->value;
  }
  if (const auto* v = get("--data-dir")) {
    if (v->value.empty()) throw UsageError(v->source + " is empty");
    c.data_dir = v->value;
  }
  if (const auto* v = get("--steps")) {
    c.steps = parse_integer<std::uint64_t>(v->source, v->value, 1, std::numeric_limits<std::uint32_t>::max());
  }
  if (const auto* v = get("--lr")) c.lr = parse_positive_float(v->source, v->value);
  if (const auto* v = get("--batch")) c.batch = parse_integer<Eigen::Index>(v->source, v->value, 1, 1 << 20);
  if (const auto* v = get("--codec")) {
    c.codec = parsed(*v, [](const std::string& t) { return psync::compress::parse_codec(t); });
  }
  // A server's own optimizer is --server-optimizer: a server given a worker's flag is
  // told rather than left to add updates as if it had taken it.
  for (const char* flag : {"--optimizer", "--schedule"}) {
    if (const auto* v = get(flag); v && is_server) {
      throw UsageError(v->source + " is a worker option (this is a server: for an optimizer on the server, give it "
                       "--server-optimizer and its workers --optimizer server)");
    }
  }
  if (const auto* v = get("--optimizer")) {
    if (v->value != on_server_optimizer) {
      (void)parsed(*v, [](const std::string& t) { return psync::optim::parse_optimizer(t); },
                   std::string(" (or '") + on_server_optimizer + "': the server runs the optimizer)");
    }
    c.optimizer = v->value;
  }
  if (const auto* v = get("--schedule")) {
    (void)parsed(*v, [&](const std::string& t) { return psync::optim::parse_schedule(t, c.lr); });
    c.schedule = v->value;
  }
  parse_server_optimizer(get, is_server, c);
  if (const auto* v = get("--seed")) {
    c.seed = parse_integer<std::uint64_t>(v->source, v->value, 0, std::numeric_limits<std::uint64_t>::max());
  }
  if (const auto* v = get("--metrics")) {
    if (v->value.empty()) throw UsageError(v->source + " is empty");
    c.metrics = v->value;
  }
  if (const auto* v = get("--trace")) {
    if (v->value.empty()) throw UsageError(v->source + " is empty");
    c.trace = v->value;
  }
  if (const auto* v = get("--timeout-ms")) {
    c.timeout = std::chrono::milliseconds(parse_integer<std::int64_t>(v->source, v->value, 1, 24LL * 3600 * 1000));
  }
  if (const auto* v = get("--step-delay-ms")) {
    c.step_delay = std::chrono::milliseconds(parse_integer<std::int64_t>(v->source, v->value, 0, 60000));
  }
  if (const auto* v = get("--quiet")) c.quiet = v->value == "1";
  if (const auto* v = get("--secret-file")) {
    if (v->value.empty()) throw UsageError(v->source + " is empty");
    c.secret = parsed(*v, [](const std::string& t) { return psync::read_secret_file(t); });
  }
}

/// --transport mpi: the rank picks the role (main.cpp, after MPI_Init), so the flags that
/// name a role, an address or TCP's security and reconnection are refused here.
template <class Get>
std::optional<Config> parse_mpi(const Get& get, Config& c) {
  for (const char* flag : {"--role", "--server", "--shard", "--id", "--secret-file", "--tls-cert", "--tls-key", "--tls-ca",
                           "--tls-server-name", "--reconnect-ms"}) {
    if (const auto* v = get(flag)) {
      throw UsageError(v->source + " does not apply to --transport mpi (rank 0 serves, rank r is worker r-1, or "
                       "with --shards K ranks 0..K-1 serve; MPI carries the messages)");
    }
  }
  if (const auto* v = get("--shards")) {
    // The upper bound against the ranks is checked once MPI has started (mpi_launch.cpp).
    c.shard_count = parse_integer<std::uint32_t>(v->source, v->value, 1, 1024);
  }
  if (!mpi_available()) {
    throw UsageError("--transport mpi: this psync-train was built without MPI (configure with MPI installed, "
                     "e.g. Debian's libopenmpi-dev, or -DPSYNC_WITH_MPI=ON)");
  }
  c.server = "MPI rank 0";
  parse_common(get, /*is_server=*/false, c);
  parse_resilience(get, c);
  parse_measurement(get, std::nullopt, c);
  if (c.shard_count > 1) {
    // As for --shard: a shard rank holds a slice, so it cannot evaluate or checkpoint the model.
    const std::pair<const char*, bool> refused[] = {{"--series-ms", c.series_every.count() > 0},
                                                    {"--target", c.target.has_value()},
                                                    {"--checkpoint", !c.checkpoint.empty()},
                                                    {"--resume", c.resume}};
    for (const auto& [flag, set] : refused) {
      if (set) throw UsageError(get(flag)->source + " does not apply to sharded servers (--shards " +
                                std::to_string(c.shard_count) + ")");
    }
  }
  return c;
}

}  // namespace

/// Environment first, then flags over it; returns nullopt after --help.
std::optional<Config> parse(int argc, char** argv) {
  std::map<std::string, RawValue> raw;  // keyed by flag
  for (const auto& spec : option_specs) {
    if (const char* v = std::getenv(spec.env)) {
      raw[spec.flag] = RawValue{spec.takes_value ? v : (parse_bool(spec.env, v) ? "1" : "0"), spec.env};
    }
  }
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") return std::nullopt;
    std::string_view name = arg;
    std::optional<std::string_view> inline_value;
    if (const auto eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
      name = arg.substr(0, eq);
      inline_value = arg.substr(eq + 1);
    }
    const OptionSpec* spec = nullptr;
    for (const auto& s : option_specs) {
      if (name == s.flag) spec = &s;
    }
    if (!spec) throw UsageError("unknown argument '" + std::string(arg) + "' (see --help)");
    if (!spec->takes_value) {
      raw[spec->flag] = RawValue{inline_value ? (parse_bool(spec->flag, *inline_value) ? "1" : "0") : "1", spec->flag};
      continue;
    }
    if (inline_value) {
      raw[spec->flag] = RawValue{std::string(*inline_value), spec->flag};
    } else {
      if (i + 1 >= argc) throw UsageError(std::string(spec->flag) + " needs a value (see --help)");
      raw[spec->flag] = RawValue{argv[++i], spec->flag};
    }
  }

  Config c;
  const auto get = [&](const char* flag) -> const RawValue* {
    auto it = raw.find(flag);
    return it == raw.end() ? nullptr : &it->second;
  };
  if (const auto* v = get("--transport")) {
    if (v->value != "tcp" && v->value != "mpi") throw UsageError(describe(v->source, v->value) + ": expected tcp or mpi");
    c.transport = v->value;
  }
  if (c.transport == "mpi") return parse_mpi(get, c);
  if (const auto* v = get("--shards")) {
    throw UsageError(v->source + " applies to --transport mpi only (over TCP each shard server gets --shard I/K "
                     "and each worker --server HOST:PORT,HOST:PORT,...)");
  }
  const RawValue* role = get("--role");
  if (!role) throw UsageError("missing --role (server or worker; or PSYNC_ROLE)");
  if (role->value != "server" && role->value != "worker") {
    throw UsageError(describe(role->source, role->value) + ": expected server or worker");
  }
  c.role = role->value;
  const bool is_server = c.role == "server";
  const RawValue* server = get("--server");
  if (!server) {
    throw UsageError(is_server ? "missing --server HOST:PORT (the address to listen on; or PSYNC_SERVER)"
                               : "missing --server HOST:PORT (where the server listens; or PSYNC_SERVER)");
  }
  if (is_server) {
    parse_address(server->source, server->value, is_server, c);
  } else {
    parse_worker_servers(server->source, server->value, c);
  }
  parse_common(get, is_server, c);
  parse_tls(get, is_server, c);
  parse_resilience(get, c);
  parse_measurement(get, is_server, c);
  if (const auto* v = get("--shard")) {
    if (!is_server) {
      throw UsageError(v->source + " is a server option (a worker names every shard in --server HOST:PORT,HOST:PORT,...)");
    }
    parse_shard(v->source, v->value, c);
    // A shard holds a slice: it cannot evaluate the model, and resuming needs workers that reconnect.
    const std::pair<const char*, bool> refused[] = {{"--series-ms", c.series_every.count() > 0},
                                                    {"--target", c.target.has_value()},
                                                    {"--checkpoint", !c.checkpoint.empty()},
                                                    {"--resume", c.resume}};
    for (const auto& [flag, set] : refused) {
      if (set) throw UsageError(get(flag)->source + " does not apply to a shard server (--shard)");
    }
  }
  if (c.shard_servers.size() > 1) {
    if (!c.id) throw UsageError("a worker of sharded servers needs --id (each shard would assign its own)");
    if (c.reconnect.count() > 0) throw UsageError("--reconnect-ms is not supported with sharded servers");
  }
  if (is_server && c.host == "localhost") c.host = "127.0.0.1";  // the listener needs a numeric address
  return c;
}

bool mpi_available() {
#ifdef PSYNC_TRAIN_WITH_MPI
  return true;
#else
  return false;
#endif
}

std::string server_optimizer_name(const Config& c) {
  return c.server_optimizer.empty() ? std::string() : psync::optim::parse_optimizer(c.server_optimizer).name();
}

std::string host_port(const std::string& host, std::uint16_t port) {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}
}  // namespace psync_train
