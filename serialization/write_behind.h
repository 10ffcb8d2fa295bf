#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>

#include "serialization/file.h"

namespace mto {

// A helper thread that writes one buffer to a file while its owner fills the next: the
// owner's copy and checksum of a chunk overlap the kernel's copy of the chunk before.
// Not safe to share between threads.
class WriteBehind {
 public:
  WriteBehind();
  // Waits for the write in flight (its failure is dropped: drain() reports it), then ends the
  // thread.
  ~WriteBehind();
  WriteBehind(const WriteBehind&) = delete;
  WriteBehind& operator=(const WriteBehind&) = delete;

  // Waits for the write before, then starts writing `size` bytes of `data` at `offset` of
  // `file` and their writeback (File::start_writeback); `data` must stay untouched until the
  // next submit or drain. Rethrows the failure of the write before.
  void submit(File& file, const char* data, size_t size, uint64_t offset);
  // Waits for the last write; rethrows its failure (a CheckpointError from File::write_at).
  void drain();

  // Whether this process has a core to spare for the helper (cores_per_local_rank() >= 2).
  static bool worthwhile();

 private:
  void run();

  std::mutex mutex_;
  std::condition_variable changed_;
  File* file_ = nullptr;
  const char* data_ = nullptr;
  size_t size_ = 0;
  uint64_t offset_ = 0;
  bool busy_ = false;
  bool stop_ = false;
  std::exception_ptr error_;
  std::thread thread_;
};

}  // namespace mto
