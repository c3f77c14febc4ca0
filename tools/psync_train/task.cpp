// psync-train's task (see task.hpp).

#include "task.hpp"

#include <psync/core/error.hpp>
#include <psync/data/idx.hpp>
#include <psync/data/synthetic.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <system_error>

namespace psync_train {

namespace {

// The synthetic task is fixed (only --seed's shards, batch order and initial model
// vary), so every process of a cluster builds the same data without exchanging it.
constexpr Eigen::Index synthetic_samples = 6000;
constexpr Eigen::Index synthetic_test = 1000;
constexpr Eigen::Index synthetic_dimension = 20;
constexpr int synthetic_classes = 4;
constexpr float synthetic_noise = 1.0f;
constexpr std::uint64_t synthetic_seed = 11;

}  // namespace

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

}  // namespace psync_train
