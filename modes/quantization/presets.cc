#include "modes/quantization/presets.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "opt/errors.h"

namespace mto {
namespace quantization {
namespace {

// Quantizers that the Python presets leave in floating point (normalization layers, heads,
// mixture-of-experts routers); the class-scoped rules match no mto::nn layer and are kept so
// that the presets read as the originals do.
constexpr char kDisabledByDefault[] = R"(
    "nn.BatchNorm1d": {"*": {"enable": false}},
    "nn.BatchNorm2d": {"*": {"enable": false}},
    "nn.BatchNorm3d": {"*": {"enable": false}},
    "nn.LeakyReLU": {"*": {"enable": false}},
    "*lm_head*": {"enable": false},
    "*proj_out.*": {"enable": false},
    "*block_sparse_moe.gate*": {"enable": false},
    "*router*": {"enable": false},
    "*mlp.gate.*": {"enable": false},
    "*mlp.shared_expert_gate.*": {"enable": false},
    "*output_layer*": {"enable": false},
    "output.*": {"enable": false},
    "default": {"enable": false})";

std::string preset(const std::string& rules, const std::string& algorithm = "\"max\"") {
  return absl::StrCat("{\"quant_cfg\": {", rules, ",", kDisabledByDefault, "},\n \"algorithm\": ", algorithm, "}");
}

const std::map<std::string, std::string>& presets() {
  static const auto* presets = new std::map<std::string, std::string>{
      {"int8", preset(R"(
    "*weight_quantizer": {"num_bits": 8, "axis": 0},
    "*input_quantizer": {"num_bits": 8, "axis": null})")},
      {"fp8", preset(R"(
    "*weight_quantizer": {"num_bits": [4, 3], "axis": null},
    "*input_quantizer": {"num_bits": [4, 3], "axis": null})")},
      {"int4_blockwise", preset(R"(
    "*weight_quantizer": {"num_bits": 4, "block_sizes": {"-1": 128}, "enable": true},
    "*input_quantizer": {"enable": false})")},
      {"int8_smoothquant", preset(R"(
    "*weight_quantizer": {"num_bits": 8, "axis": 0},
    "*input_quantizer": {"num_bits": 8, "axis": null})",
                                  "\"smoothquant\"")},
      {"int4_awq", preset(R"(
    "*weight_quantizer": {"num_bits": 4, "block_sizes": {"-1": 128}, "enable": true},
    "*input_quantizer": {"enable": false})",
                          R"({"method": "awq_lite", "alpha_step": 0.1})")},
  };
  return *presets;
}

const std::map<std::string, std::string>& python_names() {
  static const auto* names = new std::map<std::string, std::string>{
      {"INT8_DEFAULT_CFG", "int8"},
      {"FP8_DEFAULT_CFG", "fp8"},
      {"INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "int4_blockwise"},
      {"INT8_SMOOTHQUANT_CFG", "int8_smoothquant"},
      {"INT4_AWQ_CFG", "int4_awq"},
  };
  return *names;
}

}  // namespace

std::string quantize_preset(const std::string& name) {
  auto python = python_names().find(name);
  auto it = presets().find(python == python_names().end() ? name : python->second);
  if (it == presets().end()) {
    throw ConfigError(absl::StrCat("unknown quantization preset '", name, "' (known: ",
                                   absl::StrJoin(quantize_preset_names(), ", "), ")"));
  }
  return it->second;
}

std::vector<std::string> quantize_preset_names() {
  return {"int8", "fp8", "int4_blockwise", "int8_smoothquant", "int4_awq"};
}

}  // namespace quantization
}  // namespace mto
