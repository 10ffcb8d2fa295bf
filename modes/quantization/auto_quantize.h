#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "modes/quantization/calibrate.h"
#include "opt/mode.h"
#include "opt/runtime_context.h"

namespace mto {
namespace quantization {

// Runs this rank's scoring batches through a model and hands each batch's loss (a scalar
// that requires grad) to `backward`, which back-propagates it.
using LossLoop = std::function<void(torch::nn::Module& model, const std::function<void(const at::Tensor&)>& backward)>;

// Options of auto_quantize (Model Optimizer's mtq.auto_quantize with method "gradient").
struct AutoQuantizeOptions {
  // Candidate formats: quantize presets whose algorithm is "max" (int8, fp8,
  // int4_blockwise); "not quantized" is always a candidate.
  std::vector<std::string> formats;
  // The budget: the weights' bits averaged over the searched layers' parameters, in
  // [the fewest bits of a format, 16].
  double effective_bits = 4.8;
  // This rank's share of the scoring batches and their loss.
  LossLoop score_loop;
  // kForwardLoop (this rank's share of the calibration data: it calibrates the candidates
  // and, at the end, the chosen quantizers) and the mesh, whose data-parallel group shares
  // the data and reduces the statistics and scores.
  RuntimeContext context;
};

// One searched layer: its parameters, each candidate's bits and score, and the choice.
struct AutoQuantizeLayer {
  std::string name;
  int64_t params = 0;
  // Per candidate, in the order of AutoQuantizeResult::formats.
  std::vector<double> scores;
  int chosen = 0;
};

// What auto_quantize found.
struct AutoQuantizeResult {
  // The candidates from fewest to most bits, "none" (16 bits) last, with their bits.
  std::vector<std::string> formats;
  std::vector<int> bits;
  std::vector<AutoQuantizeLayer> layers;
  // Layers left out because a candidate format leaves them unquantized (lm_head).
  std::vector<std::string> excluded;
  double effective_bits = 0;
  // The quantize config the choice expands to (rules per layer), as applied.
  std::string config;
};

// Picks one format per linear layer of the float `model` so that the weights' effective
// bits stay within the budget while the loss suffers least, then applies "quantize" with
// the per-layer config that choice expands to and "max_calibrate", so the modelopt state
// records it and restore needs no data. Each candidate is calibrated once on the
// calibration data (per-tensor input amax, max over the data-parallel group); each layer's
// score for a format is Model Optimizer's gradient score, the sum over the scoring batches
// of sum((dLoss/dY * (Y_format - Y))^2) with Y the layer's output, made non-increasing
// with more bits and summed over the data-parallel group in one collective; the choice is
// the exact solution of the multiple-choice knapsack (multiple_choice_knapsack.h).
// Collective over the context's data-parallel group. Returns the converted model and what was
// found. Throws ConfigError for an unknown or non-"max" format or a budget out of range,
// ApplyModeError for a model that is quantized already, split over tensor-parallel ranks,
// or has no linear layer to search.
std::pair<ModulePtr, AutoQuantizeResult> auto_quantize(ModulePtr model, const AutoQuantizeOptions& options);

}  // namespace quantization
}  // namespace mto
