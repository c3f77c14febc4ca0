// psync-train: one process of a psync cluster over TCP, either the parameter
// server or one worker. Start one server and N workers (on one machine or many,
// see scripts/launch_local.sh and docs/processes.md); every flag also has a
// PSYNC_* environment variable, and flags win.
//
// Exit codes: 0 success, 1 runtime failure (lost server, timeout, refused join,
// bad data file, interrupted), 2 usage error (the message says which flag).

// Boost 1.74's Asio needs <utility> first under C++20.
#include <utility>

#include <psync/detail/json.hpp>
#include <psync/psync.hpp>
#include <psync/transport/tcp.hpp>

#include <Eigen/Core>

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

constexpr int exit_ok = 0;
constexpr int exit_failure = 1;
constexpr int exit_usage = 2;

constexpr const char* program = "psync-train";

/// A mistake in the command line or the environment: exit code 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The synthetic task is fixed (only --seed's shards, batch order and initial model
// vary), so every process of a cluster builds the same data without exchanging it.
constexpr Eigen::Index synthetic_samples = 6000;
constexpr Eigen::Index synthetic_test = 1000;
constexpr Eigen::Index synthetic_dimension = 20;
constexpr int synthetic_classes = 4;
constexpr float synthetic_noise = 1.0f;
constexpr std::uint64_t synthetic_seed = 11;

/// Test samples the server evaluates for each progress line.
constexpr Eigen::Index progress_samples = 1000;

struct Config {
  std::string role;
  std::string server;  // as given, for messages
  std::string host;
  std::uint16_t port = 0;
  std::optional<std::uint32_t> id;
  std::uint32_t workers = 1;
  std::string policy = "bsp";
  std::string model = "softmax";
  std::vector<Eigen::Index> hidden;  // empty: softmax regression
  std::string data = "fashion-mnist";
  std::string data_dir = psync::data::default_fashion_mnist_dir;
  std::uint64_t steps = 1000;
  float lr = 0.1f;
  Eigen::Index batch = 64;
  std::uint64_t seed = 1;
  std::string metrics;
  std::chrono::milliseconds timeout{30000};
  std::chrono::milliseconds step_delay{0};
  bool quiet = false;
  psync::Secret secret;  // from --secret-file; empty: no authentication
  // Checkpoints (server) and reconnecting (worker): docs/checkpoints.md.
  std::string checkpoint;
  std::chrono::milliseconds checkpoint_every{60000};
  std::size_t checkpoint_keep = 3;
  bool resume = false;
  std::chrono::milliseconds reconnect{0};
};

void print_help(std::ostream& out) {
  out << R"(psync-train: one process of a psync parameter-server cluster over TCP.

usage: psync-train --role server --server HOST:PORT --workers N [options]
       psync-train --role worker --server HOST:PORT --id I --workers N [options]

  --role server|worker      which process this is                     PSYNC_ROLE
  --server HOST:PORT        server: address to listen on (port 0: any free port,
                            printed as "psync-train: listening on HOST:PORT");
                            worker: where the server is               PSYNC_SERVER
  --id N                    worker id, 0 <= N < workers (worker only)  PSYNC_ID
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
  --seed N                  shards, batch order, initial model (default 1) PSYNC_SEED
  --metrics FILE            write this process's report as JSON       PSYNC_METRICS
  --timeout-ms N            deadline of every wait (default 30000)     PSYNC_TIMEOUT_MS
  --step-delay-ms N         sleep N ms before each step (emulates slow compute) PSYNC_STEP_DELAY_MS
  --quiet                   no progress lines or event log             PSYNC_QUIET=1
  --secret-file FILE        the cluster's shared secret (mode 600): the server
                            admits only workers that prove it at join (HMAC-SHA256
                            over a random challenge); workers prove it  PSYNC_SECRET_FILE
  --checkpoint DIR          server: write checkpoints into DIR         PSYNC_CHECKPOINT
  --checkpoint-every S      server: at most every S seconds while training, and
                            at the end (default 60; 0: only at the end) PSYNC_CHECKPOINT_EVERY
  --checkpoint-keep N       server: keep the newest N (default 3)      PSYNC_CHECKPOINT_KEEP
  --resume                  server: start from the newest valid checkpoint in the
                            --checkpoint DIR (none: error, exit 1)     PSYNC_RESUME=1
  --reconnect-ms N          worker: when the server is lost, reconnect with
                            backoff for up to N ms, rejoin and go on (default 0: off) PSYNC_RECONNECT_MS
  --help                    this text

Server and workers must agree on --workers, --policy, --model, --data and --seed.
Flags win over environment variables; "--flag=value" works too.
Exit codes: 0 success, 1 runtime failure, 2 usage error.
)";
}

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
    const std::string s = v->value;
    char* end = nullptr;
    const double seconds = std::strtod(s.c_str(), &end);
    if (s.empty() || end != s.c_str() + s.size() || !(seconds >= 0) || seconds > 30 * 86400.0) {
      throw UsageError(describe(v->source, v->value) + ": expected seconds, 0 or more (e.g. 0.5)");
    }
    c.checkpoint_every = std::chrono::milliseconds(static_cast<std::int64_t>(std::llround(seconds * 1000)));
  }
  if (const auto* v = get("--checkpoint-keep")) c.checkpoint_keep = parse_integer<std::size_t>(v->source, v->value, 1, 1000);
  if (const auto* v = get("--resume")) c.resume = v->value == "1";
  if (c.resume && c.checkpoint.empty()) throw UsageError("--resume needs --checkpoint DIR (where the checkpoints are)");
  if (const auto* v = get("--reconnect-ms")) {
    c.reconnect = std::chrono::milliseconds(parse_integer<std::int64_t>(v->source, v->value, 0, 24LL * 3600 * 1000));
  }
}

struct OptionSpec {
  const char* flag;
  const char* env;
  bool takes_value;
};

constexpr OptionSpec option_specs[] = {
    {"--role", "PSYNC_ROLE", true},         {"--server", "PSYNC_SERVER", true},
    {"--id", "PSYNC_ID", true},             {"--workers", "PSYNC_WORKERS", true},
    {"--policy", "PSYNC_POLICY", true},     {"--model", "PSYNC_MODEL", true},
    {"--data", "PSYNC_DATA", true},         {"--data-dir", "PSYNC_DATA_DIR", true},
    {"--steps", "PSYNC_STEPS", true},       {"--lr", "PSYNC_LR", true},
    {"--batch", "PSYNC_BATCH", true},       {"--seed", "PSYNC_SEED", true},
    {"--metrics", "PSYNC_METRICS", true},   {"--timeout-ms", "PSYNC_TIMEOUT_MS", true},
    {"--step-delay-ms", "PSYNC_STEP_DELAY_MS", true}, {"--quiet", "PSYNC_QUIET", false},
    {"--secret-file", "PSYNC_SECRET_FILE", true},
    {"--checkpoint", "PSYNC_CHECKPOINT", true},     {"--checkpoint-every", "PSYNC_CHECKPOINT_EVERY", true},
    {"--checkpoint-keep", "PSYNC_CHECKPOINT_KEEP", true}, {"--resume", "PSYNC_RESUME", false},
    {"--reconnect-ms", "PSYNC_RECONNECT_MS", true},
};

struct RawValue {
  std::string value;
  std::string source;  // "--steps" or "PSYNC_STEPS", for messages
};

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
  parse_address(server->source, server->value, is_server, c);
  if (const auto* v = get("--workers")) c.workers = parse_integer<std::uint32_t>(v->source, v->value, 1, 65535);
  if (const auto* v = get("--id")) c.id = parse_integer<std::uint32_t>(v->source, v->value, 0, 65534);
  if (!is_server) {
    if (!c.id) throw UsageError("missing --id (this worker's id, 0 to workers-1; or PSYNC_ID)");
    if (*c.id >= c.workers) {
      throw UsageError("--id " + std::to_string(*c.id) + " is not below --workers " + std::to_string(c.workers));
    }
  }
  if (const auto* v = get("--policy")) {
    try {
      (void)psync::parse_policy(v->value);
    } catch (const psync::ConfigError& e) {
      throw UsageError(v->source + ": " + e.what());
    }
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
  if (const auto* v = get("--seed")) {
    c.seed = parse_integer<std::uint64_t>(v->source, v->value, 0, std::numeric_limits<std::uint64_t>::max());
  }
  if (const auto* v = get("--metrics")) {
    if (v->value.empty()) throw UsageError(v->source + " is empty");
    c.metrics = v->value;
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
    try {
      c.secret = psync::read_secret_file(v->value);
    } catch (const psync::ConfigError& e) {
      throw UsageError(v->source + ": " + e.what());
    }
  }
  parse_resilience(get, c);
  if (is_server && c.host == "localhost") c.host = "127.0.0.1";  // the listener needs a numeric address
  return c;
}

std::string host_port(const std::string& host, std::uint16_t port) {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

// ---- JSON ----------------------------------------------------------------

using psync::detail::json_number;
using psync::detail::json_string;

std::string float_text(float v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.7g", static_cast<double>(v));  // a float's own precision
  return buf;
}

/// Writes `text` to `path` through a temporary file, so a reader never sees half of it.
void write_file_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    out.flush();
    if (!out) throw std::runtime_error("cannot write metrics file '" + tmp + "': " + std::strerror(errno));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw std::runtime_error("cannot rename '" + tmp + "' to '" + path + "': " + ec.message());
}

/// Fails early (usage error) if the metrics file cannot be created, before any training.
void check_metrics_writable(const std::string& path) {
  if (path.empty()) return;
  const std::string tmp = path + ".tmp";
  std::ofstream probe(tmp, std::ios::trunc);
  if (!probe) throw UsageError("--metrics '" + path + "': cannot create '" + tmp + "': " + std::strerror(errno));
  probe.close();
  std::filesystem::remove(tmp);
}

std::string config_json(const Config& c) {
  std::ostringstream o;
  o << "\"role\": " << json_string(c.role) << ",\n  \"server\": " << json_string(c.server)
    << ",\n  \"workers\": " << c.workers << ",\n  \"policy\": " << json_string(c.policy)
    << ",\n  \"model\": " << json_string(c.model) << ",\n  \"data\": " << json_string(c.data)
    << ",\n  \"steps\": " << c.steps << ",\n  \"lr\": " << float_text(c.lr) << ",\n  \"batch\": " << c.batch
    << ",\n  \"seed\": " << c.seed << ",\n  \"timeout_ms\": " << c.timeout.count();
  return o.str();
}

/// `{"count": n, "mean": m, "max": x}`.
std::string summary_json(const psync::Summary& s) {
  return "{\"count\": " + std::to_string(s.count) + ", \"mean\": " + json_number(s.mean()) +
         ", \"max\": " + std::to_string(s.max) + "}";
}

const char* leave_name(psync::msg::LeaveReason r) {
  switch (r) {
    case psync::msg::LeaveReason::finished: return "finished";
    case psync::msg::LeaveReason::disconnected: return "disconnected";
    case psync::msg::LeaveReason::timed_out: return "timed_out";
    case psync::msg::LeaveReason::failed: return "failed";
  }
  return "unknown";
}

// ---- data and models -----------------------------------------------------

struct TrainTest {
  psync::data::Dataset train;
  psync::data::Dataset test;
};

TrainTest load_data(const Config& c) {
  if (c.data == "synthetic") {
    psync::data::SyntheticOptions o;
    o.samples = synthetic_samples;
    o.dimension = synthetic_dimension;
    o.classes = synthetic_classes;
    o.noise = synthetic_noise;
    o.seed = synthetic_seed;
    const auto all = psync::data::make_synthetic_classification(o);
    return {all.subset(0, synthetic_samples - synthetic_test), all.subset(synthetic_samples - synthetic_test,
                                                                          synthetic_test)};
  }
  // Each role reads only the half it needs: the server evaluates, workers train.
  const std::filesystem::path dir = c.data_dir;
  const auto find = [&](const std::string& base) {
    std::error_code ec;
    if (const auto gz = dir / (base + ".gz"); std::filesystem::exists(gz, ec)) return gz;
    if (const auto plain = dir / base; std::filesystem::exists(plain, ec)) return plain;
    throw psync::DataError("Fashion-MNIST file '" + (dir / (base + ".gz")).string() + "' (or uncompressed '" +
                           (dir / base).string() + "') not found; set --data-dir");
  };
  const bool server = c.role == "server";
  const std::string prefix = server ? "t10k" : "train";
  auto d = psync::data::load_idx(find(prefix + "-images-idx3-ubyte"), find(prefix + "-labels-idx1-ubyte"), 10);
  if (server) return {psync::data::Dataset{}, std::move(d)};
  return {std::move(d), psync::data::Dataset{}};
}

/// Calls `f(model)` with the model --model names, initialized from --seed (the
/// same on every process, though workers take the server's model at join anyway).
template <class F>
int with_model(const Config& c, Eigen::Index inputs, int classes, F&& f) {
  if (c.hidden.empty()) {
    psync::models::SoftmaxRegression m(inputs, classes);
    m.initialize(c.seed);
    return f(std::move(m));
  }
  std::vector<Eigen::Index> layers{inputs};
  layers.insert(layers.end(), c.hidden.begin(), c.hidden.end());
  layers.push_back(classes);
  psync::models::Mlp m(std::move(layers));
  m.initialize(c.seed);
  return f(std::move(m));
}

// ---- server --------------------------------------------------------------

// SIGINT/SIGTERM ask the running server to stop (a relaxed atomic store, safe in a
// handler); the handler resets itself, so a second signal ends the process.
std::atomic<void*> g_stop_target{nullptr};
std::atomic<void (*)(void*)> g_stop_fn{nullptr};
volatile std::sig_atomic_t g_signal = 0;

extern "C" void on_stop_signal(int sig) {
  g_signal = sig;
  auto* fn = g_stop_fn.load();
  if (fn) fn(g_stop_target.load());
}

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESETHAND;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

template <class M, class P>
int run_server(const Config& c, M model, P policy, const psync::data::Dataset& test) {
  // Copies made before serving, so evaluation never allocates or first-touches memory mid-run.
  const psync::data::Batch probe = psync::data::whole(test, progress_samples);
  const psync::data::Batch full_test = psync::data::whole(test);
  M eval_model = model;

  if (!c.checkpoint.empty()) {  // fail before listening, not at the first checkpoint
    std::error_code ec;
    std::filesystem::create_directories(c.checkpoint, ec);
    if (ec || ::access(c.checkpoint.c_str(), W_OK | X_OK) != 0) {
      throw std::runtime_error("--checkpoint '" + c.checkpoint + "': cannot write there: " +
                               (ec ? ec.message() : std::string(std::strerror(errno))));
    }
  }

  psync::TcpServerOptions to;
  to.address = c.host;
  to.port = c.port;
  to.limits.expected_dimension = static_cast<std::uint64_t>(model.parameters().size());
  to.frame_timeout = c.timeout;
  to.secret = c.secret;
  psync::TcpServer transport(to);
  const std::string where = host_port(c.host, transport.port());
  std::cout << program << ": listening on " << where << std::endl;
  if (!c.quiet) {
    std::cout << program << ": server: policy " << policy.name() << ", model " << c.model << " ("
              << model.parameters().size() << " parameters), data " << c.data << ", waiting for " << c.workers
              << " worker(s)" << std::endl;
  }

  psync::ServerOptions so;
  so.expected_workers = c.workers;
  so.join_timeout = c.timeout;
  so.peer_timeout = c.timeout;
  so.log = c.quiet ? nullptr : &std::cerr;
  so.checkpoint_dir = c.checkpoint;
  so.checkpoint_every = c.checkpoint_every;
  so.checkpoint_keep = c.checkpoint_keep;
  so.resume = c.resume;
  double last_seconds = 0;
  std::uint64_t last_steps = 0;
  if (!c.quiet) {
    so.on_progress = [&](const psync::ServerProgress& p) {
      eval_model.parameters() = p.parameters;
      const double loss = eval_model.loss(probe);
      const double accuracy = eval_model.accuracy(probe);
      const double dt = p.seconds - last_seconds;
      const double rate = dt > 0 ? static_cast<double>(p.steps_applied - last_steps) / dt : 0.0;
      last_seconds = p.seconds;
      last_steps = p.steps_applied;
      char line[256];
      std::snprintf(line, sizeof line,
                    "%s: [%7.1fs] version %llu, steps %llu, live workers %zu, test loss %.4f, accuracy %.4f "
                    "(%lld samples), %.0f steps/s",
                    program, p.seconds, static_cast<unsigned long long>(p.version),
                    static_cast<unsigned long long>(p.steps_applied), p.live_workers, loss, accuracy,
                    static_cast<long long>(probe.size()), rate);
      std::cout << line << std::endl;
    };
  }

  psync::Server<M, P> server(std::move(model), so, policy);
  g_stop_target.store(&server);
  g_stop_fn.store([](void* s) { static_cast<psync::Server<M, P>*>(s)->stop(); });
  install_stop_handlers();
  struct ResetStop {
    ~ResetStop() {
      g_stop_fn.store(nullptr);
      g_stop_target.store(nullptr);
    }
  } reset_stop;

  psync::ServerReport report = server.run(transport);
  transport.close();  // flushes the last replies (bounded)

  eval_model.parameters() = server.model().parameters();
  const double final_loss = eval_model.loss(full_test);
  const double final_accuracy = eval_model.accuracy(full_test);
  std::size_t lost = 0;
  for (const auto& p : report.peers) {
    if (p.left_known && p.left != psync::msg::LeaveReason::finished) ++lost;
  }
  {
    char line[320];
    std::snprintf(line, sizeof line,
                  "%s: server done in %.2f s: version %llu, %llu updates covering %llu steps from %zu worker(s) "
                  "(%zu lost); final test accuracy %.4f, loss %.4f on %lld samples",
                  program, report.wall_s, static_cast<unsigned long long>(report.version),
                  static_cast<unsigned long long>(report.updates_applied),
                  static_cast<unsigned long long>(report.steps_applied), report.peers.size(), lost, final_accuracy,
                  final_loss, static_cast<long long>(full_test.size()));
    std::cout << line << std::endl;
  }
  if (!c.checkpoint.empty()) {
    std::cout << program << ": " << report.checkpoints_written << " checkpoint(s) written to " << c.checkpoint << " in "
              << report.checkpoint_s << " s (" << report.checkpoint_failures << " failed)"
              << (report.resumed_path.empty() ? std::string()
                                              : "; resumed from " + report.resumed_path + " (" +
                                                    std::to_string(report.resumed_steps) + " steps applied)")
              << std::endl;
  }

  if (!c.metrics.empty()) {
    std::ostringstream o;
    o << "{\n  " << config_json(c) << ",\n  \"listening\": " << json_string(where) << ",\n  \"ok\": true"
      << ",\n  \"interrupted\": " << (g_signal != 0 ? "true" : "false") << ",\n  \"wall_s\": "
      << json_number(report.wall_s) << ",\n  \"version\": " << report.version
      << ",\n  \"updates_applied\": " << report.updates_applied << ",\n  \"steps_applied\": " << report.steps_applied
      << ",\n  \"final_test_accuracy\": " << json_number(final_accuracy)
      << ",\n  \"final_test_loss\": " << json_number(final_loss) << ",\n  \"test_samples\": " << full_test.size()
      << ",\n  \"workers_lost\": " << lost << ",\n  \"checkpoints_written\": " << report.checkpoints_written
      << ",\n  \"checkpoint_failures\": " << report.checkpoint_failures
      << ",\n  \"checkpoint_s\": " << json_number(report.checkpoint_s)
      << ",\n  \"resumed_from\": " << (report.resumed_path.empty() ? "null" : json_string(report.resumed_path))
      << ",\n  \"resumed_steps\": " << report.resumed_steps << ",\n  \"peers\": [";
    for (std::size_t i = 0; i < report.peers.size(); ++i) {
      const auto& p = report.peers[i];
      // "staleness" is in model versions (pushes under asp/ssp/dssp, rounds under bsp/osp).
      o << (i ? "," : "") << "\n    {\"id\": " << p.id << ", \"pushes\": " << p.pushes
        << ", \"staleness\": " << summary_json(p.version_staleness) << ", \"left\": "
        << (p.left_known ? json_string(leave_name(p.left)) : std::string("null")) << "}";
    }
    o << "\n  ],\n  \"events\": [";
    for (std::size_t i = 0; i < report.events.size(); ++i) {
      o << (i ? "," : "") << "\n    " << json_string(report.events[i]);
    }
    o << "\n  ]\n}\n";
    write_file_atomically(c.metrics, o.str());
  }
  if (g_signal != 0) {
    std::cerr << program << ": server interrupted by signal " << g_signal << std::endl;
    return exit_failure;
  }
  return exit_ok;
}

// ---- worker --------------------------------------------------------------

/// Set once the worker's connection is up, so a transport error says "lost" rather than "cannot reach".
bool g_worker_connected = false;

void write_worker_metrics(const Config& c, const psync::WorkerReport* r, const std::string& error) {
  if (c.metrics.empty()) return;
  std::ostringstream o;
  o << "{\n  " << config_json(c) << ",\n  \"id\": " << *c.id << ",\n  \"ok\": " << (r ? "true" : "false")
    << ",\n  \"error\": " << (error.empty() ? std::string("null") : json_string(error));
  if (r) {
    o << ",\n  \"steps_done\": " << r->steps << ",\n  \"samples\": " << r->samples << ",\n  \"pushes\": " << r->pushes
      << ",\n  \"installs\": " << r->installs << ",\n  \"wall_s\": " << json_number(r->wall_s)
      << ",\n  \"compute_s\": " << json_number(r->compute_s) << ",\n  \"wait_s\": " << json_number(r->wait_s)
      << ",\n  \"comm_s\": " << json_number(r->comm_s) << ",\n  \"held_s\": " << json_number(r->held_s)
      << ",\n  \"hidden_fraction\": " << json_number(r->hidden_fraction())
      << ",\n  \"last_loss\": " << json_number(r->last_loss)
      << ",\n  \"clock_staleness\": " << summary_json(r->clock_staleness)
      << ",\n  \"steps_per_push\": " << summary_json(r->steps_per_push) << ",\n  \"max_unsent\": " << r->max_unsent
      << ",\n  \"rejoins\": " << r->rejoins << ",\n  \"pushes_lost\": " << r->pushes_lost
      << ",\n  \"steps_discarded\": " << r->steps_discarded << ",\n  \"reconnect_s\": " << json_number(r->reconnect_s);
  }
  o << "\n}\n";
  write_file_atomically(c.metrics, o.str());
}

template <class M, class P>
int run_worker(const Config& c, M model, P policy, psync::data::Dataset train) {
  const std::uint32_t id = *c.id;
  psync::data::Dataset mine;
  {
    auto shards = psync::data::shard(train, static_cast<int>(c.workers), c.seed);
    mine = std::move(shards[id]);
    train = psync::data::Dataset{};  // only this worker's shard stays in memory
  }
  psync::data::BatchSampler sampler(mine, c.batch, c.seed * 7919 + id + 1);

  psync::TcpOptions to;
  to.connect_timeout = c.timeout;
  to.frame_timeout = c.timeout;
  to.limits.expected_dimension = static_cast<std::uint64_t>(model.parameters().size());
  to.secret = c.secret;
  const auto connect = [&c, id, to](std::chrono::milliseconds within) {
    psync::TcpOptions o = to;
    o.connect_timeout = within;
    return psync::Tcp(c.host, c.port, id, o);
  };
  psync::Tcp transport = connect(c.timeout);
  g_worker_connected = true;

  psync::WorkerOptions wo;  // the worker's id is its transport's (`id` above)
  wo.learning_rate = c.lr;
  wo.max_steps = c.steps;
  // Longer than the server's peer timeout: a worker waiting on a silent peer is
  // answered once the server has dropped that peer, before its own deadline.
  wo.reply_timeout = 2 * c.timeout;
  wo.reconnect_timeout = c.reconnect;  // each attempt below is short; Worker backs off between them
  psync::Worker<M, psync::Tcp, P> worker(std::move(model), std::move(transport), wo, policy);
  if (c.reconnect.count() > 0) worker.reconnect_with([&] { return connect(std::chrono::milliseconds(500)); });
  if (!c.quiet) {
    std::cout << program << ": worker " << id << " connected to " << c.server << " (policy " << policy.name()
              << ", shard of " << mine.size() << " samples)" << std::endl;
  }
  const auto delay = c.step_delay;
  const psync::WorkerReport r = worker.run([&]() -> const psync::data::Batch& {
    if (delay.count() > 0) std::this_thread::sleep_for(delay);
    return sampler.next();
  });
  if (!c.quiet) {
    char line[320];
    std::snprintf(line, sizeof line,
                  "%s: worker %u done: %llu steps, %llu pushes in %.2f s (compute %.2f s, wait %.2f s, comm %.2f s, "
                  "held %.2f s), last batch loss %.4f",
                  program, id, static_cast<unsigned long long>(r.steps), static_cast<unsigned long long>(r.pushes),
                  r.wall_s, r.compute_s, r.wait_s, r.comm_s, r.held_s, r.last_loss);
    std::cout << line << std::endl;
    if (r.rejoins > 0) {
      std::cout << program << ": worker " << id << " rejoined " << r.rejoins << " time(s) after " << r.reconnect_s
                << " s reconnecting; the server had lost " << r.pushes_lost << " of its pushes (" << r.steps_discarded
                << " unsent or in-flight steps dropped)" << std::endl;
    }
  }
  write_worker_metrics(c, &r, "");
  return exit_ok;
}

int run(const Config& c) {
  TrainTest data = load_data(c);
  const auto& loaded = c.role == "server" ? data.test : data.train;
  const Eigen::Index inputs = loaded.dimension();
  const int classes = loaded.num_classes;
  return psync::with_policy(c.policy, [&](auto policy) {
    return with_model(c, inputs, classes, [&](auto model) {
      if (c.role == "server") return run_server(c, std::move(model), policy, data.test);
      return run_worker(c, std::move(model), policy, std::move(data.train));
    });
  });
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);  // a lost peer is an error to report, not a reason to die silently
  std::optional<Config> config;
  try {
    config = parse(argc, argv);
    if (!config) {
      print_help(std::cout);
      return exit_ok;
    }
    check_metrics_writable(config->metrics);
  } catch (const UsageError& e) {
    std::cerr << program << ": usage error: " << e.what() << std::endl;
    return exit_usage;
  } catch (const std::exception& e) {
    std::cerr << program << ": usage error: " << e.what() << std::endl;
    return exit_usage;
  }
  const Config& c = *config;
  const std::string who = c.role == "server" ? std::string("server on ") + c.server
                                             : "worker " + std::to_string(*c.id) + " (server " + c.server + ")";
  std::string error;
  int code = exit_failure;
  try {
    return run(c);
  } catch (const psync::ConfigError& e) {
    error = e.what();
    code = exit_usage;
  } catch (const psync::TransportError& e) {
    error = c.role != "worker"    ? std::string(e.what())
            : g_worker_connected ? "lost the server at " + c.server + ": " + e.what()
                                 : "cannot reach the server at " + c.server + ": " + e.what();
  } catch (const psync::TimeoutError& e) {
    error = c.role == "worker" ? std::string("no answer from the server at ") + c.server + ": " + e.what()
                               : e.what();
  } catch (const psync::ProtocolError& e) {
    error = c.role == "worker" ? std::string("the server at ") + c.server + " refused us: " + e.what() : e.what();
  } catch (const std::exception& e) {
    error = e.what();
  }
  std::cerr << program << ": " << who << ": " << (code == exit_usage ? "configuration error: " : "error: ") << error
            << std::endl;
  if (c.role == "worker") {
    try {
      write_worker_metrics(c, nullptr, error);
    } catch (const std::exception& e) {
      std::cerr << program << ": " << e.what() << std::endl;
    }
  }
  return code;
}
