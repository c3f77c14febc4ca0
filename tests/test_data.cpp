// Data: datasets, sharding, the minibatch sampler, synthetic data, and the IDX reader
// (round trips, every malformed-file error, and the real Fashion-MNIST).

// Must precede every Eigen include: it makes Eigen's heap allocations checkable.
#define EIGEN_RUNTIME_NO_MALLOC

#include "catch.hpp"

#include "psync/data/dataset.hpp"
#include "psync/data/idx.hpp"
#include "psync/data/synthetic.hpp"

#include <Eigen/Core>
#include <zlib.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <new>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include "alloc_counter.hpp"

namespace {

namespace fs = std::filesystem;
using psync::data::Batch;
using psync::data::BatchSampler;
using psync::data::Dataset;

// Sample i has feature 0 == i, so any batch or shard says which samples it holds.
Dataset tagged(Eigen::Index n, Eigen::Index dim = 3, int classes = 5) {
  Dataset d;
  d.num_classes = classes;
  d.features.resize(dim, n);
  d.labels.resize(n);
  d.targets.resize(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    d.features.col(i).setConstant(static_cast<float>(i));
    d.labels[i] = static_cast<int>(i % classes);
    d.targets[i] = static_cast<float>(i) * 0.5f;
  }
  return d;
}

std::vector<long> tags(const Eigen::MatrixXf& features) {
  std::vector<long> out;
  for (Eigen::Index j = 0; j < features.cols(); ++j) out.push_back(static_cast<long>(features(0, j)));
  return out;
}

// A fresh directory under the system temp dir, removed afterwards.
struct TempDir {
  fs::path path;
  TempDir() {
    std::random_device rd;
    path = fs::temp_directory_path() /
           ("psync_test_data_" + std::to_string(rd()) + "_" +
            std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
    fs::create_directories(path);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::vector<unsigned char> idx_bytes(std::uint32_t magic, const std::vector<std::uint32_t>& dims,
                                     const std::vector<unsigned char>& payload) {
  std::vector<unsigned char> out;
  auto put = [&](std::uint32_t v) {
    for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<unsigned char>(v >> s));
  };
  put(magic);
  for (auto d : dims) put(d);
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

void write_plain(const fs::path& p, const std::vector<unsigned char>& bytes) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(f.good());
}

void write_gz(const fs::path& p, const std::vector<unsigned char>& bytes) {
  gzFile f = gzopen(p.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())) == static_cast<int>(bytes.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

std::vector<unsigned char> pixels(std::size_t n) {
  std::vector<unsigned char> out(n);
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<unsigned char>((i * 37 + 11) % 256);
  return out;
}

// The DataError message f throws, or nothing if it throws none.
std::optional<std::string> data_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const psync::DataError& e) {
    return std::string(e.what());
  }
  return std::nullopt;
}

bool contains(const std::optional<std::string>& message, const std::string& part) {
  return message && message->find(part) != std::string::npos;
}

}  // namespace

// ---- Dataset, shard, sampler -----------------------------------------------------------------

TEST_CASE("Dataset::subset copies a contiguous range", "[data]") {
  const Dataset d = tagged(10);
  const Dataset s = d.subset(3, 4);
  CHECK(s.size() == 4);
  CHECK(s.dimension() == 3);
  CHECK(s.num_classes == 5);
  CHECK(tags(s.features) == std::vector<long>{3, 4, 5, 6});
  CHECK(s.labels[0] == 3);
  CHECK(s.targets[3] == 3.0f);
  CHECK(d.subset(10, 0).size() == 0);
  CHECK_THROWS_AS(d.subset(8, 3), psync::ConfigError);
  CHECK_THROWS_AS(d.subset(-1, 2), psync::ConfigError);
}

TEST_CASE("shard is disjoint, complete, balanced and deterministic", "[data][shard]") {
  const Dataset d = tagged(1001);
  const auto parts = psync::data::shard(d, 4, 17);
  REQUIRE(parts.size() == 4);
  std::vector<Eigen::Index> sizes;
  std::multiset<long> seen;
  for (const auto& p : parts) {
    sizes.push_back(p.size());
    CHECK(p.num_classes == d.num_classes);
    for (Eigen::Index j = 0; j < p.size(); ++j) {
      const long i = static_cast<long>(p.features(0, j));
      seen.insert(i);
      CHECK(p.labels[j] == d.labels[i]);  // labels and targets travel with their sample
      CHECK(p.targets[j] == d.targets[i]);
    }
  }
  CHECK(sizes == std::vector<Eigen::Index>{251, 250, 250, 250});
  REQUIRE(seen.size() == 1001);
  CHECK(std::set<long>(seen.begin(), seen.end()).size() == 1001);  // no sample twice
  CHECK(*seen.begin() == 0);
  CHECK(*seen.rbegin() == 1000);

  const auto again = psync::data::shard(d, 4, 17);
  for (std::size_t p = 0; p < 4; ++p) CHECK(again[p].features == parts[p].features);
  const auto other = psync::data::shard(d, 4, 18);
  CHECK(other[0].features != parts[0].features);

  CHECK(psync::data::shard(d, 1, 3)[0].size() == 1001);
  CHECK_THROWS_AS(psync::data::shard(d, 0, 1), psync::ConfigError);
  CHECK_THROWS_AS(psync::data::shard(tagged(3), 4, 1), psync::ConfigError);
}

TEST_CASE("BatchSampler covers each epoch exactly once and is deterministic", "[data][sampler]") {
  const Dataset d = tagged(96);
  BatchSampler a(d, 16, 5), b(d, 16, 5), c(d, 16, 6);
  CHECK(a.batch_size() == 16);
  for (int epoch = 0; epoch < 3; ++epoch) {
    std::set<long> seen;
    bool differs = false;
    for (int k = 0; k < 6; ++k) {
      const Batch& x = a.next();
      REQUIRE(x.size() == 16);
      const auto t = tags(x.features);
      CHECK(t == tags(b.next().features));
      differs = differs || t != tags(c.next().features);
      for (Eigen::Index j = 0; j < x.size(); ++j) {
        CHECK(x.labels[j] == d.labels[t[static_cast<std::size_t>(j)]]);
        CHECK(x.targets[j] == d.targets[t[static_cast<std::size_t>(j)]]);
      }
      seen.insert(t.begin(), t.end());
    }
    CHECK(seen.size() == 96);
    CHECK(differs);
    CHECK(a.epoch() == static_cast<std::uint64_t>(epoch));
  }
}

TEST_CASE("BatchSampler streams epochs when the batch size does not divide the data", "[data][sampler]") {
  const Dataset d = tagged(100);
  BatchSampler s(d, 16, 1);
  std::vector<long> stream;
  for (int k = 0; k < 25; ++k) {  // 400 samples: 4 epochs
    const auto t = tags(s.next().features);
    stream.insert(stream.end(), t.begin(), t.end());
  }
  for (std::size_t e = 0; e < 4; ++e) {
    const std::set<long> epoch(stream.begin() + static_cast<long>(e * 100), stream.begin() + static_cast<long>((e + 1) * 100));
    CHECK(epoch.size() == 100);
  }
  static_assert(!std::is_constructible_v<BatchSampler, Dataset&&, Eigen::Index, std::uint64_t>);  // would dangle
  CHECK_THROWS_AS(BatchSampler(d, 0, 1), psync::ConfigError);
  CHECK_THROWS_AS(BatchSampler(d, 101, 1), psync::ConfigError);
}

TEST_CASE("BatchSampler::next does not allocate", "[data][sampler][alloc]") {
  const Dataset d = tagged(1000, 784);
  BatchSampler s(d, 64, 3);
  s.next();
  const long before = g_allocations.load();
  Eigen::internal::set_is_malloc_allowed(false);
  float sink = 0.0f;
  for (int k = 0; k < 100; ++k) sink += s.next().features(0, 0);  // crosses several epoch boundaries
  Eigen::internal::set_is_malloc_allowed(true);
  CHECK(g_allocations.load() - before == 0);
  CHECK(sink >= 0.0f);
}

TEST_CASE("whole() returns all or the first samples", "[data]") {
  const Dataset d = tagged(10);
  CHECK(psync::data::whole(d).size() == 10);
  const Batch b = psync::data::whole(d, 4);
  CHECK(tags(b.features) == std::vector<long>{0, 1, 2, 3});
  CHECK(b.labels.size() == 4);
  CHECK(psync::data::whole(d, 50).size() == 10);
}

// ---- synthetic ---------------------------------------------------------------------------------

TEST_CASE("synthetic datasets are shaped, balanced and deterministic", "[data][synthetic]") {
  psync::data::SyntheticOptions o;
  o.samples = 400;
  o.dimension = 7;
  o.classes = 4;
  const Dataset c = psync::data::make_synthetic_classification(o);
  CHECK(c.size() == 400);
  CHECK(c.dimension() == 7);
  CHECK(c.num_classes == 4);
  CHECK(c.targets.size() == 0);
  for (int k = 0; k < 4; ++k) CHECK((c.labels.array() == k).count() == 100);
  CHECK(psync::data::make_synthetic_classification(o).features == c.features);
  o.seed = 2;
  CHECK(psync::data::make_synthetic_classification(o).features != c.features);

  const Dataset r = psync::data::make_synthetic_regression(o);
  CHECK(r.size() == 400);
  CHECK(r.labels.size() == 0);
  CHECK(r.targets.size() == 400);
  CHECK(r.num_classes == 0);
  CHECK(psync::data::make_synthetic_regression(o).targets == r.targets);

  o.classes = 1;
  CHECK_THROWS_AS(psync::data::make_synthetic_classification(o), psync::ConfigError);
  o.classes = 3;
  o.noise = -1.0f;
  CHECK_THROWS_AS(psync::data::make_synthetic_regression(o), psync::ConfigError);
}

// ---- IDX -------------------------------------------------------------------------------------

TEST_CASE("IDX files round-trip, plain and gzip", "[data][idx]") {
  TempDir dir;
  const auto px = pixels(3 * 2 * 4);
  const auto image_bytes = idx_bytes(0x803, {3, 2, 4}, px);
  const auto label_bytes = idx_bytes(0x801, {3}, {7, 0, 9});
  write_plain(dir.path / "images", image_bytes);
  write_gz(dir.path / "images.gz", image_bytes);
  write_plain(dir.path / "labels", label_bytes);
  write_gz(dir.path / "labels.gz", label_bytes);

  for (const char* name : {"images", "images.gz"}) {
    const Eigen::MatrixXf m = psync::data::read_idx_images(dir.path / name);
    REQUIRE(m.rows() == 8);
    REQUIRE(m.cols() == 3);
    for (Eigen::Index j = 0; j < 3; ++j)
      for (Eigen::Index i = 0; i < 8; ++i) CHECK(m(i, j) == static_cast<float>(px[static_cast<std::size_t>(j * 8 + i)]) / 255.0f);
    CHECK(m.minCoeff() >= 0.0f);
    CHECK(m.maxCoeff() <= 1.0f);
  }
  for (const char* name : {"labels", "labels.gz"}) {
    const Eigen::VectorXi l = psync::data::read_idx_labels(dir.path / name);
    CHECK(l == (Eigen::VectorXi(3) << 7, 0, 9).finished());
  }
  const Dataset d = psync::data::load_idx(dir.path / "images.gz", dir.path / "labels");
  CHECK(d.size() == 3);
  CHECK(d.num_classes == 10);

  SECTION("load_fashion_mnist finds .gz and plain files") {
    write_gz(dir.path / "train-images-idx3-ubyte.gz", image_bytes);
    write_plain(dir.path / "train-labels-idx1-ubyte", label_bytes);
    write_plain(dir.path / "t10k-images-idx3-ubyte", image_bytes);
    write_gz(dir.path / "t10k-labels-idx1-ubyte.gz", label_bytes);
    const auto tt = psync::data::load_fashion_mnist(dir.path);
    CHECK(tt.train.size() == 3);
    CHECK(tt.test.size() == 3);
    CHECK(tt.train.num_classes == 10);
    fs::remove(dir.path / "t10k-labels-idx1-ubyte.gz");
    const auto e = data_error([&] { psync::data::load_fashion_mnist(dir.path); });
    CHECK(contains(e, "t10k-labels-idx1-ubyte"));
  }
}

TEST_CASE("IDX reader reports every malformed file", "[data][idx][errors]") {
  TempDir dir;
  const auto image_bytes = idx_bytes(0x803, {3, 2, 4}, pixels(24));
  const auto label_bytes = idx_bytes(0x801, {3}, {1, 2, 3});

  SECTION("missing file") {
    const fs::path p = dir.path / "no-such-file.gz";
    const auto e = data_error([&] { psync::data::read_idx_images(p); });
    CHECK(contains(e, p.string()));
    CHECK(contains(e, "does not exist"));
    CHECK(contains(data_error([&] { psync::data::read_idx_labels(dir.path); }), "not a regular file"));
  }
  SECTION("truncated header") {
    write_plain(dir.path / "short", std::vector<unsigned char>(image_bytes.begin(), image_bytes.begin() + 10));
    write_plain(dir.path / "tiny", {0, 0});
    const auto e = data_error([&] { psync::data::read_idx_images(dir.path / "short"); });
    CHECK(contains(e, (dir.path / "short").string()));
    CHECK(contains(e, "truncated"));
    CHECK(contains(data_error([&] { psync::data::read_idx_labels(dir.path / "tiny"); }), "truncated"));
  }
  SECTION("truncated data, plain and gzip") {
    const std::vector<unsigned char> cut(image_bytes.begin(), image_bytes.end() - 5);
    write_plain(dir.path / "cut", cut);
    write_gz(dir.path / "cut.gz", cut);
    for (const char* name : {"cut", "cut.gz"}) {
      const auto e = data_error([&] { psync::data::read_idx_images(dir.path / name); });
      CHECK(contains(e, (dir.path / name).string()));
      CHECK(contains(e, "truncated"));
      CHECK(contains(e, "3 images of 2x4"));
    }
    write_plain(dir.path / "labels-cut", std::vector<unsigned char>(label_bytes.begin(), label_bytes.end() - 1));
    CHECK(contains(data_error([&] { psync::data::read_idx_labels(dir.path / "labels-cut"); }), "truncated"));
  }
  SECTION("gzip stream cut short") {
    // Large enough that its compressed form is many bytes; chop the compressed file itself.
    const auto big = idx_bytes(0x803, {50, 28, 28}, pixels(50 * 28 * 28));
    write_gz(dir.path / "full.gz", big);
    std::ifstream in(dir.path / "full.gz", std::ios::binary);
    std::vector<unsigned char> compressed((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    compressed.resize(compressed.size() / 2);
    write_plain(dir.path / "half.gz", compressed);
    const auto e = data_error([&] { psync::data::read_idx_images(dir.path / "half.gz"); });
    CHECK(contains(e, (dir.path / "half.gz").string()));
  }
  SECTION("wrong magic number") {
    write_plain(dir.path / "labels", label_bytes);
    write_plain(dir.path / "images", image_bytes);
    const auto e = data_error([&] { psync::data::read_idx_images(dir.path / "labels"); });
    CHECK(contains(e, (dir.path / "labels").string()));
    CHECK(contains(e, "0x00000801"));
    CHECK(contains(e, "0x00000803"));
    CHECK(contains(data_error([&] { psync::data::read_idx_labels(dir.path / "images"); }), "0x00000803"));
    write_plain(dir.path / "floats", idx_bytes(0xD03, {1, 1, 1}, {0, 0, 0, 0}));
    CHECK(contains(data_error([&] { psync::data::read_idx_images(dir.path / "floats"); }), "32-bit floats"));
  }
  SECTION("implausible or empty dimensions are rejected before allocating") {
    write_plain(dir.path / "huge", idx_bytes(0x803, {100000, 100000, 100000}, {}));
    write_plain(dir.path / "zero", idx_bytes(0x803, {0, 28, 28}, {}));
    CHECK(contains(data_error([&] { psync::data::read_idx_images(dir.path / "huge"); }), "implausible"));
    CHECK(contains(data_error([&] { psync::data::read_idx_images(dir.path / "zero"); }), "as 0"));
  }
  SECTION("trailing bytes") {
    auto longer = label_bytes;
    longer.push_back(4);
    write_plain(dir.path / "long", longer);
    CHECK(contains(data_error([&] { psync::data::read_idx_labels(dir.path / "long"); }), "trailing"));
  }
  SECTION("image count differs from label count") {
    write_plain(dir.path / "images", image_bytes);
    write_plain(dir.path / "labels4", idx_bytes(0x801, {4}, {1, 2, 3, 4}));
    const auto e = data_error([&] { psync::data::load_idx(dir.path / "images", dir.path / "labels4"); });
    CHECK(contains(e, "3 images"));
    CHECK(contains(e, "4 labels"));
    CHECK(contains(e, (dir.path / "labels4").string()));
  }
  SECTION("label out of range") {
    write_plain(dir.path / "images", image_bytes);
    write_plain(dir.path / "labels", idx_bytes(0x801, {3}, {1, 10, 3}));
    const auto e = data_error([&] { psync::data::load_idx(dir.path / "images", dir.path / "labels"); });
    CHECK(contains(e, (dir.path / "labels").string()));
    CHECK(contains(e, "label 1 is 10"));
  }
}

TEST_CASE("Fashion-MNIST loads", "[data][idx][fashion]") {
  psync::data::TrainTest fm;
  const auto start = std::chrono::steady_clock::now();
  REQUIRE_NOTHROW(fm = psync::data::load_fashion_mnist(PSYNC_FASHION_MNIST_DIR));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO("loaded in " << seconds << " s");
  REQUIRE(fm.train.size() == 60000);
  REQUIRE(fm.test.size() == 10000);
  CHECK(fm.train.dimension() == 784);
  CHECK(fm.test.dimension() == 784);
  CHECK(fm.train.num_classes == 10);
  for (const Dataset* d : {&fm.train, &fm.test}) {
    CHECK(d->labels.minCoeff() == 0);
    CHECK(d->labels.maxCoeff() == 9);
    CHECK(d->features.minCoeff() == 0.0f);
    CHECK(d->features.maxCoeff() == 1.0f);
    for (int k = 0; k < 10; ++k) CHECK((d->labels.array() == k).count() == d->size() / 10);  // balanced classes
  }
}
