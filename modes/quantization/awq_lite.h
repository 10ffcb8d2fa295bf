#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>

#include "distributed/communicator.h"
#include "modes/quantization/calibrate.h"

namespace mto {
namespace quantization {

// What calibrate_awq_lite chose: the alpha of each layer it smoothed, by layer name
// ("block.0.fc1"), in module order.
struct AwqLiteResult {
  std::vector<std::pair<std::string, double>> alphas;
  // The factor each layer's weight was multiplied by along the input features (s of the
  // chosen alpha, this rank's part of it on a row-parallel layer), by layer name.
  std::map<std::string, at::Tensor> weight_factors;
};

// AWQ-lite calibration of weight-only formats (W4A16), as Model Optimizer's `awq_lite` does
// it. For every nn.Linear with an enabled weight quantizer, it searches a per-input-channel
// scale s that protects the weights of channels with large activations:
//
//   w_mean = mean over output rows of |W| / max |W| of its block (the weight quantizer's
//            blocks along the input features; the whole row without blocks)
//   a_mean = mean over the calibration tokens of |x|
//   s(alpha) = clamp(a_mean^alpha / (w_mean^(1 - alpha) + FLT_MIN), 1e-4, 1e4),
//              divided by sqrt(max(s) * min(s))
//
// for alpha = 0, alpha_step, 2 * alpha_step, ..., 1, and keeps the alpha whose output
// (x / s) @ Q(W * s)^T has the least squared error against x @ W^T over the calibration
// data (the first such alpha on ties). Then `input_quantizer._pre_quant_scale` = 1 / s (the
// input quantizer applies it even while disabled), the weight is multiplied by s in place,
// and the weight amax is that of the smoothed weight (the chosen candidate's, which the
// search computed already). Other quantizers are left as they are.
//
// `forward_loop` runs twice (statistics, then the search); nothing of the activations is
// kept beyond each forward call. Differences from Model Optimizer: a_mean is the mean over
// all tokens (Model Optimizer averages per-batch means), summed exactly in fixed point, and
// the errors are summed over every rank, so the result is the same (bit for bit) however the
// data falls into batches and onto ranks, and every rank chooses the same alpha.
//
// Collective when `communicator` (the data-parallel ranks, each with its slice of the data;
// nullptr for this rank alone) is not null, and over the tensor-parallel group of every
// layer split over more than one rank (ColumnParallelLinear, RowParallelLinear): every rank
// must call it, in the same order. If the forward loop fails on one rank, every rank
// throws, none waits for it: the failing rank its own error, the others ApplyModeError
// naming the rank.
//
// Throws ConfigError unless 0 < alpha_step <= 1; ApplyModeError before changing anything
// if an enabled weight quantizer sits on a layer other than nn.Linear, if such a Linear's
// input quantizer is enabled (AWQ-lite here calibrates weight-only formats), if the forward
// loop is missing, if an activation is not finite or too large for the exact statistics
// (|x| >= 2^30; raised once the loop has run to its end), if the ranks of `communicator`
// hold different slices of a split layer, or if no rank saw calibration data for a layer
// (naming the layers).
AwqLiteResult calibrate_awq_lite(torch::nn::Module& model, const ForwardLoop* forward_loop,
                                 Communicator* communicator, double alpha_step);

}  // namespace quantization
}  // namespace mto
