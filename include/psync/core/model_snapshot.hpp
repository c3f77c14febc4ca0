#pragma once
/// @file
/// @brief An immutable, reference-counted copy of the global parameters at one
/// version, which every reply for that version shares, and the pool the server
/// makes them from.

#include <Eigen/Core>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace psync {

class ModelSnapshotPool;

/// @brief A shared, read-only parameter vector: copying the handle shares the
/// values, never copies them. The values never change while any handle to them
/// exists, so a handle may be read on any thread (a TCP write, a worker's install)
/// while the server goes on updating its model. The count is intrusive (one atomic
/// per vector, released with release semantics and checked with acquire), so the
/// pool can tell, race-free, that nobody else holds a vector before it reuses it.
class ModelSnapshot {
 public:
  /// @brief An empty handle (`!*this`).
  ModelSnapshot() noexcept = default;
  /// @brief Shares `other`'s values.
  ModelSnapshot(const ModelSnapshot& other) noexcept : block_(other.block_) {
    if (block_) block_->refs.fetch_add(1, std::memory_order_relaxed);
  }
  /// @brief Takes `other`'s share; `other` becomes empty.
  ModelSnapshot(ModelSnapshot&& other) noexcept : block_(std::exchange(other.block_, nullptr)) {}
  /// @brief Shares `other`'s values, dropping this handle's share.
  ModelSnapshot& operator=(const ModelSnapshot& other) noexcept {
    ModelSnapshot copy(other);
    swap(copy);
    return *this;
  }
  /// @brief Takes `other`'s share, dropping this handle's.
  ModelSnapshot& operator=(ModelSnapshot&& other) noexcept {
    ModelSnapshot moved(std::move(other));
    swap(moved);
    return *this;
  }
  ~ModelSnapshot() { reset(); }

  /// @brief A snapshot owning a fresh copy of `values` (allocates: for tests and one-off replies).
  static ModelSnapshot copy_of(const Eigen::Ref<const Eigen::VectorXf>& values) {
    ModelSnapshot s;
    s.block_ = new Block;
    s.block_->values = values;
    return s;
  }

  /// @brief Drops this handle's share; the values are freed with the last one.
  void reset() noexcept {
    // acq_rel: the reads through this handle happen before whoever frees or reuses the values.
    if (block_ && block_->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete block_;
    block_ = nullptr;
  }
  /// @brief Exchanges two handles.
  void swap(ModelSnapshot& other) noexcept { std::swap(block_, other.block_); }

  /// @brief True if the handle shares a vector.
  explicit operator bool() const noexcept { return block_ != nullptr; }
  /// @brief The shared values (the handle must not be empty).
  const Eigen::VectorXf& values() const noexcept { return block_->values; }
  /// @brief Handles sharing these values right now (0 for an empty handle); a
  /// `ModelSnapshotPool` holds one of its own. For tests and diagnostics.
  long use_count() const noexcept { return block_ ? block_->refs.load(std::memory_order_acquire) : 0; }

 private:
  friend class ModelSnapshotPool;
  struct Block {
    std::atomic<long> refs{1};
    Eigen::VectorXf values;
  };
  // True if only this handle holds the values: nobody can be reading them.
  bool sole() const noexcept { return block_ && block_->refs.load(std::memory_order_acquire) == 1; }
  Block* block_ = nullptr;
};

/// @brief Makes snapshots, reusing the storage of one nobody holds any more, so a
/// server in steady state allocates nothing: the vectors it keeps are as many as
/// were ever held at once (the current one, plus those a transport or a worker
/// still reads), and each is allocated once. Single-threaded: the server's thread
/// calls `make`; the handles it returns may travel to and be dropped on any thread.
class ModelSnapshotPool {
 public:
  /// @brief A snapshot holding a copy of `values`: one copy, into a kept vector
  /// that no handle outside the pool holds (allocated only when every kept one is held).
  ModelSnapshot make(const Eigen::Ref<const Eigen::VectorXf>& values) {
    ModelSnapshot* slot = nullptr;
    for (ModelSnapshot& s : kept_) {
      if (s.sole()) {
        slot = &s;
        break;
      }
    }
    if (!slot) {
      kept_.push_back(ModelSnapshot::copy_of(values));
      ++allocations_;
      return kept_.back();
    }
    // Sole holder, observed with acquire: every earlier reader is done, and no new one
    // can appear until the handle below is handed out, so writing here races with nobody.
    slot->block_->values = values;
    return *slot;
  }
  /// @brief Vectors the pool keeps.
  std::size_t kept() const noexcept { return kept_.size(); }
  /// @brief Vectors allocated so far.
  std::uint64_t allocations() const noexcept { return allocations_; }

 private:
  std::vector<ModelSnapshot> kept_;
  std::uint64_t allocations_ = 0;
};

}  // namespace psync
