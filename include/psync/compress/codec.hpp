#pragma once
/// @file
/// @brief Update compression on the push path (docs/compression.md): a codec chosen at
/// run time by name ("none", "fp16", "topk:R", "qsgd8"), the worker's `Encoder` (with
/// error feedback) and the validating `decode` the server and the wire codec share.
///
/// Payload formats (little-endian; n = the update's float count):
/// - fp16:  n IEEE binary16 values (2n bytes);
/// - topk:  k u32 indices, strictly increasing and < n, then their k float32 values (8k bytes);
/// - qsgd8: ceil(n / `qsgd_bucket`) float32 scales (finite, >= 0), then n int8 levels in
///   [-`qsgd_levels`, `qsgd_levels`]; value i = scale(bucket of i) * level_i / `qsgd_levels`
///   (4 ceil(n / 512) + n bytes).
///
/// Segmented updates (a worker of sharded servers, `Encoder::reset` with the shard
/// layout's slice sizes): fp16 and top-k are unchanged (top-k stays global over the n
/// floats); qsgd8's buckets restart at each segment, and the payload is each segment's
/// qsgd8 payload in turn. `split` cuts such a payload into one ordinary payload per
/// segment, each decoding to exactly its slice of what the whole stands for.

#include "psync/core/error.hpp"
#include "psync/core/message.hpp"
#include "psync/detail/config.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace psync::compress {

static_assert(std::endian::native == std::endian::little, "the codecs write host memory as little-endian");

/// @brief Floats that share one qsgd8 scale.
inline constexpr std::uint64_t qsgd_bucket = 512;
/// @brief qsgd8's quantization levels on each side of zero (int8 without -128).
inline constexpr int qsgd_levels = 127;

/// @brief A codec by name, a value chosen at run time: what the worker pushes.
struct Codec {
  Encoding encoding = Encoding::dense;  ///< dense is "none"
  double ratio = 0;                     ///< topk: fraction of the floats kept, in (0, 1]

  /// @brief The spelling `parse` reads back ("none", "fp16", "topk:0.01", "qsgd8").
  std::string name() const {
    switch (encoding) {
      case Encoding::dense: return "none";
      case Encoding::fp16: return "fp16";
      case Encoding::qsgd8: return "qsgd8";
      case Encoding::topk: {
        char r[32];
        std::snprintf(r, sizeof r, "%.9g", ratio);  // "0.01", "1e-07": reads back as the same ratio
        return std::string("topk:") + r;
      }
    }
    return "unknown";
  }
  /// @brief Whether the worker keeps what was not sent and adds it to the next push.
  /// True for every lossy codec (fp16 too: its rounding error is kept and resent).
  bool error_feedback() const noexcept { return encoding != Encoding::dense; }
  /// @brief Floats top-k keeps of `n`: round(ratio * n), at least 1 and at most n.
  std::uint64_t kept(std::uint64_t n) const noexcept {
    if (n == 0) return 0;
    const double k = std::round(ratio * static_cast<double>(n));
    return std::clamp<std::uint64_t>(k < 1 ? 1 : static_cast<std::uint64_t>(k), 1, n);
  }
};

/// @brief Reads a codec spelling: "none" (or "dense"), "fp16", "topk:R" with R in (0, 1],
/// "qsgd8". Throws `ConfigError` naming what is wrong.
PSYNC_DECL Codec parse_codec(std::string_view text);

/// @brief The float nearest `x` in IEEE binary16 (round to nearest even), as its bits:
/// Eigen's `Eigen::half` conversion, except that values beyond the half range (and
/// infinities) become +-65504, the largest finite half, so a finite update never
/// decodes to infinity; error feedback carries the rest. NaN stays NaN.
PSYNC_DECL std::uint16_t float_to_half(float x) noexcept;

/// @brief The float a binary16 stands for (exact; Eigen's conversion).
PSYNC_DECL float half_to_float(std::uint16_t h) noexcept;

/// @brief Payload bytes of an update of `n` floats under `c` (dense: 4n).
PSYNC_DECL std::uint64_t payload_bytes(const Codec& c, std::uint64_t n) noexcept;

/// @brief Payload bytes of a segmented update (segments of `sizes` floats, n their sum):
/// as `payload_bytes` over n, except qsgd8, whose buckets restart at each segment.
PSYNC_DECL std::uint64_t payload_bytes(const Codec& c, std::span<const std::uint64_t> sizes) noexcept;

namespace detail {

template <class T>
T load(const std::byte* at) noexcept {
  T v;
  std::memcpy(&v, at, sizeof(T));
  return v;
}

template <class T>
void store(std::byte* at, T v) noexcept {
  std::memcpy(at, &v, sizeof(T));
}

// Validates a payload and, when `out` is given, decodes it into `out` (n floats).
// Returns what is wrong, or nothing. Reads nothing outside `p` and writes `out` only.
PSYNC_DECL std::optional<std::string> decode_impl(Encoding e, std::uint64_t n, std::span<const std::byte> p, float* out);

}  // namespace detail

/// @brief What is wrong with `payload` as an encoding-`e` update of `n` floats, or nothing.
PSYNC_DECL std::optional<std::string> check(Encoding e, std::uint64_t n, std::span<const std::byte> payload);

/// @brief Decodes `payload` (an encoding-`e` update of `out.size()` floats) into `out`,
/// every float written; returns what is wrong instead (then `out` is unspecified).
PSYNC_DECL std::optional<std::string> decode(Encoding e, std::span<const std::byte> payload, Eigen::Ref<Eigen::VectorXf> out);

/// @brief Cuts `whole`, an encoding-`e` update of the floats of consecutive segments of
/// `sizes` floats, into one payload per segment (`out[i]`, resized; its capacity is
/// reused): `decode(e, out[i], slice)` gives exactly floats [offset_i, offset_i + sizes[i])
/// of what `whole` stands for. A qsgd8 `whole` must have been encoded with these segments
/// (`Encoder::reset(n, sizes)`); fp16, dense and top-k payloads need nothing of the kind.
/// Returns what is wrong with `whole` instead (a size that does not fit, a top-k index out
/// of range or out of order); the slices' contents are checked by whoever decodes them.
PSYNC_DECL std::optional<std::string> split(Encoding e, std::span<const std::byte> whole, std::span<const std::uint64_t> sizes,
                                            std::vector<std::vector<std::byte>>& out);

/// @brief The worker's side of a codec: encodes each push's update with error
/// feedback. The update pushed is v = update + residual; what v's encoding does not
/// carry (v - decode(encode(v))) becomes the new residual, added to the next push. So
/// over any run, sum of decoded pushes + residual == sum of updates (to float rounding):
/// nothing computed is lost, only delayed. Buffers are sized by `reset` and reused:
/// `encode` allocates only when `payload` has less capacity than the encoding needs.
class Encoder {
 public:
  /// @brief The dense codec (nothing to do).
  Encoder() = default;
  /// @brief Codec `codec`, its random draws (qsgd8's stochastic rounding) seeded by `seed`.
  explicit Encoder(Codec codec, std::uint64_t seed = 1) : codec_(codec), rng_(seed) {}

  /// @brief The codec.
  const Codec& codec() const noexcept { return codec_; }
  /// @brief True unless the codec is dense.
  bool encodes() const noexcept { return codec_.encoding != Encoding::dense; }
  /// @brief Sizes the buffers for updates of `n` floats and clears the residual.
  /// `segments`, when given, are the sizes (summing to `n`) of the slices the payload
  /// will be `split` into, one per server shard: qsgd8's buckets restart at each.
  /// Throws `ConfigError` if they do not sum to `n` or one is 0.
  void reset(Eigen::Index n, std::vector<std::uint64_t> segments = {});
  /// @brief The segments of `reset` (empty: one, the whole update).
  const std::vector<std::uint64_t>& segments() const noexcept { return segments_; }
  /// @brief What was computed and not sent yet (zero for dense, or before the first push).
  const Eigen::VectorXf& residual() const noexcept { return residual_; }
  /// @brief Forgets the residual (its updates were dropped, e.g. with a lost push).
  void clear_residual();

  /// @brief Encodes `update` + residual into `payload` (resized to the encoding's bytes),
  /// keeps what it did not carry as the new residual. `update` must have `reset`'s size.
  void encode(const Eigen::VectorXf& update, std::vector<std::byte>& payload);

 private:
  // qsgd8 of the n floats at v (each minus what it sent) into the payload at out.
  void encode_qsgd8(float* v, std::uint64_t n, std::byte* out);

  Codec codec_{};
  std::vector<std::uint64_t> segments_;  // the slices qsgd8's buckets restart at (empty: one)
  std::mt19937_64 rng_{1};
  Eigen::VectorXf residual_;           // error feedback: v - what was sent
  std::vector<std::uint32_t> order_;   // top-k's index scratch
};

}  // namespace psync::compress

#if PSYNC_HEADER_ONLY
#include "psync/impl/codec.ipp"
#endif
