#pragma once

#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>

namespace mto {

// How load_safetensors maps a plain safetensors set onto a model.
struct LoadSafetensorsOptions {
  // Applied in order to every source tensor name: a source name that starts with `first`
  // has that prefix replaced by `second` ({"model.", ""} strips "model.").
  std::vector<std::pair<std::string, std::string>> rename_prefixes;
  // Leave model tensors that the set lacks as they are instead of failing.
  bool allow_missing = false;
};

// What load_safetensors read.
struct LoadSafetensorsReport {
  // Model tensors filled, and left alone (allow_missing).
  int64_t loaded = 0;
  std::vector<std::string> missing;
  // Bytes this rank read from the files.
  uint64_t bytes_read = 0;
  // The rename_prefixes that no source name started with (a typo, most likely).
  std::vector<std::pair<std::string, std::string>> unused_renames;
};

// Reads the plain safetensors set in `dir` (see read_safetensors_set) into the parameters and
// buffers of `model`, on any mesh: each rank reads only the byte ranges of the slices it holds
// (a tensor split over a tensor-parallel group is read in parts), straight into its tensors;
// F16 and BF16 sources are cast on read into F32 tensors (any floating source into any
// floating tensor); other sources must have the tensor's dtype, and FP8 sources (F8_E4M3,
// F8_E5M2) a uint8 tensor that holds their codes. Not collective: every rank reads on its
// own, its tensors spread over read_threads() threads past kParallelReadBytes. The files
// carry no checksums, so nothing beyond the headers can be verified.
//
// Throws CheckpointError naming every offender, before changing any tensor, when model
// tensors are missing from the set (unless allow_missing), the set holds tensors the model
// has not ("unexpected"), or a tensor's shape (its global shape for a slice) or dtype
// differs beyond those casts (an FP8 source for a float tensor), or when the set holds no
// tensors (allow_missing or not); and as read_safetensors_set does. While
// reading, throws CheckpointError naming the tensor and the value if a cast would turn a
// finite value into an infinity (F64 beyond float32's range); the tensors read before it
// are then loaded already.
LoadSafetensorsReport load_safetensors(torch::nn::Module& model, const std::string& dir,
                                       const LoadSafetensorsOptions& options = {});

}  // namespace mto
