// Your own model and batch type, trained under every policy (docs/models.md):
// least squares y = w.x, each worker on its own samples of the same problem.
#include <psync/harness.hpp>
#include <psync/psync.hpp>

#include <Eigen/Core>

#include <cstdio>
#include <string>
#include <vector>

struct Points {  // a batch of your own: no psync type in it
  Eigen::MatrixXf x;  // one sample per column
  Eigen::VectorXf y;
  Eigen::Index size() const { return x.cols(); }  // optional: samples per batch
};

class LeastSquares {  // a psync::Model: parameters, loss, const gradient
 public:
  using Batch = Points;
  explicit LeastSquares(Eigen::Index d) : w_(Eigen::VectorXf::Zero(d)) {}
  Eigen::Ref<const Eigen::VectorXf> parameters() const { return w_; }
  Eigen::Ref<Eigen::VectorXf> parameters() { return w_; }
  double loss(const Points& b) const { return 0.5 * (b.x.transpose() * w_ - b.y).squaredNorm() / b.size(); }
  double gradient(const Points& b, Eigen::Ref<Eigen::VectorXf> g) const {
    r_.noalias() = b.x.transpose() * w_;  // r_ is scratch: sized once, no allocation after
    r_ -= b.y;
    g.noalias() = b.x * r_ / static_cast<float>(b.size());
    return 0.5 * r_.squaredNorm() / b.size();
  }

 private:
  Eigen::VectorXf w_;
  mutable Eigen::VectorXf r_;
};

int main() {
  const Eigen::Index d = 8, workers = 4;
  const Eigen::VectorXf w_star = Eigen::VectorXf::LinSpaced(d, -1, 1);  // what training should find
  std::vector<Points> data(workers);
  for (auto& shard : data) {
    shard.x = Eigen::MatrixXf::Random(d, 64);
    shard.y = shard.x.transpose() * w_star + 0.01f * Eigen::VectorXf::Random(64);
  }
  const auto sources = [&](psync::PeerId w) {  // worker w's batches: a callable returning const Points&
    return [&batch = data[w]]() -> const Points& { return batch; };
  };
  const auto evaluate = [](const LeastSquares&) { return psync::Evaluation{}; };
  psync::LocalOptions o;
  o.workers = workers;
  o.steps_per_worker = 500;
  int failures = 0;
  for (const std::string policy : {"bsp", "asp", "ssp:3", "osp:10", "losp:10"}) {
    // BSP and OSP average a round's pushes, ASP and SSP add every push: a quarter of the rate.
    o.learning_rate = policy == "asp" || policy == "ssp:3" ? 0.05f : 0.2f;
    const auto report = psync::with_policy(policy, [&](auto p) {
      return psync::run_local(LeastSquares(d), sources, o, p, evaluate);
    });
    const double error = (report.parameters - w_star).norm();
    std::printf("%-8s |w - w*| = %.4f after %.2f s\n", policy.c_str(), error, report.wall_s);
    failures += error < 0.05 ? 0 : 1;
  }
  return failures;
}
