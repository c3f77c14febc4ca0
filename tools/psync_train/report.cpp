// psync-train's JSON reports (see report.hpp).

#include "report.hpp"

#include <psync/core/message.hpp>
#include <psync/detail/json.hpp>
#include <psync/optim/parse.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <sys/resource.h>
#include <unistd.h>

namespace psync_train {

namespace {

using psync::detail::json_number;
using psync::detail::json_string;

std::string cpu_json(const CpuTimes& t) {
  const auto one = [](double s) { return s < 0 ? std::string("null") : json_number(s); };
  return ",\n  \"run_cpu_user_s\": " + one(t.user_s) + ",\n  \"run_cpu_sys_s\": " + one(t.sys_s) +
         ",\n  \"run_machine_busy_s\": " + one(t.machine_busy_s);
}

std::string float_text(float v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.7g", static_cast<double>(v));  // a float's own precision
  return buf;
}


}  // namespace

CpuTimes cpu_times() {
  CpuTimes t;
  rusage u{};
  if (getrusage(RUSAGE_SELF, &u) == 0) {
    const auto s = [](const timeval& v) { return static_cast<double>(v.tv_sec) + 1e-6 * static_cast<double>(v.tv_usec); };
    t.user_s = s(u.ru_utime);
    t.sys_s = s(u.ru_stime);
  }
  // /proc/stat's first line: cpu user nice system idle iowait irq softirq steal ... (in clock ticks).
  std::ifstream stat("/proc/stat");
  std::string cpu;
  unsigned long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0;
  const long hz = sysconf(_SC_CLK_TCK);
  if (stat >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq && cpu == "cpu" && hz > 0) {
    t.machine_busy_s = static_cast<double>(user + nice + system + irq + softirq) / static_cast<double>(hz);
  }
  return t;
}

/// Writes `text` to `path` through a temporary file, so a reader never sees half of it.
void write_file_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text;
    out.flush();
    if (!out) throw std::runtime_error("cannot write metrics file '" + tmp + "': " + std::strerror(errno));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw std::runtime_error("cannot rename '" + tmp + "' to '" + path + "': " + ec.message());
}

/// Fails early (usage error naming `flag`) if the output file `path` (--metrics, --trace)
/// cannot be created, before any training.
void check_writable(const char* flag, const std::string& path) {
  if (path.empty()) return;
  const std::string tmp = path + ".tmp";
  std::ofstream probe(tmp, std::ios::trunc);
  if (!probe) throw UsageError(std::string(flag) + " '" + path + "': cannot create '" + tmp + "': " + std::strerror(errno));
  probe.close();
  std::filesystem::remove(tmp);
}

namespace {

std::string config_json(const Config& c) {
  std::ostringstream o;
  o << "\"role\": " << json_string(c.role) << ",\n  \"server\": " << json_string(c.server)
    << ",\n  \"workers\": " << c.workers << ",\n  \"policy\": " << json_string(c.policy)
    << ",\n  \"model\": " << json_string(c.model) << ",\n  \"data\": " << json_string(c.data)
    << ",\n  \"steps\": " << c.steps << ",\n  \"lr\": " << float_text(c.lr) << ",\n  \"batch\": " << c.batch
    << ",\n  \"seed\": " << c.seed << ",\n  \"init_seed\": " << c.model_seed()
    << ",\n  \"timeout_ms\": " << c.timeout.count() << ",\n  \"seconds\": " << json_number(c.seconds.count() / 1e3)
    << ",\n  \"shard\": "
    << (c.shard_index ? json_string(std::to_string(*c.shard_index) + "/" + std::to_string(c.shard_count))
                      : std::string("null"))
    << ",\n  \"shards\": " << std::max<std::size_t>(c.shard_count, c.shard_servers.size());
  return o.str();
}

/// `{"count": n, "mean": m, "max": x}`.
std::string summary_json(const psync::Summary& s) {
  return "{\"count\": " + std::to_string(s.count) + ", \"mean\": " + json_number(s.mean()) +
         ", \"max\": " + std::to_string(s.max) + "}";
}

const char* leave_name(psync::msg::LeaveReason r) {
  switch (r) {
    case psync::msg::LeaveReason::finished: return "finished";
    case psync::msg::LeaveReason::disconnected: return "disconnected";
    case psync::msg::LeaveReason::timed_out: return "timed_out";
    case psync::msg::LeaveReason::failed: return "failed";
  }
  return "unknown";
}

}  // namespace

void write_server_metrics(const Config& c, const ServerSummary& s, const psync::ServerReport& report) {
  if (c.metrics.empty()) return;
  std::ostringstream o;
  o << "{\n  " << config_json(c) << ",\n  \"listening\": " << json_string(s.listening) << ",\n  \"ok\": true"
    << ",\n  \"interrupted\": " << (s.interrupted ? "true" : "false") << ",\n  \"wall_s\": "
    << json_number(report.wall_s) << ",\n  \"version\": " << report.version
    << ",\n  \"updates_applied\": " << report.updates_applied << ",\n  \"steps_applied\": " << report.steps_applied
    << ",\n  \"optimizer\": "
    << (c.server_optimizer.empty() ? std::string("null") : json_string(server_optimizer_name(c)))
    << ",\n  \"schedule\": "
    << (c.server_optimizer.empty() ? std::string("null")
                                   : json_string(c.server_schedule.empty() ? "constant" : c.server_schedule))
    << ",\n  \"final_test_accuracy\": " << json_number(s.final_test_accuracy)
    << ",\n  \"final_test_loss\": " << json_number(s.final_test_loss) << ",\n  \"test_samples\": " << s.test_samples
    << ",\n  \"workers_lost\": " << s.workers_lost << ",\n  \"checkpoints_written\": " << report.checkpoints_written
    << ",\n  \"checkpoint_failures\": " << report.checkpoint_failures
    << ",\n  \"checkpoint_s\": " << json_number(report.checkpoint_s)
    << ",\n  \"resumed_from\": " << (report.resumed_path.empty() ? "null" : json_string(report.resumed_path))
    << ",\n  \"resumed_steps\": " << report.resumed_steps
    << ",\n  \"started_s\": " << json_number(report.started_s)
    << ",\n  \"series_ms\": " << c.series_every.count() << ",\n  \"series_samples\": " << c.series_samples
    << ",\n  \"target\": " << (c.target ? json_number(*c.target) : std::string("null"))
    << ",\n  \"time_to_target_s\": " << (c.target ? json_number(s.time_to_target_s) : std::string("null"))
    << cpu_json(s.cpu) << ",\n  \"series\": [";
  for (std::size_t i = 0; i < s.series.size(); ++i) {
    const auto& p = s.series[i];
    o << (i ? "," : "") << "\n    {\"t\": " << json_number(p.seconds) << ", \"version\": " << p.version
      << ", \"steps\": " << p.steps << ", \"accuracy\": " << json_number(p.test_accuracy) << "}";
  }
  o << (s.series.empty() ? "]" : "\n  ]") << ",\n  \"peers\": [";
  for (std::size_t i = 0; i < report.peers.size(); ++i) {
    const auto& p = report.peers[i];
    // "staleness" is in model versions (pushes under asp/ssp/dssp, rounds under bsp/osp).
    o << (i ? "," : "") << "\n    {\"id\": " << p.id << ", \"pushes\": " << p.pushes
      << ", \"staleness\": " << summary_json(p.version_staleness) << ", \"left\": "
      << (p.left_known ? json_string(leave_name(p.left)) : std::string("null")) << "}";
  }
  o << "\n  ],\n  \"events\": [";
  for (std::size_t i = 0; i < report.events.size(); ++i) {
    o << (i ? "," : "") << "\n    " << json_string(report.events[i]);
  }
  o << "\n  ]\n}\n";
  write_file_atomically(c.metrics, o.str());
}

void write_worker_metrics(const Config& c, std::optional<std::uint32_t> id, const psync::WorkerReport* r,
                          const std::string& error, const FinalEvaluation* final_model, CpuTimes cpu) {
  if (c.metrics.empty()) return;
  std::ostringstream o;
  o << "{\n  " << config_json(c) << ",\n  \"id\": " << (id ? std::to_string(*id) : std::string("null"))
    << ",\n  \"id_assigned\": " << (c.id ? "false" : "true") << ",\n  \"ok\": " << (r ? "true" : "false")
    << ",\n  \"error\": " << (error.empty() ? std::string("null") : json_string(error))
    << ",\n  \"optimizer\": "
    << json_string(c.pushes_gradients() ? psync::optim::OnServer::name()
                                        : psync::optim::parse_optimizer(c.optimizer).name())
    << ",\n  \"schedule\": " << json_string(c.schedule.empty() ? "constant" : c.schedule)
    << ",\n  \"codec\": " << json_string(c.codec.name());
  if (r) {
    o << ",\n  \"steps_done\": " << r->steps << ",\n  \"samples\": " << r->samples << ",\n  \"pushes\": " << r->pushes
      << ",\n  \"pushed_bytes\": " << r->pushed_bytes << ",\n  \"installs\": " << r->installs << ",\n  \"wall_s\": " << json_number(r->wall_s)
      << ",\n  \"compute_s\": " << json_number(r->compute_s) << ",\n  \"wait_s\": " << json_number(r->wait_s)
      << ",\n  \"comm_s\": " << json_number(r->comm_s) << ",\n  \"held_s\": " << json_number(r->held_s)
      << ",\n  \"hidden_fraction\": " << json_number(r->hidden_fraction())
      << ",\n  \"last_loss\": " << json_number(r->last_loss)
      << ",\n  \"clock_staleness\": " << summary_json(r->clock_staleness)
      << ",\n  \"steps_per_push\": " << summary_json(r->steps_per_push) << ",\n  \"max_unsent\": " << r->max_unsent
      << ",\n  \"rejoins\": " << r->rejoins << ",\n  \"pushes_lost\": " << r->pushes_lost
      << ",\n  \"steps_discarded\": " << r->steps_discarded << ",\n  \"reconnect_s\": " << json_number(r->reconnect_s)
      << cpu_json(cpu);
  }
  if (final_model) {
    o << ",\n  \"final_test_accuracy\": " << json_number(final_model->test_accuracy)
      << ",\n  \"final_test_loss\": " << json_number(final_model->test_loss)
      << ",\n  \"test_samples\": " << final_model->test_samples;
  }
  o << "\n}\n";
  write_file_atomically(c.metrics, o.str());
}

}  // namespace psync_train
