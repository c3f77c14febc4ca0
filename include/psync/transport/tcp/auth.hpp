#pragma once
/// @file
/// @brief Shared-secret authentication of TCP workers: the `Secret` type, reading it
/// from a file, the join MAC (HMAC-SHA256 over the connection's challenge) and the
/// challenge's random nonce.
///
/// The cryptography is OpenSSL's libcrypto, an optional dependency: psync's CMake
/// package links it and defines `PSYNC_HAVE_OPENSSL` when it is found. Without it, the
/// endpoints refuse a secret with a `ConfigError`, and nonces come from getrandom(2).

#include "psync/core/error.hpp"
#include "psync/core/message.hpp"
#include "psync/transport/wire.hpp"

#ifdef PSYNC_HAVE_OPENSSL
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#endif

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace psync {

/// @brief True when psync was built with OpenSSL, i.e. TCP authentication is available.
inline constexpr bool tcp_auth_available =
#ifdef PSYNC_HAVE_OPENSSL
    true;
#else
    false;
#endif

namespace detail {

// Overwrites `n` bytes in a way the compiler may not drop as a dead store.
inline void cleanse(void* p, std::size_t n) noexcept {
  if (n == 0) return;
#ifdef PSYNC_HAVE_OPENSSL
  OPENSSL_cleanse(p, n);
#else
  volatile unsigned char* v = static_cast<volatile unsigned char*>(p);
  while (n--) *v++ = 0;
#endif
}

}  // namespace detail

/// @brief A shared secret: bytes (any, not only text) that every process of a cluster
/// knows. Its memory is zeroed when it is destroyed or overwritten. It has no
/// comparison and no output operator, so it does not end up in a log by accident.
/// Empty means "no secret".
class Secret {
 public:
  Secret() = default;
  /// @brief The secret `bytes` (copied).
  Secret(std::string_view bytes) : bytes_(bytes.begin(), bytes.end()) {}  // NOLINT(google-explicit-constructor)
  /// @brief The secret `bytes` (copied).
  Secret(const std::string& bytes) : Secret(std::string_view(bytes)) {}  // NOLINT(google-explicit-constructor)
  /// @brief The secret `bytes` (copied).
  Secret(const char* bytes) : Secret(std::string_view(bytes)) {}  // NOLINT(google-explicit-constructor)

  Secret(const Secret&) = default;
  Secret(Secret&& other) noexcept : bytes_(std::move(other.bytes_)) { other.bytes_.clear(); }
  Secret& operator=(const Secret& other) {
    if (this != &other) {
      wipe();
      bytes_ = other.bytes_;
    }
    return *this;
  }
  Secret& operator=(Secret&& other) noexcept {
    if (this != &other) {
      wipe();
      bytes_ = std::move(other.bytes_);
      other.bytes_.clear();
    }
    return *this;
  }
  ~Secret() { wipe(); }

  /// @brief True when no secret is set.
  bool empty() const noexcept { return bytes_.empty(); }
  /// @brief Its length in bytes.
  std::size_t size() const noexcept { return bytes_.size(); }
  /// @brief Its bytes (for the MAC).
  std::span<const unsigned char> bytes() const noexcept { return bytes_; }

 private:
  void wipe() noexcept {
    detail::cleanse(bytes_.data(), bytes_.size());
    bytes_.clear();
  }

  std::vector<unsigned char> bytes_;
};

/// @brief Reads a shared secret from `path`, as ssh reads a private key: the file must
/// be a regular file that neither group nor others may access (mode 0600 or 0400),
/// must not be empty, and holds the secret's bytes, one trailing newline excepted (so
/// `echo ... > file` and `head -c 32 /dev/urandom > file` both work, the same on every
/// process). Throws `ConfigError` naming the path (and the mode, when that is the fault).
inline Secret read_secret_file(const std::filesystem::path& path) {
  const std::string name = "secret file '" + path.string() + "'";
  constexpr std::size_t max_bytes = 64 * 1024;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) throw ConfigError("cannot open " + name + ": " + std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw ConfigError("cannot stat " + name + ": " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) throw ConfigError(name + " is not a regular file");
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    throw ConfigError(name + " has mode " + mode +
                      ": it must not be accessible by group or others (run: chmod 600 '" + path.string() + "')");
  }
  std::vector<unsigned char> buf(max_bytes + 1);
  std::size_t have = 0;
  while (have < buf.size()) {
    const ssize_t n = ::read(fd, buf.data() + have, buf.size() - have);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      detail::cleanse(buf.data(), have);
      throw ConfigError("cannot read " + name + ": " + std::strerror(errno));
    }
    if (n == 0) break;
    have += static_cast<std::size_t>(n);
  }
  if (have > max_bytes) {
    detail::cleanse(buf.data(), have);
    throw ConfigError(name + " is larger than " + std::to_string(max_bytes) + " bytes");
  }
  std::size_t size = have;
  if (size > 0 && buf[size - 1] == '\n') --size;
  if (size == 0) throw ConfigError(name + " is empty" + (have > 0 ? " (only a newline)" : ""));
  Secret s(std::string_view(reinterpret_cast<const char*>(buf.data()), size));
  detail::cleanse(buf.data(), have);
  return s;
}

namespace detail {

// Throws the ConfigError of an endpoint given a secret in a build without OpenSSL.
inline void require_auth_support(const Secret& secret) {
  if (!secret.empty() && !tcp_auth_available) {
    throw ConfigError("psync was built without OpenSSL: authentication is unavailable");
  }
}

#ifdef PSYNC_HAVE_OPENSSL
inline std::string openssl_error() {
  const unsigned long e = ERR_get_error();
  if (e == 0) return "unknown error";
  char text[256];
  ERR_error_string_n(e, text, sizeof text);
  return text;
}
#endif

/// A fresh random nonce from a CSPRNG (OpenSSL's RAND_bytes, else getrandom(2)).
/// Throws `TransportError` if the generator fails.
inline wire::Nonce random_nonce() {
  wire::Nonce n;
#ifdef PSYNC_HAVE_OPENSSL
  if (RAND_bytes(reinterpret_cast<unsigned char*>(n.data()), static_cast<int>(n.size())) != 1) {
    throw TransportError("cannot draw a random challenge: RAND_bytes: " + openssl_error());
  }
#else
  std::size_t have = 0;
  while (have < n.size()) {
    const ssize_t got = ::getrandom(n.data() + have, n.size() - have, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw TransportError(std::string("cannot draw a random challenge: getrandom: ") + std::strerror(errno));
    have += static_cast<std::size_t>(got);
  }
#endif
  return n;
}

/// HMAC-SHA256(secret, join_mac_input(nonce, join)): the MAC a worker puts in its join.
/// Throws `ConfigError` without OpenSSL, `ProtocolError` for an overlong policy.
inline msg::Mac join_mac(const Secret& secret, const wire::Nonce& nonce, const msg::Join& join) {
  const wire::JoinMacInput in = wire::join_mac_input(nonce, join);
#ifdef PSYNC_HAVE_OPENSSL
  if (secret.empty()) throw ConfigError("join MAC without a secret");
  msg::Mac mac{};
  unsigned int length = 0;
  const unsigned char* out =
      HMAC(EVP_sha256(), secret.bytes().data(), static_cast<int>(secret.size()),
           reinterpret_cast<const unsigned char*>(in.bytes.data()), in.size,
           reinterpret_cast<unsigned char*>(mac.data()), &length);
  if (out == nullptr || length != mac.size()) throw ProtocolError("HMAC-SHA256 failed: " + openssl_error());
  return mac;
#else
  (void)secret;
  (void)in;
  throw ConfigError("psync was built without OpenSSL: authentication is unavailable");
#endif
}

/// Compares two MACs in time independent of where they differ.
inline bool mac_equal(const msg::Mac& a, const msg::Mac& b) noexcept {
#ifdef PSYNC_HAVE_OPENSSL
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
#else
  unsigned char diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) diff |= std::to_integer<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
#endif
}

}  // namespace detail

}  // namespace psync
