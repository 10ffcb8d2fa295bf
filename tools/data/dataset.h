#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace mto {
namespace data {

// A labelled image data set held in memory. Copies share the tensors; not safe to modify
// while another thread reads it.
struct Dataset {
  // Float images [N, C, H, W].
  at::Tensor images;
  // Int64 class labels [N].
  at::Tensor labels;

  // The number of examples, N.
  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
};

// The contiguous share of `dataset` that rank `rank` of `world_size` takes (as
// mto::split_range splits it: sizes differ by at most one, lower ranks take the extra
// examples). The result views the same storage, no copy. Throws std::invalid_argument if
// `rank` is not in [0, world_size).
Dataset shard(const Dataset& dataset, int rank, int world_size);

}  // namespace data
}  // namespace mto
