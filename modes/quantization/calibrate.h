#pragma once

#include <exception>
#include <functional>
#include <vector>

#include <ATen/core/Tensor.h>

#include <torch/nn/module.h>

#include "distributed/communicator.h"
#include "modes/quantization/quantized_model.h"
#include "modes/quantization/split_reduction.h"
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

// calibrate_max in two steps, for algorithms built on it (SmoothQuant) that need the amax
// over the data before they add statistics of their own to the reduction over the
// tensor-parallel groups, so that the whole calibration still makes one collective per
// mesh axis:
//
//   MaxCalibration calibration(model, forward_loop, communicator);  // data, then dp
//   at::Tensor a = calibration.amax(quantizer);                     // over the replicas
//   calibration.split_reduction().add(layer, &partial, ReduceOp::kMax);
//   calibration.finish();                                           // tp; throws; sets amax
class MaxCalibration {
 public:
  // Runs `forward_loop` and the reduction over `communicator`, as calibrate_max does; a
  // rank's failure is held until finish(). Collective over `communicator`. Throws
  // ApplyModeError at once on every rank of it if its ranks hold different slices.
  MaxCalibration(torch::nn::Module& model, const ForwardLoop* forward_loop, Communicator* communicator);

  // Whether this rank or a rank of `communicator` failed: amax() is then meaningless, and
  // finish() throws.
  bool failed() const { return own_failure_ != nullptr || failed_rank_ >= 0; }

  MaxCalibration(const MaxCalibration&) = delete;
  MaxCalibration& operator=(const MaxCalibration&) = delete;

  // A copy of the amax of the enabled quantizer `quantizer` over the data-parallel ranks,
  // before any reduction over its tensor-parallel group (negative where no rank saw data).
  at::Tensor amax(const TensorQuantizerImpl* quantizer) const;

  // The reduction over each tensor-parallel group that finish() runs. What an algorithm
  // adds to it must be the same tensors (dtypes, shapes, ops, order) on every rank of the
  // group, failed() or not; and every rank must reach finish(): one that throws before it
  // leaves the others of its group waiting.
  SplitReduction& split_reduction() { return split_; }

  // Runs the split reduction with max calibration's own shares and failure flags, throws
  // calibrate_max's errors, and sets the amax of every enabled quantizer. Collective over
  // each tensor-parallel group.
  void finish();

 private:
  // A tensor-parallel group that split layers of the model are split over: one of its
  // layers (every rank of the group joins its collectives), and the quantizers whose amax its
  // ranks must share: those a layer reports whole (a per-tensor amax of a split weight or
  // input, a per-channel amax of a row-parallel weight) while each rank saw only its slice.
  struct SplitGroup {
    nn::DynamicLayer* layer;
    Communicator* group;
    std::vector<size_t> shared;
  };

  std::vector<QuantizerSlot> slots_;
  std::vector<SplitGroup> groups_;  // every group of more than one rank, in module order
  std::vector<at::Tensor> amax_;
  std::exception_ptr own_failure_;
  int failed_rank_ = -1;
  SplitReduction split_;
};

}  // namespace quantization
}  // namespace mto
