#pragma once
/// @file
/// @brief The bodies of psync/core/trace.hpp's functions (psync/detail/config.hpp).

#include "psync/core/trace.hpp"

#include <fstream>

namespace psync {

PSYNC_DECL Trace::Trace(std::size_t reserve_events) : origin_(Clock::now()) {
  events_.reserve(reserve_events);
}

PSYNC_DECL void Trace::name_track(std::uint32_t track, std::string name) {
  std::lock_guard lock(mutex_);
  track_names_[track] = std::move(name);
}

PSYNC_DECL void Trace::span(std::uint32_t track, std::string_view name, Clock::time_point begin, Clock::time_point end) {
  const std::int64_t b = since_origin(begin);
  const std::int64_t d = std::max<std::int64_t>(0, since_origin(end) - b);
  std::lock_guard lock(mutex_);
  events_.push_back(Event{b, d, track, intern(name), Kind::span});
}

PSYNC_DECL void Trace::instant(std::uint32_t track, std::string_view name, Clock::time_point at) {
  const std::int64_t t = since_origin(at);
  std::lock_guard lock(mutex_);
  events_.push_back(Event{t, 0, track, intern(name), Kind::instant});
}

PSYNC_DECL std::size_t Trace::size() const {
  std::lock_guard lock(mutex_);
  return events_.size();
}

PSYNC_DECL void Trace::write_json(std::ostream& out) const {
  // Copied so recording threads are held up only for the copy, not the formatting.
  std::vector<Event> events;
  std::vector<std::string> names;
  std::map<std::uint32_t, std::string> tracks;
  {
    std::lock_guard lock(mutex_);
    events = events_;
    names = names_;
    tracks = track_names_;
  }
  std::string line;
  line.reserve(256);
  out << "{\"traceEvents\":[\n";
  out << R"({"name":"process_name","ph":"M","pid":1,"tid":0,"args":{"name":"psync"}})";
  for (const auto& [track, name] : tracks) {
    line.assign(R"(,
{"name":"thread_name","ph":"M","pid":1,"tid":)");
    append_int(line, track);
    line += R"(,"args":{"name":")";
    detail::append_json_escaped(line, name);
    line += R"("}},
{"name":"thread_sort_index","ph":"M","pid":1,"tid":)";
    append_int(line, track);
    line += R"(,"args":{"sort_index":)";
    append_int(line, track);
    line += "}}";
    out << line;
  }
  for (const Event& e : events) {
    line.assign(",\n{\"name\":\"");
    detail::append_json_escaped(line, names[e.name]);
    if (e.kind == Kind::span) {
      line += R"(","ph":"X","ts":)";
      append_us(line, e.begin_ns);
      line += ",\"dur\":";
      append_us(line, e.dur_ns);
    } else {
      line += R"(","ph":"i","s":"t","ts":)";
      append_us(line, e.begin_ns);
    }
    line += ",\"pid\":1,\"tid\":";
    append_int(line, e.track);
    line += '}';
    out << line;
  }
  out << "\n],\"displayTimeUnit\":\"ms\"}\n";
  out.flush();
  if (!out) throw Error("trace: writing the JSON failed");
}

PSYNC_DECL void Trace::write_json(const std::filesystem::path& path) const {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  if (!file) throw Error("trace: cannot open " + path.string() + " for writing");
  try {
    write_json(static_cast<std::ostream&>(file));
    file.close();
  } catch (const Error&) {
    throw Error("trace: cannot write " + path.string());
  }
  if (!file) throw Error("trace: cannot write " + path.string());
}

PSYNC_DECL std::int64_t Trace::since_origin(Clock::time_point t) const noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t - origin_).count();
}

PSYNC_DECL std::uint32_t Trace::intern(std::string_view name) {
  if (auto it = name_ids_.find(name); it != name_ids_.end()) return it->second;
  const auto id = static_cast<std::uint32_t>(names_.size());
  names_.emplace_back(name);
  name_ids_.emplace(std::string(name), id);
  return id;
}

PSYNC_DECL void Trace::append_us(std::string& s, std::int64_t ns) {
  if (ns < 0) {
    s += '-';
    ns = -ns;
  }
  append_int(s, ns / 1000);
  const auto frac = static_cast<int>(ns % 1000);
  s += '.';
  s += static_cast<char>('0' + frac / 100);
  s += static_cast<char>('0' + frac / 10 % 10);
  s += static_cast<char>('0' + frac % 10);
}

}  // namespace psync
