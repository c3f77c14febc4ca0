#pragma once
/// @file
/// @brief Server checkpoints: the state a parameter server needs to resume, its
/// binary file format, an atomic crash-safe store with retention, and a loader
/// that falls back to the previous file when the newest is damaged.
///
/// The format is specified byte by byte in docs/checkpoints.md. In short: a
/// 32-byte header (magic "PSYNCKPT", format version, file length, sequence), the
/// small fields, then the bulk (parameters, round sum, policy state), then a
/// CRC-32 (zlib's polynomial; detail/crc32.hpp) of every byte before it. All
/// integers and floats are little-endian.
///
/// **What `CheckpointState` holds** is what `ServerCore` cannot recompute: the
/// policy's name, the model's dimension, version and parameters, every worker's
/// clock and liveness (`ClockTable::entries`) and the largest clock ever seen
/// (`ClockTable::max_clock_seen`, which the entries do not imply once a worker has
/// left and rejoined lower), whether training had started (so reconnecting workers
/// are late joiners, not a fresh start), the combiner's open round
/// (`OpenRound`: `RoundAverage`'s sum, pushes, steps and round index; empty for
/// `Sum`), the counters `updates_applied` and `steps_applied`, and opaque bytes for
/// policy or optimizer state.
///
/// **What it leaves out, on purpose:**
/// - Held reads, the outbox and `last_heard`: they belong to connections that die
///   with the process. A held read's clock is its worker's clock, which is saved,
///   and its push is already in the parameters or the round sum; the worker
///   re-reads after it reconnects. Deadlines are restarted from the new `now`.
/// - Options (`expected_workers`, timeouts, the log hook) and the model's shape
///   beyond its dimension: configuration, given again on restart and checked
///   against the policy name and dimension (`check_compatible`).
/// - Per-peer reports, events and snapshots: measurements of the run, not state
///   that changes what the model becomes. A resumed server reports from the resume.
/// - DSSP's learned push intervals: they are `steady_clock` time points, meaningless
///   in another process; DSSP relearns them within two pushes per worker (its bound
///   is Lo meanwhile). `policy_state` carries state that does survive, for a policy
///   or optimizer that defines its own encoding (a server-side optimizer's state:
///   `ServerCore<M, P, O>`, docs/optimizers.md; no bundled policy needs it).
/// - Worker-side state (local models, LOSP compensation, unsent steps): workers
///   keep it; a worker that restarts starts from the server's model.
///
/// **Cost.** The state owns copies of the parameters (and round sum): filling one
/// `CheckpointState` kept for the whole run reuses its vectors, so the only full
/// copy is that fill. `write_checkpoint` streams the state to the file with no
/// encode buffer: small fields go through a 64 KiB staging buffer, float vectors
/// are written straight from their own memory, and the CRC is computed on the way.
/// A 1M-float checkpoint costs what one durable 4 MB write(2) costs (measured in
/// docs/checkpoints.md: 24-30 ms median on the development VM, the fsyncs dominate).

#include "psync/core/clock_table.hpp"
#include "psync/core/error.hpp"
#include "psync/detail/config.hpp"
#include "psync/policies/rules.hpp"

#include <Eigen/Core>

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace psync {

/// @brief Everything a server needs to resume (see the file comment for what is left out and why).
struct CheckpointState {
  std::string policy;                  ///< the policy's run-time name, e.g. "osp:20" (at most 256 bytes)
  std::uint64_t dimension = 0;         ///< parameter count; `parameters.size()` must equal it
  std::uint64_t version = 0;           ///< model versions made so far
  Eigen::VectorXf parameters;          ///< the global model
  std::vector<WorkerClock> workers;    ///< every worker that ever joined, by strictly ascending id
  std::uint64_t max_clock_seen = 0;    ///< `ClockTable::max_clock_seen`; no worker's clock is above it
  bool started = false;                ///< training had started (the expected workers joined, or the join timeout passed)
  OpenRound round;                     ///< the combiner's open round; `round.sum` is empty or `dimension` floats
  std::uint64_t updates_applied = 0;   ///< pushes folded into the model
  std::uint64_t steps_applied = 0;     ///< local SGD steps those pushes covered
  std::vector<std::byte> policy_state; ///< opaque policy or optimizer state; empty when there is none
};

/// @brief A checkpoint could not be written or read. `path()` names the file or
/// directory, `reason()` says what was wrong (with the `errno` text for system
/// errors, whose code is `code()`).
class CheckpointError : public Error {
 public:
  /// @brief `what()` is "checkpoint <path>: <reason>[: <errno text>]".
  CheckpointError(std::filesystem::path path, std::string reason, std::error_code code = {})
      : Error(compose(path, reason, code)),
        path_(std::move(path)),
        reason_(code ? reason + ": " + code.message() : std::move(reason)),
        code_(code) {}
  /// @brief The file or directory concerned (may be empty for an in-memory decode).
  const std::filesystem::path& path() const noexcept { return path_; }
  /// @brief What was wrong, without the path.
  const std::string& reason() const noexcept { return reason_; }
  /// @brief The system error, if one caused this (else a default `std::error_code`).
  std::error_code code() const noexcept { return code_; }

 private:
  static std::string compose(const std::filesystem::path& p, const std::string& reason, std::error_code code) {
    std::string s = p.empty() ? "checkpoint: " : "checkpoint " + p.string() + ": ";
    s += reason;
    if (code) s += ": " + code.message();
    return s;
  }
  std::filesystem::path path_;
  std::string reason_;
  std::error_code code_;
};

/// @brief What `write_checkpoint` did.
struct CheckpointWritten {
  std::filesystem::path path;                  ///< the checkpoint file written
  std::uint64_t bytes = 0;                     ///< its size
  std::vector<std::filesystem::path> removed;  ///< older checkpoints and leftover temporaries removed
  /// @brief Removals that failed (the new checkpoint is durable all the same), one line each.
  std::vector<std::string> problems;
};

/// @brief A checkpoint file that `load_latest_checkpoint` passed over, and why.
struct SkippedCheckpoint {
  std::filesystem::path path;  ///< the file
  std::string reason;          ///< e.g. "truncated: the file has 100 bytes, its header says 4194428"
};

/// @brief What `load_latest_checkpoint` found.
struct LoadedCheckpoint {
  /// @brief The newest valid checkpoint's state; `std::nullopt` when the directory
  /// is missing or holds no valid checkpoint (then start fresh, or refuse to).
  std::optional<CheckpointState> state;
  std::uint64_t sequence = 0;       ///< the loaded file's sequence (0 when none)
  std::filesystem::path path;       ///< the loaded file (empty when none)
  /// @brief Newer checkpoint files that were not valid, newest first, each with its reason.
  std::vector<SkippedCheckpoint> skipped;
  /// @brief The sequence to write next: one above every checkpoint file present,
  /// valid or not, so a resumed server never writes below a damaged file (1 when none).
  std::uint64_t next_sequence = 1;
};

namespace checkpoint {

static_assert(std::endian::native == std::endian::little,
              "checkpoints store floats as host memory: psync needs a little-endian host");
static_assert(sizeof(float) == 4 && std::numeric_limits<float>::is_iec559, "psync needs IEEE-754 float32");

/// @brief The 8 bytes every checkpoint file starts with.
inline constexpr std::array<std::byte, 8> magic{std::byte{'P'}, std::byte{'S'}, std::byte{'Y'}, std::byte{'N'},
                                                std::byte{'C'}, std::byte{'K'}, std::byte{'P'}, std::byte{'T'}};
/// @brief The format version written; a reader refuses any other.
inline constexpr std::uint32_t format_version = 1;
/// @brief Bytes of the fixed header: magic, version, flags, file length, sequence.
inline constexpr std::size_t header_size = 32;
/// @brief Bytes of the trailing CRC-32.
inline constexpr std::size_t crc_size = 4;
/// @brief Longest policy name stored.
inline constexpr std::size_t max_policy_bytes = 256;
/// @brief Bytes per stored worker: id u32, clock u64, live u8.
inline constexpr std::size_t worker_bytes = 13;
/// @brief Checkpoints `write_checkpoint` keeps by default.
inline constexpr std::size_t default_keep = 3;
/// @brief Digits of the zero-padded sequence in a file name (every uint64 fits).
inline constexpr std::size_t sequence_digits = 20;

/// @brief "ckpt-<sequence, 20 digits>.psync": names sort in sequence order.
PSYNC_DECL std::string file_name(std::uint64_t sequence);

/// @brief The sequence a checkpoint file name carries, or nothing for any other
/// name. With `temporary`, parses the ".psync.tmp" names of unfinished writes instead.
PSYNC_DECL std::optional<std::uint64_t> parse_file_name(std::string_view name, bool temporary = false);

namespace detail {

/// Final and temporary checkpoint files in `dir`, by sequence; an absent directory is empty.
struct Listing {
  std::vector<std::pair<std::uint64_t, std::filesystem::path>> final_files;
  std::vector<std::pair<std::uint64_t, std::filesystem::path>> temporaries;
};
/// Lists `dir`'s checkpoint files and temporaries by ascending sequence.
PSYNC_DECL Listing list(const std::filesystem::path& dir);

}  // namespace detail

/// @brief Bytes the encoding of `s` takes (header, fields, bulk and CRC).
PSYNC_DECL std::uint64_t encoded_size(const CheckpointState& s) noexcept;

/// @brief The file image of `s` as sequence `sequence`, in memory (`write_checkpoint`
/// streams the same bytes to a file without building it). Throws `CheckpointError`
/// if `s` is inconsistent (see `CheckpointState`'s field comments).
PSYNC_DECL std::vector<std::byte> encode(const CheckpointState& s, std::uint64_t sequence);

/// @brief A decoded checkpoint and the sequence its header carries.
struct Decoded {
  CheckpointState state;       ///< the state
  std::uint64_t sequence = 0;  ///< the header's sequence
};

/// @brief Decodes a complete file image. Throws `CheckpointError` (empty path) naming
/// the fault: truncated, bad magic, unsupported version, CRC mismatch, malformed field.
PSYNC_DECL Decoded decode(std::span<const std::byte> bytes);

/// @brief Reads and checks one checkpoint file (any name). Throws `CheckpointError`
/// naming the file and the fault. Lengths are checked against the file's real size
/// before anything is allocated, and the parameters are read straight into their vector.
PSYNC_DECL Decoded read_file(const std::filesystem::path& file);

}  // namespace checkpoint

/// @brief Throws `ConfigError` unless `s` was written by a server running `policy`
/// on a model of `dimension` parameters (what a resumed server must check first).
PSYNC_DECL void check_compatible(const CheckpointState& s, std::string_view policy, std::uint64_t dimension);

/// @brief Writes `state` as checkpoint `sequence` in `dir` (created if missing), atomically:
/// `dir/ckpt-<sequence>.psync.tmp` is written, fsynced and renamed to
/// `dir/ckpt-<sequence>.psync`, then `dir` is fsynced. A crash at any point leaves
/// either the previous set of checkpoints or the new one complete, never a torn file
/// under a final name. Then only the newest `keep` checkpoints stay: older ones and
/// leftover temporaries of older sequences are removed (a failed removal is reported
/// in `problems`, not thrown: the new checkpoint is durable by then). One writer per
/// directory.
///
/// Throws `CheckpointError` naming the path and the `errno` text if anything up to
/// the directory fsync fails (the temporary file is removed), `ConfigError` if `keep`
/// is 0, and `CheckpointError` if `dir` already holds a checkpoint with a higher
/// sequence (it would be loaded instead of this one; resume with
/// `LoadedCheckpoint::next_sequence`). Rewriting an existing sequence replaces it.
PSYNC_DECL CheckpointWritten write_checkpoint(const std::filesystem::path& dir, const CheckpointState& state,
                                              std::uint64_t sequence, std::size_t keep = checkpoint::default_keep);

/// @brief The newest valid checkpoint in `dir`. Files are tried newest first; one
/// that is truncated, fails its CRC, has the wrong magic or format version, cannot be
/// opened, or whose header's sequence differs from its name's is skipped, with its
/// reason in `skipped`, and the previous one is tried. Temporary (`.tmp`) files and
/// names that are not checkpoint names are ignored.
///
/// No valid checkpoint (or no directory) is not an error: `state` is `std::nullopt`
/// and `skipped` says why each file present was refused. Throws `CheckpointError`
/// only if the directory exists but cannot be listed.
PSYNC_DECL LoadedCheckpoint load_latest_checkpoint(const std::filesystem::path& dir);

}  // namespace psync

#if PSYNC_HEADER_ONLY
#include "psync/impl/checkpoint.ipp"
#endif
