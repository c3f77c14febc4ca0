#pragma once
/// @file
/// @brief The bodies of psync/compress/codec.hpp's functions (psync/detail/config.hpp).

#include "psync/compress/codec.hpp"

#include <numeric>

namespace psync::compress {

PSYNC_DECL Codec parse_codec(std::string_view text) {
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

PSYNC_DECL std::uint16_t float_to_half(float x) noexcept {
  if (std::isinf(x) || (std::isfinite(x) && std::abs(x) > 65504.0f)) x = std::copysign(65504.0f, x);
  return Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(x));
}

PSYNC_DECL float half_to_float(std::uint16_t h) noexcept {
  return static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(h));
}

PSYNC_DECL std::uint64_t payload_bytes(const Codec& c, std::uint64_t n) noexcept {
  switch (c.encoding) {
    case Encoding::dense: return 4 * n;
    case Encoding::fp16: return 2 * n;
    case Encoding::topk: return 8 * c.kept(n);
    case Encoding::qsgd8: return 4 * ((n + qsgd_bucket - 1) / qsgd_bucket) + n;
  }
  return 0;
}

PSYNC_DECL std::uint64_t payload_bytes(const Codec& c, std::span<const std::uint64_t> sizes) noexcept {
  const std::uint64_t n = std::accumulate(sizes.begin(), sizes.end(), std::uint64_t{0});
  if (c.encoding != Encoding::qsgd8 || sizes.size() < 2) return payload_bytes(c, n);
  std::uint64_t bytes = 0;
  for (const auto s : sizes) bytes += payload_bytes(c, s);
  return bytes;
}

namespace detail {

PSYNC_DECL std::optional<std::string> decode_impl(Encoding e, std::uint64_t n, std::span<const std::byte> p, float* out) {
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

PSYNC_DECL std::optional<std::string> check(Encoding e, std::uint64_t n, std::span<const std::byte> payload) {
  return detail::decode_impl(e, n, payload, nullptr);
}

PSYNC_DECL std::optional<std::string> decode(Encoding e, std::span<const std::byte> payload, Eigen::Ref<Eigen::VectorXf> out) {
  return detail::decode_impl(e, static_cast<std::uint64_t>(out.size()), payload, out.data());
}

PSYNC_DECL std::optional<std::string> split(Encoding e, std::span<const std::byte> whole, std::span<const std::uint64_t> sizes,
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

PSYNC_DECL void Encoder::reset(Eigen::Index n, std::vector<std::uint64_t> segments) {
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

PSYNC_DECL void Encoder::clear_residual() {
  if (residual_.size() != 0) residual_.setZero();
}

PSYNC_DECL void Encoder::encode(const Eigen::VectorXf& update, std::vector<std::byte>& payload) {
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

PSYNC_DECL void Encoder::encode_qsgd8(float* v, std::uint64_t n, std::byte* out) {
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

}  // namespace psync::compress
