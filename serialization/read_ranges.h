#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "serialization/file.h"

namespace mto {

// A byte range of a file to read into memory: `size` bytes at `offset`, into `data`.
struct ReadRange {
  void* data = nullptr;
  size_t size = 0;
  uint64_t offset = 0;
};

// Reads every range of `ranges` from `file`, as File::read_at would one by one, but many in
// one system call: a slice along dimension 1 is a row piece per row (2 KiB a row for the
// GPT's attention projection at tp 4), and with one pread per piece a tp 4 restore spent
// more time entering and leaving the kernel than copying (tools/bench/gpt_checkpoint_bench.sh).
// The ranges go to the kernel through an io_uring of the calling thread, kQueueDepth at a
// time, or by pread where the kernel refuses io_uring (an older kernel, a container's seccomp
// filter, or kernel.io_uring_disabled). Throws CheckpointError as File::read_at does, after
// every range in flight has completed.
void read_ranges(const File& file, const std::vector<ReadRange>& ranges);

// Most ranges in flight at once.
inline constexpr unsigned kQueueDepth = 256;

// Whether this thread reads ranges through io_uring: false where the kernel refused it.
bool ranges_use_io_uring();

}  // namespace mto
