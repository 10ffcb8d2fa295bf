#pragma once

#include <map>
#include <string>

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include "opt/checkpoint.h"
#include "opt/mode.h"

namespace mto {
namespace quantization {

// The files a deployed checkpoint of `model` (converted by "export_quantize") holds beside
// its weights, by name: hf_quant_config.json (hf_quant_config.h) and config.json, which is
// `config` (the model's own description; an object) with "quantization_config" added.
// Empty when no layer of the model is quantized, as Model Optimizer writes none then.
// Throws StateError if the model was not exported.
std::map<std::string, std::string> deployment_files(torch::nn::Module& model,
                                                    const nlohmann::json& config = nlohmann::json::object());

// Saves `model` as a deployed checkpoint at `dir`: applies "export_quantize" first unless
// the model's last mode is that one, then saves it as mto::save does, with
// deployment_files(model, config) beside the weights: every rank writes its own slices of
// the real low-bit weights in parallel, rank 0 the state and the two JSON files, and the
// commit is atomic. Collective over options.communicator. Returns the exported model.
// Throws ApplyModeError, saying to apply export_sparse first, for a model whose sparsity
// masks are not folded into its weights.
ModulePtr save_deployed(ModulePtr model, const std::string& dir, SaveOptions options = {},
                        const nlohmann::json& config = nlohmann::json::object());

}  // namespace quantization
}  // namespace mto
