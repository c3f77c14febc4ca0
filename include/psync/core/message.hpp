#pragma once
/// @file
/// @brief The typed messages exchanged between workers and the server.
///
/// Every transport moves these values; only the wire codec (transport/wire.hpp)
/// turns them into bytes. Large vectors travel by move: a worker's push buffer
/// comes back to it filled with the model, so the hot path allocates nothing.

#include "psync/core/model_snapshot.hpp"
#include "psync/core/types.hpp"

#include <Eigen/Core>

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace psync {

/// @brief How a push's update travels (docs/compression.md, docs/wire-protocol.md):
/// dense float32 (`msg::Push::update`) or one of the codecs of `psync/compress/codec.hpp`
/// (`msg::Push::payload`). The value is the wire's encoding byte.
enum class Encoding : std::uint8_t {
  dense = 0,  ///< n float32 in `update`
  fp16 = 1,   ///< n IEEE binary16
  topk = 2,   ///< k strictly increasing u32 indices, then their k float32 values
  qsgd8 = 3,  ///< ceil(n / 512) float32 bucket scales, then n int8 levels in [-127, 127]
};

/// @brief The highest `Encoding` value; wire bytes above it are refused.
inline constexpr std::uint8_t max_encoding = static_cast<std::uint8_t>(Encoding::qsgd8);

/// @brief Lower-case name of an encoding ("dense", "fp16", "topk", "qsgd8").
inline constexpr const char* encoding_name(Encoding e) noexcept {
  switch (e) {
    case Encoding::dense: return "dense";
    case Encoding::fp16: return "fp16";
    case Encoding::topk: return "topk";
    case Encoding::qsgd8: return "qsgd8";
  }
  return "unknown";
}

namespace msg {

/// @brief A message authentication code: HMAC-SHA256, 32 bytes.
using Mac = std::array<std::byte, 32>;

/// @brief Worker -> server: "I am worker `worker`, my model has `dimension` floats,
/// I run policy `policy`". Answered by a `Model` (the initial parameters) or an `Error`.
struct Join {
  PeerId worker = 0;
  std::uint64_t dimension = 0;
  std::string policy;  ///< e.g. "ssp:3"; the server refuses a worker whose policy differs
  /// @brief Proof of the cluster's shared secret over the connection's challenge
  /// (docs/wire-protocol.md). The TCP worker endpoint fills it when it has a secret;
  /// the TCP server checks and removes it; other transports ignore it.
  std::optional<Mac> mac{};
  /// @brief Not on the wire: set by a server endpoint that assigned `worker` to a join
  /// for `any_worker`. The server core refuses an assigned id it already knows.
  bool assigned = false;
};

/// @brief Why a peer left.
enum class LeaveReason : std::uint8_t {
  finished = 0,      ///< the worker completed its work and said goodbye
  disconnected = 1,  ///< the transport lost the connection (synthesised by the transport)
  timed_out = 2,     ///< silent past the deadline (synthesised by the server)
  failed = 3,        ///< the peer hit an error and gave up
};

/// @brief Any peer -> the other side: this peer is gone. Transports synthesise one
/// (reason `disconnected`) when a connection dies, so the server sees every loss.
struct Leave {
  LeaveReason reason = LeaveReason::finished;
};

/// @brief Worker -> server: an update (u = -lr * sum of gradients over `steps`
/// local steps) stamped with the worker's clock. Every push is also a pull: the
/// server answers with a `Model` once the policy allows the read at clock + 1.
///
/// The update is either dense (`encoding == dense`: the floats are `update`, the
/// default, as before compression existed) or encoded by a codec (`payload` holds
/// the codec's bytes for a vector of `encoded_dimension` floats, and `update` is
/// empty). The server decodes an encoded push into a dense vector before the policy
/// combines it, so no combination rule depends on the encoding.
struct Push {
  std::uint64_t clock = 0;         ///< this worker's push count before this push
  std::uint64_t base_version = 0;  ///< version of the model the first step was computed on
  std::uint32_t steps = 0;         ///< local steps summed into `update`
  Eigen::VectorXf update;          ///< the dense update (empty when encoded)
  Encoding encoding = Encoding::dense;  ///< how the update travels
  std::uint64_t encoded_dimension = 0;  ///< floats the encoded update stands for (not read when dense)
  std::vector<std::byte> payload{};     ///< the codec's bytes (empty when dense)

  /// @brief Floats of the update this push carries, encoded or not.
  std::uint64_t dimension() const noexcept {
    return encoding == Encoding::dense ? static_cast<std::uint64_t>(update.size()) : encoded_dimension;
  }
};

/// @brief Worker -> server: send me the model for a read at `clock` (no update).
struct Pull {
  std::uint64_t clock = 0;
  Eigen::VectorXf buffer;  ///< optional buffer the server may fill and send back
};

/// @brief Server -> worker: the global parameters.
///
/// The values are `values()`: the server core shares one immutable `ModelSnapshot`
/// among every reply of a model version (`shared`), so a reply costs no copy of the
/// model; a reply decoded from bytes, or built by hand, carries them in `parameters`.
struct Model {
  std::uint64_t version = 0;    ///< updates (async) or rounds (barrier) applied so far
  /// @brief Slowest live worker's clock when this was sent. In the reply to a `Join`:
  /// the clock the worker starts at (the slowest live clock for a new worker, its own
  /// saved clock for one returning to a server restored from a checkpoint).
  std::uint64_t min_clock = 0;
  std::uint64_t held_ns = 0;    ///< how long the server held the read for the policy
  Eigen::VectorXf parameters;
  /// @brief The worker this model is for (last, so `Model{version, min_clock, held_ns,
  /// parameters}` still reads as before). In the reply to a `Join` for `any_worker`: the
  /// id the server assigned, which the worker uses from then on (rejoins included).
  PeerId worker = 0;
  /// @brief Not on the wire: when set, the model's values, shared with the other replies
  /// of this version and never changed (`parameters` is then not read).
  ModelSnapshot shared{};
  /// @brief Not on the wire: a buffer handed back to the receiver for reuse (the vector
  /// of the push this answers), contents unspecified; empty when there is none.
  Eigen::VectorXf spare{};
  /// @brief Not on the wire: the byte buffer of an encoded push this answers, handed
  /// back for the worker's next encoded push (contents unspecified); empty when there is none.
  std::vector<std::byte> spare_payload{};

  /// @brief The parameters this model carries: `shared`'s values if set, else `parameters`.
  const Eigen::VectorXf& values() const noexcept { return shared ? shared.values() : parameters; }
};

/// @brief Why a request was refused.
enum class ErrorCode : std::uint8_t {
  bad_frame = 1,         ///< malformed bytes on the wire
  wrong_dimension = 2,   ///< parameter vector size differs from the model's
  duplicate_worker = 3,  ///< worker id already taken
  policy_mismatch = 4,   ///< worker and server run different policies
  bad_clock = 5,         ///< a push stamped with an impossible clock
  not_joined = 6,        ///< a push or pull before join
  shutting_down = 7,     ///< the server is stopping
  internal = 8,
  limit_exceeded = 9,    ///< the peer went past one of the server's bounds (named in the text)
  unauthenticated = 10,  ///< a join without the proof of the shared secret the server requires
};

/// @brief Either side -> the other: a request was refused; the connection closes after it.
struct Error {
  ErrorCode code = ErrorCode::internal;
  std::string text;
};

}  // namespace msg

/// @brief One message of any kind; `std::visit` it or test with `std::get_if`.
using Message = std::variant<msg::Join, msg::Leave, msg::Push, msg::Pull, msg::Model, msg::Error>;

/// @brief A received message with its sender.
struct Envelope {
  PeerId from = 0;
  Message message;
};

/// @brief Human-readable name of a message's kind, for logs and errors.
inline std::string_view message_name(const Message& m) noexcept {
  constexpr std::string_view names[] = {"join", "leave", "push", "pull", "model", "error"};
  return names[m.index()];
}

/// @brief Human-readable name of an error code.
inline std::string_view error_code_name(msg::ErrorCode c) noexcept {
  switch (c) {
    case msg::ErrorCode::bad_frame: return "bad_frame";
    case msg::ErrorCode::wrong_dimension: return "wrong_dimension";
    case msg::ErrorCode::duplicate_worker: return "duplicate_worker";
    case msg::ErrorCode::policy_mismatch: return "policy_mismatch";
    case msg::ErrorCode::bad_clock: return "bad_clock";
    case msg::ErrorCode::not_joined: return "not_joined";
    case msg::ErrorCode::shutting_down: return "shutting_down";
    case msg::ErrorCode::internal: return "internal";
    case msg::ErrorCode::limit_exceeded: return "limit_exceeded";
    case msg::ErrorCode::unauthenticated: return "unauthenticated";
  }
  return "unknown";
}

}  // namespace psync
