#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <string>

#include "distributed/communicator.h"
#include "modes/quantization/calibrate.h"

namespace mto {
namespace quantization {

// What calibrate_smoothquant did to each layer it smoothed, by layer name ("block.0.fc1"):
// the factor its weight was multiplied by along the input features (1 / s, this rank's part
// of it on a row-parallel layer).
struct SmoothQuantResult {
  std::map<std::string, at::Tensor> weight_factors;
};

// SmoothQuant calibration, as Model Optimizer's `smoothquant` does it: for every nn.Linear
// whose input and weight quantizers are 8-bit integers, it moves quantization difficulty
// from the activations to the weights with a per-input-channel scale
//   s = w_max^(1 - alpha) / a_max^alpha   (channels with a_max <= 2^-31 keep s = 1;
//                                          s clamped to [1e-4, 1e4])
// where a_max is the channel's absolute maximum over the calibration data and w_max the
// column's over the weight. The input quantizer multiplies its input by s
// (`input_quantizer._pre_quant_scale`), the weight is divided by s in place, the weight amax
// is that of the smoothed weight, and the input quantizer goes back to one scale per tensor
// with amax = max(a_max * s). Every other enabled quantizer is max-calibrated.
//
// Collective like calibrate_max, and no more: activation maxima are combined over
// `communicator` (the data-parallel ranks) and, for layers split over a tensor-parallel
// group, every statistic that a rank holds only part of (w_max of a column-parallel layer,
// the per-tensor input amax and per-row weight amax of a row-parallel one) travels in max
// calibration's one reduction over the group; a column-parallel layer's per-tensor weight
// amax then follows from the reduced column maxima exactly. So any data-parallel split gives
// bit-identical state, and any tensor-parallel split the same up to the forward pass's own
// rounding.
//
// Throws ApplyModeError before changing anything if an enabled input quantizer sits on a
// layer SmoothQuant cannot smooth (not an nn.Linear, not 8-bit integers on both input and
// weight, or a block-wise weight), naming the layer; and as calibrate_max does.
SmoothQuantResult calibrate_smoothquant(torch::nn::Module& model, const ForwardLoop* forward_loop,
                                        Communicator* communicator, double alpha);

}  // namespace quantization
}  // namespace mto
