// Optimizers, learning-rate schedules, a per-step callback and the log hook
// (docs/optimizers.md): one ill-conditioned least-squares problem, 4 workers under
// BSP over the in-process transport, trained with
//   - plain SGD at a constant rate (the default),
//   - Nesterov momentum on the workers, warm-up then cosine,
//   - Adam on the workers, step decay,
//   - momentum on the server (MXNet's set_optimizer): the workers push gradients.
#include <psync/psync.hpp>

#include <Eigen/Core>

#include <cstdio>
#include <future>
#include <string_view>
#include <vector>

namespace optim = psync::optim;

struct Points {
  Eigen::MatrixXf x;  // one sample per column
  Eigen::VectorXf y;
  Eigen::Index size() const { return x.cols(); }
};

class LeastSquares {
 public:
  using Batch = Points;
  explicit LeastSquares(Eigen::Index d) : w_(Eigen::VectorXf::Zero(d)) {}
  Eigen::Ref<const Eigen::VectorXf> parameters() const { return w_; }
  Eigen::Ref<Eigen::VectorXf> parameters() { return w_; }
  double loss(const Points& b) const { return 0.5 * (b.x.transpose() * w_ - b.y).squaredNorm() / b.size(); }
  double gradient(const Points& b, Eigen::Ref<Eigen::VectorXf> g) const {
    r_.noalias() = b.x.transpose() * w_;
    r_ -= b.y;
    g.noalias() = b.x * r_ / static_cast<float>(b.size());
    return 0.5 * r_.squaredNorm() / b.size();
  }

 private:
  Eigen::VectorXf w_;
  mutable Eigen::VectorXf r_;
};

constexpr Eigen::Index d = 8;
constexpr int workers = 4;
constexpr std::uint64_t steps = 300;

/// Trains under BSP with worker-side rule `wo` (its rate `lr`) and server-side optimizer `so`.
template <class WO, class SO = optim::None>
Eigen::VectorXf train(const std::vector<Points>& data, WO wo, optim::Schedule lr, SO so = {}, optim::Schedule server_lr = {}) {
  psync::InProcessHub hub;
  psync::ServerOptions options;
  options.expected_workers = workers;
  options.optimizer_schedule = server_lr;
  psync::Server<LeastSquares, psync::Bsp, SO> server(LeastSquares(d), options, {}, so);
  auto endpoint = hub.endpoint(psync::server_peer);
  auto served = std::async(std::launch::async, [&] { return server.run(endpoint); });
  std::vector<std::future<psync::WorkerReport>> reports;
  for (psync::PeerId w = 0; w < workers; ++w) {
    reports.push_back(std::async(std::launch::async, [&, w] {
      psync::WorkerOptions o;
      o.max_steps = steps;
      o.learning_rate_schedule = lr;
      if (w == 0) {  // the per-step callback: worker 0 reports every 100 steps
        o.on_step = [](const psync::StepInfo& s) {
          if (s.step % 100 == 99) {
            std::printf("    step %3llu  loss %.5f  lr %.4f  clock %llu\n", static_cast<unsigned long long>(s.step + 1),
                        s.loss, s.learning_rate, static_cast<unsigned long long>(s.clock));
          }
        };
      }
      psync::Worker<LeastSquares, psync::InProcess, psync::Bsp, WO> worker(LeastSquares(d), hub.endpoint(w), o, {}, wo);
      return worker.run([&batch = data[w]]() -> const Points& { return batch; });
    }));
  }
  for (auto& r : reports) r.get();
  served.get();
  return server.model().parameters();
}

int main() {
  // Where psync's own messages go (none are expected here): a prefix of ours, or nullptr to silence.
  psync::set_log_handler([](psync::LogLevel level, std::string_view line) {
    std::fprintf(stderr, "[psync %s] %.*s\n", psync::log_level_name(level).data(), static_cast<int>(line.size()), line.data());
  });

  // Features of very different scales: curvatures from about 0.33 down to 0.003, where plain SGD crawls.
  const Eigen::VectorXf scale = Eigen::VectorXf::LinSpaced(d, 1.0f, 0.1f);
  const Eigen::VectorXf w_star = Eigen::VectorXf::LinSpaced(d, -1, 1);
  std::vector<Points> data(workers);
  for (auto& shard : data) {
    shard.x = scale.asDiagonal() * Eigen::MatrixXf::Random(d, 256);
    shard.y = shard.x.transpose() * w_star;
  }
  struct Result {
    const char* name;
    Eigen::VectorXf w;
    double required;  // the error this run must beat
  };
  std::vector<Result> results;
  std::printf("SGD, constant 1.0\n");
  results.push_back({"sgd", train(data, optim::Sgd{}, optim::Constant(1.0f)), 1.0});
  std::printf("Nesterov(0.9) on the workers, 20 warm-up steps then cosine from 1.0 to 0.01\n");
  results.push_back({"nesterov", train(data, optim::Momentum(0.9f, true), optim::Warmup(20, optim::Cosine(1.0f, steps - 20, 0.01f))), 0.05});
  std::printf("Adam on the workers, 0.05 halved every 100 steps\n");
  results.push_back({"adam", train(data, optim::Adam(), optim::StepDecay(0.05f, 0.5f, 100)), 0.05});
  std::printf("momentum(0.9) on the server, constant 0.5; the workers push gradients\n");
  results.push_back({"server momentum",
                     train(data, optim::OnServer{}, optim::Constant(0.5f), optim::Momentum(0.9f), optim::Constant(0.5f)), 0.05});
  int failures = 0;
  for (const auto& r : results) {
    const double error = (r.w - w_star).norm();
    std::printf("%-16s |w - w*| = %.4f\n", r.name, error);
    failures += error < r.required ? 0 : 1;
  }
  return failures;
}
