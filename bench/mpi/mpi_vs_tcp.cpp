// MPI against TCP: push+reply round trips to a real psync::Server (ASP: every push is
// applied and answered at once), the same worker code over psync::Mpi and over
// psync::Tcp on loopback, in one run, for each vector size; prints the medians and the
// ratio MPI/TCP. Two ranks: rank 0 runs the servers, rank 1 the worker.
//
// Run: mpirun -np 2 build/bench/mpi_vs_tcp [--sizes 1000,1000000,10000000] [--rounds-scale X]
// (as root add --allow-run-as-root). Each size runs MPI, then TCP, then MPI and TCP again;
// a transport's figure is over both of its runs.

#include <psync/core/server.hpp>
#include <psync/policies/asp.hpp>
#include <psync/transport/mpi.hpp>
#include <psync/transport/tcp.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using namespace std::chrono_literals;
using psync::Clock;
using psync::server_peer;
namespace msg = psync::msg;

// The server's model: nothing but parameters.
struct Params {
  Eigen::VectorXf x;
  Eigen::Ref<const Eigen::VectorXf> parameters() const { return x; }
  Eigen::Ref<Eigen::VectorXf> parameters() { return x; }
};

constexpr int port_tag = 1;  // rank 0 tells rank 1 the TCP port (plain MPI, outside psync's tags)

psync::ServerOptions server_options() {
  psync::ServerOptions so;
  so.expected_workers = 1;
  so.join_timeout = 60s;
  so.peer_timeout = 60s;
  return so;
}

template <class T>
msg::Model await_model(T& t) {
  auto e = t.receive(Clock::now() + 60s);
  if (!e) throw std::runtime_error("no reply from the server within 60 s");
  auto* m = std::get_if<msg::Model>(&e->message);
  if (!m) throw std::runtime_error("expected a model, got a " + std::string(psync::message_name(e->message)));
  return std::move(*m);
}

// The worker's side: join, `warmup` untimed round trips, `rounds` timed ones, leave.
template <class T>
std::vector<double> client(T& t, Eigen::Index n, int warmup, int rounds) {
  t.send(server_peer, msg::Join{0, static_cast<std::uint64_t>(n), "asp"});
  msg::Model m = await_model(t);
  std::uint64_t clock = m.min_clock;
  Eigen::VectorXf v = Eigen::VectorXf::Zero(n);  // the update; the model (zeros + zeros) comes back in it
  std::vector<double> us;
  us.reserve(static_cast<std::size_t>(rounds));
  for (int i = 0; i < warmup + rounds; ++i) {
    const auto t0 = Clock::now();
    t.send(server_peer, msg::Push{clock, m.version, 1, std::move(v)});
    m = await_model(t);
    const auto t1 = Clock::now();
    ++clock;
    v = std::move(m.parameters);
    if (i >= warmup) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  t.send(server_peer, msg::Leave{});
  return us;
}

template <class T>
void serve(T& t, Eigen::Index n) {
  psync::Server<Params, psync::Asp> server(Params{Eigen::VectorXf::Zero(n)}, server_options());
  const psync::ServerReport r = server.run(t);
  if (r.updates_applied == 0) throw std::runtime_error("the server applied no update");
}

double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))];
}

std::vector<Eigen::Index> parse_sizes(const char* text) {
  std::vector<Eigen::Index> sizes;
  std::string s = text;
  std::size_t at = 0;
  while (at <= s.size()) {
    const std::size_t comma = std::min(s.find(',', at), s.size());
    sizes.push_back(std::stoll(s.substr(at, comma - at)));
    at = comma + 1;
  }
  return sizes;
}

}  // namespace

int main(int argc, char** argv) {
  psync::MpiSession session(argc, argv);
  std::vector<Eigen::Index> sizes{1'000, 1'000'000, 10'000'000};
  double rounds_scale = 1.0;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--sizes") && i + 1 < argc) {
      sizes = parse_sizes(argv[++i]);
    } else if (!std::strcmp(argv[i], "--rounds-scale") && i + 1 < argc) {
      rounds_scale = std::atof(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: mpirun -np 2 mpi_vs_tcp [--sizes N,N,...] [--rounds-scale X]\n");
      return 2;
    }
  }
  int rank = 0;
  int size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size != 2) {
    if (rank == 0) std::fprintf(stderr, "mpi_vs_tcp: run it with 2 ranks (mpirun -np 2), not %d\n", size);
    return 2;
  }
  try {
    if (rank == 0) {
#ifdef PSYNC_BUILD_FLAGS
      std::printf("build: %s\n", PSYNC_BUILD_FLAGS);
#endif
      std::printf("%10s  %-4s %6s %11s %11s %11s %9s\n", "floats", "via", "rounds", "median_us", "p10_us",
                  "p90_us", "GB/s");
    }
    int tag = 100;
    for (const Eigen::Index n : sizes) {
      const int rounds = std::max(20, static_cast<int>(rounds_scale * std::min(2000.0, 2e8 / static_cast<double>(n))));
      const int warmup = 5;
      std::vector<double> mpi_us, tcp_us;
      for (int pass = 0; pass < 2; ++pass) {
        {  // MPI
          psync::MpiOptions o;
          o.tag_base = tag;
          tag += 2;
          psync::Mpi t(o);
          if (rank == 0) {
            serve(t, n);
          } else {
            const auto us = client(t, n, warmup, rounds / 2);
            mpi_us.insert(mpi_us.end(), us.begin(), us.end());
          }
        }
        {  // TCP on loopback
          if (rank == 0) {
            psync::TcpServerOptions to;
            to.address = "127.0.0.1";
            psync::TcpServer t(to);
            int port = t.port();
            MPI_Send(&port, 1, MPI_INT, 1, port_tag, MPI_COMM_WORLD);
            serve(t, n);
            t.close();
          } else {
            int port = 0;
            MPI_Recv(&port, 1, MPI_INT, 0, port_tag, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            psync::Tcp t("127.0.0.1", static_cast<std::uint16_t>(port), 0);
            const auto us = client(t, n, warmup, rounds / 2);
            tcp_us.insert(tcp_us.end(), us.begin(), us.end());
            t.close();
          }
        }
      }
      if (rank == 1) {
        const double bytes = 2.0 * 4.0 * static_cast<double>(n);  // the push and the reply
        for (const auto& [via, us] : {std::pair{"mpi", &mpi_us}, std::pair{"tcp", &tcp_us}}) {
          const double med = quantile(*us, 0.5);
          std::printf("%10lld  %-4s %6zu %11.1f %11.1f %11.1f %9.2f\n", static_cast<long long>(n), via, us->size(),
                      med, quantile(*us, 0.1), quantile(*us, 0.9), bytes / (med * 1e3));
        }
        std::printf("%10lld  ratio mpi/tcp (medians): %.2f\n", static_cast<long long>(n),
                    quantile(mpi_us, 0.5) / quantile(tcp_us, 0.5));
        std::fflush(stdout);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mpi_vs_tcp (rank %d): %s\n", rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  return 0;
}
