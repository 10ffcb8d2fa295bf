#pragma once

#include <string>

#include <torch/nn/module.h>

#include "opt/conversion.h"

namespace mto {

// Saves `model` as the checkpoint directory `dir`: its modelopt state (modelopt_state.pb),
// its weights as safetensors (model-00001-of-00001.safetensors plus
// model.safetensors.index.json, so other tools can load them) and a MANIFEST with the size
// and XXH3-64 checksum of every file and tensor, written last.
//
// The files are written into a hidden sibling directory, fsynced, and swapped into place in
// one atomic rename: a crash at any moment leaves the previous checkpoint at `dir` intact
// and the new one complete or absent. Throws CheckpointError (naming the file) on I/O
// failure, or if `dir` exists and is not an mto checkpoint; `dir` is then unchanged.
void save(torch::nn::Module& model, const std::string& dir);

// Restores the checkpoint `dir` into the unmodified `model` (or a model built from the
// model-like): validates the manifest and the state file, replays the modes with
// restore_from_modelopt_state, then reads every weight straight into the model's own
// tensors, checking its checksum. Throws CheckpointError naming the file and the tensor for
// a missing, truncated or corrupt file, or a state dict that does not match; plus the
// errors of restore_from_modelopt_state.
ModulePtr restore(const ModelOrModelLike& model, const std::string& dir);

// As above, building the model from the model-like recorded in the checkpoint.
ModulePtr restore(const std::string& dir);

}  // namespace mto
