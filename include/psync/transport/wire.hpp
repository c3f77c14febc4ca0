#pragma once
/// @file
/// @brief The wire codec: the only code that turns bytes into `psync::Message`s and
/// back. Every field is validated before anything is allocated, and every violation
/// throws a `wire::FrameError` (a `ProtocolError`) naming what was wrong.
///
/// A frame is a fixed 20-byte header followed by a payload (see docs/wire-protocol.md):
///
/// | offset | size | field                                         |
/// |-------:|-----:|-----------------------------------------------|
/// | 0      | 4    | magic "PSYN"                                  |
/// | 4      | 1    | protocol version (4)                          |
/// | 5      | 1    | frame type (< 6: index in `psync::Message`)   |
/// | 6      | 2    | reserved, 0                                   |
/// | 8      | 4    | sender peer id                                |
/// | 12     | 8    | payload length in bytes                       |
///
/// All integers and floats are little-endian. The codec assumes a little-endian host
/// with IEEE-754 floats (checked at compile time), so float vectors go on and off the
/// wire as the vector's own memory: encoding never copies a vector (the frame is a
/// small prefix plus a span over `data()`), and decoding receives straight into it.
///
/// Decoding is staged so a stream reader never buffers a whole frame:
/// `decode_header` (fixed size) -> read `fixed_size(type)` bytes -> `decode_fixed`
/// (validates counts, then sizes the vector or string) -> read `body_bytes(message)`
/// -> `check_body` (an encoded push's indices, values and scales).
/// `decode` runs the same stages over one complete frame in memory.
///
/// One frame type is not a message: the `Challenge` (type 6) the server's TCP endpoint
/// sends first on every connection, before anything else. `decode_header` accepts it;
/// `decode_challenge` decodes it (staged or whole), `decode_fixed` and `decode` refuse it.

#include "psync/compress/codec.hpp"
#include "psync/core/error.hpp"
#include "psync/core/message.hpp"
#include "psync/detail/config.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace psync {

/// @brief What a receiver accepts; frames outside these limits are refused before
/// any allocation.
struct WireLimits {
  /// @brief Largest payload (bytes after the header) accepted; also bounds the buffer
  /// a `Pull` may ask for. 64 MiB holds 16.7M floats.
  std::uint64_t max_payload_bytes = std::uint64_t{64} << 20;
  /// @brief Float count every parameter vector must have; 0 = unknown, not checked.
  std::uint64_t expected_dimension = 0;
};

namespace wire {

static_assert(std::endian::native == std::endian::little,
              "psync's wire codec sends floats as host memory: it needs a little-endian host");
static_assert(sizeof(float) == 4 && std::numeric_limits<float>::is_iec559, "psync needs IEEE-754 float32");

/// @brief The 4 bytes every frame starts with.
inline constexpr std::array<std::byte, 4> magic{std::byte{'P'}, std::byte{'S'}, std::byte{'Y'}, std::byte{'N'}};
/// @brief The protocol version this codec speaks; any other is refused.
inline constexpr std::uint8_t protocol_version = 4;
/// @brief Size of the fixed frame header in bytes.
inline constexpr std::size_t header_size = 20;
/// @brief Longest `Join::policy` accepted, in bytes.
inline constexpr std::size_t max_policy_bytes = 256;
/// @brief Longest `Error::text` sent or accepted, in bytes (longer texts are cut on encode).
inline constexpr std::size_t max_error_text_bytes = 1024;
/// @brief Size of the random challenge a server sends each connection.
inline constexpr std::size_t nonce_size = 32;
/// @brief Size of a join's MAC field (HMAC-SHA256).
inline constexpr std::size_t mac_size = std::tuple_size_v<msg::Mac>;
static_assert(mac_size == 32);
/// @brief Largest payload of a `Join` frame: its fixed fields (worker, dimension, policy
/// length, MAC kind, MAC) and the longest policy string.
inline constexpr std::size_t max_join_payload = 4 + 8 + 4 + 1 + mac_size + max_policy_bytes;
/// @brief Largest per-type fixed part (Join's, with its MAC field).
inline constexpr std::size_t max_fixed_size = 4 + 8 + 4 + 1 + mac_size;

/// @brief Frame type byte. Below `message_type_count` it is the alternative's index in
/// `psync::Message`; `challenge` is a transport frame with no `Message` alternative.
enum class MessageType : std::uint8_t { join = 0, leave = 1, push = 2, pull = 3, model = 4, error = 5, challenge = 6 };

/// @brief Number of message types (alternatives of `psync::Message`).
inline constexpr std::uint8_t message_type_count = 6;
static_assert(std::variant_size_v<Message> == message_type_count, "a new message kind needs a wire type");
/// @brief Number of frame types (messages and the challenge); type bytes at or above this are refused.
inline constexpr std::uint8_t frame_type_count = 7;

/// @brief A join's MAC kind byte: none (the 32 MAC bytes are zero) or HMAC-SHA256.
enum class MacKind : std::uint8_t { none = 0, hmac_sha256 = 1 };

/// @brief The random challenge of one connection.
using Nonce = std::array<std::byte, nonce_size>;

/// @brief Server -> worker, the first frame on every connection (transport level, not a
/// `Message`): a fresh random nonce, and whether the server requires a join's MAC over it.
struct Challenge {
  Nonce nonce{};
  bool auth_required = false;  ///< flags bit 0
};

/// @brief Size of an encoded `Challenge` frame.
inline constexpr std::size_t challenge_frame_size = header_size + 1 + nonce_size;
static_assert(std::is_same_v<std::variant_alternative_t<static_cast<std::size_t>(MessageType::model), Message>, msg::Model>);
static_assert(std::is_same_v<std::variant_alternative_t<static_cast<std::size_t>(MessageType::error), Message>, msg::Error>);
static_assert(static_cast<std::size_t>(MessageType::challenge) == message_type_count);

/// @brief A frame that breaks the protocol; `code()` is what to tell the peer.
class FrameError : public ProtocolError {
 public:
  /// @brief `code` goes into the `msg::Error` sent back; `what` names the violation.
  FrameError(msg::ErrorCode code, const std::string& what) : ProtocolError(what), code_(code) {}
  /// @brief The error code for the `msg::Error` frame answering this violation.
  msg::ErrorCode code() const noexcept { return code_; }

 private:
  msg::ErrorCode code_;
};

/// @brief A validated frame header.
struct FrameHeader {
  MessageType type = MessageType::join;  ///< what the payload holds
  PeerId sender = 0;                     ///< the sender's peer id, as it claims
  std::uint64_t payload_length = 0;      ///< bytes after the header, already checked against the limits
};

/// @brief The wire type of a message.
inline MessageType message_type(const Message& m) noexcept { return static_cast<MessageType>(m.index()); }

/// @brief Bytes of per-type fixed fields at the start of the payload (counts and
/// string lengths included); the rest of the payload is `body_bytes`.
constexpr std::size_t fixed_size(MessageType t) noexcept {
  switch (t) {
    case MessageType::join: return 4 + 8 + 4 + 1 + mac_size;  // worker, dimension, policy length, MAC kind, MAC
    case MessageType::leave: return 1;              // reason
    case MessageType::push: return 8 + 8 + 4 + 1 + 8;  // clock, base_version, steps, encoding, count
    case MessageType::pull: return 8 + 8;           // clock, buffer size
    case MessageType::model: return 8 + 8 + 8 + 4 + 8;  // version, min_clock, held_ns, worker, count
    case MessageType::error: return 1 + 4;          // code, text length
    case MessageType::challenge: return 1 + nonce_size;  // flags, nonce
  }
  return 0;
}
static_assert(max_join_payload == fixed_size(MessageType::join) + max_policy_bytes);
static_assert(challenge_frame_size == header_size + fixed_size(MessageType::challenge));

/// @brief Lower-case name of a wire type, for error texts.
constexpr const char* type_name(MessageType t) noexcept {
  constexpr const char* names[] = {"join", "leave", "push", "pull", "model", "error", "challenge"};
  return static_cast<std::uint8_t>(t) < frame_type_count ? names[static_cast<std::uint8_t>(t)] : "unknown";
}

/// @brief `limits` with `max_payload_bytes` raised, if need be, to fit a `Model` of
/// `expected_dimension` floats: once the dimension is fixed, a frame carrying exactly
/// that vector is legitimate however large, and every other vector is refused by the
/// dimension check. So a model over the default 64 MiB needs no setting.
PSYNC_DECL WireLimits fit_dimension(WireLimits limits) noexcept;

namespace detail {

template <class T>
void put(std::byte* at, T value) noexcept {
  std::memcpy(at, &value, sizeof(T));  // host is little-endian (asserted above)
}

template <class T>
T get(const std::byte* at) noexcept {
  T value;
  std::memcpy(&value, at, sizeof(T));
  return value;
}

PSYNC_DECL std::string hex(std::uint64_t v, int digits);

[[noreturn]] inline void bad(const std::string& what) { throw FrameError(msg::ErrorCode::bad_frame, what); }

PSYNC_DECL void check_dimension(std::uint64_t count, const WireLimits& limits,
                                const char* what = "parameter vector has ");

// Checks that `fixed + 4 * count == payload` without overflowing.
PSYNC_DECL void check_float_count(const FrameHeader& h, std::uint64_t count);

// Checks that an encoded push's payload has the size its encoding gives `count` floats
// (top-k: whole (index, value) pairs, at most `count` of them), without overflowing.
PSYNC_DECL void check_encoded_size(const FrameHeader& h, Encoding e, std::uint64_t count);

PSYNC_DECL void check_string(const FrameHeader& h, std::uint32_t length, std::size_t limit, const char* what);

}  // namespace detail

/// @brief Validates a frame header. `bytes` must hold at least `header_size` bytes
/// (only those are read). Checks magic, version, type, reserved and the payload
/// length against `limits` and against the type's fixed part.
PSYNC_DECL FrameHeader decode_header(std::span<const std::byte> bytes, const WireLimits& limits);

/// @brief Default source of vectors for `decode_fixed`: a fresh allocation.
struct NewVector {
  /// @brief A vector of `n` floats (contents unspecified).
  Eigen::VectorXf operator()(Eigen::Index n) const { return Eigen::VectorXf(n); }
};

/// @brief Parses the `fixed_size(h.type)` bytes after the header, validates counts,
/// lengths, enum values and the dimension against `h` and `limits`, and only then
/// returns the message with its vector (from `acquire(n)`, which must return a vector
/// of exactly n floats) or string sized for the rest of the payload: fill
/// `body_bytes(result)` with the next bytes of the frame.
///
/// A `Pull`'s buffer is sized from the count on the wire but its contents are not
/// sent (it is scratch space the receiver may fill and send back), so it arrives
/// with unspecified contents.
template <class Acquire = NewVector>
Message decode_fixed(const FrameHeader& h, std::span<const std::byte> fixed, const WireLimits& limits,
                     Acquire&& acquire = {}) {
  if (fixed.size() < fixed_size(h.type)) {
    detail::bad("truncated frame: " + std::string(type_name(h.type)) + " fields need " +
                std::to_string(fixed_size(h.type)) + " bytes, got " + std::to_string(fixed.size()));
  }
  const std::byte* p = fixed.data();
  auto exact = [&] {
    if (h.payload_length != fixed_size(h.type)) {
      detail::bad(std::string(type_name(h.type)) + " payload length " + std::to_string(h.payload_length) +
                  " (expected " + std::to_string(fixed_size(h.type)) + ")");
    }
  };
  switch (h.type) {
    case MessageType::join: {
      msg::Join m;
      m.worker = detail::get<std::uint32_t>(p);
      m.dimension = detail::get<std::uint64_t>(p + 4);
      const auto length = detail::get<std::uint32_t>(p + 12);
      detail::check_string(h, length, max_policy_bytes, "policy string");
      const auto kind = detail::get<std::uint8_t>(p + 16);
      if (kind == static_cast<std::uint8_t>(MacKind::hmac_sha256)) {
        m.mac.emplace();
        std::memcpy(m.mac->data(), p + 17, mac_size);
      } else if (kind != static_cast<std::uint8_t>(MacKind::none)) {
        detail::bad("unknown join MAC kind " + std::to_string(kind));
      } else if (std::any_of(p + 17, p + 17 + mac_size, [](std::byte b) { return b != std::byte{0}; })) {
        detail::bad("join without a MAC has non-zero MAC bytes");
      }
      detail::check_dimension(m.dimension, limits, "join declares a model of ");
      m.policy.resize(length);
      return m;
    }
    case MessageType::leave: {
      exact();
      const auto reason = detail::get<std::uint8_t>(p);
      if (reason > static_cast<std::uint8_t>(msg::LeaveReason::failed)) {
        detail::bad("unknown leave reason " + std::to_string(reason));
      }
      return msg::Leave{static_cast<msg::LeaveReason>(reason)};
    }
    case MessageType::push: {
      msg::Push m;
      m.clock = detail::get<std::uint64_t>(p);
      m.base_version = detail::get<std::uint64_t>(p + 8);
      m.steps = detail::get<std::uint32_t>(p + 16);
      const auto encoding = detail::get<std::uint8_t>(p + 20);
      const auto count = detail::get<std::uint64_t>(p + 21);
      if (encoding > max_encoding) detail::bad("unknown push encoding " + std::to_string(encoding));
      m.encoding = static_cast<Encoding>(encoding);
      if (m.encoding == Encoding::dense) {
        detail::check_float_count(h, count);
        detail::check_dimension(count, limits);
        m.update = acquire(static_cast<Eigen::Index>(count));
        return m;
      }
      detail::check_encoded_size(h, m.encoding, count);
      // The receiver decodes into `count` floats: bound it, as a pull's buffer, by what a dense push may carry.
      if (const std::uint64_t room = limits.max_payload_bytes - std::min<std::uint64_t>(limits.max_payload_bytes, fixed_size(h.type));
          count > room / 4) {
        detail::bad("push encodes " + std::to_string(count) + " floats, above what the payload limit " +
                    std::to_string(limits.max_payload_bytes) + " allows dense");
      }
      detail::check_dimension(count, limits);
      m.encoded_dimension = count;
      m.payload.resize(static_cast<std::size_t>(h.payload_length - fixed_size(h.type)));
      return m;
    }
    case MessageType::pull: {
      exact();
      msg::Pull m;
      m.clock = detail::get<std::uint64_t>(p);
      const auto count = detail::get<std::uint64_t>(p + 8);
      // Nothing on the wire bounds this count, so bound it by what a reply may carry.
      const std::uint64_t model_fields = fixed_size(MessageType::model);
      const std::uint64_t room = limits.max_payload_bytes > model_fields ? limits.max_payload_bytes - model_fields : 0;
      if (count > room / 4) {
        detail::bad("pull asks for a buffer of " + std::to_string(count) + " floats, above the payload limit " +
                    std::to_string(limits.max_payload_bytes));
      }
      if (count != 0) detail::check_dimension(count, limits);
      if (count != 0) m.buffer = acquire(static_cast<Eigen::Index>(count));
      return m;
    }
    case MessageType::model: {
      msg::Model m;
      m.version = detail::get<std::uint64_t>(p);
      m.min_clock = detail::get<std::uint64_t>(p + 8);
      m.held_ns = detail::get<std::uint64_t>(p + 16);
      m.worker = detail::get<std::uint32_t>(p + 24);
      const auto count = detail::get<std::uint64_t>(p + 28);
      detail::check_float_count(h, count);
      detail::check_dimension(count, limits);
      m.parameters = acquire(static_cast<Eigen::Index>(count));
      return m;
    }
    case MessageType::error: {
      const auto code = detail::get<std::uint8_t>(p);
      if (code < static_cast<std::uint8_t>(msg::ErrorCode::bad_frame) ||
          code > static_cast<std::uint8_t>(msg::ErrorCode::unauthenticated)) {
        detail::bad("unknown error code " + std::to_string(code));
      }
      const auto length = detail::get<std::uint32_t>(p + 1);
      detail::check_string(h, length, max_error_text_bytes, "error text");
      msg::Error m;
      m.code = static_cast<msg::ErrorCode>(code);
      m.text.resize(length);
      return m;
    }
    case MessageType::challenge:
      detail::bad("challenge frame where a message was expected");
  }
  detail::bad("unknown message type " + std::to_string(static_cast<unsigned>(h.type)));
}

/// @brief Validates and parses a `Challenge` frame after `decode_header`: `fixed` holds
/// the `fixed_size(MessageType::challenge)` bytes after the header. The payload must be
/// exactly those bytes, only flag bit 0 may be set, and the sender must be `server_peer`.
PSYNC_DECL Challenge decode_challenge(const FrameHeader& h, std::span<const std::byte> fixed);

/// @brief Where the rest of a frame's payload goes after `decode_fixed`: the float
/// vector's memory, the string's characters, or nothing.
PSYNC_DECL std::span<std::byte> body_bytes(Message& m) noexcept;

/// @brief Validates what `decode_fixed` cannot see before the body arrives: an encoded
/// push's indices, values and scales (`compress::check`). Call it once `body_bytes(m)`
/// is filled; throws `FrameError` (`bad_frame`) naming the fault. Other messages pass.
PSYNC_DECL void check_body(const Message& m);

/// @brief One encoded frame: a small prefix (header and fixed fields, owned) and a
/// body that points into the message (its floats or string). The message must
/// outlive the frame and must not be moved or changed while the frame is in use.
struct EncodedFrame {
  std::array<std::byte, header_size + max_fixed_size> prefix{};  ///< header + fixed fields
  std::size_t prefix_size = 0;                                    ///< bytes of `prefix` in use
  std::span<const std::byte> body;                                ///< the message's floats or string bytes

  /// @brief The bytes of the prefix in use.
  std::span<const std::byte> head() const noexcept { return {prefix.data(), prefix_size}; }
  /// @brief Whole frame length in bytes.
  std::uint64_t size() const noexcept { return prefix_size + body.size(); }
};

/// @brief Encodes `m` as sent by `sender` without copying its vector or string.
/// Throws `ProtocolError` if a `Join` policy is longer than `max_policy_bytes`;
/// an `Error` text longer than `max_error_text_bytes` is cut to that length.
PSYNC_DECL EncodedFrame encode(PeerId sender, const Message& m);

/// @brief Encodes `m` into one contiguous byte vector (copies; for tests, tools and
/// datagram-like transports, not for the hot path).
PSYNC_DECL std::vector<std::byte> encode_to_bytes(PeerId sender, const Message& m);

namespace detail {

// One whole frame: exactly the header's payload after the header.
PSYNC_DECL void check_whole(const FrameHeader& h, std::span<const std::byte> frame);

}  // namespace detail

/// @brief Decodes exactly one complete frame held in `frame`; the envelope's `from`
/// is the sender id in the header. Throws `FrameError` on any violation, on a
/// truncated frame and on trailing bytes.
template <class Acquire = NewVector>
Envelope decode(std::span<const std::byte> frame, const WireLimits& limits, Acquire&& acquire = {}) {
  const FrameHeader h = decode_header(frame, limits);
  detail::check_whole(h, frame);
  const std::size_t fixed = fixed_size(h.type);
  Envelope e{h.sender, decode_fixed(h, frame.subspan(header_size, fixed), limits, std::forward<Acquire>(acquire))};
  const std::span<std::byte> body = body_bytes(e.message);
  if (!body.empty()) std::memcpy(body.data(), frame.data() + header_size + fixed, body.size());
  check_body(e.message);
  return e;
}

/// @brief Decodes exactly one complete `Challenge` frame held in `frame`. Throws
/// `FrameError` on any violation (see the staged `decode_challenge`), on a truncated
/// frame and on trailing bytes.
PSYNC_DECL Challenge decode_challenge(std::span<const std::byte> frame, const WireLimits& limits = {});

/// @brief The `Challenge` frame the server sends (sender `server_peer`).
PSYNC_DECL std::array<std::byte, challenge_frame_size> encode_challenge(const Challenge& c) noexcept;

/// @brief What a join's MAC is computed over: the connection's challenge nonce (32 bytes),
/// then the join's worker (u32 LE), dimension (u64 LE) and policy bytes (no length: it is
/// the last field). At most 300 bytes. Throws `ProtocolError` for a policy longer than
/// `max_policy_bytes` (such a join cannot be sent anyway).
struct JoinMacInput {
  std::array<std::byte, nonce_size + 4 + 8 + max_policy_bytes> bytes{};  ///< the input
  std::size_t size = 0;                                                 ///< bytes in use

  /// @brief The bytes in use.
  std::span<const std::byte> view() const noexcept { return {bytes.data(), size}; }
};

/// @brief The MAC input of `join` on a connection whose challenge carried `nonce`.
PSYNC_DECL JoinMacInput join_mac_input(const Nonce& nonce, const msg::Join& join);

}  // namespace wire
}  // namespace psync

#if PSYNC_HEADER_ONLY
#include "psync/impl/wire.ipp"
#endif
