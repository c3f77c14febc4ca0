#pragma once
/// @file
/// @brief The bodies of psync/transport/wire.hpp's functions (psync/detail/config.hpp).

#include "psync/transport/wire.hpp"

namespace psync {

namespace wire {

PSYNC_DECL WireLimits fit_dimension(WireLimits limits) noexcept {
  constexpr std::uint64_t fields = fixed_size(MessageType::model);
  if (limits.expected_dimension != 0 && limits.expected_dimension <= (~std::uint64_t{0} - fields) / 4) {
    limits.max_payload_bytes = std::max(limits.max_payload_bytes, fields + 4 * limits.expected_dimension);
  }
  return limits;
}

namespace detail {

PSYNC_DECL std::string hex(std::uint64_t v, int digits) {
  static constexpr char d[] = "0123456789ABCDEF";
  std::string s = "0x";
  for (int i = digits - 1; i >= 0; --i) s += d[(v >> (4 * i)) & 0xF];
  return s;
}

PSYNC_DECL void check_dimension(std::uint64_t count, const WireLimits& limits,
                                const char* what) {
  if (limits.expected_dimension != 0 && count != limits.expected_dimension) {
    throw FrameError(msg::ErrorCode::wrong_dimension, what + std::to_string(count) + " floats, model has " +
                                                          std::to_string(limits.expected_dimension));
  }
}

PSYNC_DECL void check_float_count(const FrameHeader& h, std::uint64_t count) {
  const std::uint64_t fixed = fixed_size(h.type);
  const std::uint64_t room = h.payload_length - fixed;  // decode_header guaranteed payload >= fixed
  if (room % 4 != 0 || count != room / 4) {
    bad(std::string(type_name(h.type)) + " payload length " + std::to_string(h.payload_length) +
        " does not match its element count " + std::to_string(count) + " (" + std::to_string(fixed) +
        " bytes of fields + 4 per float)");
  }
}

PSYNC_DECL void check_encoded_size(const FrameHeader& h, Encoding e, std::uint64_t count) {
  const std::uint64_t room = h.payload_length - fixed_size(h.type);
  const auto mismatch = [&](const std::string& expected) {
    bad(std::string("push payload length ") + std::to_string(h.payload_length) + " does not match its " +
        encoding_name(e) + " encoding of " + std::to_string(count) + " floats (" + expected + ")");
  };
  switch (e) {
    case Encoding::dense: return;
    case Encoding::fp16:
      if (count > room / 2 || room != 2 * count) mismatch("2 bytes per float");
      return;
    case Encoding::qsgd8: {
      const std::uint64_t buckets = count / compress::qsgd_bucket + (count % compress::qsgd_bucket != 0 ? 1 : 0);
      if (count > room || room - count != 4 * buckets) mismatch("4 bytes per 512-float bucket + 1 per float");
      return;
    }
    case Encoding::topk:
      if (room % 8 != 0) mismatch("8 bytes per kept float");
      if (room / 8 > count) {
        bad("push top-k count " + std::to_string(room / 8) + " above its " + std::to_string(count) + " floats");
      }
      if (count > std::uint64_t{std::numeric_limits<std::uint32_t>::max()} + 1) {
        bad("push top-k of " + std::to_string(count) + " floats: u32 indices cannot address them");
      }
      return;
  }
}

PSYNC_DECL void check_string(const FrameHeader& h, std::uint32_t length, std::size_t limit, const char* what) {
  if (length > limit) {
    bad(std::string(what) + " length " + std::to_string(length) + " above limit " + std::to_string(limit));
  }
  if (h.payload_length != fixed_size(h.type) + length) {
    bad(std::string(type_name(h.type)) + " payload length " + std::to_string(h.payload_length) +
        " does not match its " + what + " length " + std::to_string(length));
  }
}

}  // namespace detail

PSYNC_DECL FrameHeader decode_header(std::span<const std::byte> bytes, const WireLimits& limits) {
  if (bytes.size() < header_size) {
    detail::bad("truncated frame: " + std::to_string(bytes.size()) + " bytes, the header needs " +
                std::to_string(header_size));
  }
  const std::byte* p = bytes.data();
  if (std::memcmp(p, magic.data(), magic.size()) != 0) {
    std::uint64_t seen = 0;
    for (int i = 0; i < 4; ++i) seen = (seen << 8) | std::to_integer<std::uint64_t>(p[i]);
    detail::bad("bad magic " + detail::hex(seen, 8) + " (expected 'PSYN')");
  }
  const auto version = detail::get<std::uint8_t>(p + 4);
  if (version != protocol_version) {
    detail::bad("unsupported protocol version " + std::to_string(version) + " (expected " +
                std::to_string(protocol_version) + ")");
  }
  const auto type = detail::get<std::uint8_t>(p + 5);
  if (type >= frame_type_count) detail::bad("unknown message type " + std::to_string(type));
  const auto reserved = detail::get<std::uint16_t>(p + 6);
  if (reserved != 0) detail::bad("reserved header field is " + detail::hex(reserved, 4) + " (must be 0)");
  FrameHeader h;
  h.type = static_cast<MessageType>(type);
  h.sender = detail::get<std::uint32_t>(p + 8);
  h.payload_length = detail::get<std::uint64_t>(p + 12);
  if (h.payload_length > limits.max_payload_bytes) {
    detail::bad("payload length " + std::to_string(h.payload_length) + " above limit " +
                std::to_string(limits.max_payload_bytes));
  }
  if (h.payload_length < fixed_size(h.type)) {
    detail::bad(std::string(type_name(h.type)) + " payload length " + std::to_string(h.payload_length) +
                " shorter than its " + std::to_string(fixed_size(h.type)) + " bytes of fields");
  }
  return h;
}

PSYNC_DECL Challenge decode_challenge(const FrameHeader& h, std::span<const std::byte> fixed) {
  constexpr std::size_t size = fixed_size(MessageType::challenge);
  if (h.type != MessageType::challenge) {
    detail::bad(std::string("expected a challenge, got a ") + type_name(h.type));
  }
  if (h.payload_length != size) {
    detail::bad("challenge payload length " + std::to_string(h.payload_length) + " (expected " +
                std::to_string(size) + ")");
  }
  if (fixed.size() < size) {
    detail::bad("truncated frame: challenge fields need " + std::to_string(size) + " bytes, got " +
                std::to_string(fixed.size()));
  }
  if (h.sender != server_peer) {
    detail::bad("challenge with sender id " + std::to_string(h.sender) + ": only the server sends one");
  }
  const auto flags = detail::get<std::uint8_t>(fixed.data());
  if ((flags & ~1u) != 0) detail::bad("unknown challenge flags " + detail::hex(flags, 2));
  Challenge c;
  c.auth_required = (flags & 1u) != 0;
  std::memcpy(c.nonce.data(), fixed.data() + 1, nonce_size);
  return c;
}

PSYNC_DECL std::span<std::byte> body_bytes(Message& m) noexcept {
  return std::visit(
      [](auto& v) -> std::span<std::byte> {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, msg::Push>) {
          if (v.encoding != Encoding::dense) return std::span<std::byte>(v.payload.data(), v.payload.size());
          return std::as_writable_bytes(std::span<float>(v.update.data(), static_cast<std::size_t>(v.update.size())));
        } else if constexpr (std::is_same_v<T, msg::Model>) {
          return std::as_writable_bytes(
              std::span<float>(v.parameters.data(), static_cast<std::size_t>(v.parameters.size())));
        } else if constexpr (std::is_same_v<T, msg::Join>) {
          return std::as_writable_bytes(std::span<char>(v.policy.data(), v.policy.size()));
        } else if constexpr (std::is_same_v<T, msg::Error>) {
          return std::as_writable_bytes(std::span<char>(v.text.data(), v.text.size()));
        } else {
          return {};
        }
      },
      m);
}

PSYNC_DECL void check_body(const Message& m) {
  if (const auto* p = std::get_if<msg::Push>(&m); p && p->encoding != Encoding::dense) {
    if (auto fault = compress::check(p->encoding, p->encoded_dimension, p->payload)) detail::bad("push: " + *fault);
  }
}

PSYNC_DECL EncodedFrame encode(PeerId sender, const Message& m) {
  EncodedFrame f;
  const MessageType type = message_type(m);
  std::byte* h = f.prefix.data();
  std::memcpy(h, magic.data(), magic.size());
  detail::put<std::uint8_t>(h + 4, protocol_version);
  detail::put<std::uint8_t>(h + 5, static_cast<std::uint8_t>(type));
  detail::put<std::uint16_t>(h + 6, 0);
  detail::put<std::uint32_t>(h + 8, sender);
  std::byte* p = h + header_size;
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, msg::Join>) {
          if (v.policy.size() > max_policy_bytes) {
            throw ProtocolError("policy string length " + std::to_string(v.policy.size()) + " above limit " +
                                std::to_string(max_policy_bytes));
          }
          detail::put<std::uint32_t>(p, v.worker);
          detail::put<std::uint64_t>(p + 4, v.dimension);
          detail::put<std::uint32_t>(p + 12, static_cast<std::uint32_t>(v.policy.size()));
          detail::put<std::uint8_t>(p + 16, static_cast<std::uint8_t>(v.mac ? MacKind::hmac_sha256 : MacKind::none));
          if (v.mac) {
            std::memcpy(p + 17, v.mac->data(), mac_size);
          } else {
            std::memset(p + 17, 0, mac_size);
          }
          f.body = std::as_bytes(std::span<const char>(v.policy.data(), v.policy.size()));
        } else if constexpr (std::is_same_v<T, msg::Leave>) {
          detail::put<std::uint8_t>(p, static_cast<std::uint8_t>(v.reason));
        } else if constexpr (std::is_same_v<T, msg::Push>) {
          detail::put<std::uint64_t>(p, v.clock);
          detail::put<std::uint64_t>(p + 8, v.base_version);
          detail::put<std::uint32_t>(p + 16, v.steps);
          detail::put<std::uint8_t>(p + 20, static_cast<std::uint8_t>(v.encoding));
          detail::put<std::uint64_t>(p + 21, v.dimension());
          if (v.encoding == Encoding::dense) {
            f.body = std::as_bytes(std::span<const float>(v.update.data(), static_cast<std::size_t>(v.update.size())));
          } else {
            f.body = std::span<const std::byte>(v.payload.data(), v.payload.size());
          }
        } else if constexpr (std::is_same_v<T, msg::Pull>) {
          detail::put<std::uint64_t>(p, v.clock);
          detail::put<std::uint64_t>(p + 8, static_cast<std::uint64_t>(v.buffer.size()));
        } else if constexpr (std::is_same_v<T, msg::Model>) {
          detail::put<std::uint64_t>(p, v.version);
          detail::put<std::uint64_t>(p + 8, v.min_clock);
          detail::put<std::uint64_t>(p + 16, v.held_ns);
          detail::put<std::uint32_t>(p + 24, v.worker);
          // A shared snapshot goes out as it is: the body points into it (scatter/gather).
          const Eigen::VectorXf& values = v.values();
          detail::put<std::uint64_t>(p + 28, static_cast<std::uint64_t>(values.size()));
          f.body = std::as_bytes(std::span<const float>(values.data(), static_cast<std::size_t>(values.size())));
        } else if constexpr (std::is_same_v<T, msg::Error>) {
          const std::size_t length = std::min(v.text.size(), max_error_text_bytes);
          detail::put<std::uint8_t>(p, static_cast<std::uint8_t>(v.code));
          detail::put<std::uint32_t>(p + 1, static_cast<std::uint32_t>(length));
          f.body = std::as_bytes(std::span<const char>(v.text.data(), length));
        }
      },
      m);
  f.prefix_size = header_size + fixed_size(type);
  detail::put<std::uint64_t>(h + 12, fixed_size(type) + f.body.size());
  return f;
}

PSYNC_DECL std::vector<std::byte> encode_to_bytes(PeerId sender, const Message& m) {
  const EncodedFrame f = encode(sender, m);
  std::vector<std::byte> out(f.size());
  std::memcpy(out.data(), f.prefix.data(), f.prefix_size);
  if (!f.body.empty()) std::memcpy(out.data() + f.prefix_size, f.body.data(), f.body.size());
  return out;
}

namespace detail {

PSYNC_DECL void check_whole(const FrameHeader& h, std::span<const std::byte> frame) {
  const std::uint64_t have = frame.size() - header_size;
  if (have < h.payload_length) {
    bad("truncated frame: " + std::string(type_name(h.type)) + " payload has " + std::to_string(have) + " of " +
        std::to_string(h.payload_length) + " bytes");
  }
  if (have > h.payload_length) {
    bad(std::to_string(have - h.payload_length) + " trailing bytes after a " + type_name(h.type) + " frame");
  }
}

}  // namespace detail

PSYNC_DECL Challenge decode_challenge(std::span<const std::byte> frame, const WireLimits& limits) {
  const FrameHeader h = decode_header(frame, limits);
  detail::check_whole(h, frame);
  return decode_challenge(h, frame.subspan(header_size));
}

PSYNC_DECL std::array<std::byte, challenge_frame_size> encode_challenge(const Challenge& c) noexcept {
  std::array<std::byte, challenge_frame_size> f{};
  std::byte* h = f.data();
  std::memcpy(h, magic.data(), magic.size());
  detail::put<std::uint8_t>(h + 4, protocol_version);
  detail::put<std::uint8_t>(h + 5, static_cast<std::uint8_t>(MessageType::challenge));
  detail::put<std::uint16_t>(h + 6, 0);
  detail::put<std::uint32_t>(h + 8, server_peer);
  detail::put<std::uint64_t>(h + 12, fixed_size(MessageType::challenge));
  detail::put<std::uint8_t>(h + header_size, c.auth_required ? 1 : 0);
  std::memcpy(h + header_size + 1, c.nonce.data(), nonce_size);
  return f;
}

PSYNC_DECL JoinMacInput join_mac_input(const Nonce& nonce, const msg::Join& join) {
  if (join.policy.size() > max_policy_bytes) {
    throw ProtocolError("policy string length " + std::to_string(join.policy.size()) + " above limit " +
                        std::to_string(max_policy_bytes));
  }
  JoinMacInput in;
  std::byte* p = in.bytes.data();
  std::memcpy(p, nonce.data(), nonce_size);
  detail::put<std::uint32_t>(p + nonce_size, join.worker);
  detail::put<std::uint64_t>(p + nonce_size + 4, join.dimension);
  if (!join.policy.empty()) std::memcpy(p + nonce_size + 12, join.policy.data(), join.policy.size());
  in.size = nonce_size + 12 + join.policy.size();
  return in;
}

}  // namespace wire

}  // namespace psync
