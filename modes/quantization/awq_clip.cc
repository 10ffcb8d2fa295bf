#include "modes/quantization/awq_clip.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
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

constexpr char kMethod[] = "awq_clip";

// A layer whose block amaxes AWQ clip searches, and its statistic.
struct ClipLayer : AwqTarget {
  explicit ClipLayer(AwqTarget target) : AwqTarget(std::move(target)) {}

  int64_t block = 0;   // input features per block
  int64_t blocks = 0;  // blocks per row on this rank
  at::Tensor gram;     // float64 [blocks, block, block]: sum over tokens of x_block^T x_block
                       // (allocated when the pass starts)
  int64_t tokens = 0;
};

std::vector<ClipLayer> clip_layers(torch::nn::Module& model) {
  std::vector<ClipLayer> out;
  for (AwqTarget& target : awq_targets(model, kMethod)) {
    const int64_t block = input_block_size(target);
    if (block == 0) {
      throw ApplyModeError(absl::StrCat(kMethod, ": ", target.weight_quantizer->quantizer_name(),
                                        " has no blocks along the input features; awq_clip searches a clip ratio "
                                        "per block (block_sizes {-1: N}), disable it or use awq_lite"));
    }
    ClipLayer layer(std::move(target));
    layer.block = block;
    layer.blocks = (layer.in + layer.block - 1) / layer.block;
    out.push_back(std::move(layer));
  }
  return out;
}

// `t` [rows, in] zero-padded to whole blocks and viewed as [blocks, rows, block].
at::Tensor by_block(const ClipLayer& layer, const at::Tensor& t) {
  const int64_t padding = layer.blocks * layer.block - layer.in;
  const at::Tensor padded = padding == 0 ? t : at::constant_pad_nd(t, {0, padding});
  return padded.reshape({t.size(0), layer.blocks, layer.block}).transpose(0, 1);
}

// Adds the tokens of `x` to the layer's Gram matrices, in float64 (each product of two
// float32 values is exact there).
void accumulate_gram(ClipLayer& layer, const at::Tensor& x) {
  const at::Tensor tokens = tokens_of(layer, x, kMethod).to(at::kDouble);
  if (tokens.numel() == 0) return;
  if (!at::isfinite(tokens).all().item<bool>()) {
    throw ApplyModeError(
        absl::StrCat(kMethod, ": layer ", layer.name, ": the calibration data holds infinities or NaNs"));
  }
  const at::Tensor blocked = by_block(layer, tokens);  // [blocks, tokens, block]
  layer.gram.add_(at::bmm(blocked.transpose(1, 2), blocked));
  layer.tokens += tokens.size(0);
}

// 1, 1 - step, 1 - 2 * step, ... down to `smallest` (included when the steps reach it).
std::vector<double> clip_ratios(const AwqClipOptions& options) {
  std::vector<double> out;
  for (int64_t k = 0;; ++k) {
    const double ratio = 1.0 - static_cast<double>(k) * options.shrink_step;
    if (ratio < options.min_clip_ratio - 1e-9) break;
    out.push_back(ratio);
  }
  return out;
}

// The ratio of least error for every block of the layer's weight, searched in order, rows
// at a time; sets the weight amax to it and returns the ratios [rows, blocks].
at::Tensor search_ratios(const ClipLayer& layer, const std::vector<double>& ratios, int64_t rows_at_a_time) {
  const at::Tensor weight = layer.weight_slot.weight().detach().to(at::kFloat);
  const std::shared_ptr<TensorQuantizerImpl> probe = weight_probe(layer);
  const at::Tensor amax = probe->compute_amax(weight);  // [rows, blocks, 1]
  const int64_t rows = weight.size(0);
  at::Tensor chosen = at::ones({rows, layer.blocks}, at::kFloat);
  for (int64_t first = 0; first < rows; first += rows_at_a_time) {
    const int64_t count = std::min(rows_at_a_time, rows - first);
    const at::Tensor w = weight.narrow(0, first, count);
    const at::Tensor block_amax = amax.narrow(0, first, count);
    at::Tensor least = at::full({layer.blocks, count}, std::numeric_limits<double>::infinity(), at::kDouble);
    at::Tensor best = at::ones({layer.blocks, count}, at::kFloat);
    for (const double ratio : ratios) {
      probe->set_amax(block_amax * ratio);
      const at::Tensor e = by_block(layer, (probe->forward(w) - w).to(at::kDouble));  // [blocks, count, block]
      const at::Tensor error = (at::bmm(e, layer.gram) * e).sum(-1);                 // [blocks, count]
      const at::Tensor better = error < least;
      least = at::where(better, error, least);
      best.masked_fill_(better, ratio);
    }
    chosen.narrow(0, first, count).copy_(best.t());
  }
  layer.weight_quantizer->set_amax(amax * chosen.unsqueeze(-1));
  return chosen;
}

}  // namespace

void check_awq_clip_options(const AwqClipOptions& options, const std::string& what) {
  if (!(options.min_clip_ratio > 0 && options.min_clip_ratio <= 1)) {
    throw ConfigError(absl::StrCat(what, ": min_clip_ratio must be in (0, 1], got ", options.min_clip_ratio));
  }
  if (!(options.shrink_step > 0 && options.shrink_step <= 1)) {
    throw ConfigError(absl::StrCat(what, ": shrink_step must be in (0, 1], got ", options.shrink_step));
  }
  if ((1 - options.min_clip_ratio) / options.shrink_step > 1000) {
    throw ConfigError(absl::StrCat(what, ": min_clip_ratio ", options.min_clip_ratio, " and shrink_step ",
                                   options.shrink_step, " make more than 1001 ratios to search"));
  }
  if (options.max_co_batch_size < 1) {
    throw ConfigError(absl::StrCat(what, ": max_co_batch_size must be at least 1, got ", options.max_co_batch_size));
  }
}

void check_awq_clip_layers(torch::nn::Module& model) { clip_layers(model); }

AwqClipResult calibrate_awq_clip(torch::nn::Module& model, const ForwardLoop* forward_loop, Communicator* communicator,
                                 const AwqClipOptions& options) {
  check_awq_clip_options(options, kMethod);
  std::vector<ClipLayer> layers = clip_layers(model);
  AwqClipResult result;
  if (layers.empty()) return result;
  if (forward_loop == nullptr || !*forward_loop) {
    throw ApplyModeError(absl::StrCat(kMethod, " needs the mode argument 'forward_loop' to calibrate ",
                                      layer_names(layers)));
  }
  torch::NoGradGuard no_grad;
  for (ClipLayer& layer : layers) layer.gram = at::zeros({layer.blocks, layer.block, layer.block}, at::kDouble);

  PassFailures failures(kMethod);
  failures.own = run_observed_pass(model, *forward_loop, layers,
                                   [](ClipLayer& layer, const at::Tensor& x) { accumulate_gram(layer, x); });
  // A failure flag over each tensor-parallel group, then one float64 sum over the
  // data-parallel ranks: every layer's Gram matrices and tokens, which slices each rank
  // holds, a flag per rank that failed, and whether a group saw a failure.
  const std::vector<nn::DynamicLayer*> groups = split_group_layers(model);
  SplitReduction group_failures;
  std::vector<at::Tensor> group_flags = failures.add_group_flags(group_failures, groups, at::kDouble, ReduceOp::kSum);
  group_failures.run();
  failures.read_group_flags(group_flags);
  std::vector<at::Tensor> token_counts(layers.size());
  std::vector<at::Tensor*> sums;
  for (size_t i = 0; i < layers.size(); ++i) {
    token_counts[i] = at::full({1}, static_cast<double>(layers[i].tokens), at::kDouble);
    sums.push_back(&layers[i].gram);
    sums.push_back(&token_counts[i]);
  }
  at::Tensor slices = slice_indices(groups, at::kDouble);
  sums.push_back(&slices);
  failures.sum_with_flags(communicator, sums);
  check_same_slices(kMethod, slices, communicator != nullptr ? communicator->world_size() : 1);
  failures.throw_if_any();
  std::vector<bool> seen(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) seen[i] = token_counts[i].item<double>() > 0;
  throw_if_unseen(kMethod, layers, seen, "");

  const std::vector<double> ratios = clip_ratios(options);
  for (const ClipLayer& layer : layers) {
    result.ratios.emplace_back(layer.name, search_ratios(layer, ratios, options.max_co_batch_size));
  }
  return result;
}

}  // namespace quantization
}  // namespace mto
