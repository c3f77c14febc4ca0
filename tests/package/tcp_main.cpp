// psync::tcp from an installed psync: a server and two workers over loopback TCP,
// each worker with its own connection, training softmax regression under BSP.
#include <psync/models.hpp>
#include <psync/tcp.hpp>

#include <cstdio>
#include <future>
#include <vector>

int main() {
  using namespace std::chrono_literals;
  psync::data::SyntheticOptions d;
  d.samples = 2000;
  d.dimension = 8;
  d.classes = 3;
  const auto data = psync::data::make_synthetic_classification(d);
  const psync::models::SoftmaxRegression model(8, 3);

  psync::TcpServer endpoint;  // 127.0.0.1, a free port
  psync::ServerOptions so;
  so.expected_workers = 2;
  psync::Server<psync::models::SoftmaxRegression, psync::Bsp> server(model, so);
  auto served = std::async(std::launch::async, [&] { return server.run(endpoint); });
  std::vector<std::future<psync::WorkerReport>> workers;
  for (psync::PeerId id = 0; id < 2; ++id) {
    workers.push_back(std::async(std::launch::async, [&, id] {
      psync::WorkerOptions wo;
      wo.learning_rate = 0.2f;
      wo.max_steps = 150;
      psync::Worker<psync::models::SoftmaxRegression, psync::Tcp, psync::Bsp> w(
          model, psync::Tcp("127.0.0.1", endpoint.port(), id), wo);
      psync::data::BatchSampler batches(data, 16, id + 1);
      return w.run([&]() -> const psync::data::Batch& { return batches.next(); });
    }));
  }
  for (auto& w : workers) w.get();
  const psync::ServerReport r = served.get();
  const double acc = server.model().accuracy(psync::data::whole(data));
  std::printf("tcp consumer: %llu steps applied, accuracy %.3f\n", static_cast<unsigned long long>(r.steps_applied), acc);
  return r.steps_applied == 300 && acc > 0.8 ? 0 : 1;
}
