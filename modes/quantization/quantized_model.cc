#include "modes/quantization/quantized_model.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "distributed/tensor_slice.h"
#include "opt/errors.h"
#include "opt/nn/conv2d.h"
#include "opt/nn/linear.h"

namespace mto {
namespace quantization {
namespace {

struct SlotName {
  nn::Slot slot;
  const char* transform;
};
constexpr SlotName kSlots[] = {{nn::Slot::kInput, "input_quantizer"},
                               {nn::Slot::kWeight, "weight_quantizer"},
                               {nn::Slot::kOutput, "output_quantizer"}};

std::string join_name(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : absl::StrCat(prefix, ".", name);
}

std::string layer_class_of(nn::DynamicLayer* layer) {
  if (dynamic_cast<nn::LinearImpl*>(layer) != nullptr) return "nn.Linear";
  if (dynamic_cast<nn::Conv2dImpl*>(layer) != nullptr) return "nn.Conv2d";
  return "";
}

// "{'a', 'b'}", as the Python original prints a set of keys.
std::string format_keys(const std::vector<std::string>& keys) {
  return absl::StrCat("{'", absl::StrJoin(keys, "', '"), "'}");
}

}  // namespace

TensorQuantizerImpl* QuantizerSlot::quantizer() const {
  return dynamic_cast<TensorQuantizerImpl*>(layer->transform(transform).get());
}

void QuantizerSlot::check_empty() const {
  if (quantizer() != nullptr) {
    throw ApplyModeError(absl::StrCat(name, " already exists: the model is already quantized"));
  }
}

TensorQuantizerImpl* QuantizerSlot::insert(const QuantizerAttributes& attributes) const {
  check_empty();
  // Weights have a fixed rank, so their per-axis amax keeps the reduced dimensions.
  auto created = std::make_shared<TensorQuantizerImpl>(name, attributes, /*keepdim_amax=*/slot == nn::Slot::kWeight);
  layer->add_transform(slot, transform, created);
  return created.get();
}

at::Tensor QuantizerSlot::weight() const {
  return layer->as_module().named_parameters(/*recurse=*/false)["weight"];
}

int64_t QuantizerSlot::feature_size() const {
  if (auto* linear = dynamic_cast<nn::LinearImpl*>(layer)) {
    return slot == nn::Slot::kInput ? linear->options.in_features() : linear->options.out_features();
  }
  auto* conv = dynamic_cast<nn::Conv2dImpl*>(layer);
  return slot == nn::Slot::kInput ? conv->options.in_channels() : conv->options.out_channels();
}

bool QuantizerSlot::is_feature_axis(int64_t axis) const {
  if (slot == nn::Slot::kWeight) return false;
  if (layer_class == "nn.Linear") return axis == -1;
  return axis == 1 || axis == -3;
}

QuantizerAttributes default_quantizer_attributes(nn::Slot slot) {
  QuantizerAttributes attributes;
  attributes.set_enable(slot != nn::Slot::kOutput);
  attributes.set_num_bits(8);
  if (slot == nn::Slot::kWeight) attributes.set_axis(0);
  return attributes;
}

std::vector<QuantizerSlot> quantizer_slots(torch::nn::Module& model) {
  std::vector<QuantizerSlot> out;
  for (const auto& [layer_name, layer] : nn::named_dynamic_layers(model)) {
    const std::string layer_class = layer_class_of(layer);
    if (layer_class.empty()) continue;
    for (const auto& [slot, transform] : kSlots) {
      out.push_back({join_name(layer_name, transform), layer_name, layer_class, transform, slot, layer});
    }
  }
  return out;
}

std::vector<QuantizerSlot> quantized_slots(torch::nn::Module& model) {
  std::vector<QuantizerSlot> out;
  for (QuantizerSlot& slot : quantizer_slots(model)) {
    if (slot.quantizer() != nullptr) out.push_back(std::move(slot));
  }
  return out;
}

void check_attributes_fit(const QuantizerSlot& slot, const QuantizerAttributes& attributes) {
  auto fail = [&](const std::string& problem) {
    throw ApplyModeError(absl::StrCat(slot.name, ": ", problem));
  };
  if (attributes.has_axis() && attributes.block_size() > 0) {
    fail("axis and block_sizes cannot both be set (set \"axis\": null)");
  }
  if (slot.slot == nn::Slot::kWeight) {
    const int64_t dim = slot.weight().dim();
    if (attributes.has_axis() && (attributes.axis() < -dim || attributes.axis() >= dim)) {
      fail(absl::StrCat("axis ", attributes.axis(), " is out of range for a weight of ", dim, " dimensions"));
    }
    if (attributes.block_size() > 0 && (attributes.block_axis() < -dim || attributes.block_axis() >= dim)) {
      fail(absl::StrCat("block axis ", attributes.block_axis(), " is out of range for a weight of ", dim,
                        " dimensions"));
    }
    // Blocks along a dimension split over ranks must not straddle two ranks' slices.
    const SplitModule* split = split_over_ranks(slot.layer);
    if (attributes.enable() && attributes.block_size() > 0 && split != nullptr) {
      const int64_t axis = attributes.block_axis() < 0 ? attributes.block_axis() + dim : attributes.block_axis();
      const auto weight_slice = split->slice_of("weight", slot.weight());
      const int64_t local = slot.weight().size(axis);
      if (weight_slice && weight_slice->dim == axis && local % attributes.block_size() != 0) {
        fail(absl::StrCat("blocks of ", attributes.block_size(), " do not divide the ", local,
                          " weight columns this rank holds of a layer split over ",
                          split->split_group()->world_size(), " tensor-parallel ranks"));
      }
    }
    return;
  }
  if (!attributes.enable()) return;
  if (attributes.block_size() > 0) fail("block_sizes are supported on weight quantizers only");
  if (attributes.has_axis() && !slot.is_feature_axis(attributes.axis())) {
    fail(absl::StrCat("axis ", attributes.axis(), " does not index the layer's features; per-channel ",
                      "activation quantization takes axis ", slot.layer_class == "nn.Linear" ? "-1" : "1 (or -3)",
                      " for ", slot.layer_class));
  }
}

namespace {

// The slice of the global buffer `key` ("_amax") of `slot`'s quantizer that `local` is when
// the layer is split over ranks.
std::optional<TensorSlice> buffer_slice(const QuantizerSlot& slot, const std::string& key, const at::Tensor& local) {
  const auto* split = dynamic_cast<const SplitModule*>(slot.layer);
  if (split == nullptr) return std::nullopt;
  return split->slice_of(slot.transform + "." + key, local);
}

std::optional<TensorSlice> amax_slice(const QuantizerSlot& slot, const at::Tensor& amax) {
  return buffer_slice(slot, "_amax", amax);
}

// The shape this rank's amax of `slot` has, from the layer's own (local) weight or features.
std::vector<int64_t> local_amax_shape(const QuantizerSlot& slot, const TensorQuantizerImpl& quantizer) {
  if (slot.slot == nn::Slot::kWeight) return quantizer.amax_shape(slot.weight().sizes());
  if (quantizer.attributes().has_axis()) return {slot.feature_size()};
  return {};
}

}  // namespace

QuantizeMetadata quantizer_state(torch::nn::Module& model) {
  QuantizeMetadata metadata;
  for (const QuantizerSlot& slot : quantized_slots(model)) {
    QuantizerState state = slot.quantizer()->state();
    // Metadata is the same at every split: a sliced amax is recorded with its global shape.
    if (slot.quantizer()->has_amax()) {
      if (const auto slice = amax_slice(slot, slot.quantizer()->amax())) {
        state.clear_amax_shape();
        for (int64_t d : slice->global_shape) state.add_amax_shape(d);
      }
    }
    if (state.has_pre_quant_scale()) {
      if (const auto slice = buffer_slice(slot, "_pre_quant_scale", slot.quantizer()->pre_quant_scale())) {
        state.clear_pre_quant_scale_shape();
        for (int64_t d : slice->global_shape) state.add_pre_quant_scale_shape(d);
      }
    }
    (*metadata.mutable_quantizer_state())[slot.name] = std::move(state);
  }
  return metadata;
}

void restore_quantizer_state(torch::nn::Module& model, const QuantizeMetadata& metadata,
                             bool insert) {
  const std::vector<QuantizerSlot> slots = insert ? quantizer_slots(model) : quantized_slots(model);
  std::set<std::string> found;
  for (const QuantizerSlot& slot : slots) found.insert(slot.name);
  std::vector<std::string> unmatched, extra;
  for (const auto& [name, state] : metadata.quantizer_state()) {
    if (!found.count(name)) unmatched.push_back(name);
  }
  for (const std::string& name : found) {
    if (!metadata.quantizer_state().count(name)) extra.push_back(name);
  }
  std::sort(unmatched.begin(), unmatched.end());
  if (!unmatched.empty()) {
    throw ApplyModeError(absl::StrCat("Unmatched keys in the quantizer state: ", format_keys(unmatched),
                                      " (the model has no such layer slots)"));
  }
  if (!extra.empty()) {
    throw ApplyModeError(absl::StrCat("Extra keys in the model: ", format_keys(extra),
                                      " (the quantizer state does not list them)"));
  }
  for (const QuantizerSlot& slot : slots) {
    const QuantizerState& state = metadata.quantizer_state().at(slot.name);
    check_attributes_fit(slot, state.attributes());
    TensorQuantizerImpl* quantizer = insert ? slot.insert(state.attributes()) : slot.quantizer();
    quantizer->set_attributes(state.attributes());
    if (state.has_amax()) {
      std::vector<int64_t> shape(state.amax_shape().begin(), state.amax_shape().end());
      if (dynamic_cast<const SplitModule*>(slot.layer) != nullptr) {
        // The recorded shape is global; this rank holds the amax of its own slice.
        const std::vector<int64_t> local = local_amax_shape(slot, *quantizer);
        const auto slice = amax_slice(slot, at::empty(local));
        const std::vector<int64_t> global = slice ? slice->global_shape : local;
        if (global != shape) {
          throw ApplyModeError(absl::StrCat(slot.name, ": the recorded amax shape [", absl::StrJoin(shape, ", "),
                                            "] does not fit the layer, whose amax is [",
                                            absl::StrJoin(global, ", "), "]"));
        }
        shape = local;
      }
      // The shape is untrusted: an amax never has more values than what it scales.
      const int64_t limit = std::max<int64_t>(slot.weight().numel(), slot.feature_size());
      int64_t numel = 1;
      for (int64_t size : shape) {
        if (size < 0 || size > limit || (numel *= size) > limit) {
          throw ApplyModeError(absl::StrCat(slot.name, ": the recorded amax shape [",
                                            absl::StrJoin(shape, ", "), "] does not fit the layer"));
        }
      }
      quantizer->set_amax(at::zeros(shape, at::kFloat));
    }
    if (state.has_pre_quant_scale()) {
      // One scale per input feature of a linear layer: [in_features], global on a split one.
      const std::vector<int64_t> shape(state.pre_quant_scale_shape().begin(), state.pre_quant_scale_shape().end());
      const std::vector<int64_t> local = {slot.feature_size()};
      const auto slice = buffer_slice(slot, "_pre_quant_scale", at::empty(local));
      const std::vector<int64_t> global = slice ? slice->global_shape : local;
      if (slot.slot != nn::Slot::kInput || slot.layer_class != "nn.Linear" || shape != global) {
        throw ApplyModeError(absl::StrCat(slot.name, ": the recorded pre_quant_scale shape [",
                                          absl::StrJoin(shape, ", "), "] does not fit the layer (an nn.Linear "
                                          "input quantizer takes [", absl::StrJoin(global, ", "), "])"));
      }
      quantizer->set_pre_quant_scale(at::ones(local, at::kFloat));
    }
  }
}

}  // namespace quantization
}  // namespace mto
