#include "distributed/bucketing.h"

#include <ATen/ATen.h>

namespace mto {

void for_each_bucket(const std::vector<at::Tensor>& tensors, size_t bucket_bytes,
                     const std::function<void(const at::Tensor& flat)>& collective) {
  size_t begin = 0;
  while (begin < tensors.size()) {
    size_t end = begin + 1;
    size_t bytes = tensors[begin].nbytes();
    while (end < tensors.size() && tensors[end].scalar_type() == tensors[begin].scalar_type() &&
           bytes + tensors[end].nbytes() <= bucket_bytes) {
      bytes += tensors[end].nbytes();
      ++end;
    }
    if (end - begin == 1 && tensors[begin].is_contiguous()) {
      collective(tensors[begin]);
    } else {
      std::vector<at::Tensor> flat_parts;
      for (size_t i = begin; i < end; ++i) flat_parts.push_back(tensors[i].reshape({-1}));
      at::Tensor flat = at::cat(flat_parts);
      collective(flat);
      int64_t offset = 0;
      for (size_t i = begin; i < end; ++i) {
        const int64_t n = tensors[i].numel();
        tensors[i].copy_(flat.narrow(0, offset, n).view(tensors[i].sizes()));
        offset += n;
      }
    }
    begin = end;
  }
}

}  // namespace mto
