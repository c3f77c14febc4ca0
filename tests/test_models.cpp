// Models: the Model concept and its archetypes, analytic gradients against finite
// differences, copy semantics, no allocation on the hot path, and training sanity
// (synthetic data and Fashion-MNIST).

// Must precede every Eigen include: it makes Eigen's heap allocations checkable.
#define EIGEN_RUNTIME_NO_MALLOC

#include "catch.hpp"

#include "psync/concepts.hpp"
#include "psync/data/dataset.hpp"
#include "psync/data/idx.hpp"
#include "psync/data/synthetic.hpp"
#include "psync/models/cnn.hpp"
#include "psync/models/linear.hpp"
#include "psync/models/mlp.hpp"
#include "psync/models/softmax.hpp"

#include <Eigen/Core>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "alloc_counter.hpp"

namespace {

using psync::data::Batch;
using psync::models::Cnn;
using psync::models::CnnShape;
using psync::models::LinearRegression;
using psync::models::Mlp;
using psync::models::SoftmaxRegression;

// ---- archetypes -------------------------------------------------------------------------

// The least a type needs to be a Model.
struct ModelArchetype {
  using Batch = psync::data::Batch;
  Eigen::VectorXf p;
  Eigen::Ref<const Eigen::VectorXf> parameters() const { return p; }
  Eigen::Ref<Eigen::VectorXf> parameters() { return p; }
  double loss(const Batch&) const { return 0.0; }
  void gradient(const Batch&, Eigen::Ref<Eigen::VectorXf>) const {}
};

// Has parameters and a loss but no gradient: a ParameterSet, not a Model.
struct NoGradient {
  using Batch = psync::data::Batch;
  Eigen::VectorXf p;
  Eigen::Ref<const Eigen::VectorXf> parameters() const { return p; }
  Eigen::Ref<Eigen::VectorXf> parameters() { return p; }
  double loss(const Batch&) const { return 0.0; }
};

// Parameters not held as one contiguous float vector.
struct ScatteredParameters {
  std::vector<Eigen::VectorXf> p;
  const std::vector<Eigen::VectorXf>& parameters() const { return p; }
  std::vector<Eigen::VectorXf>& parameters() { return p; }
};

// Workers copy models, so a move-only one is rejected.
struct MoveOnly {
  MoveOnly() = default;
  MoveOnly(const MoveOnly&) = delete;
  MoveOnly(MoveOnly&&) = default;
  Eigen::VectorXf p;
  Eigen::Ref<const Eigen::VectorXf> parameters() const { return p; }
  Eigen::Ref<Eigen::VectorXf> parameters() { return p; }
};

static_assert(psync::Model<ModelArchetype>);
static_assert(psync::ParameterSet<NoGradient>);
static_assert(!psync::Model<NoGradient>);
static_assert(!psync::ParameterSet<ScatteredParameters>);
static_assert(!psync::ParameterSet<MoveOnly>);
// Only a read-only view of the parameters: the server could not apply updates.
struct ReadOnlyParameters {
  Eigen::VectorXf p;
  Eigen::Ref<const Eigen::VectorXf> parameters() const { return p; }
};
static_assert(!psync::ParameterSet<ReadOnlyParameters>);
static_assert(psync::Model<LinearRegression>);
static_assert(psync::Model<SoftmaxRegression>);
static_assert(psync::Model<Mlp>);

// ---- helpers -----------------------------------------------------------------------------

Batch random_batch(Eigen::Index dim, Eigen::Index n, int classes, std::uint64_t seed) {
  psync::data::detail::Rng rng(seed);
  Batch b;
  b.features.resize(dim, n);
  for (Eigen::Index j = 0; j < n; ++j)
    for (Eigen::Index i = 0; i < dim; ++i) b.features(i, j) = static_cast<float>(rng.normal());
  if (classes > 0) {
    b.labels.resize(n);
    for (Eigen::Index j = 0; j < n; ++j) b.labels[j] = static_cast<int>(rng.below(static_cast<std::uint64_t>(classes)));
  } else {
    b.targets.resize(n);
    for (Eigen::Index j = 0; j < n; ++j) b.targets[j] = static_cast<float>(rng.normal());
  }
  return b;
}

template <class M>
void randomize(M& model, std::uint64_t seed, float sd) {
  psync::data::detail::Rng rng(seed);
  auto p = model.parameters();
  for (Eigen::Index i = 0; i < p.size(); ++i) p[i] = static_cast<float>(sd * rng.normal());
}

// Relative error between the analytic gradient and central differences over all coordinates.
template <class M>
double gradient_error(M model, const Batch& b, float h) {
  Eigen::VectorXf g(model.dimension());
  const double loss = model.gradient(b, g);
  REQUIRE(loss == Approx(model.loss(b)).epsilon(1e-6));
  Eigen::VectorXd numeric(model.dimension());
  auto p = model.parameters();
  for (Eigen::Index i = 0; i < p.size(); ++i) {
    const float saved = p[i];
    p[i] = saved + h;
    const double up = model.loss(b);
    p[i] = saved - h;
    const double down = model.loss(b);
    p[i] = saved;
    // The step actually taken in float, not the nominal h.
    const double step = static_cast<double>(saved + h) - static_cast<double>(saved - h);
    numeric[i] = (up - down) / step;
  }
  const Eigen::VectorXd analytic = g.cast<double>();
  return (analytic - numeric).norm() / std::max(analytic.norm(), numeric.norm());
}

// Smallest |pre-activation| of any hidden unit on the batch. Central differences are
// only valid if no ReLU switches within +-h, so the MLP checks require a margin.
double relu_margin(const Mlp& model, const Batch& b) {
  Eigen::MatrixXf a = b.features;
  double margin = std::numeric_limits<double>::infinity();
  for (std::size_t l = 0; l + 1 < model.depth(); ++l) {
    const Eigen::MatrixXf z = (model.weights(l) * a).colwise() + model.bias(l);
    margin = std::min(margin, static_cast<double>(z.cwiseAbs().minCoeff()));
    a = z.cwiseMax(0.0f);
  }
  return margin;
}

// Plain sequential minibatch SGD.
template <class M>
void sgd(M& model, psync::data::BatchSampler& sampler, int steps, float lr) {
  Eigen::VectorXf g(model.dimension());
  for (int s = 0; s < steps; ++s) {
    model.gradient(sampler.next(), g);
    model.parameters() -= lr * g;
  }
}

// Allocations (Eigen's or operator new's) made by f; Eigen's would abort the test outright.
template <class F>
long allocations_during(F&& f) {
  const long before = g_allocations.load();
  Eigen::internal::set_is_malloc_allowed(false);
  f();
  Eigen::internal::set_is_malloc_allowed(true);
  return g_allocations.load() - before;
}

}  // namespace

// ---- gradients -----------------------------------------------------------------------------

TEST_CASE("LinearRegression gradient matches finite differences", "[models][gradient]") {
  LinearRegression model(6);
  randomize(model, 3, 0.5f);
  CHECK(gradient_error(model, random_batch(6, 9, 0, 11), 1e-2f) < 1e-2);
}

TEST_CASE("SoftmaxRegression gradient matches finite differences", "[models][gradient]") {
  SoftmaxRegression model(6, 4);
  randomize(model, 4, 0.5f);
  CHECK(gradient_error(model, random_batch(6, 9, 4, 12), 1e-2f) < 1e-2);
  SECTION("across chunks of a batch wider than max_chunk (the last chunk has one sample)") {
    CHECK(gradient_error(model, random_batch(6, psync::models::detail::max_chunk * 2 + 1, 4, 13), 1e-2f) < 1e-2);
  }
  SECTION("a batch of one sample") { CHECK(gradient_error(model, random_batch(6, 1, 4, 19), 1e-2f) < 1e-2); }
}

// A random batch on which no hidden unit of `model` is within 10 h of its ReLU kink.
Batch batch_away_from_kinks(const Mlp& model, Eigen::Index n, float h) {
  for (std::uint64_t seed = 100;; ++seed) {
    Batch b = random_batch(model.inputs(), n, model.classes(), seed);
    if (relu_margin(model, b) > 10 * h) return b;
  }
}

TEST_CASE("Mlp gradient matches finite differences", "[models][gradient]") {
  const float h = 1e-3f;
  Mlp model({5, 7, 6, 3});
  randomize(model, 5, 0.6f);  // non-zero biases too
  CHECK(gradient_error(model, batch_away_from_kinks(model, 9, h), h) < 1e-2);
  SECTION("single hidden layer and no hidden layer") {
    Mlp one({4, 5, 3});
    randomize(one, 6, 0.6f);
    CHECK(gradient_error(one, batch_away_from_kinks(one, 7, h), h) < 1e-2);
    Mlp none({4, 3});
    randomize(none, 7, 0.6f);
    CHECK(gradient_error(none, random_batch(4, 7, 3, 16), h) < 1e-2);
  }
  SECTION("a batch of one sample") { CHECK(gradient_error(model, batch_away_from_kinks(model, 1, h), h) < 1e-2); }
  SECTION("across chunks of a batch wider than max_chunk") {
    // So many samples always put some unit near a kink; each moves the loss by only O(h / n).
    CHECK(gradient_error(model, random_batch(5, psync::models::detail::max_chunk + 3, 3, 17), h) < 1e-2);
  }
}

// A Cnn small enough for finite differences over every parameter: 16x16 images, 2 and 3
// channels, one dense layer of 5, 3 classes.
Cnn small_cnn() {
  CnnShape s;
  s.side = 16;
  s.conv1 = 2;
  s.conv2 = 3;
  s.hidden = {5};
  s.classes = 3;
  return Cnn(s);
}

TEST_CASE("Cnn gradient matches finite differences", "[models][gradient][cnn]") {
  const float h = 1e-3f;
  Cnn model = small_cnn();
  randomize(model, 8, 0.4f);  // non-zero biases too
  CHECK(model.dimension() == (2 * 25 + 2) + (3 * 50 + 3) + (5 * 12 + 5) + (3 * 5 + 3));
  CHECK(gradient_error(model, random_batch(256, 5, 3, 41), h) < 1e-2);
  SECTION("a batch of one sample") { CHECK(gradient_error(model, random_batch(256, 1, 3, 42), h) < 1e-2); }
  SECTION("across chunks of a batch wider than Cnn::max_chunk (the last chunk has one sample)") {
    // The mean over 129 samples is the samples-weighted mean of the two chunks' gradients.
    const Batch wide = random_batch(256, Cnn::max_chunk + 1, 3, 43);
    Batch head, tail;
    head.features = wide.features.leftCols(Cnn::max_chunk);
    head.labels = wide.labels.head(Cnn::max_chunk);
    tail.features = wide.features.rightCols(1);
    tail.labels = wide.labels.tail(1);
    Eigen::VectorXf g(model.dimension()), g_head(model.dimension()), g_tail(model.dimension());
    const double loss = model.gradient(wide, g);
    const double loss_head = model.gradient(head, g_head);
    const double loss_tail = model.gradient(tail, g_tail);
    const double n = static_cast<double>(wide.size());
    CHECK(loss == Approx((loss_head * Cnn::max_chunk + loss_tail) / n).epsilon(1e-5));
    const Eigen::VectorXf expected = (g_head * static_cast<float>(Cnn::max_chunk) + g_tail) / static_cast<float>(n);
    CHECK((g - expected).norm() <= 1e-5 * expected.norm());
    CHECK(gradient_error(model, random_batch(256, 3, 3, 45), h) < 1e-2);
  }
  SECTION("no dense hidden layer") {
    CnnShape s = small_cnn().shape();
    s.hidden = {};
    Cnn flat(s);
    randomize(flat, 9, 0.4f);
    CHECK(gradient_error(flat, random_batch(256, 4, 3, 44), h) < 1e-2);
  }
}

TEST_CASE("Cnn: LeNet-5 sizes by default, deterministic initialization, bad shapes refused", "[models][cnn]") {
  Cnn a, b;
  CHECK(a.dimension() == 61706);  // 156 + 2,416 + 48,120 + 10,164 + 850
  CHECK(a.inputs() == 784);
  CHECK(a.classes() == 10);
  a.initialize(42);
  b.initialize(42);
  CHECK(a.parameters() == b.parameters());
  b.initialize(43);
  CHECK(a.parameters() != b.parameters());
  CnnShape bad;
  bad.side = 27;
  CHECK_THROWS_AS(Cnn(bad), psync::ConfigError);
  bad.side = 14;  // 14 / 2 - 4 = 3: odd, pool 2 would drop a row
  CHECK_THROWS_AS(Cnn(bad), psync::ConfigError);
  bad = {};
  bad.conv2 = 0;
  CHECK_THROWS_AS(Cnn(bad), psync::ConfigError);
  bad = {};
  bad.hidden = {120, 0};
  CHECK_THROWS_AS(Cnn(bad), psync::ConfigError);
  bad = {};
  bad.classes = 1;
  CHECK_THROWS_AS(Cnn(bad), psync::ConfigError);
  Eigen::VectorXf wrong(10);
  CHECK_THROWS_AS(a.gradient(random_batch(784, 2, 10, 1), wrong), psync::ConfigError);
  CHECK_THROWS_AS(a.loss(random_batch(783, 2, 10, 1)), psync::ConfigError);
}

TEST_CASE("softmax cross-entropy stays finite for huge logits", "[models]") {
  SoftmaxRegression model(2, 3);
  model.weights() << 1e4f, -1e4f, -1e4f, 1e4f, 0.0f, 0.0f;
  Batch b = random_batch(2, 5, 3, 1);
  Eigen::VectorXf g(model.dimension());
  CHECK(std::isfinite(model.gradient(b, g)));
  CHECK(g.allFinite());
}

// ---- copies and sizes ----------------------------------------------------------------------

TEMPLATE_TEST_CASE("a copied model owns its parameters and workspaces", "[models][copy]", SoftmaxRegression, Mlp, Cnn) {
  auto make = [] {
    if constexpr (std::is_same_v<TestType, Mlp>) return Mlp({8, 6, 3});
    else if constexpr (std::is_same_v<TestType, Cnn>) return small_cnn();
    else return SoftmaxRegression(8, 3);
  };
  const Eigen::Index inputs = std::is_same_v<TestType, Cnn> ? 256 : 8;
  TestType original = make();
  randomize(original, 9, 0.3f);
  const Batch a = random_batch(inputs, 20, 3, 21);
  const Batch b = random_batch(inputs, 33, 3, 22);
  Eigen::VectorXf g_before(original.dimension()), g_after(original.dimension()), g_copy(original.dimension());
  original.gradient(a, g_before);

  TestType copy = original;
  CHECK(copy.parameters().data() != original.parameters().data());
  CHECK(copy.parameters() == original.parameters());
  copy.parameters().setConstant(0.25f);
  CHECK(original.parameters() != copy.parameters());
  copy.gradient(b, g_copy);  // must not disturb the original's workspace
  original.gradient(a, g_after);
  CHECK(g_after == g_before);

  TestType assigned = make();
  assigned = original;
  CHECK(assigned.parameters().data() != original.parameters().data());
  Eigen::VectorXf g_assigned(original.dimension());
  assigned.gradient(a, g_assigned);
  CHECK(g_assigned == g_before);

  TestType moved = std::move(assigned);
  Eigen::VectorXf g_moved(original.dimension());
  moved.gradient(a, g_moved);
  CHECK(g_moved == g_before);
}

TEST_CASE("models reject bad sizes and labels", "[models][errors]") {
  CHECK_THROWS_AS(LinearRegression(0), psync::ConfigError);
  CHECK_THROWS_AS(SoftmaxRegression(3, 1), psync::ConfigError);
  CHECK_THROWS_AS(Mlp({5}), psync::ConfigError);
  CHECK_THROWS_AS(Mlp({5, 0, 3}), psync::ConfigError);
  CHECK_THROWS_AS(Mlp({5, 4, 1}), psync::ConfigError);

  SoftmaxRegression softmax(4, 3);
  Eigen::VectorXf wrong(5);
  CHECK_THROWS_AS(softmax.gradient(random_batch(4, 3, 3, 1), wrong), psync::ConfigError);
  CHECK_THROWS_AS(softmax.loss(random_batch(5, 3, 3, 1)), psync::ConfigError);
  Batch bad = random_batch(4, 3, 3, 1);
  bad.labels[1] = 3;
  CHECK_THROWS_AS(softmax.loss(bad), psync::DataError);
  CHECK_THROWS_AS(LinearRegression(4).loss(random_batch(4, 3, 3, 1)), psync::ConfigError);  // no targets
}

TEST_CASE("Mlp initialization is deterministic and scaled", "[models]") {
  Mlp a({100, 50, 10}), b({100, 50, 10});
  a.initialize(42);
  b.initialize(42);
  CHECK(a.parameters() == b.parameters());
  b.initialize(43);
  CHECK(a.parameters() != b.parameters());
  const float sd = std::sqrt(a.weights(0).squaredNorm() / static_cast<float>(a.weights(0).size()));
  CHECK(sd == Approx(std::sqrt(2.0 / 100)).epsilon(0.05));
  CHECK(a.bias(0).isZero());
  CHECK(a.dimension() == 50 * 101 + 10 * 51);
}

// ---- allocation ----------------------------------------------------------------------------

TEST_CASE("gradient, loss and accuracy do not allocate after warm-up", "[models][alloc]") {
  const Batch big = random_batch(784, 64, 10, 31);
  const Batch small = random_batch(784, 16, 10, 32);
  const Batch one = random_batch(784, 1, 10, 33);
  Batch regression = random_batch(784, 64, 0, 34);

  Mlp mlp({784, 256, 128, 10});
  SoftmaxRegression softmax(784, 10);
  randomize(softmax, 1, 0.01f);
  LinearRegression linear(784);
  Cnn cnn;
  Eigen::VectorXf g_mlp(mlp.dimension()), g_softmax(softmax.dimension()), g_linear(linear.dimension());
  Eigen::VectorXf g_cnn(cnn.dimension());
  mlp.gradient(big, g_mlp);  // warm-up sizes every workspace
  cnn.gradient(big, g_cnn);
  softmax.gradient(big, g_softmax);
  linear.gradient(regression, g_linear);

  double sink = 0.0;
  const long count = allocations_during([&] {
    for (const Batch* b : {&big, &small, &one, &big}) {
      sink += mlp.gradient(*b, g_mlp);
      sink += mlp.loss(*b) + mlp.accuracy(*b);
      sink += softmax.gradient(*b, g_softmax);
      sink += softmax.loss(*b) + softmax.accuracy(*b);
      sink += cnn.gradient(*b, g_cnn);
      sink += cnn.loss(*b) + cnn.accuracy(*b);
    }
    sink += linear.gradient(regression, g_linear) + linear.loss(regression);
  });
  CHECK(count == 0);
  CHECK(std::isfinite(sink));
}

// ---- training ----------------------------------------------------------------------------

TEST_CASE("sequential SGD learns synthetic data", "[models][training]") {
  psync::data::SyntheticOptions opt;
  opt.noise = 1.5f;  // overlapping blobs: not solved by the first step
  const auto data = psync::data::make_synthetic_classification(opt);
  const auto train = data.subset(0, 3072);
  const auto test = psync::data::whole(data.subset(3072, 1024));

  SECTION("softmax regression") {
    SoftmaxRegression model(opt.dimension, opt.classes);
    const double before = model.loss(test);
    psync::data::BatchSampler sampler(train, 32, 7);
    sgd(model, sampler, 500, 0.1f);
    CHECK(model.loss(test) < 0.5 * before);
    CHECK(model.accuracy(test) > 0.9);
  }
  SECTION("mlp") {
    Mlp model({opt.dimension, 32, opt.classes});
    psync::data::BatchSampler sampler(train, 32, 8);
    sgd(model, sampler, 500, 0.05f);
    CHECK(model.accuracy(test) > 0.9);
  }
  SECTION("linear regression") {
    psync::data::SyntheticOptions ro;
    ro.noise = 0.1f;
    const auto reg = psync::data::make_synthetic_regression(ro);
    LinearRegression model(ro.dimension);
    const auto all = psync::data::whole(reg);
    const double before = model.loss(all);
    psync::data::BatchSampler sampler(reg, 32, 9);
    sgd(model, sampler, 1000, 0.05f);
    const double after = model.loss(all);
    CHECK(after < 0.05 * before);
    CHECK(after < 2.0 * 0.5 * ro.noise * ro.noise);  // near the noise floor
  }
}

TEST_CASE("Cnn SGD learns Fashion-MNIST: 65% test accuracy after 200 steps", "[models][training][fashion][cnn]") {
  psync::data::TrainTest fm;
  REQUIRE_NOTHROW(fm = psync::data::load_fashion_mnist(PSYNC_FASHION_MNIST_DIR));
  const auto test = psync::data::whole(fm.test, 2000);
  Cnn model;
  model.initialize(7);
  psync::data::BatchSampler sampler(fm.train, 32, 2025);
  const double before = model.accuracy(test);
  const auto start = std::chrono::steady_clock::now();
  sgd(model, sampler, 200, 0.05f);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double accuracy = model.accuracy(test);
  INFO("200 steps in " << seconds << " s; test accuracy " << before << " -> " << accuracy);
  CHECK(before < 0.3);
  CHECK(accuracy >= 0.65);
}

TEST_CASE("softmax SGD reaches 80% test accuracy on Fashion-MNIST", "[models][training][fashion]") {
  psync::data::TrainTest fm;
  REQUIRE_NOTHROW(fm = psync::data::load_fashion_mnist(PSYNC_FASHION_MNIST_DIR));
  const auto test = psync::data::whole(fm.test);
  SoftmaxRegression model(fm.train.dimension(), fm.train.num_classes);
  psync::data::BatchSampler sampler(fm.train, 64, 2024);
  const auto start = std::chrono::steady_clock::now();
  sgd(model, sampler, 3000, 0.1f);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double accuracy = model.accuracy(test);
  INFO("3000 steps in " << seconds << " s; test accuracy " << accuracy);
  CHECK(accuracy >= 0.80);
}
