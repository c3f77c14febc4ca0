// netns_reference: the emulator's side of scripts/netns_crosscheck.sh.
//
// Runs one psync-train configuration (workers, policy, model, data, fixed steps,
// batch, learning rate, seed) in this process with psync::run_local over the
// emulated network -- every worker link and the server NIC at the same bandwidth,
// optional one-way latency per worker link, no straggler, no jitter -- and prints
// the figures the cross-check compares with the kernel-shaped TCP run, as JSON
// (per-worker WorkerReport fields and the server's summary).
//
//   netns_reference [--workers N] [--policy P] [--model softmax|mlp:H1,H2,...]
//                   [--data fashion-mnist|synthetic] [--steps N] [--batch N] [--lr X]
//                   [--seed N] [--bandwidth BYTES_PER_S] [--server-nic BYTES_PER_S]
//                   [--latency-us N] [--no-warmup] [--out FILE]
#include <psync/data/fashion_mnist.hpp>
#include <psync/detail/json.hpp>
#include <psync/harness.hpp>
#include <psync/models.hpp>
#include <psync/psync.hpp>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Options {
  std::uint32_t workers = 4;
  std::string policy = "bsp";
  std::string model = "mlp:256,128";
  std::string data = "fashion-mnist";
  std::uint64_t steps = 200;
  long batch = 64;
  double lr = 0.1;
  std::uint64_t seed = 1;
  double bandwidth = 125e6;  // bytes/s of every worker link, each direction; 0 = infinite
  std::optional<double> server_nic;  // default: same as --bandwidth
  long latency_us = 0;
  bool warmup = true;
  std::string out;
};

[[noreturn]] void bad(const std::string& m) {
  std::cerr << "netns_reference: " << m << "\n";
  std::exit(2);
}

double number(const std::string& flag, const std::string& v) {
  try {
    std::size_t pos = 0;
    const double d = std::stod(v, &pos);
    if (pos != v.size() || !std::isfinite(d) || d < 0) throw std::invalid_argument(v);
    return d;
  } catch (const std::exception&) {
    bad(flag + " needs a non-negative number, got '" + v + "'");
  }
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) bad(a + " needs a value");
      return argv[++i];
    };
    if (a == "--workers") o.workers = static_cast<std::uint32_t>(number(a, value()));
    else if (a == "--policy") o.policy = value();
    else if (a == "--model") o.model = value();
    else if (a == "--data") o.data = value();
    else if (a == "--steps") o.steps = static_cast<std::uint64_t>(number(a, value()));
    else if (a == "--batch") o.batch = static_cast<long>(number(a, value()));
    else if (a == "--lr") o.lr = number(a, value());
    else if (a == "--seed") o.seed = static_cast<std::uint64_t>(number(a, value()));
    else if (a == "--bandwidth") o.bandwidth = number(a, value());
    else if (a == "--server-nic") o.server_nic = number(a, value());
    else if (a == "--latency-us") o.latency_us = static_cast<long>(number(a, value()));
    else if (a == "--no-warmup") o.warmup = false;
    else if (a == "--out") o.out = value();
    else if (a == "--help" || a == "-h") {
      std::cout << "usage: netns_reference [--workers N] [--policy P] [--model softmax|mlp:H1,H2] "
                   "[--data fashion-mnist|synthetic] [--steps N] [--batch N] [--lr X] [--seed N] "
                   "[--bandwidth B/s] [--server-nic B/s] [--latency-us N] [--no-warmup] [--out FILE]\n";
      std::exit(0);
    } else {
      bad("unknown option '" + a + "'");
    }
  }
  if (o.workers < 1 || o.workers > 64) bad("--workers must be 1..64");
  if (o.batch < 1) bad("--batch must be >= 1");
  if (o.steps < 1) bad("--steps must be >= 1");
  return o;
}

std::vector<Eigen::Index> hidden_layers(const std::string& spec) {
  std::vector<Eigen::Index> h;
  std::stringstream s(spec);
  std::string part;
  while (std::getline(s, part, ',')) {
    const double v = number("--model", part);
    if (v < 1) bad("--model mlp: hidden widths must be >= 1");
    h.push_back(static_cast<Eigen::Index>(v));
  }
  if (h.empty()) bad("--model mlp: needs at least one hidden width, e.g. mlp:256,128");
  return h;
}

using psync::detail::json_number;

template <class M>
psync::RunReport run(const Options& o, const M& model, const psync::data::Dataset& train,
                     const psync::data::Dataset* test) {
  psync::LocalOptions lo;
  lo.workers = o.workers;
  lo.learning_rate = static_cast<float>(o.lr);
  lo.batch_size = o.batch;
  lo.steps_per_worker = o.steps;
  lo.seed = o.seed;
  lo.snapshot_interval = std::chrono::milliseconds(0);  // start and end only: no copies on the clock
  lo.eval_train_samples = 2000;
  lo.network.worker_link.bandwidth_bytes_per_s = o.bandwidth;
  lo.network.worker_link.latency = std::chrono::microseconds(o.latency_us);
  lo.network.server_nic_bytes_per_s = o.server_nic.value_or(o.bandwidth);
  lo.network.seed = o.seed;
  if (o.warmup) {
    // Touches the data and exercises threads and buffers before the measured run
    // (a fresh process is what each psync-train process is, but the kernel run's
    // processes each pay their own first pass in parallel; this keeps the
    // emulated figure about the network, not page faults).
    auto w = lo;
    w.steps_per_worker = std::min<std::uint64_t>(o.steps, 10);
    (void)psync::with_policy(o.policy, [&](auto policy) { return psync::run_local(model, train, nullptr, w, policy); });
  }
  return psync::with_policy(o.policy, [&](auto policy) { return psync::run_local(model, train, test, lo, policy); });
}

std::string to_json(const Options& o, const psync::RunReport& r, std::size_t dimension) {
  std::ostringstream j;
  std::uint64_t samples = 0, pushes = 0;
  double comm = 0;
  for (const auto& w : r.workers) {
    samples += w.samples;
    pushes += w.pushes;
    comm += w.comm_s;
  }
  j << "{\n  \"tool\": \"netns_reference\",\n"
    << "  \"transport\": \"emulated\",\n"
    << "  \"policy\": \"" << o.policy << "\",\n"
    << "  \"config\": {\"workers\": " << o.workers << ", \"model\": \"" << o.model << "\", \"data\": \"" << o.data
    << "\", \"steps\": " << o.steps << ", \"batch\": " << o.batch << ", \"lr\": " << json_number(o.lr)
    << ", \"seed\": " << o.seed << ", \"parameters\": " << dimension << "},\n"
    << "  \"network\": {\"worker_link_bytes_per_s\": " << json_number(o.bandwidth)
    << ", \"server_nic_bytes_per_s\": " << json_number(o.server_nic.value_or(o.bandwidth))
    << ", \"latency_us\": " << o.latency_us << "},\n"
    << "  \"wall_s\": " << json_number(r.wall_s) << ",\n"
    << "  \"samples\": " << samples << ",\n"
    << "  \"throughput\": " << json_number(r.throughput()) << ",\n"
    << "  \"pushes\": " << pushes << ",\n"
    << "  \"comm_per_push_s\": " << json_number(pushes ? comm / static_cast<double>(pushes) : 0) << ",\n"
    << "  \"final_accuracy\": " << json_number(r.final_accuracy()) << ",\n"
    << "  \"workers\": [\n";
  for (std::size_t i = 0; i < r.workers.size(); ++i) {
    const auto& w = r.workers[i];
    j << "    {\"id\": " << w.id << ", \"steps\": " << w.steps << ", \"samples\": " << w.samples
      << ", \"pushes\": " << w.pushes << ", \"installs\": " << w.installs << ", \"wall_s\": " << json_number(w.wall_s)
      << ", \"compute_s\": " << json_number(w.compute_s) << ", \"wait_s\": " << json_number(w.wait_s)
      << ", \"comm_s\": " << json_number(w.comm_s) << ", \"held_s\": " << json_number(w.held_s)
      << ", \"last_loss\": " << json_number(w.last_loss) << "}" << (i + 1 < r.workers.size() ? "," : "") << "\n";
  }
  j << "  ],\n  \"server\": {\"wall_s\": " << json_number(r.server.wall_s) << ", \"version\": " << r.server.version
    << ", \"updates_applied\": " << r.server.updates_applied << ", \"steps_applied\": " << r.server.steps_applied
    << "}\n}\n";
  return j.str();
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  try {
    psync::data::Dataset train, test;
    bool have_test = false;
    if (o.data == "fashion-mnist") {
      auto tt = psync::data::load_fashion_mnist();
      train = std::move(tt.train);
      test = std::move(tt.test);
      have_test = true;
    } else if (o.data == "synthetic") {
      // The fixed task psync-train builds (tools/psync_train.cpp), so both sides train alike.
      psync::data::SyntheticOptions so;
      so.samples = 6000;
      so.dimension = 20;
      so.classes = 4;
      so.noise = 1.0f;
      so.seed = 11;
      const auto all = psync::data::make_synthetic_classification(so);
      train = all.subset(0, 5000);
      test = all.subset(5000, 1000);
      have_test = true;
    } else {
      bad("--data must be fashion-mnist or synthetic");
    }
    // Read the data once before any clock starts (fresh pages are slow here).
    volatile double touch = train.features.sum();
    (void)touch;
    const auto inputs = train.dimension();
    const int classes = train.num_classes;
    std::string json;
    if (o.model == "softmax") {
      psync::models::SoftmaxRegression m(inputs, classes);
      m.initialize(o.seed);
      json = to_json(o, run(o, m, train, have_test ? &test : nullptr), static_cast<std::size_t>(m.dimension()));
    } else if (o.model.rfind("mlp:", 0) == 0) {
      std::vector<Eigen::Index> layers{inputs};
      for (auto h : hidden_layers(o.model.substr(4))) layers.push_back(h);
      layers.push_back(classes);
      psync::models::Mlp m(layers);
      m.initialize(o.seed);
      json = to_json(o, run(o, m, train, have_test ? &test : nullptr), static_cast<std::size_t>(m.dimension()));
    } else {
      bad("--model must be softmax or mlp:H1,H2,...");
    }
    std::cout << json;
    if (!o.out.empty()) {
      std::ofstream f(o.out, std::ios::trunc);
      f << json;
      if (!f) throw std::runtime_error("cannot write " + o.out);
    }
  } catch (const std::exception& e) {
    std::cerr << "netns_reference: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
