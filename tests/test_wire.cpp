// The wire codec: every message kind round-trips exactly, the byte layout is pinned,
// and every malformed frame is refused with a message naming the fault, before
// anything is allocated.

#include "catch.hpp"

#include <psync/transport/wire.hpp>

#include <cstring>
#include <string>
#include <vector>

namespace {

using psync::Message;
using psync::WireLimits;
using psync::wire::FrameError;
namespace msg = psync::msg;
namespace wire = psync::wire;

using Bytes = std::vector<std::byte>;

Eigen::VectorXf ramp(Eigen::Index n) {
  Eigen::VectorXf v(n);
  for (Eigen::Index i = 0; i < n; ++i) v[i] = 0.5f * static_cast<float>(i) - 3.25f;
  return v;
}

Message round_trip(const Message& m, psync::PeerId sender = 7, WireLimits limits = {}) {
  const Bytes bytes = wire::encode_to_bytes(sender, m);
  psync::Envelope e = wire::decode(bytes, limits);
  CHECK(e.from == sender);
  REQUIRE(e.message.index() == m.index());
  return std::move(e.message);
}

// The message of the FrameError `f` throws ("no error" if none), and its code.
template <class F>
std::pair<std::string, msg::ErrorCode> frame_error(F&& f) {
  try {
    f();
  } catch (const FrameError& e) {
    return {e.what(), e.code()};
  }
  return {"no error", msg::ErrorCode::internal};
}

template <class T>
void put(Bytes& b, std::size_t at, T v) {
  std::memcpy(b.data() + at, &v, sizeof v);
}

Bytes frame_of(const Message& m, psync::PeerId sender = 3) { return wire::encode_to_bytes(sender, m); }

// A vector source that records whether the decoder allocated.
struct CountingAcquire {
  int* calls;
  Eigen::VectorXf operator()(Eigen::Index n) const {
    ++*calls;
    return Eigen::VectorXf(n);
  }
};

}  // namespace

TEST_CASE("every message kind round-trips exactly", "[wire]") {
  SECTION("join") {
    const auto out = std::get<msg::Join>(round_trip(msg::Join{42, 784, "ssp:3"}));
    CHECK(out.worker == 42);
    CHECK(out.dimension == 784);
    CHECK(out.policy == "ssp:3");
    CHECK(std::get<msg::Join>(round_trip(msg::Join{0, 0, ""})).policy.empty());
    CHECK(std::get<msg::Join>(round_trip(msg::Join{1, 2, std::string(256, 'x')})).policy.size() == 256);
  }
  SECTION("leave, every reason") {
    for (auto r : {msg::LeaveReason::finished, msg::LeaveReason::disconnected, msg::LeaveReason::timed_out,
                   msg::LeaveReason::failed}) {
      CHECK(std::get<msg::Leave>(round_trip(msg::Leave{r})).reason == r);
    }
  }
  SECTION("push") {
    const Eigen::VectorXf u = ramp(1000);
    const auto out = std::get<msg::Push>(round_trip(msg::Push{12, 34, 5, u}));
    CHECK(out.clock == 12);
    CHECK(out.base_version == 34);
    CHECK(out.steps == 5);
    CHECK(out.update == u);
    CHECK(std::get<msg::Push>(round_trip(msg::Push{1, 0, 1, Eigen::VectorXf()})).update.size() == 0);
  }
  SECTION("pull carries its buffer's size, not its contents") {
    const Bytes bytes = frame_of(msg::Pull{9, ramp(500)});
    CHECK(bytes.size() == wire::header_size + 16);
    const auto out = std::get<msg::Pull>(wire::decode(bytes, {}).message);
    CHECK(out.clock == 9);
    CHECK(out.buffer.size() == 500);
    CHECK(std::get<msg::Pull>(round_trip(msg::Pull{3, {}})).buffer.size() == 0);
  }
  SECTION("model, with special float values") {
    Eigen::VectorXf p = ramp(64);
    p[0] = -0.0f;
    p[1] = std::numeric_limits<float>::infinity();
    p[2] = std::numeric_limits<float>::denorm_min();
    msg::Model in{7, 6, 123456789, p};
    in.worker = 0x01020304;
    const auto out = std::get<msg::Model>(round_trip(std::move(in), psync::server_peer));
    CHECK(out.version == 7);
    CHECK(out.min_clock == 6);
    CHECK(out.held_ns == 123456789);
    CHECK(out.worker == 0x01020304);
    CHECK(std::memcmp(out.parameters.data(), p.data(), sizeof(float) * 64) == 0);
  }
  SECTION("error, every code") {
    for (int c = 1; c <= 10; ++c) {
      const auto code = static_cast<msg::ErrorCode>(c);
      const auto out = std::get<msg::Error>(round_trip(msg::Error{code, "why: " + std::to_string(c)}));
      CHECK(out.code == code);
      CHECK(out.text == "why: " + std::to_string(c));
    }
  }
}

TEST_CASE("the byte layout is the documented one", "[wire]") {
  const Bytes b = frame_of(msg::Leave{msg::LeaveReason::timed_out}, 0x01020304);
  const Bytes expected = {std::byte{'P'}, std::byte{'S'}, std::byte{'Y'}, std::byte{'N'},  // magic
                          std::byte{4},                                                    // version
                          std::byte{1},                                                    // type: leave
                          std::byte{0},   std::byte{0},                                    // reserved
                          std::byte{4},   std::byte{3},   std::byte{2}, std::byte{1},      // sender, LE
                          std::byte{1},   std::byte{0},   std::byte{0}, std::byte{0},      // payload length
                          std::byte{0},   std::byte{0},   std::byte{0}, std::byte{0},
                          std::byte{2}};  // reason: timed_out
  CHECK(b == expected);

  // A push: fixed fields, the encoding byte (0: dense), a u64 count, then the floats, little-endian.
  const Bytes p = frame_of(msg::Push{1, 2, 3, Eigen::VectorXf::Constant(2, 1.0f)});
  REQUIRE(p.size() == wire::header_size + 29 + 8);
  CHECK(p[wire::header_size + 20] == std::byte{0});
  std::uint64_t count = 0;
  std::memcpy(&count, p.data() + wire::header_size + 21, 8);
  CHECK(count == 2);
  float first = 0;
  std::memcpy(&first, p.data() + wire::header_size + 29, 4);
  CHECK(first == 1.0f);
}

TEST_CASE("encoding does not copy the vector", "[wire]") {
  const Message m = msg::Model{1, 0, 0, ramp(100)};
  const wire::EncodedFrame f = wire::encode(psync::server_peer, m);
  CHECK(static_cast<const void*>(f.body.data()) == std::get<msg::Model>(m).parameters.data());
  CHECK(f.prefix_size == wire::header_size + 36);
  CHECK(f.size() == wire::header_size + 36 + 400);
}

TEST_CASE("header faults are refused with a message naming them", "[wire]") {
  const Bytes good = frame_of(msg::Leave{});
  SECTION("bad magic") {
    Bytes b = good;
    std::memcpy(b.data(), "GET ", 4);
    CHECK(frame_error([&] { wire::decode(b, {}); }).first == "bad magic 0x47455420 (expected 'PSYN')");
  }
  SECTION("version") {
    Bytes b = good;
    b[4] = std::byte{1};
    CHECK(frame_error([&] { wire::decode(b, {}); }).first == "unsupported protocol version 1 (expected 4)");
  }
  SECTION("type") {
    Bytes b = good;
    b[5] = std::byte{7};
    CHECK(frame_error([&] { wire::decode(b, {}); }).first == "unknown message type 7");
    b[5] = std::byte{255};
    CHECK(frame_error([&] { wire::decode(b, {}); }).first == "unknown message type 255");
  }
  SECTION("reserved") {
    Bytes b = good;
    b[7] = std::byte{1};
    CHECK(frame_error([&] { wire::decode(b, {}); }).first == "reserved header field is 0x0100 (must be 0)");
  }
  SECTION("oversized payload length") {
    Bytes b = good;
    put<std::uint64_t>(b, 12, std::uint64_t{1} << 32);
    const auto [what, code] = frame_error([&] { wire::decode(b, {}); });
    CHECK(what == "payload length 4294967296 above limit 67108864");
    CHECK(code == msg::ErrorCode::bad_frame);
    put<std::uint64_t>(b, 12, ~std::uint64_t{0});
    CHECK(frame_error([&] { wire::decode(b, {}); }).first ==
          "payload length 18446744073709551615 above limit 67108864");
  }
  SECTION("the limit is the configured one") {
    const Bytes b = frame_of(msg::Push{0, 0, 0, ramp(100)});
    CHECK(frame_error([&] { wire::decode(b, WireLimits{128, 0}); }).first == "payload length 429 above limit 128");
    CHECK_NOTHROW(wire::decode(b, WireLimits{429, 0}));
  }
  SECTION("payload shorter than the type's fields") {
    Bytes b = frame_of(msg::Push{0, 0, 0, {}});
    put<std::uint64_t>(b, 12, 10);
    b.resize(wire::header_size + 10);
    CHECK(frame_error([&] { wire::decode(b, {}); }).first == "push payload length 10 shorter than its 29 bytes of fields");
  }
  SECTION("truncated header") {
    const Bytes b(good.begin(), good.begin() + 7);
    CHECK(frame_error([&] { wire::decode(b, {}); }).first == "truncated frame: 7 bytes, the header needs 20");
    CHECK(frame_error([&] { wire::decode(Bytes{}, {}); }).first == "truncated frame: 0 bytes, the header needs 20");
  }
}

TEST_CASE("payload faults are refused before anything is allocated", "[wire]") {
  int allocations = 0;
  const CountingAcquire acquire{&allocations};

  SECTION("element count does not match payload length") {
    Bytes b = frame_of(msg::Push{0, 0, 0, ramp(10)});
    put<std::uint64_t>(b, wire::header_size + 21, 11);
    CHECK(frame_error([&] { wire::decode(b, {}, acquire); }).first ==
          "push payload length 69 does not match its element count 11 (29 bytes of fields + 4 per float)");
    put<std::uint64_t>(b, wire::header_size + 21, std::uint64_t{1} << 62);  // 4 * count overflows
    CHECK(frame_error([&] { wire::decode(b, {}, acquire); }).first.find("does not match its element count") !=
          std::string::npos);
    Bytes m = frame_of(msg::Model{0, 0, 0, ramp(10)});
    put<std::uint64_t>(m, 12, 36 + 40 + 2);  // not a whole number of floats
    m.resize(m.size() + 2);
    CHECK(frame_error([&] { wire::decode(m, {}, acquire); }).first ==
          "model payload length 78 does not match its element count 10 (36 bytes of fields + 4 per float)");
  }
  SECTION("wrong dimension") {
    const WireLimits limits{std::uint64_t{64} << 20, 784};
    const auto [what, code] = frame_error([&] { wire::decode(frame_of(msg::Push{0, 0, 0, ramp(10)}), limits, acquire); });
    CHECK(what == "parameter vector has 10 floats, model has 784");
    CHECK(code == msg::ErrorCode::wrong_dimension);
    CHECK(frame_error([&] { wire::decode(frame_of(msg::Model{0, 0, 0, ramp(785)}), limits, acquire); }).first ==
          "parameter vector has 785 floats, model has 784");
    CHECK(frame_error([&] { wire::decode(frame_of(msg::Pull{0, ramp(10)}), limits, acquire); }).first ==
          "parameter vector has 10 floats, model has 784");
    CHECK(frame_error([&] { wire::decode(frame_of(msg::Join{1, 10, "bsp"}), limits, acquire); }).first ==
          "join declares a model of 10 floats, model has 784");
    CHECK_NOTHROW(wire::decode(frame_of(msg::Pull{0, {}}), limits, acquire));  // no buffer is fine
    CHECK(allocations == 0);
    CHECK(std::get<msg::Push>(wire::decode(frame_of(msg::Push{0, 0, 0, ramp(784)}), limits, acquire).message)
              .update.size() == 784);
    CHECK(allocations == 1);
  }
  SECTION("pull asking for more than a reply could carry") {
    Bytes b = frame_of(msg::Pull{0, {}});
    put<std::uint64_t>(b, wire::header_size + 8, std::uint64_t{1} << 40);
    CHECK(frame_error([&] { wire::decode(b, {}, acquire); }).first ==
          "pull asks for a buffer of 1099511627776 floats, above the payload limit 67108864");
  }
  SECTION("truncated payload and trailing bytes") {
    Bytes b = frame_of(msg::Push{0, 0, 0, ramp(10)});
    b.pop_back();
    CHECK(frame_error([&] { wire::decode(b, {}, acquire); }).first == "truncated frame: push payload has 68 of 69 bytes");
    b.resize(b.size() + 2);
    CHECK(frame_error([&] { wire::decode(b, {}, acquire); }).first == "1 trailing bytes after a push frame");
  }
  SECTION("overlong strings") {
    Bytes j = frame_of(msg::Join{1, 2, "bsp"});
    put<std::uint32_t>(j, wire::header_size + 12, 300);
    CHECK(frame_error([&] { wire::decode(j, {}, acquire); }).first == "policy string length 300 above limit 256");
    put<std::uint32_t>(j, wire::header_size + 12, 4);
    CHECK(frame_error([&] { wire::decode(j, {}, acquire); }).first ==
          "join payload length 52 does not match its policy string length 4");
    Bytes e = frame_of(msg::Error{msg::ErrorCode::internal, "x"});
    put<std::uint32_t>(e, wire::header_size + 1, 5000);
    CHECK(frame_error([&] { wire::decode(e, {}, acquire); }).first == "error text length 5000 above limit 1024");
  }
  SECTION("enum values out of range") {
    Bytes l = frame_of(msg::Leave{});
    l[wire::header_size] = std::byte{9};
    CHECK(frame_error([&] { wire::decode(l, {}, acquire); }).first == "unknown leave reason 9");
    Bytes e = frame_of(msg::Error{msg::ErrorCode::internal, ""});
    e[wire::header_size] = std::byte{0};
    CHECK(frame_error([&] { wire::decode(e, {}, acquire); }).first == "unknown error code 0");
    e[wire::header_size] = std::byte{11};
    CHECK(frame_error([&] { wire::decode(e, {}, acquire); }).first == "unknown error code 11");
  }
  SECTION("fixed-size kinds must have exactly their fields") {
    Bytes l = frame_of(msg::Leave{});
    put<std::uint64_t>(l, 12, 2);
    l.push_back(std::byte{0});
    CHECK(frame_error([&] { wire::decode(l, {}, acquire); }).first == "leave payload length 2 (expected 1)");
  }
  CHECK(allocations <= 1);
}

TEST_CASE("encoding refuses or cuts overlong strings", "[wire]") {
  CHECK_THROWS_AS(wire::encode(1, msg::Join{1, 1, std::string(257, 'p')}), psync::ProtocolError);
  const auto out = std::get<msg::Error>(round_trip(msg::Error{msg::ErrorCode::internal, std::string(5000, 'e')}));
  CHECK(out.text.size() == wire::max_error_text_bytes);
}

TEST_CASE("staged decoding reads straight into the destination", "[wire]") {
  const Eigen::VectorXf u = ramp(1234);
  const Bytes b = frame_of(msg::Push{5, 4, 3, u}, 9);
  const wire::FrameHeader h = wire::decode_header(std::span(b).first(wire::header_size), {});
  CHECK(h.type == wire::MessageType::push);
  CHECK(h.sender == 9);
  CHECK(h.payload_length == 29 + 4 * 1234);
  Eigen::VectorXf reused(1234);
  const float* where = reused.data();
  Message m = wire::decode_fixed(h, std::span(b).subspan(wire::header_size, wire::fixed_size(h.type)), {},
                                 [&](Eigen::Index n) {
                                   CHECK(n == 1234);
                                   return std::move(reused);
                                 });
  const std::span<std::byte> body = wire::body_bytes(m);
  REQUIRE(body.size() == 4 * 1234);
  CHECK(static_cast<const void*>(body.data()) == where);
  std::memcpy(body.data(), b.data() + wire::header_size + 29, body.size());
  CHECK(std::get<msg::Push>(m).update == u);
}

// ---- version 2: the server's challenge and the join's MAC field ----

TEST_CASE("a challenge frame round-trips and has the documented layout", "[wire][auth]") {
  wire::Challenge c;
  for (std::size_t i = 0; i < c.nonce.size(); ++i) c.nonce[i] = std::byte(i + 1);
  c.auth_required = true;
  const auto f = wire::encode_challenge(c);
  REQUIRE(f.size() == wire::header_size + 33);
  CHECK(f[4] == std::byte{4});  // version
  CHECK(f[5] == std::byte{6});  // type: challenge
  std::uint32_t sender = 0;
  std::memcpy(&sender, f.data() + 8, 4);
  CHECK(sender == psync::server_peer);
  std::uint64_t length = 0;
  std::memcpy(&length, f.data() + 12, 8);
  CHECK(length == 33);
  CHECK(f[wire::header_size] == std::byte{1});          // flags: bit 0, auth required
  CHECK(f[wire::header_size + 1] == std::byte{1});      // nonce[0]
  CHECK(f[wire::header_size + 32] == std::byte{32});    // nonce[31]
  const wire::Challenge back = wire::decode_challenge(f);
  CHECK(back.auth_required);
  CHECK(back.nonce == c.nonce);
  c.auth_required = false;
  CHECK_FALSE(wire::decode_challenge(wire::encode_challenge(c)).auth_required);
  // Staged, as a connection reads it.
  const wire::FrameHeader h = wire::decode_header(std::span(f).first(wire::header_size), {});
  CHECK(h.type == wire::MessageType::challenge);
  CHECK(wire::fixed_size(h.type) == 33);
  CHECK(wire::decode_challenge(h, std::span(f).subspan(wire::header_size)).nonce == c.nonce);
}

TEST_CASE("a malformed challenge is refused, and it is never a message", "[wire][auth]") {
  const auto good = wire::encode_challenge({});
  Bytes b(good.begin(), good.end());
  SECTION("not a message") {
    CHECK(frame_error([&] { wire::decode(b, {}); }).first == "challenge frame where a message was expected");
  }
  SECTION("unknown flags") {
    b[wire::header_size] = std::byte{2};
    CHECK(frame_error([&] { wire::decode_challenge(b); }).first == "unknown challenge flags 0x02");
  }
  SECTION("not from the server") {
    put<std::uint32_t>(b, 8, 3);
    CHECK(frame_error([&] { wire::decode_challenge(b); }).first ==
          "challenge with sender id 3: only the server sends one");
  }
  SECTION("wrong payload length") {
    put<std::uint64_t>(b, 12, 34);
    b.push_back(std::byte{0});
    CHECK(frame_error([&] { wire::decode_challenge(b); }).first == "challenge payload length 34 (expected 33)");
    put<std::uint64_t>(b, 12, 32);
    b.resize(b.size() - 2);
    CHECK(frame_error([&] { wire::decode_challenge(b); }).first ==
          "challenge payload length 32 shorter than its 33 bytes of fields");
  }
  SECTION("truncated and trailing") {
    b.pop_back();
    CHECK(frame_error([&] { wire::decode_challenge(b); }).first ==
          "truncated frame: challenge payload has 32 of 33 bytes");
    b.push_back(std::byte{0});
    b.push_back(std::byte{0});
    CHECK(frame_error([&] { wire::decode_challenge(b); }).first == "1 trailing bytes after a challenge frame");
  }
  SECTION("a message is not a challenge") {
    CHECK(frame_error([&] { wire::decode_challenge(frame_of(msg::Leave{})); }).first ==
          "expected a challenge, got a leave");
  }
}

TEST_CASE("a join carries an optional MAC in its fixed fields", "[wire][auth]") {
  msg::Join j{5, 784, "bsp"};
  const Bytes plain = frame_of(j, 5);
  CHECK(plain.size() == wire::header_size + 49 + 3);
  CHECK(plain[wire::header_size + 16] == std::byte{0});  // MAC kind: none, and 32 zero bytes
  for (std::size_t i = 17; i < 49; ++i) REQUIRE(plain[wire::header_size + i] == std::byte{0});
  CHECK_FALSE(std::get<msg::Join>(wire::decode(plain, {}).message).mac.has_value());

  j.mac.emplace();
  for (std::size_t i = 0; i < j.mac->size(); ++i) (*j.mac)[i] = std::byte(0xA0 + i);
  const Bytes with = frame_of(j, 5);
  CHECK(with.size() == plain.size());
  CHECK(with[wire::header_size + 16] == std::byte{1});  // HMAC-SHA256
  CHECK(with[wire::header_size + 17] == std::byte{0xA0});
  CHECK(with[wire::header_size + 48] == std::byte{0xA0 + 31});
  CHECK(std::memcmp(with.data() + wire::header_size + 49, "bsp", 3) == 0);
  const auto out = std::get<msg::Join>(wire::decode(with, {}).message);
  REQUIRE(out.mac.has_value());
  CHECK(*out.mac == *j.mac);
  CHECK(out.policy == "bsp");
  CHECK(wire::max_join_payload == 49 + 256);

  Bytes bad = with;
  bad[wire::header_size + 16] = std::byte{2};
  CHECK(frame_error([&] { wire::decode(bad, {}); }).first == "unknown join MAC kind 2");
  bad = plain;
  bad[wire::header_size + 30] = std::byte{1};
  CHECK(frame_error([&] { wire::decode(bad, {}); }).first == "join without a MAC has non-zero MAC bytes");
}

TEST_CASE("the join MAC input is nonce, worker, dimension, policy", "[wire][auth]") {
  wire::Nonce n;
  for (std::size_t i = 0; i < n.size(); ++i) n[i] = std::byte(0xF0 ^ i);
  const auto in = wire::join_mac_input(n, msg::Join{0x01020304, 0x1112131415161718, "ssp:3"});
  REQUIRE(in.size == 32 + 4 + 8 + 5);
  const auto v = in.view();
  CHECK(std::memcmp(v.data(), n.data(), 32) == 0);
  const Bytes tail(v.begin() + 32, v.end());
  const Bytes expected = {std::byte{4},    std::byte{3},    std::byte{2},    std::byte{1},  // worker, LE
                          std::byte{0x18}, std::byte{0x17}, std::byte{0x16}, std::byte{0x15},
                          std::byte{0x14}, std::byte{0x13}, std::byte{0x12}, std::byte{0x11},  // dimension, LE
                          std::byte{'s'},  std::byte{'s'},  std::byte{'p'},  std::byte{':'}, std::byte{'3'}};
  CHECK(tail == expected);
  CHECK_THROWS_AS(wire::join_mac_input(n, msg::Join{0, 0, std::string(257, 'x')}), psync::ProtocolError);
}
