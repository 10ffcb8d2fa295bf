#pragma once

#include <functional>

#include <torch/nn/module.h>

#include "distributed/communicator.h"
#include "opt/runtime_context.h"

namespace mto {
namespace quantization {

// Runs the model over calibration data, e.g. every batch of this rank's slice:
//   [&](torch::nn::Module& m) { for (auto& batch : slice) forward(m, batch); }
// Passed to the calibration modes in the RuntimeContext under kForwardLoop; never saved.
using ForwardLoop = std::function<void(torch::nn::Module& model)>;

// Where the calibration modes find their forward loop in the RuntimeContext.
inline constexpr ContextKey<ForwardLoop> kForwardLoop{"forward_loop"};

// Sets the `_amax` of every enabled quantizer of `model` to the absolute maximum of what it
// quantizes: weight quantizers from the weights, input and output quantizers from what
// `forward_loop` (may be null when none is enabled) runs through them on this rank.
//
// With a communicator (the data-parallel ranks, each with its slice of the data), every amax
// is then combined with MAX over its ranks in one fused collective, whose encoding also says
// which quantizers a rank saw no data for (-1) and whether the rank failed: no rank waits for
// another that failed, a rank with no data does not hang, and every rank ends with the same
// amax. On a model split over a tensor-parallel group (SplitModule layers), the amax that a
// layer reports whole while each rank saw only its slice (per-tensor amax of split weights
// and inputs, per-channel amax of row-parallel weights) is then combined with MAX over the
// group in one more fused collective; amax that are slices stay slices of the global amax.
// So the result at any dp x tp equals one process's on the unsplit model (weights exactly).
// Collective when `communicator` is not null, and over each split group. Throws
// ApplyModeError naming the quantizers that no rank saw data for, or the rank whose forward
// loop failed.
void calibrate_max(torch::nn::Module& model, const ForwardLoop* forward_loop,
                   Communicator* communicator);

}  // namespace quantization
}  // namespace mto
