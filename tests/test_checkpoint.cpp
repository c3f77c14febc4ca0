// Server checkpoints: the file format round-trips bit for bit and its layout is
// pinned; every truncation and every single-bit flip of a file is caught and the
// previous checkpoint is used; forged lengths are refused before anything big is
// allocated; writes are atomic, keep the newest K and fail with the path and errno.

#include "catch.hpp"

#include <psync/core/checkpoint.hpp>

#include <zlib.h>

#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
using psync::CheckpointError;
using psync::CheckpointState;
using psync_test::Contains;
namespace ckpt = psync::checkpoint;
using Bytes = std::vector<std::byte>;

// A fresh directory, removed with everything in it.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "psync-ckpt-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

// A state with every field set; values depend on `seed` so two states differ everywhere.
CheckpointState make_state(Eigen::Index dimension, std::uint32_t seed, bool with_sum = true, std::size_t workers = 3) {
  CheckpointState s;
  s.policy = with_sum ? "osp:20" : "ssp:3";
  s.dimension = static_cast<std::uint64_t>(dimension);
  s.version = 1000 + seed;
  s.parameters.resize(dimension);
  for (Eigen::Index i = 0; i < dimension; ++i) s.parameters[i] = 0.25f * static_cast<float>(i) - static_cast<float>(seed);
  for (std::size_t w = 0; w < workers; ++w) {
    s.workers.push_back({static_cast<psync::PeerId>(2 * w + seed), 40 + w, w % 2 == 0});
  }
  s.max_clock_seen = 40 + workers + seed;
  s.started = seed % 2 == 1;
  if (with_sum) {
    s.round.sum = Eigen::VectorXf::Constant(dimension, 0.5f + static_cast<float>(seed));
    s.round.pushes = 2;
    s.round.steps = 40;
    s.round.round = 39 + seed;
  }
  s.updates_applied = 77 + seed;
  s.steps_applied = 1540 + seed;
  for (int b = 0; b < 5; ++b) s.policy_state.push_back(static_cast<std::byte>(b * 51 + static_cast<int>(seed)));
  return s;
}

bool same_bits(const Eigen::VectorXf& a, const Eigen::VectorXf& b) {
  return a.size() == b.size() &&
         (a.size() == 0 || std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0);
}

void require_equal(const CheckpointState& a, const CheckpointState& b) {
  CHECK(a.policy == b.policy);
  CHECK(a.dimension == b.dimension);
  CHECK(a.version == b.version);
  CHECK(same_bits(a.parameters, b.parameters));
  CHECK(a.workers == b.workers);
  CHECK(a.max_clock_seen == b.max_clock_seen);
  CHECK(a.started == b.started);
  CHECK(same_bits(a.round.sum, b.round.sum));
  CHECK(a.round.pushes == b.round.pushes);
  CHECK(a.round.steps == b.round.steps);
  CHECK(a.round.round == b.round.round);
  CHECK(a.updates_applied == b.updates_applied);
  CHECK(a.steps_applied == b.steps_applied);
  CHECK(a.policy_state == b.policy_state);
}

Bytes read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<char> c((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Bytes b(c.size());
  std::memcpy(b.data(), c.data(), c.size());
  return b;
}

void write_bytes(const fs::path& p, std::span<const std::byte> b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  if (!out.good()) throw std::runtime_error("cannot write " + p.string());  // not REQUIRE: also runs in a forked child
}

template <class T>
T get(const Bytes& b, std::size_t at) {
  T v;
  std::memcpy(&v, b.data() + at, sizeof v);
  return v;
}

template <class T>
void put(Bytes& b, std::size_t at, T v) {
  std::memcpy(b.data() + at, &v, sizeof v);
}

std::uint32_t crc_of(const Bytes& b, std::size_t n) {
  return static_cast<std::uint32_t>(::crc32(0L, reinterpret_cast<const Bytef*>(b.data()), static_cast<uInt>(n)));
}

// Rewrites the trailing CRC so that only the field checks can refuse a forged file.
void reseal(Bytes& b) { put(b, b.size() - 4, crc_of(b, b.size() - 4)); }

// The reason decode gives for `bytes` ("no error" if it accepts them).
std::string decode_error(std::span<const std::byte> bytes) {
  try {
    (void)ckpt::decode(bytes);
  } catch (const CheckpointError& e) {
    return e.reason();
  }
  return "no error";
}

// Offsets of the small fields of a state made by make_state (policy "osp:20", 3 workers).
struct Layout {
  std::size_t policy_length = 32, dimension = 0, workers = 0, sum_count = 0, state_length = 0;
  explicit Layout(const CheckpointState& s) {
    dimension = 36 + s.policy.size();
    workers = dimension + 8 * 4 + 1 + 8;
    sum_count = workers + 4 + 13 * s.workers.size() + 24;
    state_length = sum_count + 8;
  }
};

// ASan and TSan reserve terabytes of shadow address space: under either, an address
// space cap makes the child fail for the sanitizer's sake, so the checks run uncapped.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool address_sanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool address_sanitizer = true;
#else
constexpr bool address_sanitizer = false;
#endif
#else
constexpr bool address_sanitizer = false;
#endif

// Runs `f` in a child whose address space is capped 256 MiB above the parent's, so
// any allocation of gigabytes fails there; returns the child's exit code (f's value,
// or 100+ on a setup failure, 99 on an escaped exception). Under AddressSanitizer,
// whose shadow memory and allocator do not live with an address-space cap, `f` runs
// here uncapped (ASan still reports any allocation it cannot make).
int in_capped_child(const std::function<int()>& f) {
  if (address_sanitizer) return f();
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    int code = 99;
    try {
      long pages = 0;
      if (std::FILE* statm = std::fopen("/proc/self/statm", "r")) {
        if (std::fscanf(statm, "%ld", &pages) != 1) pages = 0;
        std::fclose(statm);
      }
      if (pages <= 0) ::_exit(101);
      const rlim_t cap = static_cast<rlim_t>(pages) * static_cast<rlim_t>(::sysconf(_SC_PAGESIZE)) + (rlim_t{256} << 20);
      const rlimit limit{cap, cap};
      if (::setrlimit(RLIMIT_AS, &limit) != 0) ::_exit(102);
      // The cap bites: 1 GiB cannot be had.
      bool capped = false;
      try {
        std::vector<char> big(std::size_t{1} << 30);
        big[12345] = 1;
      } catch (const std::bad_alloc&) {
        capped = true;
      }
      if (!capped) ::_exit(103);
      code = f();
    } catch (const std::bad_alloc&) {
      std::fprintf(stderr, "child: std::bad_alloc escaped\n");
      code = 98;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
    }
    std::fflush(nullptr);
    ::_exit(code);
  }
  REQUIRE(pid > 0);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  return WEXITSTATUS(status);
}

}  // namespace

TEST_CASE("file names sort by sequence and only checkpoint names parse", "[checkpoint]") {
  CHECK(ckpt::file_name(42) == "ckpt-00000000000000000042.psync");
  CHECK(ckpt::file_name(std::numeric_limits<std::uint64_t>::max()) == "ckpt-18446744073709551615.psync");
  CHECK(ckpt::parse_file_name("ckpt-00000000000000000042.psync") == 42u);
  CHECK(ckpt::parse_file_name("ckpt-18446744073709551615.psync") == std::numeric_limits<std::uint64_t>::max());
  CHECK(ckpt::parse_file_name("ckpt-00000000000000000042.psync.tmp", true) == 42u);
  CHECK_FALSE(ckpt::parse_file_name("ckpt-00000000000000000042.psync.tmp"));
  CHECK_FALSE(ckpt::parse_file_name("ckpt-00000000000000000042.psync", true));
  CHECK_FALSE(ckpt::parse_file_name("ckpt-42.psync"));
  CHECK_FALSE(ckpt::parse_file_name("ckpt-99999999999999999999.psync"));  // above 2^64-1
  CHECK_FALSE(ckpt::parse_file_name("ckpt-0000000000000000004x.psync"));
  CHECK_FALSE(ckpt::parse_file_name("notes.txt"));
  CHECK(ckpt::file_name(9) < ckpt::file_name(10));
}

TEST_CASE("a checkpoint round-trips bit for bit, in memory and through a file", "[checkpoint]") {
  TempDir dir;
  SECTION("special floats, every byte value, an open round") {
    CheckpointState s = make_state(9, 3);
    const float specials[] = {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity(),
                              std::numeric_limits<float>::infinity(), -0.0f, std::numeric_limits<float>::denorm_min(),
                              std::numeric_limits<float>::max(), std::numeric_limits<float>::lowest()};
    for (std::size_t i = 0; i < std::size(specials); ++i) s.parameters[static_cast<Eigen::Index>(i)] = specials[i];
    std::uint32_t payload_nan = 0x7fc12345;  // a NaN with a payload keeps its bits
    std::memcpy(&s.parameters[7], &payload_nan, 4);
    s.round.sum[0] = -0.0f;
    s.policy_state.clear();
    for (int b = 0; b < 256; ++b) s.policy_state.push_back(static_cast<std::byte>(b));

    const Bytes image = ckpt::encode(s, 17);
    CHECK(image.size() == ckpt::encoded_size(s));
    const ckpt::Decoded d = ckpt::decode(image);
    CHECK(d.sequence == 17);
    require_equal(d.state, s);

    const psync::CheckpointWritten w = psync::write_checkpoint(dir.path, s, 17);
    CHECK(w.path == dir.path / "ckpt-00000000000000000017.psync");
    CHECK(w.bytes == image.size());
    CHECK(read_bytes(w.path) == image);  // the streamed file is the in-memory image
    const psync::LoadedCheckpoint l = psync::load_latest_checkpoint(dir.path);
    REQUIRE(l.state);
    CHECK(l.sequence == 17);
    CHECK(l.path == w.path);
    CHECK(l.skipped.empty());
    CHECK(l.next_sequence == 18);
    require_equal(*l.state, s);
  }
  SECTION("a sum policy: no round, no policy state, not started") {
    CheckpointState s = make_state(5, 2, false);
    s.policy_state.clear();
    psync::write_checkpoint(dir.path, s, 1);
    const auto l = psync::load_latest_checkpoint(dir.path);
    REQUIRE(l.state);
    CHECK(l.state->round.sum.size() == 0);
    require_equal(*l.state, s);
  }
  SECTION("an empty model and no workers") {
    CheckpointState s;
    s.policy = "bsp";
    psync::write_checkpoint(dir.path, s, 0);
    const auto l = psync::load_latest_checkpoint(dir.path);
    REQUIRE(l.state);
    require_equal(*l.state, s);
  }
  SECTION("large enough to bypass the staging buffers, with metadata across their boundary") {
    // 100k floats go straight from and into the vectors; 10k workers (130 KB) cross the 64 KiB buffer.
    CheckpointState s = make_state(100000, 1, true, 10000);
    psync::write_checkpoint(dir.path, s, 5);
    const auto l = psync::load_latest_checkpoint(dir.path);
    REQUIRE(l.state);
    require_equal(*l.state, s);
    CHECK(read_bytes(l.path) == ckpt::encode(s, 5));
  }
}

TEST_CASE("the byte layout is pinned", "[checkpoint]") {
  const CheckpointState s = make_state(3, 1);
  const Bytes b = ckpt::encode(s, 0x0102030405060708ull);
  const Layout at(s);
  CHECK(std::memcmp(b.data(), "PSYNCKPT", 8) == 0);
  CHECK(get<std::uint32_t>(b, 8) == 1);   // format version
  CHECK(get<std::uint32_t>(b, 12) == 0);  // flags
  CHECK(get<std::uint64_t>(b, 16) == b.size());
  CHECK(b[24] == std::byte{0x08});  // sequence, little-endian
  CHECK(b[31] == std::byte{0x01});
  CHECK(get<std::uint32_t>(b, 32) == s.policy.size());
  CHECK(std::memcmp(b.data() + 36, s.policy.data(), s.policy.size()) == 0);
  CHECK(get<std::uint64_t>(b, at.dimension) == 3);
  CHECK(get<std::uint64_t>(b, at.dimension + 8) == s.version);
  CHECK(get<std::uint64_t>(b, at.dimension + 16) == s.updates_applied);
  CHECK(get<std::uint64_t>(b, at.dimension + 24) == s.steps_applied);
  CHECK(get<std::uint8_t>(b, at.dimension + 32) == 1);  // started
  CHECK(get<std::uint64_t>(b, at.dimension + 33) == s.max_clock_seen);
  CHECK(get<std::uint32_t>(b, at.workers) == 3);
  CHECK(get<std::uint32_t>(b, at.workers + 4) == s.workers[0].worker);
  CHECK(get<std::uint64_t>(b, at.workers + 8) == s.workers[0].clock);
  CHECK(get<std::uint8_t>(b, at.workers + 16) == 1);
  CHECK(get<std::uint64_t>(b, at.sum_count - 24) == s.round.round);
  CHECK(get<std::uint64_t>(b, at.sum_count - 16) == s.round.pushes);
  CHECK(get<std::uint64_t>(b, at.sum_count - 8) == s.round.steps);
  CHECK(get<std::uint64_t>(b, at.sum_count) == 3);
  CHECK(get<std::uint64_t>(b, at.state_length) == 5);
  const std::size_t bulk = at.state_length + 8;
  CHECK(get<float>(b, bulk + 4) == s.parameters[1]);
  CHECK(get<float>(b, bulk + 12) == s.round.sum[0]);
  CHECK(b[bulk + 24] == s.policy_state[0]);
  CHECK(bulk + 24 + 5 + 4 == b.size());
  CHECK(get<std::uint32_t>(b, b.size() - 4) == crc_of(b, b.size() - 4));  // zlib's CRC-32 of all before it
}

TEST_CASE("clock table and round restored from a checkpoint continue exactly as the uninterrupted run", "[checkpoint]") {
  constexpr Eigen::Index n = 4;
  auto update = [](int k) { return Eigen::VectorXf::Constant(n, 0.1f * static_cast<float>(k) + 0.013f); };
  // Two workers; worker 1 leaves after round 2 and rejoins lower, so max_clock_seen matters.
  auto first_half = [&](psync::ClockTable& t, psync::combine::RoundAverage& c, Eigen::VectorXf& m) {
    t.join(0, 0);
    t.join(1, 0);
    for (int r = 0; r < 3; ++r) {
      c.add(m, update(r), 2);
      t.tick(0);
      c.add(m, update(10 + r), 3);
      t.tick(1);
      c.advance(m, t.min_clock());
    }
    t.leave(1);
    t.join(1, t.min_clock());
    c.add(m, update(7), 1);  // an open round with one push
    t.tick(0);
  };
  auto second_half = [&](psync::ClockTable& t, psync::combine::RoundAverage& c, Eigen::VectorXf& m) {
    c.add(m, update(8), 1);
    t.tick(1);
    c.advance(m, t.min_clock());
    t.leave(0);
    t.leave(1);
    return t.min_clock();
  };

  psync::ClockTable t1;
  psync::combine::RoundAverage c1;
  c1.reset(n);
  Eigen::VectorXf m1 = Eigen::VectorXf::Zero(n);
  first_half(t1, c1, m1);

  CheckpointState s;
  s.policy = "bsp";
  s.dimension = n;
  s.parameters = m1;
  s.workers = t1.entries();
  s.max_clock_seen = t1.max_clock_seen();
  c1.save(s.round);
  CHECK(s.round.pushes == 1);
  TempDir dir;
  psync::write_checkpoint(dir.path, s, 1);
  const auto loaded = psync::load_latest_checkpoint(dir.path);
  REQUIRE(loaded.state);
  psync::check_compatible(*loaded.state, "bsp", static_cast<std::uint64_t>(n));
  CHECK_THROWS_AS(psync::check_compatible(*loaded.state, "osp:20", static_cast<std::uint64_t>(n)), psync::ConfigError);
  CHECK_THROWS_AS(psync::check_compatible(*loaded.state, "bsp", 5), psync::ConfigError);

  psync::ClockTable t2;
  t2.restore(loaded.state->workers, loaded.state->max_clock_seen);
  psync::combine::RoundAverage c2;
  c2.restore(loaded.state->round, n);
  Eigen::VectorXf m2 = loaded.state->parameters;

  const std::uint64_t min1 = second_half(t1, c1, m1);
  const std::uint64_t min2 = second_half(t2, c2, m2);
  CHECK(same_bits(m1, m2));
  CHECK(c1.round() == c2.round());
  CHECK(min1 == min2);
  CHECK(min2 == 4);  // nobody live: the largest clock ever seen, not the rejoined entry's

  psync::combine::Sum sum;
  psync::OpenRound empty;
  sum.save(empty);
  CHECK(empty.sum.size() == 0);
  sum.restore(empty, n);
  CHECK_THROWS_AS(sum.restore(loaded.state->round, n), psync::ConfigError);
  CHECK_THROWS_AS(c2.restore(loaded.state->round, n + 1), psync::ConfigError);
  CHECK_THROWS_AS(t2.restore(std::vector<psync::WorkerClock>{{1, 0, true}, {1, 2, true}}, 5), psync::ConfigError);
  CHECK_THROWS_AS(t2.restore(std::vector<psync::WorkerClock>{{1, 6, true}}, 5), psync::ConfigError);
}

TEST_CASE("a checkpoint truncated at any length is skipped with its reason and the previous one is used", "[checkpoint]") {
  TempDir dir;
  const CheckpointState a = make_state(3, 1);
  const CheckpointState b = make_state(3, 2);
  psync::write_checkpoint(dir.path, a, 1);
  const fs::path newest = psync::write_checkpoint(dir.path, b, 2).path;
  const Bytes full = read_bytes(newest);
  REQUIRE(full.size() > 100);
  for (std::size_t len = 0; len < full.size(); ++len) {
    INFO("truncated to " << len << " of " << full.size() << " bytes");
    const std::span<const std::byte> cut(full.data(), len);
    CHECK_THAT(decode_error(cut), Contains("truncated"));
    write_bytes(newest, cut);
    const auto l = psync::load_latest_checkpoint(dir.path);
    REQUIRE(l.state);
    CHECK(l.sequence == 1);
    require_equal(*l.state, a);
    REQUIRE(l.skipped.size() == 1);
    CHECK(l.skipped[0].path == newest);
    CHECK_THAT(l.skipped[0].reason, Contains("truncated"));
    CHECK(l.next_sequence == 3);
  }
  write_bytes(newest, full);
  CHECK(psync::load_latest_checkpoint(dir.path).sequence == 2);
}

TEST_CASE("one flipped bit anywhere in a checkpoint is caught", "[checkpoint]") {
  TempDir dir;
  const CheckpointState a = make_state(3, 1);
  const CheckpointState b = make_state(3, 2);
  psync::write_checkpoint(dir.path, a, 1);
  const fs::path newest = psync::write_checkpoint(dir.path, b, 2).path;
  const Bytes good = read_bytes(newest);
  std::size_t crc_errors = 0;
  for (std::size_t bit = 0; bit < 8 * good.size(); ++bit) {
    Bytes bad = good;
    bad[bit / 8] ^= std::byte{static_cast<unsigned char>(1u << (bit % 8))};
    const std::size_t at = bit / 8;
    INFO("bit " << bit % 8 << " of byte " << at << " of " << good.size());
    // The header's own checks speak first for magic, version and length; everything else is the CRC's.
    const char* expected = at < 8 ? "bad magic" : at < 12 ? "unsupported format version" : at >= 16 && at < 24 ? "bytes, its header says" : "CRC mismatch";
    CHECK_THAT(decode_error(bad), Contains(expected));
    write_bytes(newest, bad);
    const auto l = psync::load_latest_checkpoint(dir.path);
    REQUIRE(l.state);
    CHECK(l.sequence == 1);
    require_equal(*l.state, a);
    REQUIRE(l.skipped.size() == 1);
    CHECK_THAT(l.skipped[0].reason, Contains(expected));
    if (l.skipped[0].reason.find("CRC mismatch") != std::string::npos) ++crc_errors;
  }
  CHECK(crc_errors == 8 * (good.size() - 20));  // all but magic, version and length
}

TEST_CASE("huge length fields are refused before anything big is allocated", "[checkpoint]") {
  const CheckpointState s = make_state(3, 1);
  const Bytes good = ckpt::encode(s, 2);
  const Layout at(s);
  struct Forgery {
    const char* name;
    std::function<void(Bytes&)> forge;
    const char* reason;
  };
  const std::vector<Forgery> forgeries = {
      {"policy length 2^32-1", [&](Bytes& b) { put<std::uint32_t>(b, at.policy_length, 0xFFFFFFFFu); },
       "policy length 4294967295 above limit 256"},
      // The round sum's count follows the dimension, or the sum check would speak first.
      {"dimension 2^28 (1 GiB of floats)",
       [&](Bytes& b) {
         put<std::uint64_t>(b, at.dimension, std::uint64_t{1} << 28);
         put<std::uint64_t>(b, at.sum_count, std::uint64_t{1} << 28);
       },
       "dimension 268435456 needs more than the"},
      {"dimension 2^62 (4 * it overflows)",
       [&](Bytes& b) {
         put<std::uint64_t>(b, at.dimension, std::uint64_t{1} << 62);
         put<std::uint64_t>(b, at.sum_count, std::uint64_t{1} << 62);
       },
       "dimension 4611686018427387904 needs more than"},
      {"worker count 2^32-1", [&](Bytes& b) { put<std::uint32_t>(b, at.workers, 0xFFFFFFFFu); },
       "worker count 4294967295 needs 55834574835 bytes"},
      {"round sum 2^61 floats", [&](Bytes& b) { put<std::uint64_t>(b, at.sum_count, std::uint64_t{1} << 61); },
       "round sum has 2305843009213693952 floats, dimension is 3"},
      {"policy state 2^63 bytes", [&](Bytes& b) { put<std::uint64_t>(b, at.state_length, std::uint64_t{1} << 63); },
       "policy state 9223372036854775808 bytes do not fill"},
      {"file length 2^60", [&](Bytes& b) { put<std::uint64_t>(b, 16, std::uint64_t{1} << 60); },
       "truncated: the file has"},
  };
  for (const auto& f : forgeries) {
    Bytes forged = good;
    f.forge(forged);
    reseal(forged);  // a valid CRC: only the length checks stand in the way
    INFO(f.name);
    const std::string reason = decode_error(forged);
    CHECK_THAT(reason, Contains(f.reason));
    if (std::string(f.name).rfind("file length", 0) != 0) CHECK_THAT(reason, Contains("malformed (CRC matches)"));
    // Without the resealed CRC the same damage is named a CRC mismatch.
    Bytes damaged = good;
    f.forge(damaged);
    if (std::string(f.name).rfind("file length", 0) != 0) CHECK_THAT(decode_error(damaged), Contains("CRC mismatch"));
  }

  // The same forgeries, from files, in a process that cannot allocate 1 GiB: each is
  // skipped with its reason and the good checkpoint 1 is loaded.
  TempDir dir;
  psync::write_checkpoint(dir.path, make_state(3, 7), 1);
  const int rc = in_capped_child([&] {
    int failures = 0;
    for (const auto& f : forgeries) {
      Bytes forged = good;
      f.forge(forged);
      reseal(forged);
      write_bytes(dir.path / ckpt::file_name(2), forged);
      const auto l = psync::load_latest_checkpoint(dir.path);
      const bool ok = l.state && l.sequence == 1 && l.skipped.size() == 1 &&
                      l.skipped[0].reason.find(f.reason) != std::string::npos;
      if (!ok) {
        std::fprintf(stderr, "%s: %s\n", f.name, l.skipped.empty() ? "not skipped" : l.skipped[0].reason.c_str());
        ++failures;
      }
      if (decode_error(forged).find(f.reason) == std::string::npos) ++failures;
    }
    return failures;
  });
  CHECK(rc == 0);
}

TEST_CASE("write keeps the newest K checkpoints and refuses to write behind the newest", "[checkpoint]") {
  TempDir dir;
  auto present = [&] {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir.path)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  };
  std::vector<fs::path> removed;
  for (std::uint64_t seq = 1; seq <= 6; ++seq) {
    const auto w = psync::write_checkpoint(dir.path, make_state(4, static_cast<std::uint32_t>(seq)), seq);
    CHECK(w.problems.empty());
    removed.insert(removed.end(), w.removed.begin(), w.removed.end());
  }
  CHECK(present() == std::vector<std::string>{ckpt::file_name(4), ckpt::file_name(5), ckpt::file_name(6)});
  REQUIRE(removed.size() == 3);
  CHECK(removed[0].filename() == ckpt::file_name(1));
  CHECK(removed[2].filename() == ckpt::file_name(3));

  // Rewriting the newest sequence replaces it; an older one would never be loaded.
  psync::write_checkpoint(dir.path, make_state(4, 60), 6);
  CHECK(psync::load_latest_checkpoint(dir.path).state->version == 1060);
  CHECK_THROWS_WITH(psync::write_checkpoint(dir.path, make_state(4, 3), 3), Contains("is older than " + ckpt::file_name(6)));
  CHECK_THROWS_AS(psync::write_checkpoint(dir.path, make_state(4, 7), 7, 0), psync::ConfigError);

  psync::write_checkpoint(dir.path, make_state(4, 7), 7, 1);
  CHECK(present() == std::vector<std::string>{ckpt::file_name(7)});

  // An inconsistent state is refused before any file is created.
  CheckpointState bad = make_state(4, 8);
  bad.dimension = 5;
  CHECK_THROWS_WITH(psync::write_checkpoint(dir.path, bad, 8), Contains("parameters have 4 floats, dimension is 5"));
  bad = make_state(4, 8);
  std::swap(bad.workers[0], bad.workers[1]);
  CHECK_THROWS_WITH(psync::write_checkpoint(dir.path, bad, 8), Contains("strictly ascending"));
  CHECK(present() == std::vector<std::string>{ckpt::file_name(7)});
}

TEST_CASE("leftover temporaries and foreign files are ignored; the next write cleans temporaries up", "[checkpoint]") {
  TempDir dir;
  const CheckpointState a = make_state(3, 1);
  psync::write_checkpoint(dir.path, a, 1);
  // A crash mid-write leaves a torn .tmp; a crash between fsync and rename leaves a whole one.
  const Bytes image3 = ckpt::encode(make_state(3, 3), 3);
  write_bytes(dir.path / (ckpt::file_name(2) + ".tmp"), std::span(image3).first(40));
  write_bytes(dir.path / (ckpt::file_name(3) + ".tmp"), image3);
  write_bytes(dir.path / "notes.txt", image3);
  write_bytes(dir.path / "ckpt-9.psync", image3);  // not zero-padded: not a checkpoint name
  auto l = psync::load_latest_checkpoint(dir.path);
  REQUIRE(l.state);
  CHECK(l.sequence == 1);
  CHECK(l.skipped.empty());
  CHECK(l.next_sequence == 2);
  require_equal(*l.state, a);

  psync::write_checkpoint(dir.path, make_state(3, 2), 2);
  CHECK_FALSE(fs::exists(dir.path / (ckpt::file_name(2) + ".tmp")));  // became ckpt-2
  CHECK(fs::exists(dir.path / (ckpt::file_name(3) + ".tmp")));        // newer than what was written: left alone
  const auto w = psync::write_checkpoint(dir.path, make_state(3, 4), 4);
  CHECK_FALSE(fs::exists(dir.path / (ckpt::file_name(3) + ".tmp")));
  CHECK(std::count(w.removed.begin(), w.removed.end(), dir.path / (ckpt::file_name(3) + ".tmp")) == 1);
  CHECK(fs::exists(dir.path / "notes.txt"));
  CHECK(fs::exists(dir.path / "ckpt-9.psync"));
}

TEST_CASE("loading: no directory, nothing valid, a misnamed file, a directory under a checkpoint name", "[checkpoint]") {
  TempDir dir;
  auto none = psync::load_latest_checkpoint(dir.path / "absent");
  CHECK_FALSE(none.state);
  CHECK(none.skipped.empty());
  CHECK(none.next_sequence == 1);

  psync::write_checkpoint(dir.path, make_state(3, 1), 3);
  write_bytes(dir.path / ckpt::file_name(4), std::vector<std::byte>(100, std::byte{'x'}));
  fs::create_directory(dir.path / ckpt::file_name(5));
  fs::rename(dir.path / ckpt::file_name(3), dir.path / ckpt::file_name(6));  // contents say 3
  const auto l = psync::load_latest_checkpoint(dir.path);
  CHECK_FALSE(l.state);
  CHECK(l.next_sequence == 7);
  REQUIRE(l.skipped.size() == 3);
  CHECK(l.skipped[0].path.filename() == ckpt::file_name(6));
  CHECK_THAT(l.skipped[0].reason, Contains("the header says sequence 3, the file name says 6"));
  CHECK_THAT(l.skipped[1].reason, Contains("not a regular file"));
  CHECK_THAT(l.skipped[2].reason, Contains("bad magic \"xxxxxxxx\""));
  CHECK_THROWS_WITH(ckpt::read_file(dir.path / ckpt::file_name(4)), Contains(ckpt::file_name(4)) && Contains("bad magic"));
}

TEST_CASE("an unwritable directory gives an error naming the path and the errno text", "[checkpoint]") {
  TempDir dir;
  const CheckpointState s = make_state(3, 1);
  SECTION("the directory's parent is a file") {
    write_bytes(dir.path / "file", std::vector<std::byte>(1));
    const fs::path target = dir.path / "file" / "ckpts";
    try {
      psync::write_checkpoint(target, s, 1);
      FAIL("no error");
    } catch (const CheckpointError& e) {
      CHECK(e.path() == target);
      CHECK(e.code() == std::errc::not_a_directory);
      CHECK_THAT(std::string(e.what()), Contains(target.string()) && Contains("Not a directory"));
    }
  }
  SECTION("no write permission") {
    const fs::path target = dir.path / "ro";
    fs::create_directory(target);
    fs::permissions(target, fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read |
                                fs::perms::group_exec | fs::perms::others_read | fs::perms::others_exec);
    fs::permissions(dir.path, fs::perms::others_exec | fs::perms::group_exec, fs::perm_options::add);
    // Root ignores permissions: the attempt runs as nobody in a child then.
    int pipe_fds[2];
    REQUIRE(::pipe(pipe_fds) == 0);
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(pipe_fds[0]);
      if (::geteuid() == 0 && (::setgid(65534) != 0 || ::setuid(65534) != 0)) ::_exit(2);
      std::string text = "no error";
      try {
        psync::write_checkpoint(target, s, 1);
      } catch (const CheckpointError& e) {
        text = e.what();
      }
      const ssize_t w = ::write(pipe_fds[1], text.data(), text.size());
      ::_exit(w == static_cast<ssize_t>(text.size()) ? 0 : 3);
    }
    ::close(pipe_fds[1]);
    std::string text;
    char buf[512];
    for (ssize_t r; (r = ::read(pipe_fds[0], buf, sizeof buf)) > 0;) text.append(buf, static_cast<std::size_t>(r));
    ::close(pipe_fds[0]);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);
    CHECK_THAT(text, Contains((target / (ckpt::file_name(1) + ".tmp")).string()) && Contains("cannot create") &&
                         Contains("Permission denied"));
    CHECK(fs::is_empty(target));
  }
}

// Not run by ctest: `test_checkpoint "[.bench]"` times a 1M-float checkpoint against
// a bare write(2) of the same bytes. PSYNC_CHECKPOINT_BENCH_DIR chooses the disk
// (default: a directory under the current one).
TEST_CASE("cost of a 1M-float checkpoint", "[.bench]") {
  const char* env = std::getenv("PSYNC_CHECKPOINT_BENCH_DIR");
  const fs::path dir = env ? fs::path(env) : fs::current_path() / "checkpoint-bench";
  using clk = std::chrono::steady_clock;
  auto ms = [](clk::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
  auto stats = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    char text[64];
    std::snprintf(text, sizeof text, "median %6.2f ms, min %6.2f ms", v[v.size() / 2], v.front());
    return std::string(text);
  };
  auto bare_write = [&](const Bytes& image, bool sync) {
    const fs::path tmp = dir / "bare.tmp";
    const auto t0 = clk::now();
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    REQUIRE(fd >= 0);
    REQUIRE(::write(fd, image.data(), image.size()) == static_cast<ssize_t>(image.size()));
    if (sync) REQUIRE(::fsync(fd) == 0);
    ::close(fd);
    fs::rename(tmp, dir / "bare");
    if (sync) {
      const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
      REQUIRE(::fsync(dfd) == 0);
      ::close(dfd);
    }
    return ms(clk::now() - t0);
  };
  const int reps = 21;
  for (const bool with_sum : {false, true}) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    const CheckpointState s = make_state(1000000, 1, with_sum, 8);
    const Bytes image = ckpt::encode(s, 1);
    std::vector<double> t_write, t_bare, t_bare_nosync, t_encode, t_load, t_crc, t_psync_crc;
    // Durable writes first, alternating: on ext4 an fsync also flushes other files' dirty
    // data, so the unsynced writes below would be billed to whichever fsync came next.
    for (int r = 0; r < reps; ++r) {
      const auto t0 = clk::now();
      psync::write_checkpoint(dir, s, static_cast<std::uint64_t>(r + 1));
      t_write.push_back(ms(clk::now() - t0));
      t_bare.push_back(bare_write(image, true));
    }
    ::sync();
    for (int r = 0; r < reps; ++r) {
      t_bare_nosync.push_back(bare_write(image, false));
      auto t0 = clk::now();
      const Bytes again = ckpt::encode(s, 1);
      t_encode.push_back(ms(clk::now() - t0));
      t0 = clk::now();
      volatile std::uint32_t c = crc_of(again, again.size());
      (void)c;
      t_crc.push_back(ms(clk::now() - t0));
      t0 = clk::now();
      volatile std::uint32_t c2 = psync::detail::crc32(0, again.data(), again.size());
      (void)c2;
      t_psync_crc.push_back(ms(clk::now() - t0));
      t0 = clk::now();
      const auto l = psync::load_latest_checkpoint(dir);
      t_load.push_back(ms(clk::now() - t0));
      REQUIRE(l.sequence == static_cast<std::uint64_t>(reps));
    }
    ::sync();
    std::cout << "1M floats" << (with_sum ? " + a 1M-float round sum" : "") << ": " << image.size() << " bytes in "
              << dir << ", " << reps << " runs\n"
              << "  write_checkpoint (stream + CRC + fsync + rename + dir fsync + retention): " << stats(t_write) << "\n"
              << "  one write(2) of the same bytes + fsync + rename + dir fsync:             " << stats(t_bare) << "\n"
              << "  one write(2) of the same bytes + rename, no fsync:                       " << stats(t_bare_nosync) << "\n"
              << "  encode into a fresh in-memory buffer (not used by write_checkpoint):    " << stats(t_encode) << "\n"
              << "  zlib crc32 over the image:                                               " << stats(t_crc) << "\n"
              << "  psync's crc32 (detail/crc32.hpp, what write_checkpoint uses) over it:     " << stats(t_psync_crc) << "\n"
              << "  load_latest_checkpoint:                                                  " << stats(t_load) << "\n";
  }
  fs::remove_all(dir);
}

TEST_CASE("psync's CRC-32 is zlib's, for every length, alignment and split", "[checkpoint]") {
  // The core no longer links zlib (issue 11): detail::crc32 must give zlib's result
  // bit for bit, or checkpoints written before would no longer load.
  std::vector<unsigned char> bytes(1 << 20);
  std::uint32_t x = 12345;
  for (auto& b : bytes) {
    x = x * 1664525u + 1013904223u;
    b = static_cast<unsigned char>(x >> 24);
  }
  auto zlib = [&](std::size_t at, std::size_t n) {
    return static_cast<std::uint32_t>(::crc32(0L, reinterpret_cast<const Bytef*>(bytes.data() + at), static_cast<uInt>(n)));
  };
  CHECK(psync::detail::crc32(0, nullptr, 0) == 0);
  CHECK(psync::detail::crc32(0, "123456789", 9) == 0xCBF43926u);  // the standard check value
  for (std::size_t at = 0; at < 8; ++at) {
    for (std::size_t n = 0; n < 80; ++n) CHECK(psync::detail::crc32(0, bytes.data() + at, n) == zlib(at, n));
  }
  CHECK(psync::detail::crc32(0, bytes.data() + 3, bytes.size() - 3) == zlib(3, bytes.size() - 3));
  // Continuing a CRC over pieces gives the CRC of the whole, as zlib's does.
  std::uint32_t c = 0;
  for (std::size_t at = 0, n = 1; at < bytes.size(); at += n, n = n * 3 + 1) {
    c = psync::detail::crc32(c, bytes.data() + at, std::min(n, bytes.size() - at));
  }
  CHECK(c == zlib(0, bytes.size()));
}
