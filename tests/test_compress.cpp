// Update compression (docs/compression.md): each codec's round trip and error bound,
// error feedback's invariant, qsgd8's unbiasedness, the wire's encoded pushes and their
// refusals, the server refusing a malformed encoded push, the cores' allocation-free
// steady state, and training with compressed pushes under BSP and OSP.
#include "alloc_counter.hpp"
#include "catch.hpp"
#include "synthetic_task.hpp"
#include "toy_model.hpp"

#include <psync/compress/codec.hpp>
#include <psync/core/server_core.hpp>
#include <psync/core/worker_core.hpp>
#include <psync/harness/local_cluster.hpp>
#include <psync/models/softmax.hpp>
#include <psync/policies/asp.hpp>
#include <psync/policies/bsp.hpp>
#include <psync/policies/osp.hpp>
#include <psync/sim/simulator.hpp>
#include <psync/transport/wire.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

using psync::Encoding;
using psync::compress::Codec;
using psync::compress::Encoder;
using psync::compress::parse_codec;
using psync_test::Quadratic;
using psync_test::Target;

namespace {

Eigen::VectorXf random_vector(Eigen::Index n, std::uint64_t seed, float scale = 1.0f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  Eigen::VectorXf v(n);
  for (Eigen::Index i = 0; i < n; ++i) v[i] = d(rng);
  return v;
}

Eigen::VectorXf decoded(Encoding e, const std::vector<std::byte>& payload, Eigen::Index n) {
  Eigen::VectorXf out(n);
  const auto fault = psync::compress::decode(e, payload, out);
  INFO((fault ? *fault : std::string("ok")));
  REQUIRE_FALSE(fault);
  return out;
}

std::string refusal(const std::vector<std::byte>& frame) {
  try {
    (void)psync::wire::decode(frame, psync::WireLimits{});
  } catch (const psync::wire::FrameError& e) {
    return e.what();
  }
  return "accepted";
}

std::vector<std::byte> push_frame(Encoding e, std::uint64_t n, const std::vector<std::byte>& payload) {
  psync::msg::Push p{3, 2, 1, Eigen::VectorXf(), e, n, payload};
  return psync::wire::encode_to_bytes(0, p);
}

template <class T>
void poke(std::vector<std::byte>& bytes, std::size_t at, T v) {
  std::memcpy(bytes.data() + at, &v, sizeof(T));
}

}  // namespace

TEST_CASE("Codecs are chosen by name and refuse bad spellings", "[compress]") {
  for (const char* name : {"none", "fp16", "topk:0.01", "topk:1", "qsgd8"}) REQUIRE(parse_codec(name).name() == name);
  REQUIRE(parse_codec("dense").encoding == Encoding::dense);
  REQUIRE(parse_codec("topk:1e-7").name() == "topk:1e-07");
  REQUIRE(parse_codec(parse_codec("topk:0.123456789").name()).ratio == 0.123456789);
  REQUIRE(parse_codec("topk:0.25").ratio == 0.25);
  REQUIRE_THROWS_WITH(parse_codec("topk:0"), Catch::Matchers::Contains("fraction kept in (0, 1]"));
  REQUIRE_THROWS_WITH(parse_codec("topk:1.5"), Catch::Matchers::Contains("fraction kept in (0, 1]"));
  REQUIRE_THROWS_WITH(parse_codec("topk:x"), Catch::Matchers::Contains("fraction kept"));
  REQUIRE_THROWS_WITH(parse_codec("zip"), Catch::Matchers::Contains("unknown codec 'zip'"));
  REQUIRE(parse_codec("topk:0.01").kept(7850) == 79);
  REQUIRE(parse_codec("topk:0.0001").kept(100) == 1);  // at least one float
  REQUIRE(psync::compress::payload_bytes(parse_codec("qsgd8"), 1000) == 2 * 4 + 1000);
}

TEST_CASE("fp16 rounds to nearest even, is exact on halves, and clamps to the largest finite half", "[compress][fp16]") {
  using psync::compress::float_to_half;
  using psync::compress::half_to_float;
  // Every finite half round-trips exactly.
  for (std::uint32_t h = 0; h < 0x10000u; ++h) {
    if ((h & 0x7C00u) == 0x7C00u) continue;
    const float f = half_to_float(static_cast<std::uint16_t>(h));
    REQUIRE(float_to_half(f) == ((h == 0x8000u) ? 0x8000u : h));
  }
  REQUIRE(half_to_float(float_to_half(1.0f)) == 1.0f);
  REQUIRE(half_to_float(float_to_half(65504.0f)) == 65504.0f);
  REQUIRE(half_to_float(float_to_half(1e6f)) == 65504.0f);   // clamped, not infinity
  REQUIRE(half_to_float(float_to_half(-1e30f)) == -65504.0f);
  REQUIRE(half_to_float(float_to_half(1e-9f)) == 0.0f);      // below half the smallest subnormal
  // Ties go to even: 1 + 2^-11 is halfway between 1 and 1 + 2^-10.
  REQUIRE(half_to_float(float_to_half(1.0f + 0x1p-11f)) == 1.0f);
  REQUIRE(half_to_float(float_to_half(1.0f + 3 * 0x1p-11f)) == 1.0f + 0x1p-9f);
  REQUIRE(std::isnan(half_to_float(float_to_half(std::nanf("")))));
  // Relative error at most 2^-11 across the normal range, absolute 2^-25 below it.
  const Eigen::VectorXf v = random_vector(10000, 4, 100.0f);
  for (Eigen::Index i = 0; i < v.size(); ++i) {
    const float back = half_to_float(float_to_half(v[i]));
    REQUIRE(std::abs(back - v[i]) <= std::max(std::abs(v[i]) * 0x1p-11f, 0x1p-25f));
  }
}

TEST_CASE("Top-k sends exactly the k largest magnitudes and keeps the rest as residual", "[compress][topk]") {
  const Eigen::Index n = 1000;
  const Codec c = parse_codec("topk:0.05");
  const std::uint64_t k = c.kept(n);
  REQUIRE(k == 50);
  Encoder enc(c);
  enc.reset(n);
  const Eigen::VectorXf v = random_vector(n, 7);
  std::vector<std::byte> payload;
  enc.encode(v, payload);
  REQUIRE(payload.size() == 8 * k);
  const Eigen::VectorXf sent = decoded(Encoding::topk, payload, n);
  // The reference: indices sorted by |v| descending, first k.
  std::vector<int> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return std::abs(v[a]) > std::abs(v[b]); });
  const std::set<int> top(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k));
  std::uint64_t nonzero = 0;
  for (Eigen::Index i = 0; i < n; ++i) {
    if (top.count(static_cast<int>(i))) {
      REQUIRE(sent[i] == v[i]);  // sent whole
      REQUIRE(enc.residual()[i] == 0.0f);
    } else {
      REQUIRE(sent[i] == 0.0f);
      REQUIRE(enc.residual()[i] == v[i]);
    }
    nonzero += sent[i] != 0.0f;
  }
  REQUIRE(nonzero == k);
}

TEST_CASE("qsgd8 is within one level of the value and unbiased over seeds; a seed repeats", "[compress][qsgd8]") {
  const Eigen::Index n = 1200;  // three buckets, the last one partial
  const Eigen::VectorXf v = random_vector(n, 9);
  const Codec c = parse_codec("qsgd8");
  std::vector<std::byte> a, b;
  Encoder e1(c, 42), e2(c, 42);
  e1.reset(n);
  e2.reset(n);
  e1.encode(v, a);
  e2.encode(v, b);
  REQUIRE(a == b);  // deterministic for a seed
  REQUIRE(a.size() == 4 * 3 + static_cast<std::size_t>(n));
  const Eigen::VectorXf once = decoded(Encoding::qsgd8, a, n);
  for (Eigen::Index i = 0; i < n; ++i) {
    const Eigen::Index b0 = (i / 512) * 512, len = std::min<Eigen::Index>(512, n - b0);
    const float scale = v.segment(b0, len).cwiseAbs().maxCoeff();
    REQUIRE(std::abs(once[i] - v[i]) <= scale / 127 * 1.0001f);
  }
  // Unbiased: the mean over many seeds approaches v (std error ~ scale/127/2/sqrt(N)).
  Eigen::VectorXd mean = Eigen::VectorXd::Zero(n);
  const int seeds = 2000;
  std::vector<std::byte> p;
  for (int s = 0; s < seeds; ++s) {
    Encoder e(c, static_cast<std::uint64_t>(s) + 100);
    e.reset(n);
    e.encode(v, p);
    mean += decoded(Encoding::qsgd8, p, n).cast<double>();
  }
  mean /= seeds;
  const double worst = (mean - v.cast<double>()).cwiseAbs().maxCoeff();
  const double unit = v.cwiseAbs().maxCoeff() / 127.0;
  INFO("largest |mean - v| " << worst << ", one level " << unit);
  REQUIRE(worst < 0.1 * unit);
  // Deterministic rounding would be biased by up to half a level on some entries.
}

TEST_CASE("Error feedback: sum of what was sent + residual == sum of the updates", "[compress][feedback]") {
  const Eigen::Index n = 777;
  for (const char* name : {"fp16", "topk:0.01", "topk:0.3", "qsgd8"}) {
    const Codec c = parse_codec(name);
    Encoder enc(c, 5);
    enc.reset(n);
    Eigen::VectorXd inputs = Eigen::VectorXd::Zero(n), sent = Eigen::VectorXd::Zero(n);
    std::vector<std::byte> payload;
    for (int push = 0; push < 300; ++push) {
      const Eigen::VectorXf u = random_vector(n, 1000 + static_cast<std::uint64_t>(push), 0.01f);
      inputs += u.cast<double>();
      enc.encode(u, payload);
      sent += decoded(c.encoding, payload, n).cast<double>();
    }
    const double err = (sent + enc.residual().cast<double>() - inputs).cwiseAbs().maxCoeff();
    INFO(name << ": largest |sent + residual - inputs| " << err << ", residual max " << enc.residual().cwiseAbs().maxCoeff());
    REQUIRE(err < 1e-4);
    // The residual stays bounded (it does not swallow the updates): far below the inputs' sum.
    REQUIRE(enc.residual().cwiseAbs().maxCoeff() < 0.5 * inputs.cwiseAbs().maxCoeff() + 0.2);
  }
}

namespace {

// The slices' decodes, one after the other: what the K shards apply together.
Eigen::VectorXf decoded_slices(Encoding e, const std::vector<std::vector<std::byte>>& slices,
                               const std::vector<std::uint64_t>& sizes) {
  REQUIRE(slices.size() == sizes.size());
  Eigen::VectorXf out(static_cast<Eigen::Index>(std::accumulate(sizes.begin(), sizes.end(), std::uint64_t{0})));
  Eigen::Index at = 0;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const auto n = static_cast<Eigen::Index>(sizes[i]);
    out.segment(at, n) = decoded(e, slices[i], n);
    at += n;
  }
  return out;
}

}  // namespace

TEST_CASE("split cuts an encoded push into per-shard payloads that decode to exactly its slices",
          "[compress][split]") {
  // Uneven slices, one of a single float, none aligned to qsgd8's 512-float buckets.
  const std::vector<std::uint64_t> sizes{700, 1, 787, 512};
  const Eigen::Index n = 2000;
  for (const char* name : {"fp16", "topk:0.01", "topk:0.3", "topk:1", "qsgd8"}) {
    INFO(name);
    const Codec c = parse_codec(name);
    Encoder enc(c, 9);
    enc.reset(n, sizes);
    REQUIRE(enc.segments() == sizes);
    Eigen::VectorXd inputs = Eigen::VectorXd::Zero(n), sent = Eigen::VectorXd::Zero(n);
    std::vector<std::byte> payload;
    std::vector<std::vector<std::byte>> slices;
    for (int push = 0; push < 40; ++push) {
      // Large values in the first slice only at even pushes: top-k then sends the
      // single-float slice nothing, an empty payload of its own.
      Eigen::VectorXf u = random_vector(n, 77 + static_cast<std::uint64_t>(push), 0.01f);
      if (push % 2 == 0) u.head(700).array() *= 100.0f;
      inputs += u.cast<double>();
      enc.encode(u, payload);
      REQUIRE(payload.size() == psync::compress::payload_bytes(c, sizes));
      const auto fault = psync::compress::split(c.encoding, payload, sizes, slices);
      INFO((fault ? *fault : std::string("ok")));
      REQUIRE_FALSE(fault);
      const Eigen::VectorXf parts = decoded_slices(c.encoding, slices, sizes);
      for (std::size_t i = 0; i < sizes.size(); ++i) {
        // Each slice is an ordinary payload of its size (top-k: of the values it was given).
        if (c.encoding != Encoding::topk) REQUIRE(slices[i].size() == psync::compress::payload_bytes(c, sizes[i]));
      }
      if (c.encoding != Encoding::qsgd8) {
        // fp16 and top-k are the unsegmented encoding: the whole decodes, and the slices are its parts, bit for bit.
        const Eigen::VectorXf whole = decoded(c.encoding, payload, n);
        REQUIRE((parts.array() == whole.array()).all());
      }
      sent += parts.cast<double>();
    }
    // Error feedback across the cut: what the shards got + the residual == the updates.
    const double err = (sent + enc.residual().cast<double>() - inputs).cwiseAbs().maxCoeff();
    INFO("largest |sent + residual - inputs| " << err);
    REQUIRE(err < 1e-3);
  }
  // Dense too (Sharded cuts dense pushes itself; split agrees).
  std::vector<std::byte> dense(4 * static_cast<std::size_t>(n));
  const Eigen::VectorXf v = random_vector(n, 3);
  std::memcpy(dense.data(), v.data(), dense.size());
  std::vector<std::vector<std::byte>> slices;
  REQUIRE_FALSE(psync::compress::split(Encoding::dense, dense, sizes, slices));
  REQUIRE((decoded_slices(Encoding::dense, slices, sizes).array() == v.array()).all());
}

TEST_CASE("qsgd8's buckets restart at each segment: one segment is the plain encoding", "[compress][split]") {
  const Eigen::Index n = 1300;
  const Eigen::VectorXf u = random_vector(n, 11);
  std::vector<std::byte> plain, one, two;
  Encoder a(parse_codec("qsgd8"), 4), b(parse_codec("qsgd8"), 4), c(parse_codec("qsgd8"), 4);
  a.reset(n);
  b.reset(n, {1300});
  c.reset(n, {600, 700});
  REQUIRE(b.segments().empty());  // one segment is the whole update
  a.encode(u, plain);
  b.encode(u, one);
  c.encode(u, two);
  REQUIRE(one == plain);
  // Two segments: 2 + 2 scales instead of 3; segment 1's first scale is the largest
  // |u| of floats 600..1111, not of 512..1023.
  REQUIRE(plain.size() == 4 * 3 + 1300);
  REQUIRE(two.size() == 4 * 2 + 600 + 4 * 2 + 700);
  float scale = 0;
  std::memcpy(&scale, two.data() + 4 * 2 + 600, 4);
  REQUIRE(scale == u.segment(600, 512).cwiseAbs().maxCoeff());
  // An unsegmented qsgd8 payload cannot be cut (its size gives it away); nor can bad top-k or fp16.
  std::vector<std::vector<std::byte>> slices;
  const std::vector<std::uint64_t> sizes{600, 700};
  const auto refused = [&](Encoding e, const std::vector<std::byte>& p) {
    const auto fault = psync::compress::split(e, p, sizes, slices);
    return fault ? *fault : std::string("(accepted)");
  };
  REQUIRE_THAT(refused(Encoding::qsgd8, plain), Catch::Matchers::Contains("buckets restarting at each segment"));
  REQUIRE_THAT(refused(Encoding::fp16, std::vector<std::byte>(2599)), Catch::Matchers::Contains("expected 2600"));
  std::vector<std::byte> topk(16);
  const auto pair = [&](std::uint32_t j, std::uint32_t index) { std::memcpy(topk.data() + 4 * j, &index, 4); };
  pair(0, 5);
  pair(1, 1300);
  REQUIRE_THAT(refused(Encoding::topk, topk), Catch::Matchers::Contains("index 1300 out of range"));
  pair(0, 900);
  pair(1, 650);
  REQUIRE_THAT(refused(Encoding::topk, topk), Catch::Matchers::Contains("not strictly increasing"));
  REQUIRE_THAT(refused(Encoding::topk, std::vector<std::byte>(12)), Catch::Matchers::Contains("whole number"));
  // Segments that do not add up are the caller's mistake.
  REQUIRE_THROWS_WITH(c.reset(n, {600, 600}), Catch::Matchers::Contains("sum to 1200"));
  REQUIRE_THROWS_WITH(c.reset(n, {1300, 0}), Catch::Matchers::Contains("empty segment"));
}

TEST_CASE("Encoded pushes cross the wire unchanged, in their encoded size", "[compress][wire]") {
  const Eigen::Index n = 1030;
  const Eigen::VectorXf v = random_vector(n, 3);
  for (const char* name : {"fp16", "topk:0.1", "qsgd8"}) {
    const Codec c = parse_codec(name);
    Encoder enc(c, 1);
    enc.reset(n);
    std::vector<std::byte> payload;
    enc.encode(v, payload);
    const auto frame = push_frame(c.encoding, static_cast<std::uint64_t>(n), payload);
    REQUIRE(frame.size() == psync::wire::header_size + psync::wire::fixed_size(psync::wire::MessageType::push) + payload.size());
    psync::WireLimits limits;
    limits.expected_dimension = static_cast<std::uint64_t>(n);
    const psync::Envelope env = psync::wire::decode(frame, limits);
    const auto& p = std::get<psync::msg::Push>(env.message);
    REQUIRE(p.encoding == c.encoding);
    REQUIRE(p.dimension() == static_cast<std::uint64_t>(n));
    REQUIRE(p.payload == payload);
    REQUIRE(p.update.size() == 0);
    REQUIRE(psync::wire::encode_to_bytes(0, p) == frame);
  }
  // Dense is as before, with encoding byte 0 (version 4's one extra byte).
  psync::msg::Push dense{1, 0, 1, v};
  const auto frame = psync::wire::encode_to_bytes(0, dense);
  REQUIRE(frame.size() == 20 + 29 + 4 * static_cast<std::size_t>(n));
  REQUIRE(std::to_integer<int>(frame[4]) == 4);
  REQUIRE(std::to_integer<int>(frame[20 + 20]) == 0);
  REQUIRE(std::get<psync::msg::Push>(psync::wire::decode(frame, {}).message).update == v);
}

TEST_CASE("Malformed encoded pushes are refused with the fault named", "[compress][wire]") {
  const std::size_t body = 20 + 29;  // where the payload starts
  SECTION("unknown encoding") {
    auto f = push_frame(Encoding::fp16, 2, std::vector<std::byte>(4));
    f[20 + 20] = std::byte{4};
    REQUIRE(refusal(f) == "unknown push encoding 4");
  }
  SECTION("fp16 length does not match its count") {
    REQUIRE_THAT(refusal(push_frame(Encoding::fp16, 3, std::vector<std::byte>(4))),
                 Catch::Matchers::Contains("does not match its fp16 encoding of 3 floats"));
  }
  SECTION("fp16 infinity") {
    auto f = push_frame(Encoding::fp16, 2, std::vector<std::byte>(4));
    poke<std::uint16_t>(f, body + 2, 0x7C00);
    REQUIRE(refusal(f) == "push: fp16 value 1 is not finite");
  }
  SECTION("top-k index out of range, not increasing, more values than floats, non-finite value") {
    std::vector<std::byte> p(16);
    poke<std::uint32_t>(p, 0, 1);
    poke<std::uint32_t>(p, 4, 10);
    poke<float>(p, 8, 1.0f);
    poke<float>(p, 12, 2.0f);
    REQUIRE(refusal(push_frame(Encoding::topk, 10, p)) == "push: top-k index 10 out of range (10 floats)");
    REQUIRE(refusal(push_frame(Encoding::topk, 11, p)) == "accepted");
    poke<std::uint32_t>(p, 4, 1);
    REQUIRE(refusal(push_frame(Encoding::topk, 11, p)) == "push: top-k indices not strictly increasing (1 after 1)");
    REQUIRE(refusal(push_frame(Encoding::topk, 1, p)) == "push top-k count 2 above its 1 floats");
    poke<std::uint32_t>(p, 4, 5);
    poke<float>(p, 12, std::numeric_limits<float>::infinity());
    REQUIRE(refusal(push_frame(Encoding::topk, 11, p)) == "push: top-k value for index 5 is not finite");
    REQUIRE_THAT(refusal(push_frame(Encoding::topk, 11, std::vector<std::byte>(12))),
                 Catch::Matchers::Contains("8 bytes per kept float"));
  }
  SECTION("qsgd8 scale not finite, negative, level -128, wrong length") {
    std::vector<std::byte> p(4 + 3);
    poke<float>(p, 0, std::nanf(""));
    REQUIRE(refusal(push_frame(Encoding::qsgd8, 3, p)) == "push: qsgd8 scale 0 is not finite");
    poke<float>(p, 0, -1.0f);
    REQUIRE(refusal(push_frame(Encoding::qsgd8, 3, p)) == "push: qsgd8 scale 0 is negative");
    poke<float>(p, 0, 1.0f);
    poke<std::int8_t>(p, 5, -128);
    REQUIRE(refusal(push_frame(Encoding::qsgd8, 3, p)) == "push: qsgd8 level -128 at 1 below -127");
    REQUIRE_THAT(refusal(push_frame(Encoding::qsgd8, 4, p)), Catch::Matchers::Contains("qsgd8 encoding of 4 floats"));
  }
  SECTION("an encoded push may not claim more floats than a dense push under the limit") {
    REQUIRE(refusal(push_frame(Encoding::topk, 16777209, {})) ==
            "push encodes 16777209 floats, above what the payload limit 67108864 allows dense");
    REQUIRE(refusal(push_frame(Encoding::topk, 16777208, {})) == "accepted");
  }
  SECTION("the dimension check applies to encoded pushes") {
    psync::WireLimits limits;
    limits.expected_dimension = 5;
    try {
      (void)psync::wire::decode(push_frame(Encoding::fp16, 4, std::vector<std::byte>(8)), limits);
      FAIL("accepted");
    } catch (const psync::wire::FrameError& e) {
      REQUIRE(e.code() == psync::msg::ErrorCode::wrong_dimension);
    }
  }
}

TEST_CASE("The server refuses a malformed encoded push and keeps what it accepted", "[compress][cores]") {
  auto now = std::chrono::steady_clock::time_point{};
  psync::ServerCoreOptions so;
  so.expected_workers = 2;
  psync::ServerCore<Quadratic, psync::Asp> server(Quadratic(4), so, psync::Asp{}, now);
  for (psync::PeerId w : {0u, 1u}) server.on_message(w, psync::msg::Join{w, 4, "asp"}, now);
  while (server.poll_transmit()) {
  }
  // Worker 0: a good top-k push of (index 2, value 1.5).
  std::vector<std::byte> good(8);
  poke<std::uint32_t>(good, 0, 2);
  poke<float>(good, 4, 1.5f);
  server.on_message(0, psync::msg::Push{0, 0, 1, Eigen::VectorXf(), Encoding::topk, 4, good}, now);
  REQUIRE(server.model().parameters()[2] == 1.5f);
  while (server.poll_transmit()) {
  }
  // Worker 1: index 9 of 4 floats.
  std::vector<std::byte> bad = good;
  poke<std::uint32_t>(bad, 0, 9);
  server.on_message(1, psync::msg::Push{0, 0, 1, Eigen::VectorXf(), Encoding::topk, 4, bad}, now);
  auto t = server.poll_transmit();
  REQUIRE(t);
  REQUIRE(t->to == 1);
  const auto* err = std::get_if<psync::msg::Error>(&t->message);
  REQUIRE(err);
  REQUIRE(err->code == psync::msg::ErrorCode::bad_frame);
  REQUIRE(err->text == "push from worker 1 has a malformed topk update: top-k index 9 out of range (4 floats)");
  REQUIRE(server.model().parameters() == (Eigen::VectorXf(4) << 0, 0, 1.5f, 0).finished());
  REQUIRE(server.live_workers() == 1);
  REQUIRE(server.report().updates_applied == 1);
  // An encoded push of the wrong dimension is refused like a dense one.
  psync::ServerCore<Quadratic, psync::Asp> s2(Quadratic(4), psync::ServerCoreOptions{}, psync::Asp{}, now);
  s2.on_message(0, psync::msg::Join{0, 4, "asp"}, now);
  while (s2.poll_transmit()) {
  }
  s2.on_message(0, psync::msg::Push{0, 0, 1, Eigen::VectorXf(), Encoding::fp16, 3, std::vector<std::byte>(6)}, now);
  auto t2 = s2.poll_transmit();
  REQUIRE(t2);
  REQUIRE(std::get<psync::msg::Error>(t2->message).code == psync::msg::ErrorCode::wrong_dimension);
}

TEMPLATE_TEST_CASE("Cores with a codec allocate nothing per step or per push once running", "[compress][alloc]",
                   psync::Bsp, psync::Osp<3>, psync::Losp<3>) {
  for (const char* name : {"fp16", "topk:0.01", "qsgd8"}) {
    const Eigen::Index dim = 1000;
    auto now = std::chrono::steady_clock::time_point{};
    psync::ServerCore<Quadratic, TestType> server(Quadratic(dim), psync::ServerCoreOptions{}, TestType{}, now);
    psync::WorkerCore<Quadratic, TestType> worker(Quadratic(dim), 0, 0.1f, TestType{});
    worker.use_codec(parse_codec(name), 3);
    Target t{Eigen::VectorXf::Ones(dim)};
    const auto run = [&](int steps) { psync_test::drive_one_worker(server, worker, t, steps, now); };
    worker.start(now);
    run(10);
    const long before = g_allocations.load();
    run(200);
    INFO(name);
    REQUIRE(g_allocations.load() - before == 0);
    REQUIRE(worker.report().pushes > 50);
    REQUIRE(worker.report().pushed_bytes == worker.report().pushes * psync::compress::payload_bytes(parse_codec(name), dim));
  }
}

TEST_CASE("The codec is chosen before the first push", "[compress][cores]") {
  auto now = std::chrono::steady_clock::time_point{};
  psync::ServerCore<Quadratic, psync::Bsp> server(Quadratic(3), psync::ServerCoreOptions{}, psync::Bsp{}, now);
  psync::WorkerCore<Quadratic, psync::Bsp> worker(Quadratic(3), 0, 0.1f, psync::Bsp{});
  worker.start(now);
  while (auto m = worker.poll_transmit()) server.on_message(0, std::move(m->message), now);
  while (auto m = server.poll_transmit()) worker.on_message(std::move(m->message), now);
  REQUIRE(worker.begin_step(now));
  worker.model().gradient(Target{Eigen::VectorXf::Ones(3)}, worker.gradient());
  worker.end_step(1, 0, now);
  REQUIRE_THROWS_WITH(worker.use_codec(parse_codec("fp16")), Catch::Matchers::Contains("before the first push"));
}

namespace {

psync::RunReport train(const char* codec, bool osp, std::uint64_t steps = 400) {
  const auto& data = psync_test::synthetic();
  const auto tr = data.subset(0, 5000);
  const auto te = data.subset(5000, 1000);
  const psync::models::SoftmaxRegression prototype(data.dimension(), data.num_classes);
  psync::LocalOptions o;
  o.workers = 4;
  o.steps_per_worker = steps;
  o.batch_size = 32;
  o.learning_rate = 0.1f;
  o.codec = parse_codec(codec);
  if (osp) return psync::run_local(prototype, tr, &te, o, psync::Osp<20>{});
  return psync::run_local(prototype, tr, &te, o, psync::Bsp{});
}

}  // namespace

namespace {

struct Pull {
  Target target;
  auto operator()(psync::PeerId) const {
    const Target* t = &target;
    return [t]() -> const Target& { return *t; };
  }
};

// The quadratic's optimum: 100k floats of different sizes, so top-k's choice moves
// over the whole vector (towards a constant, every float is tied and top-k takes the
// lowest indices: the last of 3 shards would never get a value).
const Eigen::VectorXf& sim_target() {
  static const Eigen::VectorXf t = random_vector(100000, 2024);
  return t;
}

template <class P>
psync::RunReport simulate(const char* codec, double gbps, std::uint32_t shards = 1) {
  psync::sim::SimOptions o;
  o.shards = shards;
  o.workers = 4;
  o.steps_per_worker = 60;
  o.learning_rate = 0.1f;
  o.compute.step_s = 1e-3;
  o.server_s_per_float = 1e-9;
  o.network.server_nic_bytes_per_s = gbps * 1.25e8;
  o.network.worker_link.bandwidth_bytes_per_s = gbps * 1.25e8;
  o.codec = parse_codec(codec);
  return psync::sim::simulate(Quadratic(sim_target().size()), Pull{Target{sim_target()}}, o, P{},
                              [](const Quadratic& m) { return psync::Evaluation{m.parameters().sum(), -1}; });
}

}  // namespace

TEST_CASE("In virtual time 'none' is the dense run bit for bit, and a codec's bytes are what the network charges",
          "[compress][sim]") {
  const auto dense = simulate<psync::Bsp>("none", 1);
  psync::sim::SimOptions plain_options;
  REQUIRE(plain_options.codec.encoding == Encoding::dense);  // the default
  const auto again = simulate<psync::Bsp>("none", 1);
  REQUIRE(dense.parameters == again.parameters);
  const auto fp16 = simulate<psync::Bsp>("fp16", 1);
  const auto topk = simulate<psync::Bsp>("topk:0.01", 1);
  // 100k floats at 1 Gbit/s: 3.2 ms per dense push up, each of 4 sharing the NIC; fp16 halves the upload,
  // top-k 1% carries 8 kB. Downloads stay dense, so time falls but not by the byte ratio.
  INFO("wall: dense " << dense.wall_s << " fp16 " << fp16.wall_s << " topk " << topk.wall_s);
  REQUIRE(fp16.wall_s < dense.wall_s);
  REQUIRE(topk.wall_s < fp16.wall_s);
  REQUIRE(dense.workers[0].pushed_bytes == 60 * 400000u);
  REQUIRE(topk.workers[0].pushed_bytes == 60 * 8000u);
}

TEST_CASE("Sharded servers take encoded pushes: top-k and fp16 give the one-server run's model, qsgd8 trains",
          "[compress][sim][sharding]") {
  // BSP is deterministic in virtual time, and a shard averages its slice exactly as
  // one server averages the whole: cut payloads that decode to the same floats give
  // the same parameters, bit for bit.
  for (const char* name : {"fp16", "topk:0.01"}) {
    INFO(name);
    const auto one = simulate<psync::Bsp>(name, 1);
    for (const std::uint32_t k : {2u, 3u}) {
      const auto sharded = simulate<psync::Bsp>(name, 1, k);
      INFO(k << " shards");
      REQUIRE(sharded.parameters == one.parameters);
      REQUIRE(sharded.workers[0].pushed_bytes == one.workers[0].pushed_bytes);
      REQUIRE(sharded.server.steps_applied == one.server.steps_applied);
    }
  }
  // qsgd8's buckets restart at each of the 3 slices (33334, 33333, 33333 floats):
  // 66 + 66 + 66 scales instead of 196, and each push still decodes on its shard.
  const auto q1 = simulate<psync::Bsp>("qsgd8", 1);
  const auto q3 = simulate<psync::Bsp>("qsgd8", 1, 3);
  REQUIRE(q3.workers[0].pushed_bytes == 60 * (4 * 66 * 3 + 100000u));
  REQUIRE(q3.server.steps_applied == q1.server.steps_applied);
  // Both runs end about as close to the optimum (stochastic rounding differs).
  const double err1 = (q1.parameters - sim_target()).cwiseAbs().maxCoeff();
  const double err3 = (q3.parameters - sim_target()).cwiseAbs().maxCoeff();
  INFO("max |x - optimum|: one server " << err1 << ", three shards " << err3);
  REQUIRE(err3 < 0.05);
  REQUIRE(err3 < 2 * err1 + 1e-3);
}

// Codec "none" (the default) is still exactly averaged SGD through run_local, and pushes
// 4 bytes a float: test_training's first case.

TEST_CASE("Top-k with error feedback, qsgd8 and fp16 still train the synthetic task under BSP and OSP",
          "[compress][training]") {
  for (const bool osp : {false, true}) {
    for (const char* codec : {"topk:0.1", "qsgd8", "fp16"}) {
      const auto report = train(codec, osp);
      const auto last = report.series.back();
      std::uint64_t bytes = 0, pushes = 0;
      for (const auto& w : report.workers) {
        bytes += w.pushed_bytes;
        pushes += w.pushes;
      }
      WARN((osp ? "osp:20 " : "bsp ") << codec << ": loss " << last.train_loss << ", accuracy " << last.test_accuracy
                                      << ", " << bytes / std::max<std::uint64_t>(pushes, 1) << " bytes per push");
      CHECK(last.train_loss < 0.6);
      CHECK(last.test_accuracy > 0.85);
      REQUIRE(report.server.steps_applied == 1600);
      REQUIRE(bytes == pushes * psync::compress::payload_bytes(parse_codec(codec), 84));
    }
  }
}
