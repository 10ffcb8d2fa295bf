#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <torch/nn/module.h>

#include "distributed/communicator.h"
#include "opt/conversion.h"
#include "serialization/manifest.pb.h"

namespace mto {

// How restore brings the weights from the files to every rank.
enum class RestoreStrategy {
  // Every rank reads every tensor straight into its model and checks every checksum. The
  // default: measured faster on one node, where the page cache serves every rank (see
  // tools/bench).
  kReadAll,
  // Each rank reads its share of the tensors (balanced by bytes) and checks their
  // checksums, then each share is broadcast from its reader. Moves each byte off the
  // file system once: better where many nodes read from a slow shared file system.
  kReadShareBroadcast,
};

// Options of save.
struct SaveOptions {
  // The ranks that save together; each writes one shard. Null means world().
  std::shared_ptr<Communicator> communicator;
};

// Options of restore.
struct RestoreOptions {
  // The ranks that restore together; each ends with the full weights. Null means world().
  std::shared_ptr<Communicator> communicator;
  RestoreStrategy strategy = RestoreStrategy::kReadAll;
};

// Saves `model` as the checkpoint directory `dir`. Collective: every rank of the
// communicator calls it with an identical model (a DataParallel wrapper is unwrapped, so the
// keys have no "module." prefix). The ranks compare checksums of their copies first: a rank
// whose state or weights differ fails the save on every rank, naming the first difference.
//
//   modelopt_state.pb                     the modelopt state, written by rank 0
//   model-0000i-of-0000N.safetensors      rank i's shard (N = world size), tensors balanced
//                                         by bytes; "writer_rank" in its __metadata__
//   model.safetensors.index.json          weight_map, so other tools load the checkpoint
//   MANIFEST                              every file and tensor with size and XXH3-64,
//                                         written last by rank 0
//
// The ranks write into a hidden sibling directory made by rank 0 and fsync their shards;
// rank 0 then writes the manifest and swaps the directory into place with one atomic rename
// and fsyncs the parent. A crash at any moment leaves the previous checkpoint at `dir`
// intact and the new one complete or absent. If any rank fails, every rank throws (the
// failing rank's error, named) and `dir` is unchanged: CheckpointError for I/O failures or a
// `dir` that exists and is not an mto checkpoint.
void save(torch::nn::Module& model, const std::string& dir, const SaveOptions& options = {});

// Restores the checkpoint `dir`, written by any number of ranks, into the unmodified
// `model` (or a model built from the model-like) on every rank of the communicator.
// Collective. Rank 0 reads and validates the manifest and the state and broadcasts them;
// every rank replays the modes (restore_from_modelopt_state); the weights are then read
// straight into the model's own tensors, every byte checked against its checksum, as
// `options.strategy` says. Every rank ends with identical weights. Refuses a DataParallel
// model with a StateError: restore, then wrap. If any rank fails, every rank throws:
// CheckpointError naming the file and the tensor for a missing, truncated or corrupt file,
// a file that is a symbolic link or not a regular file, a manifest or index that names a file
// outside `dir`, or a state dict that does not match, plus the errors of
// restore_from_modelopt_state.
ModulePtr restore(const ModelOrModelLike& model, const std::string& dir,
                  const RestoreOptions& options = {});

// As above, building the model from the model-like recorded in the checkpoint.
ModulePtr restore(const std::string& dir, const RestoreOptions& options = {});

// What a checkpoint directory says about itself: its manifest and its modelopt state.
struct CheckpointContents {
  Manifest manifest;
  ModeloptState state;
};

// Reads the manifest and the modelopt state of `dir` on this process alone, checking their
// framing, sizes and checksums (tensor data is not read). Throws CheckpointError naming the
// file.
CheckpointContents read_checkpoint_contents(const std::string& dir);

// Reads every byte of every shard of `dir` on this process alone and checks it against the
// manifest: sizes, safetensors headers, every tensor's XXH3-64. Calls `progress` with the
// bytes checked so far and the total after each tensor. Throws CheckpointError naming the
// file, the tensor and the offset of the first mismatch.
void verify_checkpoint(const std::string& dir,
                       const std::function<void(uint64_t done, uint64_t total)>& progress = nullptr);

}  // namespace mto
