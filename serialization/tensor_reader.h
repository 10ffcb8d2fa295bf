#pragma once

#include <ATen/core/Tensor.h>

#include "serialization/file.h"
#include "serialization/manifest.pb.h"

namespace mto {

// Checks that `dest` can receive the tensor `record` exactly: same dtype and shape, on the
// CPU, contiguous. Throws CheckpointError naming the tensor and both sides otherwise.
void check_tensor_matches(const TensorRecord& record, const at::Tensor& dest);

// Reads the data of `record` from its open shard `file` into the storage of `dest` (through
// the thread's bounce buffer, with no tensor-sized intermediate) and verifies the XXH3-64
// checksum as it goes. `dest` must pass
// check_tensor_matches. Throws CheckpointError naming the file, the tensor and the offset on
// a short read or a checksum mismatch; `dest` then holds undefined values.
void read_tensor_into(const File& file, const TensorRecord& record, const at::Tensor& dest);

}  // namespace mto
