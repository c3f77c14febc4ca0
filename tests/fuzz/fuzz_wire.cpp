// libFuzzer target for the wire codec (include/psync/transport/wire.hpp).
//
// Input layout (what tests/fuzz/make_corpus.py writes):
//   byte 0      limits: bit 0 set -> WireLimits::expected_dimension = (byte >> 1) + 1
//               (1..128), clear -> 0 (not checked); so half the inputs check it
//   byte 1      WireLimits::max_payload_bytes = 64 + 8 * byte (64..2104), small so
//               every accepted frame is cheap
//   bytes 2..   a stream of consecutive frames, as a TCP connection receives them
//
// Each frame goes through the staged decoder exactly as TcpConnection reads it
// (on_header: decode_header over 20 bytes; on_fixed: decode_fixed over
// fixed_size(type) bytes with a vector source; on_body: fill body_bytes). The
// connection stops at the first refused frame (it answers with an Error and
// drains), and so does this loop. For every frame, and for the rest of the stream
// at every frame boundary, the one-shot wire::decode must agree with the stages.
// Every frame that decodes must re-encode (wire::encode) to the very same bytes,
// and those bytes must decode again to an equal message. Any disagreement aborts,
// and so does a vector request the frame limit does not allow (the codec promises
// to validate before it allocates).
//
// A custom mutator (LLVMFuzzerCustomMutator) makes half of the mutated inputs'
// length fields consistent, so the checks behind the length checks get exercised.
//
// Build: cmake -DPSYNC_BUILD_FUZZ=ON with CXX=clang++ (scripts/fuzz.sh does it all).

#include <psync/transport/wire.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <span>
#include <string>
#include <variant>

namespace {

namespace wire = psync::wire;
namespace msg = psync::msg;
using psync::Message;
using psync::WireLimits;

[[noreturn]] void fail(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "fuzz_wire: %s%s%s\n", what, detail.empty() ? "" : ": ", detail.c_str());
  std::abort();
}

#define FUZZ_CHECK(cond, ...)                                  \
  do {                                                         \
    if (!(cond)) fail("check failed: " #cond __VA_OPT__(, ) __VA_ARGS__); \
  } while (0)

// The vector source the decoder allocates from (TcpConnection passes its pool).
// The codec promises to allocate only after validating: the count asked for must
// fit in the frame limit, and only one vector per frame.
struct CheckedAcquire {
  const WireLimits* limits;
  int* calls;
  Eigen::VectorXf operator()(Eigen::Index n) const {
    ++*calls;
    FUZZ_CHECK(n >= 0);
    FUZZ_CHECK(static_cast<std::uint64_t>(n) <= limits->max_payload_bytes / 4, std::to_string(n) + " floats");
    FUZZ_CHECK(*calls == 1);
    return Eigen::VectorXf(n);
  }
};

bool same_floats(const Eigen::VectorXf& a, const Eigen::VectorXf& b) {
  return a.size() == b.size() &&
         (a.size() == 0 || std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.size()) * sizeof(float)) == 0);
}

// Field-by-field equality; floats bit for bit (NaN payloads included). A Pull's
// buffer contents are not on the wire, so only its size counts.
bool same_message(const Message& a, const Message& b) {
  if (a.index() != b.index()) return false;
  return std::visit(
      [&](const auto& x) -> bool {
        using T = std::decay_t<decltype(x)>;
        const T& y = std::get<T>(b);
        if constexpr (std::is_same_v<T, msg::Join>) {
          return x.worker == y.worker && x.dimension == y.dimension && x.policy == y.policy && x.mac == y.mac;
        } else if constexpr (std::is_same_v<T, msg::Leave>) {
          return x.reason == y.reason;
        } else if constexpr (std::is_same_v<T, msg::Push>) {
          return x.clock == y.clock && x.base_version == y.base_version && x.steps == y.steps &&
                 x.encoding == y.encoding && x.dimension() == y.dimension() && x.payload == y.payload &&
                 same_floats(x.update, y.update);
        } else if constexpr (std::is_same_v<T, msg::Pull>) {
          return x.clock == y.clock && x.buffer.size() == y.buffer.size();
        } else if constexpr (std::is_same_v<T, msg::Model>) {
          return x.version == y.version && x.min_clock == y.min_clock && x.held_ns == y.held_ns && x.worker == y.worker &&
                 same_floats(x.parameters, y.parameters);
        } else {
          static_assert(std::is_same_v<T, msg::Error>);
          return x.code == y.code && x.text == y.text;
        }
      },
      a);
}

struct Refusal {
  std::string what;
  msg::ErrorCode code;
};

// Checks a refusal's code: wrong_dimension only when a dimension is expected.
void check_refusal(const wire::FrameError& e, const WireLimits& limits) {
  FUZZ_CHECK(e.code() == msg::ErrorCode::bad_frame ||
                 (e.code() == msg::ErrorCode::wrong_dimension && limits.expected_dimension != 0),
             e.what());
  FUZZ_CHECK(std::strlen(e.what()) > 0);
}

// wire::decode over `bytes`: the envelope, or the refusal. Any other exception escapes
// (libFuzzer reports it as a crash).
std::variant<psync::Envelope, Refusal> one_shot(std::span<const std::byte> bytes, const WireLimits& limits) {
  int calls = 0;
  try {
    return wire::decode(bytes, limits, CheckedAcquire{&limits, &calls});
  } catch (const wire::FrameError& e) {
    check_refusal(e, limits);
    FUZZ_CHECK(calls == 0, "allocated before refusing");
    return Refusal{e.what(), e.code()};
  }
}

// A frame the stages accepted: it re-encodes to its own bytes and decodes again to
// an equal message, through both decoders.
void check_round_trip(std::span<const std::byte> frame, psync::PeerId sender, const Message& m,
                      const WireLimits& limits) {
  const wire::EncodedFrame f = wire::encode(sender, m);
  FUZZ_CHECK(f.size() == frame.size(), std::to_string(f.size()) + " vs " + std::to_string(frame.size()));
  FUZZ_CHECK(std::memcmp(f.prefix.data(), frame.data(), f.prefix_size) == 0, "prefix differs");
  FUZZ_CHECK(f.body.empty() || std::memcmp(f.body.data(), frame.data() + f.prefix_size, f.body.size()) == 0,
             "body differs");
  const std::vector<std::byte> bytes = wire::encode_to_bytes(sender, m);
  FUZZ_CHECK(bytes.size() == frame.size() && std::memcmp(bytes.data(), frame.data(), bytes.size()) == 0);

  auto again = one_shot(bytes, limits);
  FUZZ_CHECK(std::holds_alternative<psync::Envelope>(again), std::get<Refusal>(again).what);
  const psync::Envelope& e = std::get<psync::Envelope>(again);
  FUZZ_CHECK(e.from == sender);
  FUZZ_CHECK(same_message(e.message, m));
}

// A challenge frame (type 6) as a worker's endpoint reads it: decode_challenge over its
// fixed bytes. One it accepts re-encodes (encode_challenge) to its own bytes, and the
// one-shot decode_challenge agrees. Message decoders refuse it either way, which the
// caller checks.
void check_challenge(const wire::FrameHeader& h, std::span<const std::byte> in, std::size_t frame_size,
                     const WireLimits& limits) {
  const auto fixed = in.subspan(wire::header_size, wire::fixed_size(h.type));
  std::optional<wire::Challenge> staged;
  std::string refused;
  try {
    staged = wire::decode_challenge(h, fixed);
  } catch (const wire::FrameError& e) {
    check_refusal(e, limits);
    refused = e.what();
  }
  if (frame_size == 0) return;  // EOF mid-frame: only the staged decoder has run
  std::optional<wire::Challenge> whole;
  try {
    whole = wire::decode_challenge(in.first(frame_size), limits);
  } catch (const wire::FrameError& e) {
    check_refusal(e, limits);
    FUZZ_CHECK(!staged, std::string("one-shot refused what the stages took: ") + e.what());
    FUZZ_CHECK(refused == e.what(), refused + " vs " + e.what());
  }
  if (!staged) {
    FUZZ_CHECK(!whole, "one-shot accepted what the stages refused: " + refused);
    return;
  }
  FUZZ_CHECK(whole && whole->nonce == staged->nonce && whole->auth_required == staged->auth_required);
  const auto bytes = wire::encode_challenge(*staged);
  FUZZ_CHECK(bytes.size() == frame_size && std::memcmp(bytes.data(), in.data(), frame_size) == 0,
             "challenge does not re-encode to its bytes");
}

// The staged decode of one frame at the start of `in`, as TcpConnection does it.
// Returns the frame's length, or nothing when the connection would stop here
// (refusal, or the stream ends inside the frame).
std::optional<std::size_t> staged_frame(std::span<const std::byte> in, const WireLimits& limits) {
  const auto whole = one_shot(in, limits);  // the rest of the stream as one frame

  // on_header: 20 bytes.
  if (in.size() < wire::header_size) {
    FUZZ_CHECK(std::holds_alternative<Refusal>(whole));  // too short for any frame
    return std::nullopt;
  }
  wire::FrameHeader h;
  try {
    h = wire::decode_header(in.first(wire::header_size), limits);
  } catch (const wire::FrameError& e) {
    check_refusal(e, limits);
    FUZZ_CHECK(std::holds_alternative<Refusal>(whole));
    FUZZ_CHECK(std::get<Refusal>(whole).what == e.what(), std::get<Refusal>(whole).what + " vs " + e.what());
    return std::nullopt;
  }
  FUZZ_CHECK(h.payload_length <= limits.max_payload_bytes);
  const std::size_t fixed = wire::fixed_size(h.type);
  FUZZ_CHECK(fixed <= wire::max_fixed_size && h.payload_length >= fixed);
  const std::size_t frame_size = wire::header_size + static_cast<std::size_t>(h.payload_length);
  const bool complete = in.size() >= frame_size;
  if (!complete) {
    FUZZ_CHECK(std::holds_alternative<Refusal>(whole), "one-shot decode accepted a truncated frame");
  } else if (in.size() > frame_size) {
    FUZZ_CHECK(std::holds_alternative<Refusal>(whole), "one-shot decode accepted trailing bytes");
  }

  // on_fixed: fixed_size(type) bytes, then the vector or string is sized.
  if (in.size() < wire::header_size + fixed) return std::nullopt;  // EOF mid-frame
  if (h.type == wire::MessageType::challenge) check_challenge(h, in, complete ? frame_size : 0, limits);
  int calls = 0;
  Message m;
  try {
    m = wire::decode_fixed(h, in.subspan(wire::header_size, fixed), limits, CheckedAcquire{&limits, &calls});
  } catch (const wire::FrameError& e) {
    check_refusal(e, limits);
    FUZZ_CHECK(calls == 0, "allocated before refusing");
    if (complete) {  // the one-shot decoder refuses the same frame for the same reason
      const auto exact = one_shot(in.first(frame_size), limits);
      FUZZ_CHECK(std::holds_alternative<Refusal>(exact));
      FUZZ_CHECK(std::get<Refusal>(exact).what == e.what(), std::get<Refusal>(exact).what + " vs " + e.what());
      FUZZ_CHECK(std::get<Refusal>(exact).code == e.code());
    }
    return std::nullopt;
  }
  FUZZ_CHECK(static_cast<wire::MessageType>(m.index()) == h.type);

  // on_body: the rest of the payload goes straight into the message.
  const std::span<std::byte> body = wire::body_bytes(m);
  if (h.type == wire::MessageType::pull || h.type == wire::MessageType::leave) {
    FUZZ_CHECK(body.empty() && h.payload_length == fixed);
  } else {
    FUZZ_CHECK(fixed + body.size() == h.payload_length,
               std::to_string(body.size()) + " body bytes for payload " + std::to_string(h.payload_length));
  }
  if (!complete) return std::nullopt;  // EOF mid-frame
  if (!body.empty()) std::memcpy(body.data(), in.data() + wire::header_size + fixed, body.size());
  // check_body: an encoded push's indices, values and scales, once the body is in.
  try {
    wire::check_body(m);
  } catch (const wire::FrameError& e) {
    check_refusal(e, limits);
    const auto push = std::get_if<msg::Push>(&m);
    FUZZ_CHECK(push && push->encoding != psync::Encoding::dense, e.what());
    const auto exact = one_shot(in.first(frame_size), limits);
    FUZZ_CHECK(std::holds_alternative<Refusal>(exact));
    FUZZ_CHECK(std::get<Refusal>(exact).what == e.what(), std::get<Refusal>(exact).what + " vs " + e.what());
    return std::nullopt;
  }
  if (const auto* push = std::get_if<msg::Push>(&m); push && push->encoding != psync::Encoding::dense) {
    // Accepted: it decodes into exactly its dimension's floats, all finite (the decoder bounds
    // the dimension by what a dense push under the limit could carry).
    FUZZ_CHECK(push->dimension() <= limits.max_payload_bytes / 4, std::to_string(push->dimension()) + " floats");
    Eigen::VectorXf out(static_cast<Eigen::Index>(push->dimension()));
    FUZZ_CHECK(!psync::compress::decode(push->encoding, push->payload, out));
    FUZZ_CHECK(out.allFinite());
  }

  // The one-shot decoder agrees on the exact frame, and on the whole rest when it is
  // exactly this frame.
  const std::span<const std::byte> frame = in.first(frame_size);
  const auto exact = one_shot(frame, limits);
  FUZZ_CHECK(std::holds_alternative<psync::Envelope>(exact), std::get<Refusal>(exact).what);
  FUZZ_CHECK(std::get<psync::Envelope>(exact).from == h.sender);
  FUZZ_CHECK(same_message(std::get<psync::Envelope>(exact).message, m));
  if (in.size() == frame_size) FUZZ_CHECK(std::holds_alternative<psync::Envelope>(whole));

  check_round_trip(frame, h.sender, m, limits);
  return frame_size;
}

// Rewrites the length fields of the frames at the start of a stream so that they
// agree with each other and with the bytes present: each string length or element
// count is cut to what the input holds, and the header's payload length is set from
// it. Random mutation alone rarely changes a frame's payload length, its count and
// its size together, so without this most frames it makes are refused at a length
// check and the validation behind those checks is seldom reached.
void fix_lengths(std::uint8_t* data, std::size_t size) {
  std::size_t pos = 2;
  while (pos + wire::header_size <= size) {
    std::uint8_t* h = data + pos;
    if (h[5] >= wire::frame_type_count) return;
    const auto type = static_cast<wire::MessageType>(h[5]);
    const std::size_t fixed = wire::fixed_size(type);
    const std::size_t avail = size - pos - wire::header_size;
    if (avail < fixed) return;
    std::uint8_t* p = h + wire::header_size;
    std::uint64_t payload = fixed;
    auto cut = [&](std::size_t at, auto field, std::uint64_t unit) {
      decltype(field) n;
      std::memcpy(&n, p + at, sizeof n);
      n = static_cast<decltype(field)>(std::min<std::uint64_t>(n, (avail - fixed) / unit));
      std::memcpy(p + at, &n, sizeof n);
      payload = fixed + unit * n;
    };
    switch (type) {
      case wire::MessageType::join: cut(12, std::uint32_t{}, 1); break;
      case wire::MessageType::error: cut(1, std::uint32_t{}, 1); break;
      case wire::MessageType::push: {
        // Make the count and payload agree for the encoding byte at offset 20 (version 4).
        std::uint64_t n;
        std::memcpy(&n, p + 21, sizeof n);
        const std::uint64_t room = avail - fixed;
        switch (p[20]) {
          case 1: cut(21, std::uint64_t{}, 2); break;  // fp16
          case 2: payload = fixed + 8 * std::min(n, room / 8); break;  // top-k: k pairs, k <= count
          case 3: {  // qsgd8: 4 per 512-float bucket + 1 per float
            n = std::min<std::uint64_t>(n, room);
            while (n > 0 && n + 4 * ((n + 511) / 512) > room) --n;
            std::memcpy(p + 21, &n, sizeof n);
            payload = fixed + n + 4 * ((n + 511) / 512);
            break;
          }
          default: cut(21, std::uint64_t{}, 4); break;
        }
        break;
      }
      case wire::MessageType::model: cut(28, std::uint64_t{}, 4); break;
      case wire::MessageType::leave:
      case wire::MessageType::pull:
      case wire::MessageType::challenge: break;
    }
    std::memcpy(h + 12, &payload, sizeof payload);
    pos += wire::header_size + payload;
  }
}

}  // namespace

extern "C" std::size_t LLVMFuzzerMutate(std::uint8_t* data, std::size_t size, std::size_t max_size);

// libFuzzer's own mutations, then, for half of them, consistent lengths.
extern "C" std::size_t LLVMFuzzerCustomMutator(std::uint8_t* data, std::size_t size, std::size_t max_size,
                                               unsigned int seed) {
  size = LLVMFuzzerMutate(data, size, max_size);
  if (seed % 2 == 0) fix_lengths(data, size);
  return size;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  WireLimits limits;
  limits.expected_dimension = (data[0] & 1) ? (data[0] >> 1) + 1u : 0u;
  limits.max_payload_bytes = 64 + 8 * std::uint64_t{data[1]};
  std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data) + 2, size - 2);
  while (!in.empty()) {
    const auto used = staged_frame(in, limits);
    if (!used) break;
    in = in.subspan(*used);
  }
  return 0;
}
