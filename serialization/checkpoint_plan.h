#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "serialization/manifest.pb.h"
#include "serialization/tensor_blocks.h"

namespace mto {

// A part of a tensor that one saving rank holds.
struct HeldSlice {
  // State-dict key of the whole tensor, e.g. "blocks.0.fc1.weight".
  std::string name;
  // safetensors dtype name.
  std::string dtype;
  // Shape of the whole tensor.
  std::vector<int64_t> global_shape;
  // The split dimension (0 or 1); meaningless for a whole tensor.
  int64_t split_dim = 0;
  // The part held, in the tensor's matrix (tensor_blocks.h); the whole matrix for a tensor
  // the rank holds whole.
  Rect rect;
  // XXH3-64 of the held bytes, to check that every holder of a part holds the same bytes.
  uint64_t digest = 0;
};

// One distinct part of a tensor, and the rank that writes it.
struct SlicePlan {
  // Index into CheckpointPlan::tensors.
  size_t tensor = 0;
  Rect rect;
  int writer = 0;
};

// Where every byte of a checkpoint goes, computed identically on every saving rank from what
// each rank holds, so that the ranks write their parts of shared files with no further
// exchange.
struct CheckpointPlan {
  // One record per tensor in state-dict order: name, dtype, global shape, shard, offset,
  // length and split; no checksums yet.
  std::vector<TensorRecord> tensors;
  // One shard file per rank: model-0000i-of-0000N.safetensors; its header is written by rank i.
  std::vector<ShardRecord> shards;
  // The header bytes of each shard (length prefix, JSON, padding).
  std::vector<std::string> headers;
  // Every distinct part of every tensor, with its writer.
  std::vector<SlicePlan> slices;
  // The most parts any tensor is split into.
  int tensor_parallel_size = 1;
};

// Plans a checkpoint from `held`, what each rank (by index) holds, in its state-dict order.
// Each distinct part is written once, by the holder that carries least so far (largest parts
// first, ties to the lower rank), so the replicas of a part share the writing; each tensor
// goes in the shard of the rank that writes its largest part. Throws CheckpointError naming the tensor and the
// ranks if the ranks disagree on the list of tensors, a dtype or a global shape, if two
// holders of a part hold different bytes, or if the parts do not tile a tensor.
CheckpointPlan plan_checkpoint(const std::vector<std::vector<HeldSlice>>& held);

}  // namespace mto
