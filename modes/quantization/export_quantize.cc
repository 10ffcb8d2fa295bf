#include "modes/quantization/export_quantize.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <optional>
#include <set>
#include <stdexcept>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "modes/quantization/quantized_model.h"
#include "modes/quantization/real_quant.h"
#include "opt/errors.h"

namespace mto {
namespace quantization {
namespace {

// The quantizers of one layer, by slot; null where a slot has none.
struct LayerQuantizers {
  std::string name;
  nn::DynamicLayer* layer = nullptr;
  std::optional<QuantizerSlot> input, weight, output;
};

std::vector<LayerQuantizers> layers_with_quantizers(torch::nn::Module& model) {
  std::vector<LayerQuantizers> out;
  for (QuantizerSlot& slot : quantized_slots(model)) {
    if (out.empty() || out.back().name != slot.layer_name) {
      LayerQuantizers& added = out.emplace_back();
      added.name = slot.layer_name;
      added.layer = slot.layer;
    }
    LayerQuantizers& layer = out.back();
    (slot.slot == nn::Slot::kInput ? layer.input : slot.slot == nn::Slot::kWeight ? layer.weight : layer.output) =
        std::move(slot);
  }
  return out;
}

QuantizerAttributes attributes_of(const std::optional<QuantizerSlot>& slot) {
  return slot ? slot->quantizer()->attributes() : QuantizerAttributes();
}

std::string key_of(const std::string& layer, const std::string& key) {
  return layer.empty() ? key : absl::StrCat(layer, ".", key);
}

bool is_e4m3(const QuantizerAttributes& a) { return a.exponent_bits() == 4 && a.mantissa_bits() == 3; }
bool is_signed_int(const QuantizerAttributes& a, int bits) {
  return a.exponent_bits() == 0 && a.num_bits() == bits && !a.is_unsigned();
}

// A layer in its deployed form, computed before any layer changes.
struct DeployedLayer {
  LayerQuantizers quantizers;
  ExportedLayer record;
  at::Tensor codes;
  at::Tensor weight_scale;
  nn::Extent weight_scale_extent = nn::Extent::kWhole;
  at::Tensor input_scale;
  at::Tensor pre_quant_scale;
  std::vector<int64_t> weight_sizes;
};

[[noreturn]] void fail(const std::string& layer, const std::string& problem) {
  throw ApplyModeError(absl::StrCat("export_quantize: layer '", layer, "': ", problem));
}

DeployedLayer deploy(LayerQuantizers layer) {
  DeployedLayer out;
  const QuantizerAttributes weight = attributes_of(layer.weight);
  const QuantizerAttributes input = attributes_of(layer.input);
  out.record.set_quant_algo(deployed_quant_algo(layer.name, weight, input, attributes_of(layer.output)));
  if (weight.enable()) {
    const std::vector<std::string> transforms = layer.layer->transform_names(nn::Slot::kWeight);
    if (transforms != std::vector<std::string>{"weight_quantizer"}) {
      fail(layer.name, absl::StrCat("its weight passes through [", absl::StrJoin(transforms, ", "),
                                    "]; only a weight quantizer can be deployed (export sparsity first)"));
    }
    TensorQuantizerImpl& quantizer = *layer.weight->quantizer();
    if (!quantizer.has_amax()) fail(layer.name, "the weight quantizer has no amax: calibrate the model first");
    const at::Tensor weight_tensor = layer.weight->weight().detach();
    out.weight_sizes = weight_tensor.sizes().vec();
    const at::Tensor scale = quantizer_scale(weight, quantizer.amax());
    try {
      out.codes = encode_weight(weight_tensor, scale, weight);
    } catch (const std::invalid_argument& e) {
      fail(layer.name, e.what());
    }
    if (weight.block_size() > 0) {
      out.weight_scale = scale.reshape({out.weight_sizes[0], -1});
      out.weight_scale_extent = nn::Extent::kWeight;
      out.record.set_group_size(weight.block_size());
    } else if (weight.has_axis()) {
      out.weight_scale = scale.reshape({-1});
      out.weight_scale_extent = nn::Extent::kOutputFeatures;
    } else {
      out.weight_scale = scale.reshape({});
    }
    out.record.set_has_weight_scale(true);
  }
  if (input.enable()) {
    TensorQuantizerImpl& quantizer = *layer.input->quantizer();
    if (!quantizer.has_amax()) fail(layer.name, "the input quantizer has no amax: calibrate the model first");
    out.input_scale = quantizer_scale(input, quantizer.amax()).reshape({});
    out.record.set_has_input_scale(true);
  }
  if (layer.input && layer.input->quantizer()->has_pre_quant_scale()) {
    out.pre_quant_scale = layer.input->quantizer()->pre_quant_scale();
    out.record.set_has_pre_quant_scale(true);
  }
  out.quantizers = std::move(layer);
  return out;
}

// Puts the computed deployed form into the layer.
void apply(DeployedLayer& deployed) {
  LayerQuantizers& q = deployed.quantizers;
  nn::DynamicLayer& layer = *q.layer;
  torch::NoGradGuard no_grad;
  if (deployed.codes.defined()) {
    at::Tensor weight = q.weight->weight();
    weight.set_requires_grad(false);
    weight.set_data(deployed.codes);
  }
  auto own = [&](const char* name, const at::Tensor& tensor, nn::Extent extent) {
    return tensor.defined() ? layer.register_layer_tensor(name, tensor.contiguous(), extent) : at::Tensor();
  };
  const at::Tensor weight_scale = own("weight_scale", deployed.weight_scale, deployed.weight_scale_extent);
  const at::Tensor input_scale = own("input_scale", deployed.input_scale, nn::Extent::kWhole);
  const at::Tensor pre_quant_scale = own("pre_quant_scale", deployed.pre_quant_scale, nn::Extent::kInputFeatures);
  if (q.weight) {
    layer.replace_transform(q.weight->transform, q.weight->quantizer()->exported(weight_scale, {}, deployed.weight_sizes));
  }
  if (q.input) layer.replace_transform(q.input->transform, q.input->quantizer()->exported(input_scale, pre_quant_scale, {}));
  if (q.output) layer.replace_transform(q.output->transform, q.output->quantizer()->exported({}, {}, {}));
}

std::vector<DeployedLayer> deploy_all(std::vector<LayerQuantizers> layers) {
  std::vector<DeployedLayer> out;
  for (LayerQuantizers& layer : layers) {
    for (const auto* slot : {&layer.input, &layer.weight, &layer.output}) {
      if (*slot && (*slot)->quantizer()->is_exported()) fail(layer.name, "it is exported already");
    }
    out.push_back(deploy(std::move(layer)));
  }
  return out;
}

}  // namespace

std::string deployed_quant_algo(const std::string& layer, const QuantizerAttributes& weight,
                                const QuantizerAttributes& input, const QuantizerAttributes& output) {
  if (output.enable()) fail(layer, "its output is quantized; deployable formats quantize weights and inputs only");
  if (!weight.enable()) {
    if (input.enable()) fail(layer, "its input is quantized but its weight is not, which no deployable format does");
    return "";
  }
  if (input.enable() && (input.has_axis() || input.block_size() > 0)) {
    fail(layer, "its input is quantized per channel or per block; deployable formats take one input scale per tensor");
  }
  if (is_e4m3(weight) && !weight.has_axis() && weight.block_size() == 0 && (!input.enable() || is_e4m3(input))) {
    return "FP8";
  }
  if (is_signed_int(weight, 8) && weight.has_axis() && weight.axis() == 0 && weight.block_size() == 0) {
    if (!input.enable()) return "W8A16";
    if (is_signed_int(input, 8)) return "W8A8_SQ_PER_CHANNEL";
  }
  if (is_signed_int(weight, 4) && weight.block_size() > 0 && !input.enable()) return "W4A16_AWQ";
  fail(layer,
       "its quantizers have no deployable format (deployable: FP8 E4M3 per-tensor weights with E4M3 or "
       "unquantized inputs; int8 per-output-channel weights (axis 0) with int8 per-tensor or unquantized inputs; "
       "int4 weights in blocks along the input features with unquantized inputs)");
}

ExportQuantizeMetadata export_quantized_layers(torch::nn::Module& model) {
  std::vector<DeployedLayer> deployed = deploy_all(layers_with_quantizers(model));
  if (deployed.empty()) throw ApplyModeError("export_quantize: the model has no quantizers (apply quantize first)");
  ExportQuantizeMetadata metadata;
  for (DeployedLayer& layer : deployed) {
    apply(layer);
    (*metadata.mutable_layers())[layer.quantizers.name] = layer.record;
  }
  return metadata;
}

void restore_exported_layers(torch::nn::Module& model, const ExportQuantizeMetadata& metadata) {
  std::vector<LayerQuantizers> layers = layers_with_quantizers(model);
  std::set<std::string> names;
  for (const LayerQuantizers& layer : layers) names.insert(layer.name);
  std::vector<std::string> unmatched, extra;
  for (const auto& [name, record] : metadata.layers()) {
    if (!names.count(name)) unmatched.push_back(name);
  }
  for (const std::string& name : names) {
    if (!metadata.layers().count(name)) extra.push_back(name);
  }
  if (!unmatched.empty() || !extra.empty()) {
    std::sort(unmatched.begin(), unmatched.end());
    throw ApplyModeError(absl::StrCat("export_quantize: the recorded layers do not match the model's quantized "
                                      "layers (recorded but absent: [",
                                      absl::StrJoin(unmatched, ", "), "]; quantized but not recorded: [",
                                      absl::StrJoin(extra, ", "), "])"));
  }
  // Placeholders of the calibrated shapes: the checkpoint fills the deployed tensors.
  for (LayerQuantizers& layer : layers) {
    const ExportedLayer& record = metadata.layers().at(layer.name);
    if (layer.weight && layer.weight->quantizer()->attributes().enable()) {
      TensorQuantizerImpl& quantizer = *layer.weight->quantizer();
      quantizer.set_amax(at::ones(quantizer.amax_shape(layer.weight->weight().sizes()), at::kFloat));
    }
    if (layer.input && layer.input->quantizer()->attributes().enable()) {
      layer.input->quantizer()->set_amax(at::ones({}, at::kFloat));
    }
    if (record.has_pre_quant_scale() && layer.input && !layer.input->quantizer()->has_pre_quant_scale()) {
      layer.input->quantizer()->set_pre_quant_scale(at::ones({layer.input->feature_size()}, at::kFloat));
    }
  }
  std::vector<DeployedLayer> deployed = deploy_all(std::move(layers));
  for (DeployedLayer& layer : deployed) {
    const ExportedLayer& record = metadata.layers().at(layer.quantizers.name);
    if (record.SerializeAsString() != layer.record.SerializeAsString()) {
      fail(layer.quantizers.name, absl::StrCat("the recorded export {", record.ShortDebugString(),
                                               "} does not fit its quantizers, which deploy as {",
                                               layer.record.ShortDebugString(), "}"));
    }
    apply(layer);
  }
}

std::map<std::string, std::string> exported_stored_dtypes(const ExportQuantizeMetadata& metadata) {
  std::map<std::string, std::string> out;
  for (const auto& [name, record] : metadata.layers()) {
    if (record.quant_algo() == "FP8") out[key_of(name, "weight")] = "F8_E4M3";
  }
  return out;
}

}  // namespace quantization
}  // namespace mto
