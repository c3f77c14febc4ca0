// replay_rounds: a run's round structure, replayed through the real cores with no clock.
//
// A psync-train run over TCP is timed by its host; its trajectory is set by the
// order of events only: at which of its step boundaries each worker took each reply
// (and so what each push held). This program reads that order (one line per worker:
// the number of steps the worker had completed when it took reply 1, 2, 3, ...;
// scripts/replay_rounds.py extracts it from psync-train --trace files), drives one
// ServerCore and the WorkerCores through it on one thread (worker w's batches,
// shards and initial model as psync-train and compare_policies make them), and
// prints the server's test accuracy (first 2,000 test samples, the --series-samples
// default) after the rounds whose steps-applied count is asked for. Replaying a real
// run's order must give the accuracies of that run's series exactly; replaying
// another order (e.g. the simulator's evenly spread rounds) shows what the order
// alone does to the learning curve.
//
//   replay_rounds --rounds FILE --policy osp:20 --lr 0.15 --seed S [--init-seed 42]
//                 [--batch 64] [--at-steps FILE] [--every R]
//
// Output: "round steps_applied accuracy" lines, for each round whose steps applied
// is listed in --at-steps (one number per line or space-separated) and every R-th
// round (default 10). Exit 1 with a message naming the round and worker if the
// order cannot be replayed (psync::harness::replay_rounds, which does the work).
#include <psync/data/dataset.hpp>
#include <psync/data/fashion_mnist.hpp>
#include <psync/harness/replay.hpp>
#include <psync/models/mlp.hpp>
#include <psync/optim/any.hpp>
#include <psync/optim/parse.hpp>
#include <psync/policies/parse.hpp>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Args {
  std::string rounds;
  std::string at_steps;
  std::string policy = "osp:20";
  float lr = 0.15F;
  std::uint64_t seed = 1;
  std::uint64_t init_seed = 42;
  Eigen::Index batch = 64;
  std::uint64_t every = 10;
};

[[noreturn]] void usage(const std::string& why) {
  std::cerr << "replay_rounds: " << why
            << "\nusage: replay_rounds --rounds FILE --policy osp:20 --lr 0.15 --seed S [--init-seed 42] [--batch 64]"
               " [--at-steps FILE] [--every R]\n";
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (i + 1 >= argc) usage(k + " needs a value");
    const std::string v = argv[++i];
    try {
      if (k == "--rounds") a.rounds = v;
      else if (k == "--at-steps") a.at_steps = v;
      else if (k == "--policy") a.policy = v;
      else if (k == "--lr") a.lr = std::stof(v);
      else if (k == "--seed") a.seed = std::stoull(v);
      else if (k == "--init-seed") a.init_seed = std::stoull(v);
      else if (k == "--batch") a.batch = std::stol(v);
      else if (k == "--every") a.every = std::stoull(v);
      else usage("unknown option '" + k + "'");
    } catch (const std::logic_error&) {
      usage(k + ": not a number: '" + v + "'");
    }
  }
  if (a.rounds.empty()) usage("--rounds is required");
  if (a.every == 0) usage("--every must be at least 1");
  return a;
}

psync::harness::ReplyBoundaries read_rounds(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read --rounds '" + path + "'");
  psync::harness::ReplyBoundaries rounds;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream s(line);
    std::vector<std::uint64_t> b;
    for (std::uint64_t x; s >> x;) b.push_back(x);
    if (!s.eof()) throw std::runtime_error("--rounds '" + path + "': not a list of step counts: " + line.substr(0, 60));
    rounds.push_back(std::move(b));
  }
  if (rounds.empty()) throw std::runtime_error("--rounds '" + path + "': no worker lines");
  return rounds;
}

std::set<std::uint64_t> read_steps(const std::string& path) {
  std::set<std::uint64_t> out;
  if (path.empty()) return out;
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read --at-steps '" + path + "'");
  for (std::uint64_t x; in >> x;) out.insert(x);
  return out;
}

template <class P>
int replay(const Args& a, P policy) {
  const auto boundaries = read_rounds(a.rounds);
  const auto at_steps = read_steps(a.at_steps);
  const auto workers = static_cast<int>(boundaries.size());

  const auto tt = psync::data::load_fashion_mnist();
  const auto shards = psync::data::shard(tt.train, workers, a.seed);
  const psync::data::Batch test = psync::data::whole(tt.test, 2000);
  psync::models::Mlp model({784, 256, 128, 10});
  model.initialize(a.init_seed);
  psync::models::Mlp eval = model;
  // Worker w's batches as psync-train draws them (data::worker_seed).
  const auto sources = [&](psync::PeerId w) {
    return [smp = psync::data::BatchSampler(shards[w], a.batch, psync::data::worker_seed(a.seed, w))]() mutable
               -> const psync::data::Batch& { return smp.next(); };
  };
  std::printf("# round steps_applied accuracy (first 2000 test samples)\n");
  psync::harness::replay_rounds(
      model, sources, a.lr, policy, boundaries,
      [&](const psync::harness::ReplayedRound& r, const psync::models::Mlp& server) {
        if (r.round % a.every != 0 && !at_steps.contains(r.steps_applied)) return;
        eval.parameters() = server.parameters();
        std::printf("%zu %llu %.4f\n", r.round, static_cast<unsigned long long>(r.steps_applied), eval.accuracy(test));
      },
      psync::optim::parse_optimizer("sgd"));  // psync-train's worker rule (optim::Any), for identical arithmetic
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  try {
    return psync::with_policy(a.policy, [&](auto policy) { return replay(a, policy); });
  } catch (const std::exception& e) {
    std::cerr << "replay_rounds: " << e.what() << "\n";
    return 1;
  }
}
