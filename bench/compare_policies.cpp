// compare_policies: which synchronization policy wins, measured.
//
// Two clocks (--time): `virtual` (the default) runs every policy in psync::sim's
// discrete-event simulator: the real server and worker cores and the real gradient
// math on the real data, with time modelled from a step cost calibrated on this
// machine (or --step-ms), the scenario's network and stragglers, and a measured
// server cost per float; results do not depend on this machine's load, only on the
// step cost. Each policy runs until it reaches and holds the target (see
// psync::harness::run_until_target), so budgets (--budget, virtual seconds) are caps. `real`
// runs threads over the emulated network with a wall-clock budget, as before.
//
// Trains the same model (the scenario's: the MLP 784-256-128-10, or the LeNet-5-like
// CNN in cnn-paper-like, virtual time only) on the same data (Fashion-MNIST), from the
// same seed and with the same budget, under sequential SGD (the reference), BSP, ASP,
// SSP(s), OSP(S) and LOSP(S) (and any policy --policies names, DSSP included), over
// an emulated network, and reports time to a target test accuracy, final accuracy,
// throughput, where each worker's time went, OSP's hidden-communication fraction,
// staleness in clocks and in versions, and OSP's steps per push. Writes CSV, JSON, a
// markdown table and gnuplot data under --out (default docs/results). Nothing is
// hard-coded: every figure printed is measured by this run.
//
// Learning rates (--lr-rule): BSP and OSP average each round's pushes, ASP, SSP and
// DSSP add every push, so at one rate the latter move the model P times further per
// round. By default (`scaled`) --lr is the averaging policies' rate and the others
// run at lr / P; `same` gives every policy --lr. Every table prints the rate used.
//
//   compare_policies --list
//   compare_policies [--time virtual|real] [--seed N] [--seeds K] [--step-ms X] [--quick]
//                    [--scenario paper-like|paper-like-p8|paper-like-p32|fast-network|heavy-straggler|cnn-paper-like|LIST|all]
//                    [--budget S] [--target ACC] [--workers N] [--ssp S] [--osp S] [--sweep]
//                    [--lr RATE] [--lr-rule scaled|same] [--lr-grid LIST] [--policies LIST]
//                    [--gbps X] [--latency-ms X] [--straggler X] [--server-ns X]
//                    [--sweep-bandwidth LIST] [--sweep-workers LIST] [--sweep-staleness S-LIST/s-LIST]
//                    [--codec SPEC] [--sweep-codec LIST]
//                    [--validate] [--trace DIR] [--out DIR] [--quiet]
//
// Sweeps (virtual time; sweeps.hpp): --sweep-bandwidth and --sweep-workers rerun the
// scenario at each value, --sweep-staleness runs OSP/LOSP at each S and SSP at each
// s with the other policies as references; each writes SCENARIO-sweep-PARAM.{csv,dat,md}
// and scripts/compare.sh plots it. --sweep instead adds OSP S in {5,10,20,40} and SSP
// s in {1,3,8} as rows of the scenario's own table.
//
// The tool's parts, under bench/compare/: scenarios.hpp (the scenarios),
// options.hpp (the command line, the policies and their learning rates),
// runner.hpp (running and measuring them; the model-generic virtual-time harness is
// include/psync/harness/time_to_target.hpp), writers.hpp (tables and files),
// sweeps.hpp (the sweeps), validate.hpp (--validate) and format.hpp (number formatting).
#include "compare/options.hpp"
#include "compare/runner.hpp"
#include "compare/scenarios.hpp"
#include "compare/codec_sweep.hpp"
#include "compare/sweeps.hpp"
#include "compare/validate.hpp"
#include "compare/writers.hpp"

#include <psync/data/fashion_mnist.hpp>
#include <psync/psync.hpp>

#include <exception>
#include <filesystem>
#include <iostream>
#include <string>
#include <utility>

int main(int argc, char** argv) {
  const compare::Options opt = compare::parse(argc, argv);
  const compare::Progress progress(opt.quiet);
  // The real-time drivers and --validate are compiled for the MLP only (each model
  // would double their instantiations); virtual time runs any scenario's model.
  const auto runs_here = [&](const compare::Scenario& s) { return s.model == "mlp" || (opt.virtual_time && !opt.validate); };
  const auto only_virtual = [](const compare::Scenario& s) {
    return "it trains the " + s.model + ", which runs in virtual time only (no --time real, no --validate)";
  };
  // Named on the command line: refused before anything runs.
  for (const auto& s : compare::scenarios()) {
    if (opt.scenario != "all" && opt.wants(s.name) && !runs_here(s)) {
      std::cerr << "compare_policies: scenario " << s.name << ": " << only_virtual(s) << "\n";
      return 2;
    }
  }
  try {
    progress.line(std::string("compare: build ") + PSYNC_BUILD_FLAGS);
    progress.line("compare: loading Fashion-MNIST");
    auto tt = psync::data::load_fashion_mnist();
    compare::Data data{std::move(tt.train), std::move(tt.test)};
    // First pass over freshly loaded data is slow (page faults): do it before any clock.
    volatile double touch = data.train.features.sum() + data.test.features.sum();
    (void)touch;
    compare::Harness h(opt, data, progress);
    bool ok = true;
    for (const auto& base : compare::scenarios()) {
      if (!opt.wants(base.name)) continue;
      const compare::Scenario s = compare::with_overrides(base, opt);
      if (!opt.virtual_time && s.workers > 8) {
        progress.line("compare: " + s.name + " skipped: " + std::to_string(s.workers) +
                      " worker threads on this machine would measure its cores, not the policies (virtual time only)");
        continue;
      }
      if (!runs_here(s)) {
        progress.line("compare: " + s.name + " skipped: " + only_virtual(s));
        continue;
      }
      if (opt.validate) {
        ok = compare::validate(h, s, opt, progress, h.policies(s)) && ok;
        continue;
      }
      if (const auto sweeps = opt.sweeps(); !sweeps.empty()) {
        for (const auto& param : sweeps) {
          if (param == "codec") {
            compare::write_codec_sweep(s, compare::run_codec_sweep(h, s, opt, progress), opt);
            progress.line("compare: wrote " + (std::filesystem::path(opt.out) / (s.name + "-sweep-codec")).string() +
                          ".{csv,json,md,dat}");
            continue;
          }
          compare::write_sweep(s, compare::run_sweep(h, s, param, opt, progress), opt);
          progress.line("compare: wrote " + (std::filesystem::path(opt.out) / (s.name + "-sweep-" + param)).string() +
                        ".{csv,dat,md}");
        }
        continue;
      }
      const auto rows = h.scenario(s);
      const auto gs = compare::goals(s, rows, opt);
      compare::print_table(s, rows, gs, opt, h.costs_for(s));
      compare::write_outputs(s, rows, gs, opt, h.costs_for(s));
      progress.line("compare: wrote " + (std::filesystem::path(opt.out) / s.name).string() +
                    ".{csv,json,md,-series.dat,-time.dat}");
    }
    // --validate: the exit status says whether every validation figure met its goal.
    if (!ok) return 3;
  } catch (const std::exception& e) {
    std::cerr << "compare_policies: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
