#pragma once
/// @file
/// @brief The bodies of psync/core/checkpoint.hpp's functions (psync/detail/config.hpp).

#include "psync/core/checkpoint.hpp"
#include "psync/detail/crc32.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>

namespace psync {

namespace checkpoint {

PSYNC_DECL std::string file_name(std::uint64_t sequence) {
  std::string digits = std::to_string(sequence);
  return "ckpt-" + std::string(sequence_digits - digits.size(), '0') + digits + ".psync";
}

PSYNC_DECL std::optional<std::uint64_t> parse_file_name(std::string_view name, bool temporary) {
  constexpr std::string_view prefix = "ckpt-";
  const std::string_view suffix = temporary ? ".psync.tmp" : ".psync";
  if (name.size() != prefix.size() + sequence_digits + suffix.size() || !name.starts_with(prefix) ||
      !name.ends_with(suffix)) {
    return std::nullopt;
  }
  const std::string_view digits = name.substr(prefix.size(), sequence_digits);
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) return std::nullopt;
  std::uint64_t v = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  if (ec != std::errc{} || end != digits.data() + digits.size()) return std::nullopt;  // above 2^64-1
  return v;
}

namespace detail {

/// CRC-32 (zlib's polynomial and result) of `n` bytes continuing `crc`.
PSYNC_DECL std::uint32_t crc_update(std::uint32_t crc, const void* data, std::size_t n) noexcept {
  return psync::detail::crc32(crc, data, n);
}

/// Checks the invariants the format relies on before a byte is written.
PSYNC_DECL void check_state(const CheckpointState& s, const std::filesystem::path& where) {
  auto bad = [&](const std::string& what) { throw CheckpointError(where, "inconsistent state: " + what); };
  if (s.policy.size() > max_policy_bytes) {
    bad("policy name has " + std::to_string(s.policy.size()) + " bytes, at most " + std::to_string(max_policy_bytes));
  }
  if (static_cast<std::uint64_t>(s.parameters.size()) != s.dimension) {
    bad("parameters have " + std::to_string(s.parameters.size()) + " floats, dimension is " + std::to_string(s.dimension));
  }
  if (s.round.sum.size() != 0 && static_cast<std::uint64_t>(s.round.sum.size()) != s.dimension) {
    bad("round sum has " + std::to_string(s.round.sum.size()) + " floats, dimension is " + std::to_string(s.dimension));
  }
  if (s.workers.size() > std::numeric_limits<std::uint32_t>::max()) bad("more than 2^32-1 workers");
  for (std::size_t i = 0; i < s.workers.size(); ++i) {
    if (i > 0 && s.workers[i].worker <= s.workers[i - 1].worker) bad("workers are not in strictly ascending id order");
    if (s.workers[i].clock > s.max_clock_seen) {
      bad("worker " + std::to_string(s.workers[i].worker) + " has clock " + std::to_string(s.workers[i].clock) +
          ", above max_clock_seen " + std::to_string(s.max_clock_seen));
    }
  }
}

/// Bytes of the small fields between the header and the bulk.
PSYNC_DECL std::uint64_t meta_size(const CheckpointState& s) noexcept {
  return 4 + s.policy.size()          // policy length, policy
         + 8 * 4 + 1 + 8              // dimension, version, updates, steps, started, max clock seen
         + 4 + worker_bytes * s.workers.size()
         + 8 * 3 + 8 + 8;             // round index, pushes, steps; sum count; policy state length
}

/// Appends to a vector (the in-memory encoder).
class VectorSink {
 public:
  explicit VectorSink(std::vector<std::byte>& out) : out_(out) {}
  void write(const void* p, std::size_t n) {
    if (n == 0) return;
    const auto* b = static_cast<const std::byte*>(p);
    out_.insert(out_.end(), b, b + n);
  }
  void flush() {}

 private:
  std::vector<std::byte>& out_;
};

/// An open file descriptor, closed on destruction.
class Fd {
 public:
  explicit Fd(int fd = -1) noexcept : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~Fd() { reset(); }
  int get() const noexcept { return fd_; }
  /// Closes and reports close's error (a delayed write error on some file systems).
  std::error_code close() noexcept {
    if (fd_ < 0) return {};
    const int rc = ::close(std::exchange(fd_, -1));
    return rc == 0 ? std::error_code{} : std::error_code(errno, std::generic_category());
  }
  void reset() noexcept {
    if (fd_ >= 0) ::close(std::exchange(fd_, -1));
  }

 private:
  int fd_;
};

PSYNC_DECL std::error_code last_error() noexcept { return std::error_code(errno, std::generic_category()); }

/// Writes to a file through a staging buffer for small fields; runs of at least the
/// buffer's size go straight from the caller's memory.
class FileSink {
 public:
  FileSink(int fd, const std::filesystem::path& path)
      : fd_(fd), path_(path), buffer_(std::make_unique_for_overwrite<std::byte[]>(capacity)) {}
  void write(const void* p, std::size_t n) {
    if (n == 0) return;  // an empty vector's data() may be null
    if (used_ + n > capacity) flush();
    if (n >= capacity) {
      write_all(p, n);
      return;
    }
    std::memcpy(buffer_.get() + used_, p, n);
    used_ += n;
  }
  void flush() {
    write_all(buffer_.get(), used_);
    used_ = 0;
  }

 private:
  static constexpr std::size_t capacity = std::size_t{64} << 10;
  void write_all(const void* p, std::size_t n) {
    const auto* b = static_cast<const std::byte*>(p);
    while (n > 0) {
      const ::ssize_t w = ::write(fd_, b, std::min<std::size_t>(n, std::size_t{1} << 30));
      if (w < 0) {
        if (errno == EINTR) continue;
        throw CheckpointError(path_, "cannot write", last_error());
      }
      b += w;
      n -= static_cast<std::size_t>(w);
    }
  }
  int fd_;
  const std::filesystem::path& path_;
  std::unique_ptr<std::byte[]> buffer_;
  std::size_t used_ = 0;
};

/// Writes every field, computing the CRC on the way, then the CRC.
template <class Sink>
void encode_to(Sink& sink, const CheckpointState& s, std::uint64_t sequence, std::uint64_t total) {
  std::uint32_t crc = crc_update(0, nullptr, 0);
  auto bytes = [&](const void* p, std::size_t n) {
    crc = crc_update(crc, p, n);
    sink.write(p, n);
  };
  auto put = [&](auto v) { bytes(&v, sizeof v); };  // host is little-endian (asserted above)
  auto floats = [&](const Eigen::VectorXf& v) { bytes(v.data(), sizeof(float) * static_cast<std::size_t>(v.size())); };

  bytes(magic.data(), magic.size());
  put(format_version);
  put(std::uint32_t{0});  // flags
  put(total);
  put(sequence);

  put(static_cast<std::uint32_t>(s.policy.size()));
  bytes(s.policy.data(), s.policy.size());
  put(s.dimension);
  put(s.version);
  put(s.updates_applied);
  put(s.steps_applied);
  put(static_cast<std::uint8_t>(s.started ? 1 : 0));
  put(s.max_clock_seen);
  put(static_cast<std::uint32_t>(s.workers.size()));
  for (const WorkerClock& w : s.workers) {
    put(w.worker);
    put(w.clock);
    put(static_cast<std::uint8_t>(w.live ? 1 : 0));
  }
  put(s.round.round);
  put(s.round.pushes);
  put(s.round.steps);
  put(static_cast<std::uint64_t>(s.round.sum.size()));
  put(static_cast<std::uint64_t>(s.policy_state.size()));

  floats(s.parameters);
  floats(s.round.sum);
  bytes(s.policy_state.data(), s.policy_state.size());

  sink.write(&crc, sizeof crc);
  sink.flush();
}

/// Reads from memory; every read is bounds-checked.
class SpanSource {
 public:
  explicit SpanSource(std::span<const std::byte> bytes) : bytes_(bytes) {}
  void read(void* p, std::size_t n) {
    if (n == 0) return;
    if (n > bytes_.size() - at_) throw std::logic_error("checkpoint decoder read past its validated length");
    std::memcpy(p, bytes_.data() + at_, n);
    at_ += n;
  }
  /// Reads and discards `n` bytes (used to finish the CRC after a structural error).
  void skip(std::size_t n, std::uint32_t& crc) {
    crc = crc_update(crc, bytes_.data() + at_, n);
    at_ += n;
  }

 private:
  std::span<const std::byte> bytes_;
  std::size_t at_ = 0;
};

/// Reads a file through a staging buffer; runs of at least the buffer's size go
/// straight into the caller's memory (the parameters are read into their vector).
class FileSource {
 public:
  FileSource(int fd, const std::filesystem::path& path)
      : fd_(fd), path_(path), buffer_(std::make_unique_for_overwrite<std::byte[]>(capacity)) {}
  void read(void* p, std::size_t n) {
    if (n == 0) return;
    auto* out = static_cast<std::byte*>(p);
    const std::size_t from_buffer = std::min(n, end_ - at_);
    std::memcpy(out, buffer_.get() + at_, from_buffer);
    at_ += from_buffer;
    out += from_buffer;
    n -= from_buffer;
    if (n == 0) return;
    if (n >= capacity) {
      read_exact(out, n);
      return;
    }
    end_ = read_some(buffer_.get(), capacity, n);
    std::memcpy(out, buffer_.get(), n);
    at_ = n;
  }
  void skip(std::size_t n, std::uint32_t& crc) {
    while (n > 0) {
      if (at_ == end_) {
        end_ = read_some(buffer_.get(), capacity, 1);
        at_ = 0;
      }
      const std::size_t k = std::min(n, end_ - at_);
      crc = crc_update(crc, buffer_.get() + at_, k);
      at_ += k;
      n -= k;
    }
  }

 private:
  static constexpr std::size_t capacity = std::size_t{64} << 10;
  // Reads at least `need` and at most `n` bytes into `p`; returns how many.
  std::size_t read_some(std::byte* p, std::size_t n, std::size_t need) {
    std::size_t got = 0;
    while (got < need) {
      const ::ssize_t r = ::read(fd_, p + got, std::min<std::size_t>(n - got, std::size_t{1} << 30));
      if (r < 0) {
        if (errno == EINTR) continue;
        throw CheckpointError(path_, "cannot read", last_error());
      }
      if (r == 0) throw CheckpointError(path_, "the file shrank while it was read");
      got += static_cast<std::size_t>(r);
    }
    return got;
  }
  void read_exact(std::byte* p, std::size_t n) { read_some(p, n, n); }
  int fd_;
  const std::filesystem::path& path_;
  std::unique_ptr<std::byte[]> buffer_;
  std::size_t at_ = 0;
  std::size_t end_ = 0;
};

/// A damaged field: reported as is if the CRC matches, else the CRC mismatch wins.
struct Malformed {
  std::string what;
};

/// Decodes what follows a validated header. `remaining` is the byte count between
/// the header and the CRC (from the header's file length, already checked against
/// the real size), so every length is checked against it before anything is
/// allocated. Throws `Malformed` for a field out of range, after which
/// `consumed` says how much of `remaining` was read.
template <class Source>
CheckpointState decode_body(Source& src, std::uint64_t remaining, std::uint32_t& crc, std::uint64_t& consumed) {
  auto bytes = [&](void* p, std::size_t n) {
    if (n > remaining - consumed) {
      throw Malformed{"a field at offset " + std::to_string(header_size + consumed) + " runs past the end of the data"};
    }
    src.read(p, n);
    crc = crc_update(crc, p, n);
    consumed += n;
  };
  auto get = [&]<class T>(T& v) { bytes(&v, sizeof v); };
  auto flag = [&](const char* what) {
    std::uint8_t b = 0;
    get(b);
    if (b > 1) throw Malformed{std::string(what) + " flag is " + std::to_string(b) + " (must be 0 or 1)"};
    return b == 1;
  };

  CheckpointState s;
  std::uint32_t policy_length = 0;
  get(policy_length);
  if (policy_length > max_policy_bytes) {
    throw Malformed{"policy length " + std::to_string(policy_length) + " above limit " + std::to_string(max_policy_bytes)};
  }
  s.policy.resize(policy_length);
  bytes(s.policy.data(), policy_length);
  get(s.dimension);
  get(s.version);
  get(s.updates_applied);
  get(s.steps_applied);
  s.started = flag("started");
  get(s.max_clock_seen);

  std::uint32_t workers = 0;
  get(workers);
  if (std::uint64_t{workers} * worker_bytes > remaining - consumed) {
    throw Malformed{"worker count " + std::to_string(workers) + " needs " +
                    std::to_string(std::uint64_t{workers} * worker_bytes) + " bytes, " +
                    std::to_string(remaining - consumed) + " remain"};
  }
  s.workers.resize(workers);
  for (std::uint32_t i = 0; i < workers; ++i) {
    WorkerClock& w = s.workers[i];
    get(w.worker);
    get(w.clock);
    w.live = flag("live");
    if (i > 0 && w.worker <= s.workers[i - 1].worker) throw Malformed{"worker ids are not strictly ascending"};
    if (w.clock > s.max_clock_seen) {
      throw Malformed{"worker " + std::to_string(w.worker) + " has clock " + std::to_string(w.clock) +
                      ", above the largest clock seen " + std::to_string(s.max_clock_seen)};
    }
  }
  get(s.round.round);
  get(s.round.pushes);
  get(s.round.steps);
  std::uint64_t sum_count = 0;
  std::uint64_t state_length = 0;
  get(sum_count);
  get(state_length);
  if (sum_count != 0 && sum_count != s.dimension) {
    throw Malformed{"round sum has " + std::to_string(sum_count) + " floats, dimension is " + std::to_string(s.dimension)};
  }

  // The bulk must fill what remains exactly; checked without overflow before allocating.
  std::uint64_t rest = remaining - consumed;
  const std::uint64_t rest_before = rest;
  if (s.dimension > rest / 4) {
    throw Malformed{"dimension " + std::to_string(s.dimension) + " needs more than the " + std::to_string(rest_before) +
                    " bytes that remain"};
  }
  rest -= 4 * s.dimension;
  if (sum_count > rest / 4) {
    throw Malformed{"round sum of " + std::to_string(sum_count) + " floats needs more than the bytes that remain"};
  }
  rest -= 4 * sum_count;
  if (state_length != rest) {
    throw Malformed{"dimension " + std::to_string(s.dimension) + ", round sum " + std::to_string(sum_count) +
                    " floats and policy state " + std::to_string(state_length) + " bytes do not fill the " +
                    std::to_string(rest_before) + " bytes that remain"};
  }
  s.parameters.resize(static_cast<Eigen::Index>(s.dimension));
  bytes(s.parameters.data(), 4 * static_cast<std::size_t>(s.dimension));
  s.round.sum.resize(static_cast<Eigen::Index>(sum_count));
  bytes(s.round.sum.data(), 4 * static_cast<std::size_t>(sum_count));
  s.policy_state.resize(static_cast<std::size_t>(state_length));
  bytes(s.policy_state.data(), static_cast<std::size_t>(state_length));
  return s;
}

/// The fixed header's fields.
struct Header {
  std::uint32_t version = 0;
  std::uint32_t flags = 0;
  std::uint64_t length = 0;
  std::uint64_t sequence = 0;
};

template <class T>
T load_le(const std::byte* p) noexcept {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

/// Checks magic, version and the declared length against `size`, the bytes really
/// present; `prefix` holds the first min(size, header_size) bytes. Returns the
/// reason the file is unusable, or nothing.
PSYNC_DECL std::optional<std::string> check_header(std::span<const std::byte> prefix, std::uint64_t size, Header& h) {
  const std::size_t m = std::min(prefix.size(), magic.size());
  if (std::memcmp(prefix.data(), magic.data(), m) != 0) {
    std::string seen;
    for (std::size_t i = 0; i < m; ++i) {
      const int c = std::to_integer<int>(prefix[i]);
      char hex[16];
      std::snprintf(hex, sizeof hex, "\\x%02x", static_cast<unsigned>(c));
      seen += (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? std::string(1, static_cast<char>(c)) : std::string(hex);
    }
    return "bad magic \"" + seen + "\" (expected \"PSYNCKPT\"): not a psync checkpoint";
  }
  if (prefix.size() >= 12) {
    h.version = load_le<std::uint32_t>(prefix.data() + 8);
    if (h.version != format_version) {
      return "unsupported format version " + std::to_string(h.version) + " (this reader knows " +
             std::to_string(format_version) + ")";
    }
  }
  if (size < header_size + crc_size) {
    return "truncated: the file has " + std::to_string(size) + " bytes, a checkpoint has at least " +
           std::to_string(header_size + crc_size);
  }
  h.flags = load_le<std::uint32_t>(prefix.data() + 12);
  h.length = load_le<std::uint64_t>(prefix.data() + 16);
  h.sequence = load_le<std::uint64_t>(prefix.data() + 24);
  if (h.length != size) {
    return (h.length > size ? "truncated" : "trailing bytes") + std::string(": the file has ") + std::to_string(size) +
           " bytes, its header says " + std::to_string(h.length);
  }
  return std::nullopt;
}

/// Decodes a whole checkpoint from `src` (its header already read into `prefix` and checked).
template <class Source>
std::pair<CheckpointState, std::uint64_t> decode_after_header(Source& src, std::span<const std::byte> prefix,
                                                              const Header& h, const std::filesystem::path& where) {
  std::uint32_t crc = crc_update(crc_update(0, nullptr, 0), prefix.data(), header_size);
  const std::uint64_t remaining = h.length - header_size - crc_size;
  std::uint64_t consumed = 0;
  auto stored_crc = [&] {
    std::uint32_t stored = 0;
    src.read(&stored, sizeof stored);
    return stored;
  };
  auto crc_mismatch = [&](std::uint32_t stored) {
    char text[64];
    std::snprintf(text, sizeof text, "CRC mismatch (stored %08x, computed %08x)", static_cast<unsigned>(stored),
                  static_cast<unsigned>(crc));
    return std::string(text);
  };
  try {
    if (h.flags != 0) throw Malformed{"flags are " + std::to_string(h.flags) + " (must be 0)"};
    CheckpointState s = decode_body(src, remaining, crc, consumed);
    if (const std::uint32_t stored = stored_crc(); stored != crc) throw CheckpointError(where, crc_mismatch(stored));
    return {std::move(s), h.sequence};
  } catch (const Malformed& m) {
    // A flipped bit in a length is damage the CRC is there to name: finish it first.
    src.skip(static_cast<std::size_t>(remaining - consumed), crc);
    if (const std::uint32_t stored = stored_crc(); stored != crc) {
      throw CheckpointError(where, crc_mismatch(stored) + "; first bad field: " + m.what);
    }
    throw CheckpointError(where, "malformed (CRC matches): " + m.what);
  }
}

PSYNC_DECL std::filesystem::path temporary_path(const std::filesystem::path& dir, std::uint64_t sequence) {
  return dir / (file_name(sequence) + ".tmp");
}

PSYNC_DECL void fsync_directory(const std::filesystem::path& dir) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) throw CheckpointError(dir, "cannot open the directory to fsync it", last_error());
  if (::fsync(fd.get()) != 0) throw CheckpointError(dir, "cannot fsync the directory", last_error());
}


PSYNC_DECL Listing list(const std::filesystem::path& dir) {
  Listing l;
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec);
  if (ec == std::errc::no_such_file_or_directory) return l;
  if (ec) throw CheckpointError(dir, "cannot list the directory", ec);
  for (; it != std::filesystem::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (auto seq = parse_file_name(name)) {
      l.final_files.emplace_back(*seq, it->path());
    } else if (auto tmp = parse_file_name(name, true)) {
      l.temporaries.emplace_back(*tmp, it->path());
    }
  }
  if (ec) throw CheckpointError(dir, "cannot list the directory", ec);
  std::sort(l.final_files.begin(), l.final_files.end());
  std::sort(l.temporaries.begin(), l.temporaries.end());
  return l;
}

}  // namespace detail

PSYNC_DECL std::uint64_t encoded_size(const CheckpointState& s) noexcept {
  return header_size + detail::meta_size(s) + 4 * static_cast<std::uint64_t>(s.parameters.size()) +
         4 * static_cast<std::uint64_t>(s.round.sum.size()) + s.policy_state.size() + crc_size;
}

PSYNC_DECL std::vector<std::byte> encode(const CheckpointState& s, std::uint64_t sequence) {
  detail::check_state(s, {});
  const std::uint64_t total = encoded_size(s);
  std::vector<std::byte> out;
  out.reserve(static_cast<std::size_t>(total));
  detail::VectorSink sink(out);
  detail::encode_to(sink, s, sequence, total);
  return out;
}

PSYNC_DECL Decoded decode(std::span<const std::byte> bytes) {
  detail::Header h;
  const auto prefix = bytes.first(std::min(bytes.size(), header_size));
  if (auto why = detail::check_header(prefix, bytes.size(), h)) throw CheckpointError({}, *why);
  detail::SpanSource src(bytes.subspan(header_size));
  auto [state, sequence] = detail::decode_after_header(src, prefix, h, {});
  return {std::move(state), sequence};
}

PSYNC_DECL Decoded read_file(const std::filesystem::path& file) {
  detail::Fd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw CheckpointError(file, "cannot open", detail::last_error());
  struct ::stat st {};
  if (::fstat(fd.get(), &st) != 0) throw CheckpointError(file, "cannot stat", detail::last_error());
  if (!S_ISREG(st.st_mode)) throw CheckpointError(file, "not a regular file");
  const auto size = static_cast<std::uint64_t>(st.st_size);
  std::array<std::byte, header_size> prefix_storage{};
  const std::size_t prefix_size = static_cast<std::size_t>(std::min<std::uint64_t>(size, header_size));
  detail::FileSource src(fd.get(), file);
  src.read(prefix_storage.data(), prefix_size);
  const std::span<const std::byte> prefix(prefix_storage.data(), prefix_size);
  detail::Header h;
  if (auto why = detail::check_header(prefix, size, h)) throw CheckpointError(file, *why);
  auto [state, sequence] = detail::decode_after_header(src, prefix, h, file);
  return {std::move(state), sequence};
}

}  // namespace checkpoint

PSYNC_DECL void check_compatible(const CheckpointState& s, std::string_view policy, std::uint64_t dimension) {
  if (s.policy != policy) {
    throw ConfigError("checkpoint was written under policy '" + s.policy + "', this server runs '" + std::string(policy) + "'");
  }
  if (s.dimension != dimension) {
    throw ConfigError("checkpoint holds " + std::to_string(s.dimension) + " parameters, this model has " +
                      std::to_string(dimension));
  }
}

PSYNC_DECL CheckpointWritten write_checkpoint(const std::filesystem::path& dir, const CheckpointState& state,
                                              std::uint64_t sequence, std::size_t keep) {
  namespace fs = std::filesystem;
  using checkpoint::detail::last_error;
  if (keep == 0) throw ConfigError("write_checkpoint: keep must be at least 1");
  const fs::path final_path = dir / checkpoint::file_name(sequence);
  const fs::path tmp_path = checkpoint::detail::temporary_path(dir, sequence);
  checkpoint::detail::check_state(state, final_path);

  // Create the directory, and make its entry durable in the first ancestor that existed.
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    fs::path existing = dir;
    while (!existing.empty() && !fs::exists(existing, ec)) existing = existing.parent_path();
    fs::create_directories(dir, ec);
    if (ec) throw CheckpointError(dir, "cannot create the checkpoint directory", ec);
    for (fs::path p = dir.parent_path();; p = p.parent_path()) {
      checkpoint::detail::fsync_directory(p.empty() ? fs::path(".") : p);
      if (p.empty() || p == existing || p == p.parent_path()) break;
    }
  }
  {
    const checkpoint::detail::Listing before = checkpoint::detail::list(dir);
    if (!before.final_files.empty() && before.final_files.back().first > sequence) {
      throw CheckpointError(final_path, "sequence " + std::to_string(sequence) + " is older than " +
                                            before.final_files.back().second.filename().string() +
                                            ", already in the directory (resume with LoadedCheckpoint::next_sequence)");
    }
  }

  const std::uint64_t total = checkpoint::encoded_size(state);
  try {
    checkpoint::detail::Fd fd(::open(tmp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (fd.get() < 0) throw CheckpointError(tmp_path, "cannot create", last_error());
    checkpoint::detail::FileSink sink(fd.get(), tmp_path);
    checkpoint::detail::encode_to(sink, state, sequence, total);
    if (::fsync(fd.get()) != 0) throw CheckpointError(tmp_path, "cannot fsync", last_error());
    if (auto e = fd.close()) throw CheckpointError(tmp_path, "cannot close", e);
    if (::rename(tmp_path.c_str(), final_path.c_str()) != 0) {
      throw CheckpointError(final_path, "cannot rename " + tmp_path.filename().string() + " to", last_error());
    }
  } catch (...) {
    fs::remove(tmp_path, ec);  // best effort; a leftover is ignored by the loader and removed by the next write
    throw;
  }
  checkpoint::detail::fsync_directory(dir);

  CheckpointWritten written{final_path, total, {}, {}};
  checkpoint::detail::Listing after;
  try {
    after = checkpoint::detail::list(dir);
  } catch (const CheckpointError& e) {
    written.problems.push_back(std::string("retention skipped: ") + e.what());
    return written;
  }
  auto remove = [&](const fs::path& p) {
    std::error_code rec;
    if (fs::remove(p, rec)) {
      written.removed.push_back(p);
    } else if (rec) {
      written.problems.push_back("cannot remove " + p.string() + ": " + rec.message());
    }
  };
  if (after.final_files.size() > keep) {
    const std::size_t excess = after.final_files.size() - keep;
    for (std::size_t i = 0; i < excess; ++i) remove(after.final_files[i].second);
  }
  for (const auto& [seq, p] : after.temporaries) {
    if (seq < sequence) remove(p);
  }
  return written;
}

PSYNC_DECL LoadedCheckpoint load_latest_checkpoint(const std::filesystem::path& dir) {
  LoadedCheckpoint out;
  const checkpoint::detail::Listing l = checkpoint::detail::list(dir);
  if (!l.final_files.empty()) {
    const std::uint64_t newest = l.final_files.back().first;
    out.next_sequence = newest == std::numeric_limits<std::uint64_t>::max() ? newest : newest + 1;
  }
  for (auto it = l.final_files.rbegin(); it != l.final_files.rend(); ++it) {
    const auto& [sequence, path] = *it;
    try {
      checkpoint::Decoded d = checkpoint::read_file(path);
      if (d.sequence != sequence) {
        out.skipped.push_back({path, "the header says sequence " + std::to_string(d.sequence) +
                                         ", the file name says " + std::to_string(sequence)});
        continue;
      }
      out.state = std::move(d.state);
      out.sequence = sequence;
      out.path = path;
      return out;
    } catch (const CheckpointError& e) {
      // Only damage is skipped: std::bad_alloc (lengths are bounded by the file's real
      // size, so that is a machine out of memory) propagates.
      out.skipped.push_back({path, e.reason()});
    }
  }
  return out;
}

}  // namespace psync
