// The policy headers need the standard library only: not Eigen, not Boost, not zlib.
#include <psync/policies/asp.hpp>
#include <psync/policies/bsp.hpp>
#include <psync/policies/dssp.hpp>
#include <psync/policies/osp.hpp>
#include <psync/policies/ssp.hpp>

#if defined(EIGEN_WORLD_VERSION) || defined(BOOST_VERSION) || defined(ZLIB_VERSION)
#error "a policy header pulled in Eigen, Boost or zlib"
#endif

#include <cstdio>

static_assert(psync::SyncPolicy<psync::Bsp> && psync::SyncPolicy<psync::Asp> && psync::SyncPolicy<psync::Ssp<3>> &&
              psync::SyncPolicy<psync::Osp<20>> && psync::SyncPolicy<psync::Dssp<2, 6>>);

int main() {
  // SSP(3): a read at clock 5 is ready once the slowest worker is at clock 2.
  const psync::Ssp<3> ssp;
  const bool ready = ssp.read_ready({0, 5, 2, {}}) && !ssp.read_ready({0, 6, 2, {}});
  std::printf("policies consumer: %s %s\n", ssp.name().c_str(), ready ? "ok" : "WRONG");
  return ready ? 0 : 1;
}
