#pragma once
/// @file
/// @brief Reader for the IDX format of MNIST and Fashion-MNIST, plain or gzip-compressed.
///
/// Every failure throws psync::DataError naming the file and what is wrong: missing
/// file, wrong magic number, implausible header, data shorter or longer than declared,
/// image/label count mismatch, label out of range.

#include "psync/core/error.hpp"
#include "psync/data/dataset.hpp"

#include <Eigen/Core>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

namespace psync::data {

/// @brief Largest number of values (items x item size) an IDX file may declare: 2^30.
///
/// A corrupt header must not make the reader try to allocate terabytes; 2^30 floats
/// (4 GiB) is far above any dataset psync trains on.
inline constexpr std::uint64_t max_idx_elements = std::uint64_t{1} << 30;

namespace detail {

/// @brief `'path'`, for error messages.
inline std::string quoted(const std::filesystem::path& p) {
  // Appending, not "'" + s: GCC 12 raises a false -Wrestrict on that operator+ overload.
  std::string out(1, '\'');
  out += p.string();
  out += '\'';
  return out;
}

/// @brief Sequential reader over a plain or gzip file (zlib detects which).
class GzReader {
 public:
  /// @brief Opens `file`; throws DataError if it does not exist or cannot be opened.
  explicit GzReader(const std::filesystem::path& file) : path_(file) {
    std::error_code ec;
    if (!std::filesystem::exists(file, ec))
      throw DataError("psync: IDX file " + quoted(file) + " does not exist");
    if (!std::filesystem::is_regular_file(file, ec))
      throw DataError("psync: IDX file " + quoted(file) + " is not a regular file");
    file_ = gzopen(file.c_str(), "rb");
    if (file_ == nullptr) throw DataError("psync: cannot open IDX file " + quoted(file));
    gzbuffer(file_, 1u << 17);  // fewer read syscalls than zlib's 8 KiB default
  }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;
  ~GzReader() { gzclose(file_); }

  /// @brief Reads up to `n` bytes into `out`; returns fewer only at the end of the data.
  std::size_t read(void* out, std::size_t n) {
    auto* dst = static_cast<unsigned char*>(out);
    std::size_t done = 0;
    while (done < n) {
      // gzread counts in unsigned int and returns int: feed it bounded chunks.
      const auto chunk = static_cast<unsigned>(std::min<std::size_t>(n - done, std::size_t{1} << 30));
      const int got = gzread(file_, dst + done, chunk);
      if (got < 0) {
        int code = 0;
        const char* why = gzerror(file_, &code);
        throw DataError("psync: error reading IDX file " + quoted(path_) + ": " + (why ? why : "unknown zlib error"));
      }
      if (got == 0) break;
      done += static_cast<std::size_t>(got);
    }
    return done;
  }

  /// @brief The file being read.
  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  std::filesystem::path path_;
  gzFile file_ = nullptr;
};

/// @brief The validated header of an IDX file of unsigned bytes.
struct IdxHeader {
  /// @brief Size of each dimension; dims[0] is the item count.
  std::array<std::uint32_t, 3> dims{};
  /// @brief Number of dimensions (1 for labels, 3 for images).
  int rank = 0;
  /// @brief Values per item (product of dims[1..rank)).
  std::uint64_t item_size = 1;
};

/// @brief Human-readable spelling of an IDX magic number, e.g. "0x00000803 (unsigned bytes, 3 dimensions)".
inline std::string describe_magic(std::uint32_t magic) {
  char hex[16];
  std::snprintf(hex, sizeof hex, "0x%08X", static_cast<unsigned>(magic));
  std::string type;
  switch ((magic >> 8) & 0xFFu) {
    case 0x08: type = "unsigned bytes"; break;
    case 0x09: type = "signed bytes"; break;
    case 0x0B: type = "16-bit integers"; break;
    case 0x0C: type = "32-bit integers"; break;
    case 0x0D: type = "32-bit floats"; break;
    case 0x0E: type = "64-bit floats"; break;
    default: type = "unknown element type"; break;
  }
  const unsigned rank = magic & 0xFFu;
  return std::string(hex) + " (" + type + ", " + std::to_string(rank) + (rank == 1 ? " dimension)" : " dimensions)");
}

/// @brief Reads and validates the header of an IDX file of unsigned bytes with `rank` dimensions.
///
/// Checked before anything is allocated: magic number, no zero dimension, and a total
/// size of at most max_idx_elements. `kind` ("image", "label") words the messages.
inline IdxHeader read_idx_header(GzReader& in, int rank, const char* kind) {
  const std::uint32_t expected = 0x00000800u | static_cast<std::uint32_t>(rank);
  const std::size_t header_bytes = 4 + 4 * static_cast<std::size_t>(rank);
  std::array<unsigned char, 16> raw{};
  const std::size_t got = in.read(raw.data(), header_bytes);
  if (got < 4)
    throw DataError("psync: IDX file " + quoted(in.path()) + " is truncated: " + std::to_string(got) +
                    " bytes, shorter than the 4-byte magic number");
  auto be32 = [&](std::size_t at) {
    return (std::uint32_t{raw[at]} << 24) | (std::uint32_t{raw[at + 1]} << 16) |
           (std::uint32_t{raw[at + 2]} << 8) | std::uint32_t{raw[at + 3]};
  };
  const std::uint32_t magic = be32(0);
  if (magic != expected)
    throw DataError("psync: IDX file " + quoted(in.path()) + " has magic number " + describe_magic(magic) +
                    " but " + (rank == 3 ? "an " : "a ") + kind + " file needs " + describe_magic(expected));
  if (got < header_bytes)
    throw DataError("psync: IDX file " + quoted(in.path()) + " is truncated: its header needs " +
                    std::to_string(header_bytes) + " bytes, the file has " + std::to_string(got));

  IdxHeader h;
  h.rank = rank;
  std::uint64_t total = 1;
  for (int i = 0; i < rank; ++i) {
    h.dims[static_cast<std::size_t>(i)] = be32(4 + 4 * static_cast<std::size_t>(i));
    const std::uint64_t dim = h.dims[static_cast<std::size_t>(i)];
    if (dim == 0)
      throw DataError("psync: IDX file " + quoted(in.path()) + " declares dimension " + std::to_string(i) +
                      " as 0");
    // Each dim < 2^32 and total <= 2^30 before the multiply, so this cannot overflow.
    total *= dim;
    if (total > max_idx_elements)
      throw DataError("psync: IDX file " + quoted(in.path()) + " declares an implausible size (more than " +
                      std::to_string(max_idx_elements) + " values); the header is probably corrupt");
    if (i > 0) h.item_size *= dim;
  }
  return h;
}

/// @brief Throws DataError if `in` has bytes left after the declared data.
inline void expect_end(GzReader& in) {
  unsigned char extra = 0;
  if (in.read(&extra, 1) != 0)
    throw DataError("psync: IDX file " + quoted(in.path()) +
                    " has trailing bytes after the data its header declares");
}

/// @brief Throws the truncation DataError for a payload of `declared` bytes of which `got` were present.
[[noreturn]] inline void throw_truncated(const GzReader& in, const std::string& what, std::uint64_t declared,
                                         std::uint64_t got) {
  throw DataError("psync: IDX file " + quoted(in.path()) + " is truncated: header declares " + what + " (" +
                  std::to_string(declared) + " bytes of data) but only " + std::to_string(got) +
                  " bytes are present");
}

}  // namespace detail

/// @brief Reads an IDX image file (magic 0x00000803; plain or .gz) as a (rows*cols) x count matrix in [0, 1].
///
/// Column i is image i with pixel (r, c) at row r*cols + c; bytes are divided by 255.
/// Throws DataError on any problem with the file.
inline Eigen::MatrixXf read_idx_images(const std::filesystem::path& file) {
  detail::GzReader in(file);
  const detail::IdxHeader h = detail::read_idx_header(in, 3, "image");
  const auto count = static_cast<Eigen::Index>(h.dims[0]);
  const auto pixels = static_cast<Eigen::Index>(h.item_size);
  Eigen::MatrixXf images(pixels, count);

  // Stream through a small buffer: never holds the whole byte payload next to the floats.
  std::vector<unsigned char> buffer(std::size_t{1} << 16);
  const std::uint64_t total = static_cast<std::uint64_t>(pixels) * static_cast<std::uint64_t>(count);
  // A table gives the correctly rounded b / 255 (multiplying by 1/255 is off by an ulp for some b).
  std::array<float, 256> scale{};
  for (std::size_t b = 0; b < scale.size(); ++b) scale[b] = static_cast<float>(b) / 255.0f;
  float* out = images.data();
  std::uint64_t done = 0;
  while (done < total) {
    const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(buffer.size(), total - done));
    const std::size_t got = in.read(buffer.data(), want);
    for (std::size_t k = 0; k < got; ++k) out[done + k] = scale[buffer[k]];
    done += got;
    if (got < want)
      detail::throw_truncated(in,
                              std::to_string(h.dims[0]) + " images of " + std::to_string(h.dims[1]) + "x" +
                                  std::to_string(h.dims[2]),
                              total, done);
  }
  detail::expect_end(in);
  return images;
}

/// @brief Reads an IDX label file (magic 0x00000801; plain or .gz). Throws DataError on any problem with the file.
inline Eigen::VectorXi read_idx_labels(const std::filesystem::path& file) {
  detail::GzReader in(file);
  const detail::IdxHeader h = detail::read_idx_header(in, 1, "label");
  const auto count = static_cast<Eigen::Index>(h.dims[0]);
  std::vector<unsigned char> bytes(static_cast<std::size_t>(count));
  const std::size_t got = in.read(bytes.data(), bytes.size());
  if (got < bytes.size()) detail::throw_truncated(in, std::to_string(count) + " labels", bytes.size(), got);
  detail::expect_end(in);
  Eigen::VectorXi labels(count);
  for (Eigen::Index i = 0; i < count; ++i) labels[i] = bytes[static_cast<std::size_t>(i)];
  return labels;
}

/// @brief Loads an image file and its label file into a classification Dataset with `num_classes` classes.
///
/// Throws DataError if either file is bad, the counts differ, or a label is >= `num_classes`.
inline Dataset load_idx(const std::filesystem::path& images, const std::filesystem::path& labels,
                        int num_classes = 10) {
  if (num_classes < 1)
    throw ConfigError("psync: load_idx needs num_classes >= 1, got " + std::to_string(num_classes));
  Dataset d;
  d.features = read_idx_images(images);
  d.labels = read_idx_labels(labels);
  d.num_classes = num_classes;
  if (d.labels.size() != d.features.cols())
    throw DataError("psync: IDX image file " + detail::quoted(images) + " has " + std::to_string(d.features.cols()) +
                    " images but label file " + detail::quoted(labels) + " has " +
                    std::to_string(d.labels.size()) + " labels");
  for (Eigen::Index i = 0; i < d.labels.size(); ++i)
    if (d.labels[i] >= num_classes)
      throw DataError("psync: IDX label file " + detail::quoted(labels) + ": label " + std::to_string(i) +
                      " is " + std::to_string(d.labels[i]) + ", not below the " + std::to_string(num_classes) +
                      " classes");
  return d;
}

/// @brief A training set and its test set.
struct TrainTest {
  /// @brief Training samples.
  Dataset train;
  /// @brief Held-out test samples.
  Dataset test;
};

/// @brief Where Debian-style installs put the Fashion-MNIST IDX files.
inline constexpr const char* default_fashion_mnist_dir = "/usr/share/datasets/fashion-mnist";

/// @brief Loads Fashion-MNIST (10 classes, 28x28 images as 784-dimensional columns) from `dir`.
///
/// Looks for train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte
/// and t10k-labels-idx1-ubyte, each with ".gz" first, then plain. Throws DataError if
/// a file is missing or bad, or if train and test image sizes differ.
inline TrainTest load_fashion_mnist(const std::filesystem::path& dir = default_fashion_mnist_dir) {
  auto find = [&](const std::string& base) {
    std::error_code ec;
    const std::filesystem::path gz = dir / (base + ".gz");
    if (std::filesystem::exists(gz, ec)) return gz;
    const std::filesystem::path plain = dir / base;
    if (std::filesystem::exists(plain, ec)) return plain;
    throw DataError("psync: Fashion-MNIST file " + detail::quoted(gz) + " (or uncompressed " +
                    detail::quoted(plain) + ") not found");
  };
  TrainTest out;
  out.train = load_idx(find("train-images-idx3-ubyte"), find("train-labels-idx1-ubyte"), 10);
  out.test = load_idx(find("t10k-images-idx3-ubyte"), find("t10k-labels-idx1-ubyte"), 10);
  if (out.train.dimension() != out.test.dimension())
    throw DataError("psync: Fashion-MNIST in " + detail::quoted(dir) + ": training images have " +
                    std::to_string(out.train.dimension()) + " pixels but test images have " +
                    std::to_string(out.test.dimension()));
  return out;
}

}  // namespace psync::data
