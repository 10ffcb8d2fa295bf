#pragma once

#include <map>
#include <string>

#include <torch/nn/module.h>

#include "modes/quantization/quantization.pb.h"

namespace mto {
namespace quantization {

// Model Optimizer's quant_algo for a layer whose weight quantizer has `weight` and whose
// input quantizer has `input`: "FP8" (E4M3 per tensor, inputs E4M3 or off),
// "W8A8_SQ_PER_CHANNEL" (int8 per output channel, int8 inputs per tensor), "W8A16" (the
// same, inputs off), "W4A16_AWQ" (int4 in blocks along the input features, inputs off);
// "" for a disabled weight quantizer with disabled inputs. Throws ApplyModeError naming
// `layer` for any other combination, which has no deployable form.
std::string deployed_quant_algo(const std::string& layer, const QuantizerAttributes& weight,
                                const QuantizerAttributes& input, const QuantizerAttributes& output);

// Puts every layer of `model` that has quantizers in its deployed form, as Model
// Optimizer's unified checkpoints hold it: the weight becomes its codes
// (real_quant.h encode_weight), and the layer gains "weight_scale", "input_scale" (enabled
// inputs) and "pre_quant_scale" (SmoothQuant, AWQ) buffers, global in shape like every
// checkpoint tensor; the quantizers keep their names and attributes but lose their buffers
// and quantize with those scales. Outputs stay the same, bit for bit. Every layer is checked
// before any changes: throws ApplyModeError naming the layer if one has no deployable
// format, is not calibrated, or holds other weight transforms (a sparsity mask).
ExportQuantizeMetadata export_quantized_layers(torch::nn::Module& model);

// Gives `model`, restored up to its calibration (weights in floating point, quantizers
// without amax), the deployed form `metadata` records, with tensors of the right dtypes and
// shapes whose values the checkpoint then fills. Throws ApplyModeError if the layers do not
// match the metadata.
void restore_exported_layers(torch::nn::Module& model, const ExportQuantizeMetadata& metadata);

// The state-dict keys of FP8 weight codes (uint8 tensors) with "F8_E4M3", the dtype
// checkpoints store them as.
std::map<std::string, std::string> exported_stored_dtypes(const ExportQuantizeMetadata& metadata);

}  // namespace quantization
}  // namespace mto
