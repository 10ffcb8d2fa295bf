#pragma once

namespace mto {
namespace nn {

// While one lives on this thread, the layers built there leave their parameters
// uninitialized (no random initialization, so no first write either, which costs about as
// much as the read of the checkpoint into them): for a model whose every tensor a checkpoint
// is about to fill, as restore builds one from a model-like. Nests. (Transparent huge pages
// for the parameters were measured too: the first touch is 4x cheaper when the kernel has
// free huge pages, but direct compaction made restores up to 4x slower when it had not.)
class UninitializedParameters {
 public:
  UninitializedParameters();
  ~UninitializedParameters();
  UninitializedParameters(const UninitializedParameters&) = delete;
  UninitializedParameters& operator=(const UninitializedParameters&) = delete;
};

// Whether layers built now on this thread leave their parameters uninitialized.
bool parameters_uninitialized();

}  // namespace nn
}  // namespace mto
