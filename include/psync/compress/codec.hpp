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

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <numeric>
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
inline Codec parse_codec(std::string_view text) {
  const std::string t(text);
  if (t == "none" || t == "dense") return {};
  if (t == "fp16") return {Encoding::fp16, 0};
  if (t == "qsgd8") return {Encoding::qsgd8, 0};
  if (t.starts_with("topk:")) {
    const std::string r = t.substr(5);
    std::size_t used = 0;
    double ratio = 0;
    try {
      ratio = std::stod(r, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != r.size() || !(ratio > 0 && ratio <= 1)) {
      throw ConfigError("codec '" + t + "': top-k needs a fraction kept in (0, 1], e.g. topk:0.01");
    }
    return {Encoding::topk, ratio};
  }
  throw ConfigError("unknown codec '" + t + "' (expected none, fp16, topk:R with R in (0, 1], or qsgd8)");
}

/// @brief The float nearest `x` in IEEE binary16 (round to nearest even), as its bits:
/// Eigen's `Eigen::half` conversion, except that values beyond the half range (and
/// infinities) become +-65504, the largest finite half, so a finite update never
/// decodes to infinity; error feedback carries the rest. NaN stays NaN.
inline std::uint16_t float_to_half(float x) noexcept {
  if (std::isinf(x) || (std::isfinite(x) && std::abs(x) > 65504.0f)) x = std::copysign(65504.0f, x);
  return Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(x));
}

/// @brief The float a binary16 stands for (exact; Eigen's conversion).
inline float half_to_float(std::uint16_t h) noexcept {
  return static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(h));
}

/// @brief Payload bytes of an update of `n` floats under `c` (dense: 4n).
inline std::uint64_t payload_bytes(const Codec& c, std::uint64_t n) noexcept {
  switch (c.encoding) {
    case Encoding::dense: return 4 * n;
    case Encoding::fp16: return 2 * n;
    case Encoding::topk: return 8 * c.kept(n);
    case Encoding::qsgd8: return 4 * ((n + qsgd_bucket - 1) / qsgd_bucket) + n;
  }
  return 0;
}

/// @brief Payload bytes of a segmented update (segments of `sizes` floats, n their sum):
/// as `payload_bytes` over n, except qsgd8, whose buckets restart at each segment.
inline std::uint64_t payload_bytes(const Codec& c, std::span<const std::uint64_t> sizes) noexcept {
  const std::uint64_t n = std::accumulate(sizes.begin(), sizes.end(), std::uint64_t{0});
  if (c.encoding != Encoding::qsgd8 || sizes.size() < 2) return payload_bytes(c, n);
  std::uint64_t bytes = 0;
  for (const auto s : sizes) bytes += payload_bytes(c, s);
  return bytes;
}

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
inline std::optional<std::string> decode_impl(Encoding e, std::uint64_t n, std::span<const std::byte> p, float* out) {
  const std::uint64_t size = p.size();
  const std::byte* b = p.data();
  switch (e) {
    case Encoding::dense: {
      if (size != 4 * n) {
        return "dense payload of " + std::to_string(size) + " bytes for " + std::to_string(n) + " floats";
      }
      if (out && n) std::memcpy(out, b, size);
      return std::nullopt;
    }
    case Encoding::fp16: {
      if (n > size / 2 || size != 2 * n) {
        return "fp16 payload of " + std::to_string(size) + " bytes for " + std::to_string(n) + " floats (expected " +
               std::to_string(2 * n) + ")";
      }
      for (std::uint64_t i = 0; i < n; ++i) {
        const auto h = load<std::uint16_t>(b + 2 * i);
        if ((h & 0x7C00u) == 0x7C00u) return "fp16 value " + std::to_string(i) + " is not finite";
        if (out) out[i] = half_to_float(h);
      }
      return std::nullopt;
    }
    case Encoding::topk: {
      if (size % 8 != 0) return "top-k payload of " + std::to_string(size) + " bytes is not a whole number of (index, value) pairs";
      const std::uint64_t k = size / 8;
      if (k > n) return "top-k payload holds " + std::to_string(k) + " values for " + std::to_string(n) + " floats";
      if (n > std::uint64_t{std::numeric_limits<std::uint32_t>::max()} + 1) {
        return "top-k of " + std::to_string(n) + " floats: u32 indices cannot address them";
      }
      if (out) std::fill(out, out + n, 0.0f);
      std::uint64_t next = 0;  // smallest index allowed next
      for (std::uint64_t j = 0; j < k; ++j) {
        const std::uint64_t i = load<std::uint32_t>(b + 4 * j);
        if (i >= n) return "top-k index " + std::to_string(i) + " out of range (" + std::to_string(n) + " floats)";
        if (i < next) {
          return "top-k indices not strictly increasing (" + std::to_string(i) + " after " + std::to_string(next - 1) + ")";
        }
        next = i + 1;
        const float v = load<float>(b + 4 * k + 4 * j);
        if (!std::isfinite(v)) return "top-k value for index " + std::to_string(i) + " is not finite";
        if (out) out[i] = v;
      }
      return std::nullopt;
    }
    case Encoding::qsgd8: {
      const std::uint64_t buckets = (n + qsgd_bucket - 1) / qsgd_bucket;
      if (n > size || size - n != 4 * buckets) {
        return "qsgd8 payload of " + std::to_string(size) + " bytes for " + std::to_string(n) + " floats (expected " +
               std::to_string(4 * buckets + n) + ")";
      }
      const std::byte* levels = b + 4 * buckets;
      for (std::uint64_t q = 0; q < buckets; ++q) {
        const float s = load<float>(b + 4 * q);
        if (!std::isfinite(s) || s < 0) return "qsgd8 scale " + std::to_string(q) + " is " + (std::isfinite(s) ? "negative" : "not finite");
        const std::uint64_t end = std::min(n, (q + 1) * qsgd_bucket);
        const float unit = s / static_cast<float>(qsgd_levels);
        for (std::uint64_t i = q * qsgd_bucket; i < end; ++i) {
          const auto l = load<std::int8_t>(levels + i);
          if (l < -qsgd_levels) return "qsgd8 level " + std::to_string(l) + " at " + std::to_string(i) + " below -127";
          if (out) out[i] = unit * static_cast<float>(l);
        }
      }
      return std::nullopt;
    }
  }
  return "unknown encoding " + std::to_string(static_cast<unsigned>(e));
}

}  // namespace detail

/// @brief What is wrong with `payload` as an encoding-`e` update of `n` floats, or nothing.
inline std::optional<std::string> check(Encoding e, std::uint64_t n, std::span<const std::byte> payload) {
  return detail::decode_impl(e, n, payload, nullptr);
}

/// @brief Decodes `payload` (an encoding-`e` update of `out.size()` floats) into `out`,
/// every float written; returns what is wrong instead (then `out` is unspecified).
inline std::optional<std::string> decode(Encoding e, std::span<const std::byte> payload, Eigen::Ref<Eigen::VectorXf> out) {
  return detail::decode_impl(e, static_cast<std::uint64_t>(out.size()), payload, out.data());
}

/// @brief Cuts `whole`, an encoding-`e` update of the floats of consecutive segments of
/// `sizes` floats, into one payload per segment (`out[i]`, resized; its capacity is
/// reused): `decode(e, out[i], slice)` gives exactly floats [offset_i, offset_i + sizes[i])
/// of what `whole` stands for. A qsgd8 `whole` must have been encoded with these segments
/// (`Encoder::reset(n, sizes)`); fp16, dense and top-k payloads need nothing of the kind.
/// Returns what is wrong with `whole` instead (a size that does not fit, a top-k index out
/// of range or out of order); the slices' contents are checked by whoever decodes them.
inline std::optional<std::string> split(Encoding e, std::span<const std::byte> whole, std::span<const std::uint64_t> sizes,
                                        std::vector<std::vector<std::byte>>& out) {
  const std::uint64_t n = std::accumulate(sizes.begin(), sizes.end(), std::uint64_t{0});
  const std::uint64_t size = whole.size();
  const std::byte* b = whole.data();
  out.resize(sizes.size());
  // Dense, fp16 and (segmented) qsgd8: segment i is the next payload_bytes(sizes[i]) bytes.
  const auto cut_by_bytes = [&]() -> std::optional<std::string> {
    const Codec c{e, 0};
    const std::uint64_t expected = payload_bytes(c, sizes);
    if (size != expected) {
      return std::string(encoding_name(e)) + " payload of " + std::to_string(size) + " bytes for " +
             std::to_string(sizes.size()) + " segments of " + std::to_string(n) + " floats (expected " +
             std::to_string(expected) +
             (e == Encoding::qsgd8 ? std::string(": encoded with buckets restarting at each segment?)") : std::string(")"));
    }
    std::uint64_t at = 0;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      const std::uint64_t bytes = payload_bytes(c, sizes[i]);
      out[i].assign(b + at, b + at + bytes);
      at += bytes;
    }
    return std::nullopt;
  };
  switch (e) {
    case Encoding::dense:
    case Encoding::fp16:
    case Encoding::qsgd8: return cut_by_bytes();
    case Encoding::topk: {
      if (size % 8 != 0) return "top-k payload of " + std::to_string(size) + " bytes is not a whole number of (index, value) pairs";
      const std::uint64_t k = size / 8;
      if (k > n) return "top-k payload holds " + std::to_string(k) + " values for " + std::to_string(n) + " floats";
      // One pass: the indices increase, so each segment's pairs are the next run of
      // them below its end; each is written with its index made relative to the
      // segment's first float. Allocates nothing once `out`'s buffers are big enough.
      std::uint64_t j = 0, offset = 0, next = 0;
      for (std::size_t s = 0; s < sizes.size(); ++s) {
        const std::uint64_t end = offset + sizes[s], first = j;
        for (; j < k; ++j) {
          const std::uint64_t i = detail::load<std::uint32_t>(b + 4 * j);
          if (i >= n) return "top-k index " + std::to_string(i) + " out of range (" + std::to_string(n) + " floats)";
          if (i < next) {
            return "top-k indices not strictly increasing (" + std::to_string(i) + " after " + std::to_string(next - 1) + ")";
          }
          if (i >= end) break;
          next = i + 1;
        }
        const std::uint64_t c = j - first;
        out[s].resize(8 * c);
        std::byte* o = out[s].data();
        for (std::uint64_t t = 0; t < c; ++t) {
          const auto i = detail::load<std::uint32_t>(b + 4 * (first + t));
          detail::store(o + 4 * t, static_cast<std::uint32_t>(i - offset));
          std::memcpy(o + 4 * c + 4 * t, b + 4 * k + 4 * (first + t), 4);
        }
        offset = end;
      }
      return std::nullopt;
    }
  }
  return "unknown encoding " + std::to_string(static_cast<unsigned>(e));
}

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
  void reset(Eigen::Index n, std::vector<std::uint64_t> segments = {}) {
    if (!segments.empty()) {
      std::uint64_t sum = 0;
      for (const auto s : segments) {
        if (s == 0) throw ConfigError("compress: an empty segment in the encoder's segments");
        sum += s;
      }
      if (sum != static_cast<std::uint64_t>(n)) {
        throw ConfigError("compress: encoder segments sum to " + std::to_string(sum) + " floats, the update has " +
                          std::to_string(n));
      }
    }
    segments_ = segments.size() > 1 ? std::move(segments) : std::vector<std::uint64_t>{};
    if (!encodes()) return;
    residual_ = Eigen::VectorXf::Zero(n);
    if (codec_.encoding == Encoding::topk) order_.resize(static_cast<std::size_t>(n));
  }
  /// @brief The segments of `reset` (empty: one, the whole update).
  const std::vector<std::uint64_t>& segments() const noexcept { return segments_; }
  /// @brief What was computed and not sent yet (zero for dense, or before the first push).
  const Eigen::VectorXf& residual() const noexcept { return residual_; }
  /// @brief Forgets the residual (its updates were dropped, e.g. with a lost push).
  void clear_residual() {
    if (residual_.size() != 0) residual_.setZero();
  }

  /// @brief Encodes `update` + residual into `payload` (resized to the encoding's bytes),
  /// keeps what it did not carry as the new residual. `update` must have `reset`'s size.
  void encode(const Eigen::VectorXf& update, std::vector<std::byte>& payload) {
    const auto n = static_cast<std::uint64_t>(update.size());
    if (residual_.size() != update.size()) {
      throw ConfigError("compress: encoder sized for " + std::to_string(residual_.size()) + " floats, update has " +
                        std::to_string(n));
    }
    residual_ += update;  // v: everything not yet sent
    payload.resize(segments_.empty() ? payload_bytes(codec_, n) : payload_bytes(codec_, segments_));
    std::byte* out = payload.data();
    float* v = residual_.data();
    switch (codec_.encoding) {
      case Encoding::dense:
        return;
      case Encoding::fp16:
        for (std::uint64_t i = 0; i < n; ++i) {
          const std::uint16_t h = float_to_half(v[i]);
          detail::store(out + 2 * i, h);
          v[i] -= half_to_float(h);
        }
        return;
      case Encoding::topk: {
        const std::uint64_t k = codec_.kept(n);
        std::iota(order_.begin(), order_.end(), 0u);
        // The k largest |v|, ties to the lower index (deterministic), then by index for the wire.
        const auto larger = [v](std::uint32_t a, std::uint32_t b) {
          const float fa = std::abs(v[a]), fb = std::abs(v[b]);
          return fa != fb ? fa > fb : a < b;
        };
        std::nth_element(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(k - 1), order_.end(), larger);
        std::sort(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(k));
        for (std::uint64_t j = 0; j < k; ++j) {
          const std::uint32_t i = order_[j];
          detail::store(out + 4 * j, i);
          detail::store(out + 4 * k + 4 * j, v[i]);
          v[i] = 0;  // sent whole
        }
        return;
      }
      case Encoding::qsgd8: {
        if (segments_.empty()) {
          encode_qsgd8(v, n, out);
        } else {
          for (const auto s : segments_) {  // each segment a payload of its own, in turn
            encode_qsgd8(v, s, out);
            v += s;
            out += payload_bytes(codec_, s);
          }
        }
        return;
      }
    }
  }

 private:
  // qsgd8 of the n floats at v (each minus what it sent) into the payload at out.
  void encode_qsgd8(float* v, std::uint64_t n, std::byte* out) {
    const std::uint64_t buckets = (n + qsgd_bucket - 1) / qsgd_bucket;
    std::byte* levels = out + 4 * buckets;
    for (std::uint64_t q = 0; q < buckets; ++q) {
      const std::uint64_t begin = q * qsgd_bucket, end = std::min(n, begin + qsgd_bucket);
      float s = 0;
      for (std::uint64_t i = begin; i < end; ++i) s = std::max(s, std::abs(v[i]));
      detail::store(out + 4 * q, s);
      const float unit = s / static_cast<float>(qsgd_levels);
      for (std::uint64_t i = begin; i < end; ++i) {
        std::int8_t l = 0;
        if (unit > 0) {  // (a scale so small that s / 127 underflows sends zeros; the residual keeps v)
          // Stochastic rounding of |v|/unit to a neighbouring level: unbiased.
          const float x = std::min(std::abs(v[i]) / unit, static_cast<float>(qsgd_levels));
          const float lo = std::floor(x);
          const float u = static_cast<float>(rng_() >> 40) * 0x1p-24f;  // uniform in [0, 1)
          int level = static_cast<int>(lo) + (u < x - lo ? 1 : 0);
          level = std::min(level, qsgd_levels);
          l = static_cast<std::int8_t>(v[i] < 0 ? -level : level);
        }
        detail::store(levels + i, l);
        v[i] -= unit * static_cast<float>(l);
      }
    }
  }

  Codec codec_{};
  std::vector<std::uint64_t> segments_;  // the slices qsgd8's buckets restart at (empty: one)
  std::mt19937_64 rng_{1};
  Eigen::VectorXf residual_;           // error feedback: v - what was sent
  std::vector<std::uint32_t> order_;   // top-k's index scratch
};

}  // namespace psync::compress
