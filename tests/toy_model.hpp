#pragma once
// A tiny model for cluster tests: loss 0.5 * ||x - target||^2 per batch, so every
// step is cheap and the exact trajectory is easy to compute by hand.
#include <Eigen/Core>

#include <cstdint>
#include <utility>

namespace psync_test {

struct Target {
  Eigen::VectorXf target;
  Eigen::Index size() const { return 1; }
};

class Quadratic {
 public:
  using Batch = Target;
  explicit Quadratic(Eigen::Index n) : x_(Eigen::VectorXf::Zero(n)) {}
  Eigen::Ref<const Eigen::VectorXf> parameters() const { return x_; }
  Eigen::Ref<Eigen::VectorXf> parameters() { return x_; }
  double loss(const Batch& b) const { return 0.5 * (x_ - b.target).squaredNorm(); }
  double gradient(const Batch& b, Eigen::Ref<Eigen::VectorXf> g) const {
    g = x_ - b.target;
    return 0.5 * g.squaredNorm();
  }

 private:
  Eigen::VectorXf x_;
};

/// Drives one worker core and one server core on this thread for `steps` local steps
/// of the Quadratic towards `t`, delivering the server's replies only every other
/// step (so OSP accumulates while a push is in flight) and whenever the worker may
/// not compute. The no-allocation tests of the cores and of the codecs run it.
template <class Server, class Worker, class TimePoint>
void drive_one_worker(Server& server, Worker& worker, const Target& t, int steps, TimePoint now) {
  for (int i = 0; i < steps; ++i) {
    while (auto m = worker.poll_transmit()) server.on_message(0, std::move(m->message), now);
    if (i % 2 == 0) {
      while (auto m = server.poll_transmit()) worker.on_message(std::move(m->message), now);
    }
    while (!worker.begin_step(now)) {
      while (auto m = server.poll_transmit()) worker.on_message(std::move(m->message), now);
    }
    worker.model().gradient(t, worker.gradient());
    worker.end_step(1, 0, now);
  }
}

}  // namespace psync_test
