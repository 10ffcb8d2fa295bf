#pragma once

#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "modes/quantization/quantization.pb.h"
#include "modes/quantization/tensor_quantizer.h"
#include "opt/nn/dynamic_layer.h"

namespace mto {
namespace quantization {

// Where a quantizer sits or would sit: the input, weight or output slot of a quantizable
// layer (mto::nn::Linear or mto::nn::Conv2d).
struct QuantizerSlot {
  std::string name;         // "fc1.weight_quantizer"
  std::string layer_name;   // "fc1"
  std::string layer_class;  // "nn.Linear" or "nn.Conv2d", as quantize configs scope rules
  std::string transform;    // "input_quantizer", "weight_quantizer" or "output_quantizer"
  nn::Slot slot;
  nn::DynamicLayer* layer;
  // The quantizer in this slot, or nullptr.
  TensorQuantizerImpl* quantizer() const;
  // Throws ApplyModeError if the slot holds a quantizer already (the model is quantized).
  void check_empty() const;
  // Puts a new quantizer with `attributes` into the empty slot and returns it; throws as
  // check_empty does.
  TensorQuantizerImpl* insert(const QuantizerAttributes& attributes) const;
  // The layer's weight.
  at::Tensor weight() const;
  // The size of the layer's features in this slot (input: in_features or in_channels,
  // output: out_features or out_channels) and the axes that index them. Weight slots have
  // no feature axis.
  int64_t feature_size() const;
  bool is_feature_axis(int64_t axis) const;
};

// The attributes "quantize" starts a slot's quantizer from, before the config's rules: as
// the Python original's linear and convolution layers, 8 bits with one weight scale per
// output channel, inputs per tensor, outputs disabled.
QuantizerAttributes default_quantizer_attributes(nn::Slot slot);

// The quantizer slots of every quantizable layer of `model`, in module order and, within a
// layer, input, weight, output.
std::vector<QuantizerSlot> quantizer_slots(torch::nn::Module& model);

// The slots of `model` that hold a quantizer.
std::vector<QuantizerSlot> quantized_slots(torch::nn::Module& model);

// Throws ApplyModeError unless `attributes` fit `slot`: an axis or block axis within the
// weight's dimensions, an activation axis that indexes the layer's features, block sizes
// on weights only, not both an axis and block sizes.
void check_attributes_fit(const QuantizerSlot& slot, const QuantizerAttributes& attributes);

// Every quantizer of `model` as the quantize and calibrate modes record it.
QuantizeMetadata quantizer_state(torch::nn::Module& model);

// Gives `model` exactly the quantizers of `metadata`, with their attributes and `_amax`
// buffers of the recorded shapes (their values come with the state dict). With `insert`,
// `model` has no quantizers yet and they are created; otherwise the existing ones are
// updated. Throws ApplyModeError listing the names if the metadata names quantizers the
// model has no slot for ("Unmatched keys") or the model has slots the metadata lacks
// ("Extra keys").
void restore_quantizer_state(torch::nn::Module& model, const QuantizeMetadata& metadata,
                             bool insert);

}  // namespace quantization
}  // namespace mto
