// tls_cost: what TLS costs the TCP transport. One worker and an echo-server thread
// over loopback, as in bench_tcp's push_pull: each round trip is a Push of N floats
// answered by a Model in the same buffer. Plain TCP and TLS run in the same process,
// in alternating blocks (so load from elsewhere hits both alike); prints each one's
// median, 10th and 90th percentile per round trip, and the ratio of the medians.
//
//   tls_cost [--floats N (1000000)] [--rounds R per block (20)] [--blocks B (5)]
//
// The certificates are made at start-up (EC P-256, tests/tls_test_certs.hpp).

#include <psync/transport/tcp.hpp>

#include "tls_test_certs.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#ifdef PSYNC_HAVE_TLS
#include <boost/asio/connect.hpp>
#include <boost/asio/ssl.hpp>
#endif

namespace {

using namespace std::chrono_literals;
using psync::Clock;
using psync::server_peer;
namespace msg = psync::msg;

// Answers every Push with a Model carrying the very buffer it received.
class EchoServer {
 public:
  explicit EchoServer(psync::TcpServerOptions o) : server_(std::move(o)), thread_([this] { run(); }) {}
  EchoServer(const EchoServer&) = delete;
  EchoServer& operator=(const EchoServer&) = delete;
  ~EchoServer() {
    stop_ = true;
    thread_.join();
  }
  std::uint16_t port() const { return server_.port(); }

 private:
  void run() {
    while (!stop_) {
      auto e = server_.receive(Clock::now() + 50ms);
      if (!e) continue;
      try {
        if (auto* p = std::get_if<msg::Push>(&e->message)) {
          server_.send(e->from, msg::Model{p->clock + 1, 0, 0, std::move(p->update)});
        }
      } catch (const psync::TransportError&) {
      }
    }
  }

  psync::TcpServer server_;
  std::atomic<bool> stop_{false};
  std::thread thread_;  // last: starts after everything it uses
};

struct Setup {
  Setup(const char* name, psync::TcpServerOptions so, psync::TcpOptions wo, Eigen::Index n)
      : name(name), echo(std::move(so)), worker("127.0.0.1", echo.port(), 0, std::move(wo)), v(Eigen::VectorXf::Ones(n)) {
    worker.send(server_peer, msg::Join{0, static_cast<std::uint64_t>(n), "asp"});
  }

  // One push + reply, timed.
  double round_trip_ms() {
    const auto start = Clock::now();
    worker.send(server_peer, msg::Push{0, 0, 1, std::move(v)});
    auto e = worker.receive(Clock::now() + 10s);
    if (!e || !std::holds_alternative<msg::Model>(e->message)) {
      std::fprintf(stderr, "%s: no model from the echo server within 10 s\n", name);
      std::exit(1);
    }
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    v = std::move(std::get<msg::Model>(e->message).parameters);
    return ms;
  }

  const char* name;
  EchoServer echo;
  psync::Tcp worker;
  Eigen::VectorXf v;
  std::vector<double> samples;
};

double percentile(std::vector<double> s, double p) {
  std::sort(s.begin(), s.end());
  const auto i = static_cast<std::size_t>(p * static_cast<double>(s.size() - 1) + 0.5);
  return s[i];
}

#ifdef PSYNC_HAVE_TLS
// What a client and this server agree on (a probe connection, closed at once).
std::string negotiated(std::uint16_t port, const psync_test::TlsFiles& files) {
  namespace asio = boost::asio;
  asio::io_context io;
  asio::ssl::context ctx(asio::ssl::context::tls_client);
  ctx.load_verify_file(files.ca.string());
  ctx.set_verify_mode(asio::ssl::verify_peer);
  asio::ssl::stream<asio::ip::tcp::socket> s(io, ctx);
  s.next_layer().connect({asio::ip::make_address("127.0.0.1"), port});
  s.handshake(asio::ssl::stream_base::client);
  std::string what = std::string(SSL_get_version(s.native_handle())) + " " + SSL_get_cipher_name(s.native_handle());
  std::array<char, psync::wire::challenge_frame_size> challenge{};
  asio::read(s, asio::buffer(challenge));  // read what the server sent, so closing does not reset
  s.next_layer().shutdown(asio::ip::tcp::socket::shutdown_send);
  boost::system::error_code ec;
  while (!ec) s.read_some(asio::buffer(challenge), ec);  // until the server, which waits for a join, closes
  return what;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  Eigen::Index n = 1'000'000;
  int rounds = 20;
  int blocks = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--floats") == 0) n = std::atol(argv[i + 1]);
    else if (std::strcmp(argv[i], "--rounds") == 0) rounds = std::atoi(argv[i + 1]);
    else if (std::strcmp(argv[i], "--blocks") == 0) blocks = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: tls_cost [--floats N] [--rounds R] [--blocks B]\n");
      return 2;
    }
  }
#ifndef PSYNC_HAVE_TLS
  std::printf("psync was built without OpenSSL's libssl: no TLS to measure\n");
  (void)n;
  (void)rounds;
  (void)blocks;
  return 0;
#else
  const psync_test::TlsFiles files;
  psync::TcpServerOptions tls_server;
  tls_server.tls.cert_file = files.server_cert;
  tls_server.tls.key_file = files.server_key;
  psync::TcpOptions tls_worker;
  tls_worker.tls.ca_file = files.ca;
  Setup plain("plain TCP", {}, {}, n);
  Setup tls("TLS", tls_server, tls_worker, n);
#ifdef PSYNC_BUILD_FLAGS
  std::printf("build: %s\n", PSYNC_BUILD_FLAGS);
#endif
  std::printf("TLS negotiated: %s\n", negotiated(tls.echo.port(), files).c_str());
  std::printf("%ld floats (%.1f MB each way) per push + reply; %d blocks of %d round trips each, alternating\n",
              static_cast<long>(n), static_cast<double>(n) * 4 / 1e6, blocks, rounds);
  for (Setup* s : {&plain, &tls}) {
    for (int i = 0; i < 3; ++i) (void)s->round_trip_ms();  // warm-up: buffers, pools, TCP windows
  }
  for (int b = 0; b < blocks; ++b) {
    for (Setup* s : {&plain, &tls}) {
      for (int i = 0; i < rounds; ++i) s->samples.push_back(s->round_trip_ms());
    }
  }
  const double bytes = 2.0 * static_cast<double>(n) * 4;
  for (Setup* s : {&plain, &tls}) {
    const double med = percentile(s->samples, 0.5);
    std::printf("%-10s median %8.3f ms  p10 %8.3f ms  p90 %8.3f ms  (%.2f GiB/s both ways)\n", s->name, med,
                percentile(s->samples, 0.1), percentile(s->samples, 0.9), bytes / (med / 1e3) / (1 << 30));
  }
  std::printf("TLS / plain (medians): %.2fx\n", percentile(tls.samples, 0.5) / percentile(plain.samples, 0.5));
  return 0;
#endif
}
