#pragma once
/// @file
/// @brief CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320): the checksum zlib's
/// `crc32()` computes, bit for bit, so checkpoints written before psync stopped
/// linking zlib still load. Written here, not taken from zlib, because the core
/// library (`psync::psync`) depends on Eigen and the standard library only
/// (issue 11); tests/test_checkpoint.cpp checks it against zlib's on random data.
/// Slice-by-8: about 1-2 GB/s, far below a checkpoint's fsync cost.

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace psync::detail {

/// The 8 lookup tables of slice-by-8, computed at compile time.
inline constexpr auto crc32_tables = [] {
  std::array<std::array<std::uint32_t, 256>, 8> t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
    t[0][i] = c;
  }
  for (std::size_t i = 0; i < 256; ++i) {
    for (std::size_t s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFFu];
  }
  return t;
}();

/// @brief CRC-32 of `n` bytes at `data`, continuing `crc` (0 to start), as zlib's
/// `crc32(crc, data, n)`. `data` may be null when `n` is 0.
inline std::uint32_t crc32(std::uint32_t crc, const void* data, std::size_t n) noexcept {
  const auto& t = crc32_tables;
  auto p = static_cast<const unsigned char*>(data);
  std::uint32_t c = ~crc;
  for (; n >= 8; n -= 8, p += 8) {
    // Little-endian assembly of the next 8 bytes, whatever the host's byte order.
    const std::uint32_t lo = c ^ (std::uint32_t{p[0]} | std::uint32_t{p[1]} << 8 | std::uint32_t{p[2]} << 16 |
                                  std::uint32_t{p[3]} << 24);
    const std::uint32_t hi =
        std::uint32_t{p[4]} | std::uint32_t{p[5]} << 8 | std::uint32_t{p[6]} << 16 | std::uint32_t{p[7]} << 24;
    c = t[7][lo & 0xFFu] ^ t[6][(lo >> 8) & 0xFFu] ^ t[5][(lo >> 16) & 0xFFu] ^ t[4][lo >> 24] ^
        t[3][hi & 0xFFu] ^ t[2][(hi >> 8) & 0xFFu] ^ t[1][(hi >> 16) & 0xFFu] ^ t[0][hi >> 24];
  }
  for (; n > 0; --n, ++p) c = t[0][(c ^ *p) & 0xFFu] ^ (c >> 8);
  return ~c;
}

}  // namespace psync::detail
