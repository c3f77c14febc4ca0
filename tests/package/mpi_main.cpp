// Builds against an installed psync's mpi component (psync::mpi) and, run as two ranks,
// sends a push from rank 1 to rank 0 and its model back.
#include <psync/transport/mpi.hpp>

#include <chrono>
#include <cstdio>

int main(int argc, char** argv) {
  using namespace std::chrono_literals;
  psync::MpiSession session(argc, argv);
  psync::Mpi t;
  const auto deadline = psync::Clock::now() + 30s;
  if (t.self() == psync::server_peer) {
    auto e = t.receive(deadline);
    auto* p = e ? std::get_if<psync::msg::Push>(&e->message) : nullptr;
    if (!p) return 1;
    t.send(e->from, psync::msg::Model{1, 0, 0, std::move(p->update), e->from});
    return 0;
  }
  t.send(psync::server_peer, psync::msg::Push{0, 0, 1, Eigen::VectorXf::Constant(100, 2.0f)});
  auto e = t.receive(deadline);
  auto* m = e ? std::get_if<psync::msg::Model>(&e->message) : nullptr;
  const bool ok = m && m->parameters == Eigen::VectorXf::Constant(100, 2.0f);
  std::printf("psync mpi consumer: rank %d of %d, round trip %s\n", t.rank(), t.size(), ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
