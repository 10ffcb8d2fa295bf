#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "distributed/communicator.h"

namespace mto {

// Where a rank's tensor sits in the global tensor it is part of: the rows
// [offset, offset + local.size(dim)) of dimension `dim`, all of every other dimension. The
// global tensor is what a checkpoint names and stores; the local one is what the rank holds.
struct TensorSlice {
  // Shape of the whole (global) tensor.
  std::vector<int64_t> global_shape;
  // The split dimension.
  int64_t dim = 0;
  // First index of the slice along `dim`.
  int64_t offset = 0;
};

// A module whose tensors (its own, and those of the transforms modes insert into it) are
// slices of larger tensors split over a tensor-parallel group: ColumnParallelLinear,
// RowParallelLinear, VocabParallelEmbedding. Checkpoints ask it where each tensor belongs.
class SplitModule {
 public:
  virtual ~SplitModule() = default;

  // The slice that the tensor `key` (relative to this module: "weight",
  // "weight_quantizer._amax", "_weight_mask") is, given the tensor `local` this rank holds;
  // std::nullopt for a tensor that every rank of the group holds whole, and for every tensor
  // when the group has one rank (its tensors are whole, whatever modes reshaped them since).
  virtual std::optional<TensorSlice> slice_of(const std::string& key,
                                              const at::Tensor& local) const = 0;

  // The ranks that hold the other slices (the tensor-parallel group). A tensor reported
  // whole must be the same on all of them: e.g. calibration reduces such statistics over it.
  virtual const std::shared_ptr<Communicator>& split_group() const = 0;
};

// `object` as a SplitModule split over more than one rank, or nullptr: not split, or split
// over a group of one rank (whose tensors are whole).
template <typename T>
const SplitModule* split_over_ranks(const T* object) {
  const auto* split = dynamic_cast<const SplitModule*>(object);
  return split != nullptr && split->split_group()->world_size() > 1 ? split : nullptr;
}

}  // namespace mto
