// Trace recorder: concurrent recording, Chrome trace-event JSON that parses, and
// a ScopedSpan that costs nothing without a trace.
#include "psync/core/trace.hpp"

#include "catch.hpp"

#include <cctype>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using psync::Clock;
using psync::ScopedSpan;
using psync::Trace;

namespace {

/// A minimal JSON tree, enough to check the trace's structure.
struct Json {
  enum class Kind { null, boolean, number, string, array, object } kind = Kind::null;
  bool b = false;
  double n = 0;
  std::string s;
  std::vector<Json> items;       // array elements, or object values
  std::vector<std::string> keys;  // object keys, parallel to items

  const Json* get(const std::string& key) const {
    for (std::size_t i = 0; i < keys.size(); ++i)
      if (keys[i] == key) return &items[i];
    return nullptr;
  }
};

/// Strict recursive-descent parser; throws std::runtime_error on malformed input.
class JsonParser {
 public:
  explicit JsonParser(std::string_view text) : t_(text) {}

  Json parse_document() {
    Json v = value();
    ws();
    if (i_ != t_.size()) fail("trailing characters");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    throw std::runtime_error("json: " + why + " at offset " + std::to_string(i_));
  }
  void ws() {
    while (i_ < t_.size() && (t_[i_] == ' ' || t_[i_] == '\n' || t_[i_] == '\r' || t_[i_] == '\t')) ++i_;
  }
  char peek() {
    ws();
    if (i_ >= t_.size()) fail("unexpected end");
    return t_[i_];
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++i_;
  }
  bool literal(std::string_view word) {
    if (t_.substr(i_, word.size()) != word) return false;
    i_ += word.size();
    return true;
  }

  Json value() {
    const char c = peek();
    Json v;
    if (c == '{') {
      v.kind = Json::Kind::object;
      ++i_;
      if (peek() == '}') {
        ++i_;
        return v;
      }
      for (;;) {
        if (peek() != '"') fail("expected a key");
        v.keys.push_back(string());
        expect(':');
        v.items.push_back(value());
        if (peek() == ',') {
          ++i_;
          continue;
        }
        expect('}');
        return v;
      }
    }
    if (c == '[') {
      v.kind = Json::Kind::array;
      ++i_;
      if (peek() == ']') {
        ++i_;
        return v;
      }
      for (;;) {
        v.items.push_back(value());
        if (peek() == ',') {
          ++i_;
          continue;
        }
        expect(']');
        return v;
      }
    }
    if (c == '"') {
      v.kind = Json::Kind::string;
      v.s = string();
      return v;
    }
    if (literal("true") || literal("false")) {
      v.kind = Json::Kind::boolean;
      v.b = t_[i_ - 1] == 'e' && t_[i_ - 2] == 'u';
      return v;
    }
    if (literal("null")) return v;
    return number();
  }

  std::string string() {
    expect('"');
    std::string out;
    for (;;) {
      if (i_ >= t_.size()) fail("unterminated string");
      const char c = t_[i_++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("raw control character in string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= t_.size()) fail("bad escape");
      const char e = t_[i_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'u': {
          if (i_ + 4 > t_.size()) fail("bad \\u escape");
          const auto code = std::stoi(std::string(t_.substr(i_, 4)), nullptr, 16);
          i_ += 4;
          if (code >= 0x80) fail("test parser handles only ASCII \\u escapes");
          out += static_cast<char>(code);
          break;
        }
        default: fail("bad escape");
      }
    }
  }

  Json number() {
    const std::size_t start = i_;
    if (i_ < t_.size() && t_[i_] == '-') ++i_;
    auto digits = [&] {
      const std::size_t d = i_;
      while (i_ < t_.size() && std::isdigit(static_cast<unsigned char>(t_[i_]))) ++i_;
      if (i_ == d) fail("expected digits");
    };
    digits();
    if (i_ < t_.size() && t_[i_] == '.') {
      ++i_;
      digits();
    }
    if (i_ < t_.size() && (t_[i_] == 'e' || t_[i_] == 'E')) {
      ++i_;
      if (i_ < t_.size() && (t_[i_] == '+' || t_[i_] == '-')) ++i_;
      digits();
    }
    Json v;
    v.kind = Json::Kind::number;
    v.n = std::strtod(std::string(t_.substr(start, i_ - start)).c_str(), nullptr);
    return v;
  }

  std::string_view t_;
  std::size_t i_ = 0;
};

Json parse_trace(const Trace& trace) {
  std::ostringstream out;
  trace.write_json(out);
  return JsonParser(out.str()).parse_document();
}

}  // namespace

TEST_CASE("Trace: the JSON parses and has the trace-event structure") {
  Trace trace;
  trace.name_track(0, "worker 0");
  trace.name_track(7, "odd \"name\"\\ with\nescapes\x01");
  const auto o = trace.origin();
  trace.span(0, "compute", o + 1500us, o + 2750us);
  trace.span(7, "push", o + 3ms, o + 3ms + 250ns);
  trace.instant(7, "apply", o + 4ms);
  trace.span(0, "wait", o + 5ms, o + 4ms);  // reversed: zero length, not negative
  CHECK(trace.size() == 4);

  const Json doc = parse_trace(trace);
  REQUIRE(doc.kind == Json::Kind::object);
  const Json* unit = doc.get("displayTimeUnit");
  REQUIRE(unit != nullptr);
  CHECK(unit->s == "ms");
  const Json* events = doc.get("traceEvents");
  REQUIRE(events != nullptr);
  REQUIRE(events->kind == Json::Kind::array);

  std::vector<const Json*> spans, instants, names;
  for (const Json& e : events->items) {
    REQUIRE(e.kind == Json::Kind::object);
    REQUIRE(e.get("ph") != nullptr);
    REQUIRE(e.get("pid") != nullptr);
    REQUIRE(e.get("tid") != nullptr);
    REQUIRE(e.get("name") != nullptr);
    const std::string& ph = e.get("ph")->s;
    if (ph == "X") spans.push_back(&e);
    if (ph == "i") instants.push_back(&e);
    if (ph == "M" && e.get("name")->s == "thread_name") names.push_back(&e);
  }
  REQUIRE(spans.size() == 3);
  REQUIRE(instants.size() == 1);
  REQUIRE(names.size() == 2);

  CHECK(spans[0]->get("name")->s == "compute");
  CHECK(spans[0]->get("tid")->n == 0);
  CHECK(spans[0]->get("ts")->n == Approx(1500.0));
  CHECK(spans[0]->get("dur")->n == Approx(1250.0));
  CHECK(spans[1]->get("name")->s == "push");
  CHECK(spans[1]->get("tid")->n == 7);
  CHECK(spans[1]->get("dur")->n == Approx(0.25));  // fractional microseconds survive
  CHECK(spans[2]->get("dur")->n == 0);
  CHECK(instants[0]->get("name")->s == "apply");
  CHECK(instants[0]->get("ts")->n == Approx(4000.0));

  CHECK(names[1]->get("tid")->n == 7);
  REQUIRE(names[1]->get("args") != nullptr);
  CHECK(names[1]->get("args")->get("name")->s == "odd \"name\"\\ with\nescapes\x01");
}

TEST_CASE("Trace: spans from several threads are all recorded") {
  Trace trace(16);  // small reserve: growth under contention must be safe too
  constexpr int threads = 4;
  constexpr int per_thread = 2000;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&trace, t] {
      const auto track = static_cast<std::uint32_t>(t);
      trace.name_track(track, "worker " + std::to_string(t));
      for (int i = 0; i < per_thread; ++i) {
        ScopedSpan s(&trace, track, i % 2 ? "compute" : "push");
        if (i % 100 == 0) trace.instant(track, "apply", Clock::now());
      }
    });
  }
  for (auto& th : pool) th.join();
  CHECK(trace.size() == threads * per_thread + threads * per_thread / 100);

  const Json doc = parse_trace(trace);
  int per_track[threads] = {};
  int metadata = 0;
  double last_ts[threads] = {};
  for (const Json& e : doc.get("traceEvents")->items) {
    const std::string& ph = e.get("ph")->s;
    if (ph == "M") {
      ++metadata;
      continue;
    }
    const auto tid = static_cast<int>(e.get("tid")->n);
    REQUIRE(tid >= 0);
    REQUIRE(tid < threads);
    CHECK(e.get("ts")->n >= 0);
    if (ph == "X") {
      ++per_track[tid];
      // One thread's spans are recorded in the order they end.
      CHECK(e.get("ts")->n + e.get("dur")->n >= last_ts[tid]);
      last_ts[tid] = e.get("ts")->n + e.get("dur")->n;
      const std::string& name = e.get("name")->s;
      CHECK((name == "compute" || name == "push"));
    }
  }
  for (int t = 0; t < threads; ++t) CHECK(per_track[t] == per_thread);
  CHECK(metadata == 1 + 2 * threads);  // process name + name and sort index per track
}

TEST_CASE("Trace: names are copied, so a temporary name is safe") {
  Trace trace;
  {
    std::string name = "pull";
    trace.span(1, name, trace.origin(), trace.origin() + 1ms);
    name = "XXXX";
    trace.span(1, std::string("pull"), trace.origin(), trace.origin() + 1ms);
  }
  const Json doc = parse_trace(trace);
  int pulls = 0;
  for (const Json& e : doc.get("traceEvents")->items)
    if (e.get("ph")->s == "X" && e.get("name")->s == "pull") ++pulls;
  CHECK(pulls == 2);
}

TEST_CASE("ScopedSpan: measures its scope, and is a no-op without a trace") {
  {
    ScopedSpan nothing(nullptr, 0, "compute");
  }
  Trace trace;
  {
    ScopedSpan none(nullptr, 0, "compute");
    ScopedSpan span(&trace, 2, "wait");
    std::this_thread::sleep_for(5ms);
  }
  REQUIRE(trace.size() == 1);
  const Json doc = parse_trace(trace);
  const Json* span = nullptr;
  for (const Json& e : doc.get("traceEvents")->items)
    if (e.get("ph")->s == "X") span = &e;
  REQUIRE(span != nullptr);
  CHECK(span->get("name")->s == "wait");
  CHECK(span->get("tid")->n == 2);
  CHECK(span->get("dur")->n >= 5000.0);
}

TEST_CASE("Trace: write_json to a file, and a clear error naming a bad path") {
  Trace trace;
  trace.name_track(0, "server");
  trace.span(0, "apply", trace.origin(), trace.origin() + 2ms);
  const auto dir = std::filesystem::temp_directory_path() /
                   ("psync_trace_test_" + std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
  std::filesystem::create_directories(dir);
  const auto file = dir / "trace.json";
  trace.write_json(file);
  {
    std::ifstream in(file);
    std::stringstream text;
    text << in.rdbuf();
    const Json doc = JsonParser(text.str()).parse_document();
    CHECK(doc.get("traceEvents")->items.size() == 4);  // process, thread name, sort index, the span
  }
  const auto bad = dir / "no_such_dir" / "trace.json";
  try {
    trace.write_json(bad);
    FAIL("write_json to a missing directory did not throw");
  } catch (const psync::Error& e) {
    CHECK(std::string(e.what()).find(bad.string()) != std::string::npos);
  }
  std::filesystem::remove_all(dir);
}
