#pragma once

#include <string>
#include <vector>

namespace mto {
namespace quantization {

// The JSON config of a named preset, in the Python original's form: "int8" (W8A8:
// per-channel weights, per-tensor activations), "fp8" (E4M3 weights and activations),
// "int4_blockwise" (4-bit weights in blocks of 128 along the last axis, activations off),
// also under the Python names INT8_DEFAULT_CFG, FP8_DEFAULT_CFG and
// INT4_BLOCKWISE_WEIGHT_ONLY_CFG. Throws ConfigError listing the presets for another name.
std::string quantize_preset(const std::string& name);

// The short preset names, in the order above.
std::vector<std::string> quantize_preset_names();

}  // namespace quantization
}  // namespace mto
