#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <functional>
#include <vector>

namespace mto {

// Runs `collective` on flat buffers that hold `tensors` (consecutive tensors of one dtype,
// at most `bucket_bytes` per buffer unless one tensor is larger), then copies each buffer
// back into its tensors. Turns many small collectives into few large ones. A tensor that is
// contiguous and alone in its bucket is passed as itself, with no copy.
void for_each_bucket(const std::vector<at::Tensor>& tensors, size_t bucket_bytes,
                     const std::function<void(const at::Tensor& flat)>& collective);

}  // namespace mto
