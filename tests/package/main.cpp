// Builds against an installed psync via find_package and trains a tiny cluster, with
// psync::psync alone: the umbrella header and its opt-in models and harness must need
// Eigen and the standard library only.
#include <psync/harness.hpp>
#include <psync/models.hpp>
#include <psync/psync.hpp>

#if defined(BOOST_ASIO_VERSION) || defined(BOOST_VERSION)
#error "psync::psync's headers pulled in Boost: the TCP transport belongs to psync/tcp.hpp (psync::tcp)"
#endif
#if defined(ZLIB_VERSION)
#error "psync::psync's headers pulled in zlib: the IDX reader belongs to psync/data/fashion_mnist.hpp (psync::data)"
#endif

#include <cstdio>

int main() {
  psync::data::SyntheticOptions d;
  d.samples = 2000;
  d.dimension = 8;
  d.classes = 3;
  const auto data = psync::data::make_synthetic_classification(d);
  psync::LocalOptions o;
  o.workers = 2;
  o.steps_per_worker = 200;
  o.batch_size = 16;
  const auto r = psync::run_local(psync::models::SoftmaxRegression(8, 3), data, &data, o, psync::Osp<4>{});
  std::printf("psync %s consumer: %s accuracy %.3f\n", PSYNC_VERSION_STRING, r.policy.c_str(), r.final_accuracy());
  return r.final_accuracy() > 0.8 ? 0 : 1;
}
