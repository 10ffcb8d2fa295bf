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
  // The part held, in the tensor's matrix (tensor_blocks.h); the whole matrix for a tensor
  // the rank holds whole.
  Rect rect;
};

// One distinct part of a tensor, and the rank that writes it.
struct SlicePlan {
  // Index into CheckpointPlan::tensors.
  size_t tensor = 0;
  Rect rect;
  int writer = 0;
  // Every rank that holds the part, ascending.
  std::vector<int> holders;
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
// first, ties to the lower rank), so the replicas of a part share the writing. A tensor held
// whole goes in the shard of its writer; a split tensor, whose parts several ranks write, in
// the shard with the fewest bytes so far, so that ranks writing in write_order() meet in one
// file as little as possible. Throws CheckpointError naming the tensor and the ranks if the
// ranks disagree on the list of tensors, a dtype or a global shape, or if the parts do not
// tile a tensor.
CheckpointPlan plan_checkpoint(const std::vector<std::vector<HeldSlice>>& held);

// The parts `rank` writes (indices into plan.slices), starting with those in its own shard
// and going on shard by shard: concurrent writers of one file wait for each other, so ranks
// that start in different files stay apart.
std::vector<size_t> write_order(const CheckpointPlan& plan, int rank);

// Throws CheckpointError unless every holder of a part holds the same bytes: `digests[r]`
// has, for each part of plan.slices with several holders that rank r holds (in plan order),
// the XXH3-64 of its bytes. The message names the tensor and two ranks that differ.
void check_replicas(const CheckpointPlan& plan, const std::vector<std::vector<uint64_t>>& digests);

}  // namespace mto
