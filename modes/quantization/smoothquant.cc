#include "modes/quantization/smoothquant.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "distributed/tensor_slice.h"
#include "modes/quantization/quantized_model.h"
#include "modes/quantization/split_reduction.h"
#include "opt/errors.h"

namespace mto {
namespace quantization {
namespace {

// A layer SmoothQuant smooths: its enabled input and weight quantizers.
struct SmoothedLayer {
  QuantizerSlot input;
  QuantizerSlot weight;
};

bool is_int8(const QuantizerAttributes& attributes) {
  return attributes.num_bits() == 8 && attributes.exponent_bits() == 0;
}

// The layers to smooth; throws ApplyModeError for an enabled input quantizer SmoothQuant
// cannot handle.
std::vector<SmoothedLayer> smoothed_layers(torch::nn::Module& model) {
  std::vector<SmoothedLayer> out;
  const std::vector<QuantizerSlot> slots = quantized_slots(model);
  for (const QuantizerSlot& input : slots) {
    if (input.slot != nn::Slot::kInput || !input.quantizer()->attributes().enable()) continue;
    const QuantizerSlot* weight = nullptr;
    for (const QuantizerSlot& slot : slots) {
      if (slot.layer == input.layer && slot.slot == nn::Slot::kWeight) weight = &slot;
    }
    const bool fits = input.layer_class == "nn.Linear" && is_int8(input.quantizer()->attributes()) &&
                      !input.quantizer()->attributes().has_axis() && weight != nullptr &&
                      weight->quantizer()->attributes().enable() && is_int8(weight->quantizer()->attributes());
    if (!fits) {
      throw ApplyModeError(absl::StrCat(
          "smoothquant: layer ", input.layer_name, " (", input.layer_class,
          ") cannot be smoothed: SmoothQuant takes nn.Linear layers whose input (one scale per tensor) and weight "
          "quantizers are both 8-bit integers; disable its input quantizer or use the int8 preset"));
    }
    out.push_back({input, *weight});
  }
  return out;
}

}  // namespace

SmoothQuantResult calibrate_smoothquant(torch::nn::Module& model, const ForwardLoop* forward_loop,
                                        Communicator* communicator, double alpha) {
  const std::vector<SmoothedLayer> layers = smoothed_layers(model);
  // Per-input-channel activation maxima (and every other amax) from the data.
  for (const SmoothedLayer& layer : layers) {
    QuantizerAttributes attributes = layer.input.quantizer()->attributes();
    attributes.set_axis(-1);
    layer.input.quantizer()->set_attributes(attributes);
  }
  calibrate_max(model, forward_loop, communicator);

  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> a_max, w_max;
  SplitReduction column_maxima;
  for (const SmoothedLayer& layer : layers) {
    a_max.push_back(layer.input.quantizer()->amax().to(at::kFloat));
    w_max.push_back(layer.weight.weight().detach().abs().to(at::kFloat).amax(0));
  }
  // A column-parallel rank holds some output rows of a whole input: the column maxima span
  // the group. (A row-parallel rank holds whole columns of its slice of the input.)
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto* split = dynamic_cast<const SplitModule*>(layers[i].input.layer);
    if (split != nullptr && !split->slice_of("input_quantizer._amax", a_max[i])) {
      column_maxima.add(layers[i].input.layer, &w_max[i]);
    }
  }
  column_maxima.run(ReduceOp::kMax);

  SplitReduction shared;
  SmoothQuantResult result;
  std::vector<at::Tensor> input_amax(layers.size()), weight_amax(layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    const double tiny = std::ldexp(1.0, -31);
    at::Tensor s = w_max[i].pow(1 - alpha) / a_max[i].pow(alpha);
    s = at::where(a_max[i] <= tiny, at::ones_like(s), s).clamp(1e-4, 1e4);
    at::Tensor weight = layers[i].weight.weight();
    const at::Tensor factor = 1 / s;
    weight.detach().mul_(factor.unsqueeze(0));
    result.weight_factors[layers[i].input.layer_name] = factor;
    layers[i].input.quantizer()->set_pre_quant_scale(s);
    QuantizerAttributes attributes = layers[i].input.quantizer()->attributes();
    attributes.clear_axis();
    layers[i].input.quantizer()->set_attributes(attributes);
    input_amax[i] = (a_max[i] * s).max();
    weight_amax[i] = layers[i].weight.quantizer()->compute_amax(weight);
    // Whatever a split layer reports whole while each rank saw its part is shared.
    const auto* split = dynamic_cast<const SplitModule*>(layers[i].input.layer);
    if (split != nullptr) {
      shared.add(layers[i].input.layer, &input_amax[i]);
      if (!split->slice_of("weight_quantizer._amax", weight_amax[i])) shared.add(layers[i].input.layer, &weight_amax[i]);
    }
  }
  shared.run(ReduceOp::kMax);
  for (size_t i = 0; i < layers.size(); ++i) {
    layers[i].input.quantizer()->set_amax(input_amax[i]);
    layers[i].weight.quantizer()->set_amax(weight_amax[i]);
  }
  return result;
}

}  // namespace quantization
}  // namespace mto
