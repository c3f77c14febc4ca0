#pragma once
/// @file
/// @brief The thread that runs a TCP endpoint's io_context, joined with a bound.

// Boost 1.74's Asio uses std::exchange etc. without including <utility> under C++20.
#include <utility>

#include "psync/core/log.hpp"
#include "psync/transport/tcp/options.hpp"

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <exception>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>

namespace psync {

namespace detail {

namespace asio = boost::asio;

/// left, and is joined with a bound.
class IoThread {
 public:
  explicit IoThread(asio::io_context& io) : io_(io) {}
  IoThread(const IoThread&) = delete;
  IoThread& operator=(const IoThread&) = delete;
  ~IoThread() { join(); }

  void start(const char* side) {
    std::promise<void> done;
    done_ = done.get_future();
    thread_ = std::thread([this, side, done = std::move(done)]() mutable {
      for (;;) {
        try {
          io_.run();
          break;
        } catch (const std::exception& e) {  // a handler threw: log it and keep serving
          psync::log(LogLevel::error, std::string("psync ") + side + ": I/O thread: " + e.what());
        }
      }
      done.set_value();
    });
  }

  /// Waits for the context to run out of work; stops it past the bound.
  void join() noexcept {
    if (!thread_.joinable()) return;
    if (done_.wait_for(tcp_linger_timeout + std::chrono::milliseconds(1000)) != std::future_status::ready) {
      io_.stop();
    }
    thread_.join();
  }

 private:
  asio::io_context& io_;
  std::thread thread_;
  std::future<void> done_;
};


}  // namespace detail

}  // namespace psync
