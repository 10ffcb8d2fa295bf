#include "modes/quantization/awq_lite.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "distributed/tensor_slice.h"
#include "modes/quantization/quantized_model.h"
#include "modes/quantization/split_reduction.h"
#include "modes/quantization/tensor_quantizer.h"
#include "opt/errors.h"
#include "opt/nn/dynamic_layer.h"

namespace mto {
namespace quantization {
namespace {

constexpr char kObserverName[] = "awq_lite_observer";

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

// Which features of a layer its tensor-parallel ranks split.
enum class Split {
  kNone,    // the layer is whole on this rank
  kInput,   // RowParallelLinear: this rank holds columns of W and gets its slice of x
  kOutput,  // ColumnParallelLinear: this rank holds rows of W and gets the whole x
};

// A layer AWQ-lite smooths, and what the passes gather for it.
struct AwqLayer {
  std::string name;
  QuantizerSlot weight_slot;
  TensorQuantizerImpl* input_quantizer = nullptr;  // disabled; gets the pre_quant_scale
  TensorQuantizerImpl* weight_quantizer = nullptr;
  Split split = Split::kNone;
  Communicator* group = nullptr;  // the tensor-parallel group when split
  int64_t rows = 0;               // output rows of the whole layer

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

std::string layer_names(const std::vector<AwqLayer>& layers) {
  std::vector<std::string> names;
  for (const AwqLayer& layer : layers) names.push_back(layer.name);
  return absl::StrJoin(names, ", ");
}

// Whether the tensor `key` of `layer` is reported whole by a layer split over ranks, while
// each rank computes it from its slice (so the ranks must share it).
bool reported_whole(const AwqLayer& layer, const std::string& key, const at::Tensor& local) {
  if (layer.split == Split::kNone) return false;
  return !dynamic_cast<const SplitModule*>(layer.weight_slot.layer)->slice_of(key, local).has_value();
}

// The layers to smooth; throws ApplyModeError for an enabled weight quantizer AWQ-lite cannot
// calibrate.
std::vector<AwqLayer> awq_layers(torch::nn::Module& model) {
  const std::vector<QuantizerSlot> slots = quantized_slots(model);
  std::vector<AwqLayer> out;
  for (const QuantizerSlot& slot : slots) {
    if (slot.slot != nn::Slot::kWeight || !slot.quantizer()->attributes().enable()) continue;
    if (slot.layer_class != "nn.Linear") {
      throw ApplyModeError(absl::StrCat("awq_lite: layer ", slot.layer_name, " (", slot.layer_class,
                                        ") has an enabled weight quantizer; AWQ-lite smooths nn.Linear "
                                        "layers only, disable it"));
    }
    TensorQuantizerImpl* input = nullptr;
    for (const QuantizerSlot& other : slots) {
      if (other.layer == slot.layer && other.slot == nn::Slot::kInput) input = other.quantizer();
    }
    if (input == nullptr) {
      throw ApplyModeError(absl::StrCat("awq_lite: layer ", slot.layer_name,
                                        " has no input quantizer to hold its pre_quant_scale"));
    }
    if (input->attributes().enable()) {
      throw ApplyModeError(absl::StrCat("awq_lite: layer ", slot.layer_name,
                                        " has an enabled input quantizer; AWQ-lite here calibrates "
                                        "weight-only formats (W4A16), disable it"));
    }
    if (slot.quantizer()->has_pre_quant_scale()) {
      throw ApplyModeError(absl::StrCat("awq_lite: ", slot.name,
                                        " has a pre_quant_scale, which AWQ-lite does not take into account"));
    }
    AwqLayer layer;
    layer.name = slot.layer_name;
    layer.weight_slot = slot;
    layer.input_quantizer = input;
    layer.weight_quantizer = slot.quantizer();
    const at::Tensor weight = slot.weight();
    layer.rows = weight.size(0);
    const auto* split = dynamic_cast<const SplitModule*>(slot.layer);
    if (split != nullptr && split->split_group()->world_size() > 1) {
      // The weight's split dimension says which features are split: its columns are the
      // input features (then `input_quantizer._pre_quant_scale` is a slice as well), its
      // rows the output features (then the input is whole on every rank).
      if (const std::optional<TensorSlice> slice = split->slice_of("weight", weight)) {
        layer.split = slice->dim == 1 ? Split::kInput : Split::kOutput;
        layer.group = split->split_group().get();
        layer.rows = slice->global_shape[0];
      }
    }
    layer.magnitude_sum = at::zeros({weight.size(1)}, at::kLong);
    out.push_back(std::move(layer));
  }
  return out;
}

// One layer of every tensor-parallel group of more than one rank that a layer of `model` is
// split over, in module order: every rank of such a group joins its collectives, so a
// failure flag sent over it reaches them all.
std::vector<nn::DynamicLayer*> split_group_layers(torch::nn::Module& model) {
  std::vector<nn::DynamicLayer*> out;
  std::vector<const Communicator*> seen;
  for (const auto& [name, layer] : nn::named_dynamic_layers(model)) {
    const auto* split = dynamic_cast<const SplitModule*>(layer);
    if (split == nullptr || split->split_group()->world_size() == 1) continue;
    const Communicator* group = split->split_group().get();
    if (std::find(seen.begin(), seen.end(), group) != seen.end()) continue;
    seen.push_back(group);
    out.push_back(layer);
  }
  return out;
}

// alpha = k * step for k = 0, 1, ... up to the first that reaches 1, which is set to 1 (for
// step 0.1: 0, 0.1, ..., 1, as Model Optimizer's arange).
std::vector<double> alpha_grid(double step) {
  const auto steps = static_cast<int64_t>(std::ceil(1.0 / step - 1e-9));
  std::vector<double> out;
  for (int64_t k = 0; k <= steps; ++k) out.push_back(std::min(static_cast<double>(k) * step, 1.0));
  return out;
}

// The weight quantizer's block size along the input features, 0 if it has no blocks there
// (Model Optimizer reads block_sizes[-1] or block_sizes[1]).
int64_t input_block_size(const AwqLayer& layer) {
  const QuantizerAttributes& attributes = layer.weight_quantizer->attributes();
  if (attributes.block_size() > 0 && (attributes.block_axis() == -1 || attributes.block_axis() == 1)) {
    return attributes.block_size();
  }
  return 0;
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

// w_mean of every layer: |W| divided by its block's max |W| (+ FLT_MIN), averaged over the
// output rows of the whole layer. Column sums are taken in float64, so the mean hardly
// depends on how the rows are split. Collective over the tensor-parallel groups that hold
// row-parallel layers without input blocks (their rows span ranks) or column-parallel
// layers (their rows are split).
void compute_weight_means(std::vector<AwqLayer>& layers) {
  std::vector<at::Tensor> block_max(layers.size());
  SplitReduction row_maxima;
  for (size_t i = 0; i < layers.size(); ++i) {
    block_max[i] = weight_blocks(layers[i]).amax(-1, /*keepdim=*/true);
    if (layers[i].split == Split::kInput && input_block_size(layers[i]) == 0) {
      row_maxima.add(layers[i].weight_slot.layer, &block_max[i]);
    }
  }
  row_maxima.run(ReduceOp::kMax);

  std::vector<at::Tensor> sums(layers.size());
  SplitReduction column_sums;
  for (size_t i = 0; i < layers.size(); ++i) {
    const at::Tensor blocks = weight_blocks(layers[i]);
    const int64_t in = layers[i].magnitude_sum.size(0);
    const at::Tensor normalized = (blocks / (block_max[i] + kTiny)).reshape({blocks.size(0), -1}).narrow(1, 0, in);
    sums[i] = normalized.to(at::kDouble).sum(0);
    if (layers[i].split == Split::kOutput) column_sums.add(layers[i].weight_slot.layer, &sums[i]);
  }
  column_sums.run(ReduceOp::kSum);
  for (size_t i = 0; i < layers.size(); ++i) {
    layers[i].w_mean = (sums[i] / static_cast<double>(layers[i].rows)).to(at::kFloat);
  }
}

// A transform that shows the layer's input to `observe` and passes it on unchanged.
class AwqObserverImpl : public nn::TransformImpl {
 public:
  explicit AwqObserverImpl(std::function<void(const at::Tensor&)> observe) : observe_(std::move(observe)) {}
  at::Tensor forward(const at::Tensor& x) override {
    observe_(x);
    return x;
  }

 private:
  std::function<void(const at::Tensor&)> observe_;
};

// Puts an observer as the last input transform of every layer (after the input quantizer,
// so it sees what the layer's weight multiplies) and always takes them out again.
class ObserverScope {
 public:
  ObserverScope(std::vector<AwqLayer>& layers, const std::function<void(AwqLayer&, const at::Tensor&)>& observe) {
    try {
      for (AwqLayer& layer : layers) {
        layer.weight_slot.layer->add_transform(
            nn::Slot::kInput, kObserverName,
            std::make_shared<AwqObserverImpl>([&layer, observe](const at::Tensor& x) { observe(layer, x); }));
        installed_.push_back(layer.weight_slot.layer);
      }
    } catch (...) {
      remove();
      throw;
    }
  }
  ~ObserverScope() { remove(); }
  ObserverScope(const ObserverScope&) = delete;
  ObserverScope& operator=(const ObserverScope&) = delete;

 private:
  void remove() {
    for (nn::DynamicLayer* layer : installed_) layer->remove_transform(kObserverName);
    installed_.clear();
  }

  std::vector<nn::DynamicLayer*> installed_;
};

// Lets the weights of the layers through unquantized while the forward loop runs (and
// always quantizes them again): as in Model Optimizer, both passes see, and pass on, each
// layer's unquantized output.
class UnquantizedWeights {
 public:
  explicit UnquantizedWeights(const std::vector<AwqLayer>& layers) {
    for (const AwqLayer& layer : layers) {
      set_enable(layer.weight_quantizer, false);
      quantizers_.push_back(layer.weight_quantizer);
    }
  }
  ~UnquantizedWeights() {
    for (TensorQuantizerImpl* quantizer : quantizers_) set_enable(quantizer, true);
  }
  UnquantizedWeights(const UnquantizedWeights&) = delete;
  UnquantizedWeights& operator=(const UnquantizedWeights&) = delete;

 private:
  static void set_enable(TensorQuantizerImpl* quantizer, bool enable) {
    QuantizerAttributes attributes = quantizer->attributes();
    attributes.set_enable(enable);
    quantizer->set_attributes(attributes);
  }

  std::vector<TensorQuantizerImpl*> quantizers_;
};

// `x` as [tokens, features]; throws unless its last dimension is the layer's input features.
at::Tensor tokens_of(const AwqLayer& layer, const at::Tensor& x) {
  const int64_t in = layer.magnitude_sum.size(0);
  if (x.dim() == 0 || x.size(-1) != in) {
    throw ApplyModeError(absl::StrCat("awq_lite: layer ", layer.name, " got an input of shape [",
                                      absl::StrJoin(x.sizes(), ", "), "], expected [..., ", in, "]"));
  }
  return x.detach().reshape({-1, in});
}

// Pass 1: adds |x| per input channel, in fixed point, and the tokens to the layer's sums.
void accumulate_magnitudes(AwqLayer& layer, const at::Tensor& x, int64_t limit) {
  const at::Tensor tokens = tokens_of(layer, x);
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
  const at::Tensor tokens = tokens_of(layer, x);
  if (tokens.numel() == 0) return;
  const at::Tensor input = tokens.to(at::kFloat);
  const at::Tensor weight = layer.weight_slot.weight().detach().to(at::kFloat);
  const at::Tensor reference = at::linear(input, weight);
  std::vector<at::Tensor> differences;
  for (size_t a = 0; a < layer.scales.size(); ++a) {
    layer.probe->set_amax(layer.weight_amax[a]);
    const at::Tensor quantized = layer.probe->forward(weight * layer.scales[a].unsqueeze(0));
    at::Tensor difference = at::linear(input * layer.inverse_scales[a], quantized) - reference;
    if (layer.split == Split::kInput) {
      differences.push_back(std::move(difference));
    } else {
      layer.errors[static_cast<int64_t>(a)].add_(difference.to(at::kDouble).square().sum());
    }
  }
  if (layer.split == Split::kInput) {
    // Each rank's output is its part of a sum over the group: the error is the sum's.
    at::Tensor stacked = at::stack(differences);
    layer.group->all_reduce(stacked, ReduceOp::kSum);
    layer.errors.add_(stacked.to(at::kDouble).square().sum({1, 2}));
  }
  layer.elements += reference.numel();
}

// Reduces `tensors` (all of one dtype) over `communicator` in one all-reduce and writes the
// results back; does nothing without a communicator.
void all_reduce_fused(Communicator* communicator, const std::vector<at::Tensor*>& tensors, ReduceOp op) {
  if (communicator == nullptr) return;
  std::vector<at::Tensor> flat;
  for (const at::Tensor* tensor : tensors) flat.push_back(tensor->reshape({-1}));
  at::Tensor buffer = at::cat(flat);
  communicator->all_reduce(buffer, op);
  int64_t offset = 0;
  for (at::Tensor* tensor : tensors) {
    *tensor = buffer.narrow(0, offset, tensor->numel()).reshape(tensor->sizes()).clone();
    offset += tensor->numel();
  }
}

// How a forward loop ended on the ranks, as the collectives report it.
struct Failures {
  std::exception_ptr own;   // this rank's error
  int failed_rank = -1;     // the first rank of the data-parallel communicator that failed
  bool elsewhere = false;   // a rank of another replica or of a tensor-parallel group failed

  bool any() const { return own || failed_rank >= 0 || elsewhere; }

  // Per data-parallel rank, 1 where its loop failed (summed over the ranks).
  at::Tensor flags(int world_size, int rank, at::ScalarType type) const {
    at::Tensor out = at::zeros({world_size}, type);
    if (own) out[rank] = 1;
    return out;
  }
  void read_flags(const at::Tensor& summed) {
    for (int64_t r = 0; r < summed.numel(); ++r) {
      if (summed[r].item<double>() > 0) {
        failed_rank = static_cast<int>(r);
        return;
      }
    }
  }

  // Throws if a rank failed: this rank's own error, or ApplyModeError naming the other.
  void throw_if_any() const {
    if (own) std::rethrow_exception(own);
    if (failed_rank >= 0) {
      throw ApplyModeError(absl::StrCat("awq_lite failed on rank ", failed_rank, " (its own error says why)"));
    }
    if (elsewhere) {
      throw ApplyModeError("awq_lite failed on a rank of another data-parallel replica or of this rank's "
                           "tensor-parallel group (its own error says why)");
    }
  }
};

// Per split group, a flag saying whether a rank known here failed; the reduction sends it
// over the group with whatever else it holds.
std::vector<at::Tensor> add_failure_flags(SplitReduction& reduction, const std::vector<nn::DynamicLayer*>& groups,
                                          const Failures& failures, at::ScalarType type) {
  // Sized first: the reduction keeps pointers to the flags.
  std::vector<at::Tensor> flags(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    flags[g] = at::full({1}, failures.any() ? 1 : 0, type);
    reduction.add(groups[g], &flags[g]);
  }
  return flags;
}

void throw_if_missing(const std::vector<AwqLayer>& layers, const std::vector<bool>& seen, const char* pass) {
  std::vector<std::string> missing;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (!seen[i]) missing.push_back(layers[i].name);
  }
  if (!missing.empty()) {
    throw ApplyModeError(absl::StrCat("awq_lite: no rank saw calibration data for ", absl::StrJoin(missing, ", "),
                                      pass, " (does the forward loop run these layers?)"));
  }
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

  compute_weight_means(layers);

  // Pass 1: per input channel, the sum of |x| over this rank's tokens, exact.
  Failures failures;
  try {
    const int64_t limit = kSumLimit / world_size;
    UnquantizedWeights unquantized(layers);
    ObserverScope observers(layers, [limit](AwqLayer& layer, const at::Tensor& x) {
      accumulate_magnitudes(layer, x, limit);
    });
    (*forward_loop)(model);
  } catch (...) {
    failures.own = std::current_exception();
  }
  // One int64 sum over the data-parallel ranks: every layer's sums and tokens, then a flag
  // per rank that failed.
  std::vector<at::Tensor> token_counts(layers.size());
  std::vector<at::Tensor*> pass1;
  for (size_t i = 0; i < layers.size(); ++i) {
    token_counts[i] = at::full({1}, layers[i].tokens, at::kLong);
    pass1.push_back(&layers[i].magnitude_sum);
    pass1.push_back(&token_counts[i]);
  }
  at::Tensor rank_flags = failures.flags(world_size, rank, at::kLong);
  pass1.push_back(&rank_flags);
  all_reduce_fused(communicator, pass1, ReduceOp::kSum);
  failures.read_flags(rank_flags);

  // The scales of every alpha. A rank of a row-parallel layer holds a slice of them, so their
  // extremes are reduced over its group; that reduction (one per group) also tells the group
  // whether a rank failed, so that no rank goes on alone.
  std::vector<bool> seen(layers.size());
  std::vector<at::Tensor> extremes(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    AwqLayer& layer = layers[i];
    layer.tokens = token_counts[i].item<int64_t>();
    seen[i] = layer.tokens > 0;
    extremes[i] = at::zeros({alpha_count, 2}, at::kFloat);
    if (failures.any() || !seen[i]) continue;
    // The mean over all tokens: Model Optimizer averages per-batch means instead, which
    // depends on how the data falls into batches and onto ranks.
    const at::Tensor act_mean =
        (layer.magnitude_sum.to(at::kDouble) / std::ldexp(static_cast<double>(layer.tokens), kFractionBits))
            .to(at::kFloat);
    for (int64_t a = 0; a < alpha_count; ++a) {
      const double alpha = alphas[a];
      at::Tensor s = (act_mean.pow(alpha) / (layer.w_mean.pow(1 - alpha) + kTiny)).clamp(1e-4, 1e4);
      extremes[i][a][0] = s.max();
      extremes[i][a][1] = -s.min();
      layer.scales.push_back(std::move(s));
    }
  }
  SplitReduction pass1_groups;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i].split == Split::kInput) pass1_groups.add(layers[i].weight_slot.layer, &extremes[i]);
  }
  std::vector<at::Tensor> group_flags = add_failure_flags(pass1_groups, groups, failures, at::kFloat);
  pass1_groups.run(ReduceOp::kMax);
  for (const at::Tensor& flag : group_flags) failures.elsewhere = failures.elsewhere || flag.item<float>() > 0;
  failures.throw_if_any();
  throw_if_missing(layers, seen, "");

  // Normalized scales, their inverses, and the weight amax each would give (shared over the
  // group where the layer reports it whole, as max calibration shares it).
  SplitReduction shared_amax;
  for (size_t i = 0; i < layers.size(); ++i) {
    AwqLayer& layer = layers[i];
    const at::Tensor weight = layer.weight_slot.weight().detach().to(at::kFloat);
    layer.probe = std::make_shared<TensorQuantizerImpl>(layer.weight_quantizer->quantizer_name(),
                                                        layer.weight_quantizer->attributes(), /*keepdim_amax=*/true);
    layer.weight_amax.resize(alphas.size());
    for (int64_t a = 0; a < alpha_count; ++a) {
      const at::Tensor largest = extremes[i][a][0];
      const at::Tensor smallest = -extremes[i][a][1];
      layer.scales[a] = layer.scales[a] / at::sqrt(largest * smallest);
      layer.inverse_scales.push_back(at::reciprocal(layer.scales[a]));
      layer.weight_amax[a] = layer.probe->compute_amax(weight * layer.scales[a].unsqueeze(0));
      if (reported_whole(layer, "weight_quantizer._amax", layer.weight_amax[a])) {
        shared_amax.add(layer.weight_slot.layer, &layer.weight_amax[a]);
      }
    }
    layer.errors = at::zeros({alpha_count}, at::kDouble);
  }
  shared_amax.run(ReduceOp::kMax);

  // Pass 2: the output error of every alpha. Column-parallel ranks hold some output features
  // each: their errors are summed over the group, in one reduction per group that also
  // carries the failure flag; then everything is summed over the data-parallel ranks.
  failures = Failures();
  try {
    UnquantizedWeights unquantized(layers);
    ObserverScope observers(layers, [](AwqLayer& layer, const at::Tensor& x) { accumulate_errors(layer, x); });
    (*forward_loop)(model);
  } catch (...) {
    failures.own = std::current_exception();
  }
  SplitReduction pass2_groups;
  for (AwqLayer& layer : layers) {
    if (layer.split == Split::kOutput) pass2_groups.add(layer.weight_slot.layer, &layer.errors);
  }
  group_flags = add_failure_flags(pass2_groups, groups, failures, at::kDouble);
  pass2_groups.run(ReduceOp::kSum);
  bool group_failed = false;
  for (const at::Tensor& flag : group_flags) group_failed = group_failed || flag.item<double>() > 0;

  std::vector<at::Tensor> element_counts(layers.size());
  std::vector<at::Tensor*> pass2;
  for (size_t i = 0; i < layers.size(); ++i) {
    element_counts[i] = at::full({1}, static_cast<double>(layers[i].elements), at::kDouble);
    pass2.push_back(&layers[i].errors);
    pass2.push_back(&element_counts[i]);
  }
  rank_flags = failures.flags(world_size, rank, at::kDouble);
  at::Tensor elsewhere = at::full({1}, group_failed ? 1.0 : 0.0, at::kDouble);
  pass2.push_back(&rank_flags);
  pass2.push_back(&elsewhere);
  all_reduce_fused(communicator, pass2, ReduceOp::kSum);
  failures.read_flags(rank_flags);
  failures.elsewhere = elsewhere.item<double>() > 0;
  failures.throw_if_any();
  for (size_t i = 0; i < layers.size(); ++i) seen[i] = element_counts[i].item<double>() > 0;
  throw_if_missing(layers, seen, " in the search pass");

  // Apply the best alpha: the first of the least error, the same on every rank since every
  // rank holds the same reduced errors.
  std::vector<at::Tensor> amax(layers.size());
  std::vector<int64_t> best(layers.size(), 0);
  SplitReduction shared_final_amax;
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
    amax[i] = layer.weight_quantizer->compute_amax(weight);
    if (reported_whole(layer, "weight_quantizer._amax", amax[i])) {
      shared_final_amax.add(layer.weight_slot.layer, &amax[i]);
    }
  }
  shared_final_amax.run(ReduceOp::kMax);
  for (size_t i = 0; i < layers.size(); ++i) {
    layers[i].weight_quantizer->set_amax(amax[i]);
    result.alphas.emplace_back(layers[i].name, alphas[best[i]]);
    result.weight_factors[layers[i].name] = layers[i].scales[best[i]];
  }
  return result;
}

}  // namespace quantization
}  // namespace mto
