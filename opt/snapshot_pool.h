#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace mto {

// Host memory that a background save copies weights into, kept from one save to the next so
// that repeated saves of one model allocate and fault in nothing new. Anonymous memory with
// 4 KiB pages: transparent huge pages stalled the first save by seconds here (direct
// compaction). Not safe to share between threads.
class SnapshotPool {
 public:
  SnapshotPool() = default;
  SnapshotPool(const SnapshotPool&) = delete;
  SnapshotPool& operator=(const SnapshotPool&) = delete;
  ~SnapshotPool();

  // Copies of `tensors` (undefined ones stay undefined), contiguous and packed into the
  // pool, which grows to fit, made by `threads` threads. The copies of the previous call
  // become invalid. With `digests`, it also holds the XXH3-64 of each copy (0 for an
  // undefined tensor), hashed piece by piece while the piece is in cache: cheaper than
  // reading the tensor a second time.
  std::vector<at::Tensor> copy(const std::vector<at::Tensor>& tensors, int threads = 1,
                               std::vector<uint64_t>* digests = nullptr);
  // Bytes the pool holds.
  size_t capacity() const { return capacity_; }

 private:
  void reserve(size_t bytes);

  char* memory_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace mto
