#include "modes/quantization/awq_lite.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "modes/quantization/awq_layers.h"
#include "modes/quantization/split_reduction.h"
#include "modes/quantization/tensor_quantizer.h"
#include "opt/errors.h"

namespace mto {
namespace quantization {
namespace {

constexpr char kMethod[] = "awq_lite";

// torch.finfo(torch.float32).tiny (FLT_MIN), which Model Optimizer adds to both the weight
// statistic's and the scale's denominator.
constexpr float kTiny = std::numeric_limits<float>::min();

// The activation statistic is a sum of |x| in units of 2^-24, in int64: exact, so that any
// order of summation (any split of the data into forward calls and over ranks) gives the
// same sum. Each |x| must stay below 2^30 (2^54 units) and each rank's sums below
// 2^62 / ranks, so that neither a sum nor its all-reduce wraps.
constexpr int kFractionBits = 24;
constexpr double kLargestMagnitude = 1073741824.0;  // 2^30
constexpr int64_t kSumLimit = int64_t{1} << 62;

// A layer AWQ-lite smooths, and what the passes gather for it.
struct AwqLayer : AwqTarget {
  explicit AwqLayer(AwqTarget target) : AwqTarget(std::move(target)) {
    magnitude_sum = at::zeros({in}, at::kLong);
  }

  // Statistics.
  at::Tensor w_mean;         // float32 [in]
  at::Tensor magnitude_sum;  // int64 [in]: sum over tokens of |x|, in units of 2^-24
  int64_t tokens = 0;

  // The search, one entry per alpha.
  std::vector<at::Tensor> scales;          // float32 [in]
  std::vector<at::Tensor> inverse_scales;  // 1 / scales: the pre_quant_scale it would get
  std::vector<at::Tensor> weight_amax;     // amax of W * scales, shared like the weight amax
  // Quantizes W * scales as the weight quantizer would, without touching that quantizer.
  std::shared_ptr<TensorQuantizerImpl> probe;
  at::Tensor errors;  // float64 [alphas]: sum of squared output errors
  int64_t elements = 0;
};

// The layers to smooth; throws as awq_targets does.
std::vector<AwqLayer> awq_layers(torch::nn::Module& model) {
  std::vector<AwqLayer> out;
  for (AwqTarget& target : awq_targets(model, kMethod)) out.emplace_back(std::move(target));
  return out;
}

// Model Optimizer's torch.arange(0, 1 + step, step): alpha = k * step for the
// ceil((1 + step) / step) values of k from 0, computed in double as arange computes its size.
// Step 0.1 gives 0, 0.1, ..., 1; a step that does not divide 1 ends past it (0.3 gives 0,
// 0.3, 0.6, 0.9, 1.2).
std::vector<double> alpha_grid(double step) {
  const auto count = static_cast<int64_t>(std::ceil((1.0 + step) / step));
  std::vector<double> out;
  for (int64_t k = 0; k < count; ++k) out.push_back(static_cast<double>(k) * step);
  return out;
}

// |W| in float32 as [out, blocks, block], zero-padded to whole blocks; one block per row
// when the weight quantizer has no blocks along the input features.
at::Tensor weight_blocks(const AwqLayer& layer) {
  const at::Tensor magnitude = layer.weight_slot.weight().detach().abs().to(at::kFloat);
  const int64_t in = magnitude.size(1);
  const int64_t block = input_block_size(layer) > 0 ? input_block_size(layer) : in;
  const int64_t blocks = (in + block - 1) / block;
  const at::Tensor padded = blocks * block == in ? magnitude : at::constant_pad_nd(magnitude, {0, blocks * block - in});
  return padded.reshape({magnitude.size(0), blocks, block});
}

// The statistic behind w_mean, per layer: |W| divided by its block's max |W| (+ FLT_MIN),
// summed over this rank's output rows in float64 (so that the mean hardly depends on how
// the rows are split). A column-parallel rank holds some of the rows: its sums are summed
// over the group later, with the first pass's reduction. Collective over the
// tensor-parallel groups that hold row-parallel layers without input blocks (their rows
// span ranks), which are reduced here, before any data.
std::vector<at::Tensor> weight_column_sums(const std::vector<AwqLayer>& layers) {
  std::vector<at::Tensor> block_max(layers.size());
  SplitReduction row_maxima;
  for (size_t i = 0; i < layers.size(); ++i) {
    block_max[i] = weight_blocks(layers[i]).amax(-1, /*keepdim=*/true);
    if (layers[i].split == AwqSplit::kInput && input_block_size(layers[i]) == 0) {
      row_maxima.add(layers[i].weight_slot.layer, &block_max[i], ReduceOp::kMax);
    }
  }
  row_maxima.run();

  std::vector<at::Tensor> sums(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    const at::Tensor blocks = weight_blocks(layers[i]);
    const int64_t in = layers[i].magnitude_sum.size(0);
    const at::Tensor normalized = (blocks / (block_max[i] + kTiny)).reshape({blocks.size(0), -1}).narrow(1, 0, in);
    sums[i] = normalized.to(at::kDouble).sum(0);
  }
  return sums;
}

// Sets w_mean from the column sums of all the layer's rows, and the scales of every alpha
// from it and the activation sums; returns their extremes [alphas, 2] (max, -min).
at::Tensor compute_scales(AwqLayer& layer, const at::Tensor& column_sums, const std::vector<double>& alphas) {
  layer.w_mean = (column_sums / static_cast<double>(layer.rows)).to(at::kFloat);
  // The mean over all tokens: Model Optimizer averages per-batch means instead, which
  // depends on how the data falls into batches and onto ranks.
  const at::Tensor act_mean =
      (layer.magnitude_sum.to(at::kDouble) / std::ldexp(static_cast<double>(layer.tokens), kFractionBits))
          .to(at::kFloat);
  at::Tensor extremes = at::zeros({static_cast<int64_t>(alphas.size()), 2}, at::kFloat);
  for (size_t a = 0; a < alphas.size(); ++a) {
    const double alpha = alphas[a];
    at::Tensor s = (act_mean.pow(alpha) / (layer.w_mean.pow(1 - alpha) + kTiny)).clamp(1e-4, 1e4);
    extremes[static_cast<int64_t>(a)][0] = s.max();
    extremes[static_cast<int64_t>(a)][1] = -s.min();
    layer.scales.push_back(std::move(s));
  }
  return extremes;
}

// Pass 1: adds |x| per input channel, in fixed point, and the tokens to the layer's sums.
void accumulate_magnitudes(AwqLayer& layer, const at::Tensor& x, int64_t limit) {
  const at::Tensor tokens = tokens_of(layer, x, kMethod);
  if (tokens.numel() == 0) return;
  const at::Tensor magnitude = tokens.to(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).abs();
  const double largest = magnitude.max().item<double>();
  if (!std::isfinite(largest)) {
    throw ApplyModeError(
        absl::StrCat("awq_lite: layer ", layer.name, ": the calibration data holds infinities or NaNs"));
  }
  auto too_large = [&](const std::string& what) {
    return ApplyModeError(absl::StrCat("awq_lite: layer ", layer.name, ": ", what,
                                       " beyond the range of the exact activation statistics (|x| < 2^30, and a "
                                       "channel's sum of |x| below 2^38 / data-parallel ranks)"));
  };
  if (largest >= kLargestMagnitude) throw too_large(absl::StrCat("an input of magnitude ", largest, " is"));
  // Bounds the sum of this call below the limit (<= 2^62), so that it does not wrap.
  if (std::ldexp(largest, kFractionBits) * static_cast<double>(tokens.size(0)) >= static_cast<double>(limit)) {
    throw too_large("the inputs of one forward call sum");
  }
  // |x| * 2^24 is exact in float32 and float64 alike, and so is its rounding to an integer.
  const at::Tensor units = at::round(magnitude * std::ldexp(1.0, kFractionBits)).to(at::kLong);
  layer.magnitude_sum.add_(units.sum(0));
  layer.tokens += tokens.size(0);
  if (layer.magnitude_sum.max().item<int64_t>() >= limit) throw too_large("the calibration inputs sum");
}

// Pass 2: adds, for every alpha, the squared difference between (x / s) @ Q(W * s)^T and
// x @ W^T (bias left out of both).
void accumulate_errors(AwqLayer& layer, const at::Tensor& x) {
  const at::Tensor tokens = tokens_of(layer, x, kMethod);
  if (tokens.numel() == 0) return;
  const at::Tensor input = tokens.to(at::kFloat);
  const at::Tensor weight = layer.weight_slot.weight().detach().to(at::kFloat);
  const at::Tensor reference = at::linear(input, weight);
  std::vector<at::Tensor> differences;
  for (size_t a = 0; a < layer.scales.size(); ++a) {
    layer.probe->set_amax(layer.weight_amax[a]);
    const at::Tensor quantized = layer.probe->forward(weight * layer.scales[a].unsqueeze(0));
    at::Tensor difference = at::linear(input * layer.inverse_scales[a], quantized) - reference;
    if (layer.split == AwqSplit::kInput) {
      differences.push_back(std::move(difference));
    } else {
      layer.errors[static_cast<int64_t>(a)].add_(difference.to(at::kDouble).square().sum());
    }
  }
  if (layer.split == AwqSplit::kInput) {
    // Each rank's output is its part of a sum over the group: the error is the sum's.
    at::Tensor stacked = at::stack(differences);
    layer.group->all_reduce(stacked, ReduceOp::kSum);  // the layer's own forward reduces the same
    layer.errors.add_(stacked.to(at::kDouble).square().sum({1, 2}));
  }
  layer.elements += reference.numel();
}

}  // namespace

AwqLiteResult calibrate_awq_lite(torch::nn::Module& model, const ForwardLoop* forward_loop,
                                 Communicator* communicator, double alpha_step) {
  if (!(alpha_step > 0 && alpha_step <= 1)) {
    throw ConfigError(absl::StrCat("awq_lite: alpha_step must be in (0, 1], got ", alpha_step));
  }
  std::vector<AwqLayer> layers = awq_layers(model);
  AwqLiteResult result;
  if (layers.empty()) return result;
  if (forward_loop == nullptr || !*forward_loop) {
    throw ApplyModeError(absl::StrCat("awq_lite needs the mode argument 'forward_loop' to calibrate ",
                                      layer_names(layers)));
  }
  const std::vector<double> alphas = alpha_grid(alpha_step);
  const auto alpha_count = static_cast<int64_t>(alphas.size());
  const std::vector<nn::DynamicLayer*> groups = split_group_layers(model);
  const int rank = communicator != nullptr ? communicator->rank() : 0;
  const int world_size = communicator != nullptr ? communicator->world_size() : 1;
  torch::NoGradGuard no_grad;

  std::vector<at::Tensor> column_sums = weight_column_sums(layers);

  // Pass 1: per input channel, the sum of |x| over this rank's tokens, exact.
  PassFailures failures(kMethod);
  const int64_t limit = kSumLimit / world_size;
  failures.own = run_observed_pass(model, *forward_loop, layers, [limit](AwqLayer& layer, const at::Tensor& x) {
    accumulate_magnitudes(layer, x, limit);
  });
  // One int64 sum over the data-parallel ranks: every layer's sums and tokens, which slices
  // each rank holds, then a flag per rank that failed.
  std::vector<at::Tensor> token_counts(layers.size());
  std::vector<at::Tensor*> pass1;
  for (size_t i = 0; i < layers.size(); ++i) {
    token_counts[i] = at::full({1}, layers[i].tokens, at::kLong);
    pass1.push_back(&layers[i].magnitude_sum);
    pass1.push_back(&token_counts[i]);
  }
  at::Tensor slices = slice_indices(groups, at::kLong);
  at::Tensor rank_flags = failures.flags(world_size, rank, at::kLong);
  pass1.push_back(&slices);
  pass1.push_back(&rank_flags);
  all_reduce_fused(communicator, pass1, ReduceOp::kSum);
  check_same_slices(kMethod, slices, world_size);
  failures.read_flags(rank_flags);

  // One reduction over each tensor-parallel group: a column-parallel rank's column sums
  // (it holds some of the rows), the extremes of the scales of every alpha of a row-parallel
  // rank (it holds a slice of them), and whether a rank failed, so that no rank goes on
  // alone. A column-parallel rank then computes its scales, which span the whole input.
  std::vector<bool> seen(layers.size());
  std::vector<at::Tensor> extremes(layers.size());
  SplitReduction pass1_groups;
  for (size_t i = 0; i < layers.size(); ++i) {
    AwqLayer& layer = layers[i];
    layer.tokens = token_counts[i].item<int64_t>();
    seen[i] = layer.tokens > 0;
    if (layer.split == AwqSplit::kOutput) {
      pass1_groups.add(layer.weight_slot.layer, &column_sums[i], ReduceOp::kSum);
      continue;
    }
    extremes[i] = failures.any() || !seen[i] ? at::zeros({alpha_count, 2}, at::kFloat)
                                             : compute_scales(layer, column_sums[i], alphas);
    if (layer.split == AwqSplit::kInput) pass1_groups.add(layer.weight_slot.layer, &extremes[i], ReduceOp::kMax);
  }
  std::vector<at::Tensor> group_flags = failures.add_group_flags(pass1_groups, groups, at::kFloat, ReduceOp::kMax);
  pass1_groups.run();
  failures.read_group_flags(group_flags);
  failures.throw_if_any();
  throw_if_unseen(kMethod, layers, seen, "");
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i].split == AwqSplit::kOutput) extremes[i] = compute_scales(layers[i], column_sums[i], alphas);
  }

  // Normalized scales, their inverses, and the weight amax each would give (shared over the
  // group where the layer reports it whole, as max calibration shares it).
  SplitReduction shared_amax;
  for (size_t i = 0; i < layers.size(); ++i) {
    AwqLayer& layer = layers[i];
    const at::Tensor weight = layer.weight_slot.weight().detach().to(at::kFloat);
    layer.probe = weight_probe(layer);
    layer.weight_amax.resize(alphas.size());
    for (int64_t a = 0; a < alpha_count; ++a) {
      const at::Tensor largest = extremes[i][a][0];
      const at::Tensor smallest = -extremes[i][a][1];
      layer.scales[a] = layer.scales[a] / at::sqrt(largest * smallest);
      layer.inverse_scales.push_back(at::reciprocal(layer.scales[a]));
      layer.weight_amax[a] = layer.probe->compute_amax(weight * layer.scales[a].unsqueeze(0));
      if (reported_whole(layer, "weight_quantizer._amax", layer.weight_amax[a])) {
        shared_amax.add(layer.weight_slot.layer, &layer.weight_amax[a], ReduceOp::kMax);
      }
    }
    layer.errors = at::zeros({alpha_count}, at::kDouble);
  }
  shared_amax.run();

  // Pass 2: the output error of every alpha. Column-parallel ranks hold some output features
  // each: their errors are summed over the group, in one reduction per group that also
  // carries the failure flag; then everything is summed over the data-parallel ranks.
  failures = PassFailures(kMethod);
  failures.own = run_observed_pass(model, *forward_loop, layers,
                                   [](AwqLayer& layer, const at::Tensor& x) { accumulate_errors(layer, x); });
  SplitReduction pass2_groups;
  for (AwqLayer& layer : layers) {
    if (layer.split == AwqSplit::kOutput) pass2_groups.add(layer.weight_slot.layer, &layer.errors, ReduceOp::kSum);
  }
  group_flags = failures.add_group_flags(pass2_groups, groups, at::kDouble, ReduceOp::kSum);
  pass2_groups.run();
  failures.read_group_flags(group_flags);

  std::vector<at::Tensor> element_counts(layers.size());
  std::vector<at::Tensor*> pass2;
  for (size_t i = 0; i < layers.size(); ++i) {
    element_counts[i] = at::full({1}, static_cast<double>(layers[i].elements), at::kDouble);
    pass2.push_back(&layers[i].errors);
    pass2.push_back(&element_counts[i]);
  }
  failures.sum_with_flags(communicator, pass2);
  failures.throw_if_any();
  for (size_t i = 0; i < layers.size(); ++i) seen[i] = element_counts[i].item<double>() > 0;
  throw_if_unseen(kMethod, layers, seen, " in the search pass");

  // Apply the best alpha: the first of the least error, the same on every rank since every
  // rank holds the same reduced errors.
  std::vector<int64_t> best(layers.size(), 0);
  for (size_t i = 0; i < layers.size(); ++i) {
    AwqLayer& layer = layers[i];
    double least = std::numeric_limits<double>::infinity();
    for (int64_t a = 0; a < alpha_count; ++a) {
      const double error = layer.errors[a].item<double>();
      if (error < least) {
        least = error;
        best[i] = a;
      }
    }
    at::Tensor weight = layer.weight_slot.weight();
    weight.detach().mul_(layer.scales[best[i]].unsqueeze(0));
    // An existing pre_quant_scale already acted on what the statistics saw: compose.
    at::Tensor pre_quant_scale = layer.inverse_scales[best[i]];
    if (layer.input_quantizer->has_pre_quant_scale()) {
      pre_quant_scale = layer.input_quantizer->pre_quant_scale().to(at::kFloat) * pre_quant_scale;
    }
    layer.input_quantizer->set_pre_quant_scale(pre_quant_scale);
    // The amax of the scaled weight; where the layer reports it whole, the candidate's,
    // already shared over the group: the maximum of the same float32 products, rounded to
    // the weight's dtype as the product in place rounds each of them.
    const at::Tensor amax = layer.weight_quantizer->compute_amax(weight);
    const bool shared = reported_whole(layer, "weight_quantizer._amax", amax);
    layer.weight_quantizer->set_amax(
        shared ? layer.weight_amax[best[i]].to(weight.scalar_type()).to(amax.scalar_type()).reshape(amax.sizes())
               : amax);
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    result.alphas.emplace_back(layers[i].name, alphas[best[i]]);
    result.weight_factors[layers[i].name] = layers[i].scales[best[i]];
  }
  return result;
}

}  // namespace quantization
}  // namespace mto
