#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "modes/quantization/quantization.pb.h"

namespace mto {
namespace quantization {

// The exclude_modules list of Model Optimizer's hf_quant_config.json: the names of the
// layers left in floating point, each replaced by the shortest "<prefix>.*" (cut at a '.')
// that matches no quantized layer, else kept whole; sorted, without repeats.
//   {"lm_head"} with {"blocks.0.fc1"} -> ["lm_head"]
//   {"enc.0.fc", "enc.1.fc"} with {"dec.0.fc"} -> ["enc.*"]
std::vector<std::string> summarize_excluded_modules(const std::vector<std::string>& excluded,
                                                    const std::vector<std::string>& quantized);

// hf_quant_config.json, as Model Optimizer's unified checkpoint export writes it, for a
// model that "export_quantize" left as `metadata`: {"producer": {"name": "mto", "version"},
// "quantization": {"quant_algo", "kv_cache_quant_algo": null, ...}}, with the keys of the
// format (group_size, has_zero_point, pre_quant_scale for W4A16_AWQ) and exclude_modules; a
// model with layers of several formats gets "MIXED_PRECISION" and quantized_layers instead.
// Null when no layer is quantized (no file is written then).
nlohmann::ordered_json hf_quant_config(const ExportQuantizeMetadata& metadata);

// The "quantization_config" entry of config.json for `hf_quant_config` (not null):
// quant_method "modelopt", quant_algo, producer, ignore (the excluded modules), and
// config_groups for FP8 and mixed formats.
nlohmann::ordered_json hf_quantization_config(const nlohmann::ordered_json& hf_quant_config);

}  // namespace quantization
}  // namespace mto
