#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "distributed/communicator.h"
#include "modes/quantization/calibrate.h"

namespace mto {
namespace quantization {

// The options of calibrate_awq_clip (Model Optimizer's AWQClipCalibConfig).
struct AwqClipOptions {
  // The ratios searched: 1, 1 - shrink_step, 1 - 2 * shrink_step, ... down to
  // min_clip_ratio (included when the steps reach it).
  double min_clip_ratio = 0.5;
  double shrink_step = 0.05;
  // Output rows whose errors are computed at a time: bounds the search's memory.
  int64_t max_co_batch_size = 1024;
};

// Throws ConfigError, prefixed with `what`, unless 0 < min_clip_ratio <= 1,
// 0 < shrink_step <= 1, the ratios number at most 1001 and max_co_batch_size >= 1.
void check_awq_clip_options(const AwqClipOptions& options, const std::string& what);

// Throws the ApplyModeError that calibrate_awq_clip throws for a layer it cannot calibrate,
// changing nothing: "awq_full_calibrate" checks before AWQ-lite changes the model.
void check_awq_clip_layers(torch::nn::Module& model);

// What calibrate_awq_clip chose: the clip ratio of every block of each layer's weight,
// float32 [this rank's output rows, blocks], by layer name ("block.0.fc1") in module order.
struct AwqClipResult {
  std::vector<std::pair<std::string, at::Tensor>> ratios;
};

// AWQ's clip search (Model Optimizer's `awq_clip`; its `awq_full` runs it after AWQ-lite)
// for weight-only block formats (W4A16). For every nn.Linear whose enabled weight quantizer
// has blocks along the input features, it gives each block of each output row the amax
// r * max |W_block| whose quantization error moves the block's part of the output least:
//
//   error(r) = sum over the calibration tokens x of (x_block . (Q_r(w) - w))^2
//
// for w the row's block of weights and r in the ratios of `options`: the first of the least
// error, searching from 1 down, so that a tie (a block whose inputs were all zero) keeps the
// block's whole range (Model Optimizer lists the ratios from min_clip_ratio up). The weights
// and every other quantizer stay as they are.
//
// The errors come from one statistic per layer, each block's Gram matrix
// G = sum over tokens of x_block^T x_block (float64, block x block, of what the layer's
// weight multiplies, pre_quant_scale applied), as e^T G e for e = Q_r(w) - w: every token
// counts, where Model Optimizer multiplies out at most 64 tokens sampled from each forward
// call. The Gram matrices are summed over the data-parallel ranks in one all-reduce; a
// layer split over tensor-parallel ranks needs none of its group's data, since its blocks
// (along the input features) never straddle two ranks, so every rank chooses for its own
// rows and blocks. The choices are the same on every mesh unless two ratios' errors agree
// to within the rounding of the float64 sums.
//
// `forward_loop` runs once, with the layers' weights unquantized. Collective when
// `communicator` (the data-parallel ranks, each with its slice of the data; nullptr for
// this rank alone) is not null, and over the tensor-parallel group of every split layer (a
// failure flag): every rank must call it, in the same order. If the forward loop fails on
// one rank, every rank throws, none waits for it: the failing rank its own error, the
// others ApplyModeError naming the rank.
//
// Throws ConfigError as check_awq_clip_options does; ApplyModeError before changing
// anything for an enabled weight quantizer it cannot calibrate (on a layer other than
// nn.Linear, beside an enabled input quantizer, with a pre_quant_scale, or without blocks
// along the input features), if the forward loop is missing, if an input is not finite
// (raised once the loop has run to its end), if the ranks of `communicator` hold different
// slices of a split layer, or if no rank saw calibration data for a layer (naming the
// layers).
AwqClipResult calibrate_awq_clip(torch::nn::Module& model, const ForwardLoop* forward_loop, Communicator* communicator,
                                 const AwqClipOptions& options);

}  // namespace quantization
}  // namespace mto
