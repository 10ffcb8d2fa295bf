#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "distributed/communicator.h"
#include "opt/conversion.h"
#include "opt/state_dict.h"
// Reading and verifying a checkpoint on one process (read_checkpoint_contents,
// verify_checkpoint) needs no ranks: see serialization/checkpoint_reader.h.
#include "serialization/checkpoint_reader.h"
#include "serialization/manifest.pb.h"

namespace mto {

// How restore brings the weights from the files to every rank.
enum class RestoreStrategy {
  // The default, chosen per restore: kReadAll when every rank of the communicator runs on
  // one node, where the page cache serves the repeated reads (measured faster than sharing
  // on 1, 2 and 4 ranks here, tools/bench/checkpoint_bench.sh); kReadShareBroadcast when the
  // ranks span nodes, so that each byte leaves the shared file system once. A rank's node is
  // its host name, or MTO_NODE_NAME where set (e.g. containers on one machine that have host
  // names of their own). Costs one small all-gather.
  kAuto,
  // Every rank reads every tensor straight into its model and checks every checksum.
  kReadAll,
  // Each rank reads its share of the tensors (balanced by bytes) and checks their
  // checksums, then each share is broadcast from its reader. Moves each byte off the
  // file system once: better where many nodes read from a slow shared file system.
  kReadShareBroadcast,
};

// Options of save.
struct SaveOptions {
  // The ranks that save together. Null means the default mesh's world.
  std::shared_ptr<Communicator> communicator;
  // Small files written once, by rank 0, beside the weights (a deployment's
  // hf_quant_config.json and config.json): name -> contents. Recorded in the manifest with
  // their sizes and checksums, so verify and restore check them like every other file. Only
  // rank 0's map is used. Each name must be a plain, visible file name that is none of the
  // checkpoint's own (check_extra_file in serialization/checkpoint_layout.h). Empty by default.
  std::map<std::string, std::string> extra_files = {};
  // Tensors saved beside the model's, under names none of its tensors has, and marked extra
  // in the manifest, e.g. the optimizer state of a training checkpoint. Every rank lists the
  // same names, global shapes and dtypes, with a slice where it holds part of one. Restoring
  // a model skips them unless RestoreOptions::extra_tensors asks for them.
  std::vector<StateTensor> extra_tensors = {};
};

// Options of restore.
struct RestoreOptions {
  // The ranks that restore together; each ends with its own part of the weights (all of
  // them for tensors it holds whole). Null means the default mesh's world.
  std::shared_ptr<Communicator> communicator;
  RestoreStrategy strategy = RestoreStrategy::kAuto;
  // Extra tensors of the checkpoint (SaveOptions::extra_tensors) to read: called with the
  // restored model once its modes are replayed, it returns the tensors to fill, matched by
  // name, global shape and dtype like the model's. None when unset.
  std::function<std::vector<StateTensor>(torch::nn::Module& model)> extra_tensors = {};
};

// Saves `model` as the checkpoint directory `dir`. Collective: every rank of the
// communicator calls it with the same model (a DataParallel wrapper is unwrapped, so the keys
// have no "module." prefix). A model split over ranks (tensor-parallel layers, see
// distributed/tensor_slice.h) is saved under its global tensor names and shapes; each rank
// holds some parts of each tensor, and every part is written exactly once, by one of its
// holders, the writing spread over the holders by bytes: no rank gathers anything. Holders
// of the same part compare checksums first: ranks whose copies differ fail the save on every
// rank, naming the tensor and both ranks.
//
//   modelopt_state.pb                     the modelopt state, written by rank 0
//   model-0000i-of-0000N.safetensors      N = world size; tensors spread over the files by
//                                         bytes, whole and with global shapes; rank i writes
//                                         the header, the writers of the parts their bytes
//   model.safetensors.index.json          weight_map, so other tools load the checkpoint
//   config.json, ...                      options.extra_files, written by rank 0
//   MANIFEST                              every file with its size and XXH3-64, every tensor
//                                         with its split and the XXH3-64 of each block of
//                                         at most 1 MiB (serialization/tensor_blocks.h),
//                                         written last by rank 0
//
// A tensor that a recorded mode stores as another dtype (ModeDescriptor::stored_dtypes, FP8
// codes in a uint8 tensor) is written and recorded as that dtype.
//
// The ranks write into a hidden sibling directory made by rank 0 and fsync their files;
// rank 0 then writes the manifest and swaps the directory into place with one atomic rename
// and fsyncs the parent. A crash at any moment leaves the previous checkpoint at `dir`
// intact and the new one complete or absent. If any rank fails, every rank throws (the
// failing rank's error, named) and `dir` is unchanged: CheckpointError for I/O failures, a
// `dir` that exists and is not an mto checkpoint, an extra file name that check_extra_file
// refuses, or a mode's stored dtype for a tensor the model lacks or whose type cannot hold
// it (naming the tensor and the mode). A save_async still in flight is finished first.
void save(torch::nn::Module& model, const std::string& dir, const SaveOptions& options = {});

// Restores the checkpoint `dir`, written by any number of ranks split in any way, into the
// unmodified `model` (or a model built from the model-like) on every rank of the
// communicator. Collective. Rank 0 reads and validates the manifest and the state and
// broadcasts them; every rank replays the modes (restore_from_modelopt_state); each rank then
// reads the bytes of its own tensors and slices straight into the model's tensors, reading
// every checksum block they overlap and verifying it, as `options.strategy` says (a model
// split over ranks is always read that way). Refuses a DataParallel model with a StateError:
// restore, then wrap. If any rank fails, every rank throws: CheckpointError naming the file
// and the tensor for a missing, truncated or corrupt file, a file that is a symbolic link or
// not a regular file (extra files included), a manifest or index that names a file outside
// `dir`, or a state dict that does not match (names, dtypes as the restored modes store them,
// global shapes), plus the errors of restore_from_modelopt_state.
ModulePtr restore(const ModelOrModelLike& model, const std::string& dir,
                  const RestoreOptions& options = {});

// As above, building the model from the model-like recorded in the checkpoint.
ModulePtr restore(const std::string& dir, const RestoreOptions& options = {});

}  // namespace mto
