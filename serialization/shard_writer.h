#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "serialization/manifest.pb.h"

namespace mto {

// A tensor of a state dict, under its key.
struct NamedTensor {
  std::string name;
  at::Tensor tensor;
};

// What writing one shard produced: the shard's record and one record per tensor, with
// absolute offsets and checksums, ready for the manifest.
struct WrittenShard {
  ShardRecord shard;
  std::vector<TensorRecord> tensors;
};

// Writes `tensors` as the safetensors file `dir`/`file` through the thread's bounce buffer,
// computing each tensor's XXH3-64 on the way, and fsyncs it. The header's __metadata__
// records the format ("pt") and `writer_rank`. Tensors must be on the CPU; non-contiguous
// ones are copied first. `shard_index` is stored in the tensor records.
// Throws CheckpointError on any I/O failure or unsupported dtype.
WrittenShard write_shard(const std::string& dir, const std::string& file,
                         const std::vector<NamedTensor>& tensors, int writer_rank,
                         uint32_t shard_index);

}  // namespace mto
