#include "modes/quantization/smoothquant.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "distributed/tensor_slice.h"
#include "modes/quantization/calibrate.h"
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
                      weight->quantizer()->attributes().enable() && is_int8(weight->quantizer()->attributes()) &&
                      weight->quantizer()->attributes().block_size() == 0;
    if (!fits) {
      throw ApplyModeError(absl::StrCat(
          "smoothquant: layer ", input.layer_name, " (", input.layer_class,
          ") cannot be smoothed: SmoothQuant takes nn.Linear layers whose input (one scale per tensor) and weight "
          "(one scale per tensor or per channel, no blocks) quantizers are both 8-bit integers; disable its input "
          "quantizer or use the int8 preset"));
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
  MaxCalibration calibration(model, forward_loop, communicator);

  // The smoothing needs statistics that span a tensor-parallel group, which travel in max
  // calibration's one reduction over it:
  // - a column-parallel rank holds some output rows of a whole input: the weight's column
  //   maxima span the group, and the rest follows on each rank from their maximum (a weight
  //   amax reported whole, one per tensor, too: the largest |W_ij| / s_j of column j is its
  //   column maximum's, rounded alike);
  // - a row-parallel rank holds whole columns of its slice of the input, so it smooths its
  //   slice at once; the input amax and the amax of every output row's weight (a row spans
  //   the group) are then maxima over the group.
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> a_max(layers.size()), w_max(layers.size()), s(layers.size());
  std::vector<at::Tensor> input_amax(layers.size()), weight_amax(layers.size());
  std::vector<bool> column_maxima_first(layers.size());
  // The weight divided by s, rounded to the weight's dtype as the division in place rounds.
  auto smoothed = [&](size_t i, const at::Tensor& weight) {
    return (weight * (1 / s[i]).unsqueeze(0)).to(layers[i].weight.weight().scalar_type());
  };
  auto smooth = [&](size_t i) {
    const double tiny = std::ldexp(1.0, -31);
    at::Tensor scale = w_max[i].pow(1 - alpha) / a_max[i].pow(alpha);
    s[i] = at::where(a_max[i] <= tiny, at::ones_like(scale), scale).clamp(1e-4, 1e4);
    input_amax[i] = (a_max[i] * s[i]).max();
    weight_amax[i] = layers[i].weight.quantizer()->compute_amax(smoothed(i, layers[i].weight.weight().detach()));
  };
  for (size_t i = 0; i < layers.size(); ++i) {
    a_max[i] = calibration.failed() ? at::zeros({layers[i].input.feature_size()}, at::kFloat)
                                    : calibration.amax(layers[i].input.quantizer()).to(at::kFloat);
    w_max[i] = layers[i].weight.weight().detach().abs().to(at::kFloat).amax(0);
    const SplitModule* split = split_over_ranks(layers[i].input.layer);
    nn::DynamicLayer* layer = layers[i].input.layer;
    column_maxima_first[i] = split != nullptr && !split->slice_of("input_quantizer._amax", a_max[i]);
    if (column_maxima_first[i]) {
      calibration.split_reduction().add(layer, &w_max[i], ReduceOp::kMax);
      continue;
    }
    smooth(i);
    if (split != nullptr) {
      calibration.split_reduction().add(layer, &input_amax[i], ReduceOp::kMax);
      if (!split->slice_of("weight_quantizer._amax", weight_amax[i])) {
        calibration.split_reduction().add(layer, &weight_amax[i], ReduceOp::kMax);
      }
    }
  }
  calibration.finish();

  SmoothQuantResult result;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (column_maxima_first[i]) {
      // The input amax as max calibration shared it over the group (the ranks' inputs are
      // the same whole tensor).
      a_max[i] = layers[i].input.quantizer()->amax().to(at::kFloat);
      smooth(i);
      if (!split_over_ranks(layers[i].input.layer)->slice_of("weight_quantizer._amax", weight_amax[i])) {
        const at::Tensor columns = smoothed(i, w_max[i].unsqueeze(0));
        weight_amax[i] = layers[i].weight.quantizer()->compute_amax(columns).reshape(weight_amax[i].sizes());
      }
    }
    const at::Tensor factor = 1 / s[i];
    layers[i].weight.weight().detach().mul_(factor.unsqueeze(0));
    result.weight_factors[layers[i].input.layer_name] = factor;
    layers[i].input.quantizer()->set_pre_quant_scale(s[i]);
    QuantizerAttributes attributes = layers[i].input.quantizer()->attributes();
    attributes.clear_axis();
    layers[i].input.quantizer()->set_attributes(attributes);
    layers[i].input.quantizer()->set_amax(input_amax[i]);
    layers[i].weight.quantizer()->set_amax(weight_amax[i]);
  }
  return result;
}

}  // namespace quantization
}  // namespace mto
