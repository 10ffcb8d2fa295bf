#pragma once

#include <string>
#include <string_view>

#include <google/protobuf/struct.pb.h>
#include <nlohmann/json.hpp>

#include "modes/quantization/quantization.pb.h"

namespace mto {
namespace quantization {

// Replaces the fields of `config` named in `json`, the Python original's form of a
// quantize config:
//   {"quant_cfg": {"*weight_quantizer": {"num_bits": 8, "axis": 0},
//                  "nn.Linear": {"*input_quantizer": {"enable": false}},
//                  "default": {"enable": false}},
//    "algorithm": "max"}
// Rule order is kept. Throws ConfigError naming the key at fault; `config` is unchanged on
// error. Attributes are checked by validate_quantize_config.
void parse_quantize_config(std::string_view json, QuantizeConfig* config);

// `config` in the form parse_quantize_config reads.
nlohmann::ordered_json quantize_config_to_json(const QuantizeConfig& config);

// The config's calibration algorithm with its options, {"method": "smoothquant",
// "alpha": 0.5}: the config of the calibration mode that follows "quantize".
nlohmann::ordered_json algorithm_json(const QuantizeConfig& config);

// Throws ConfigError naming the rule and the attribute if a rule sets an unknown attribute,
// a value of the wrong type or out of range (num_bits other than 2..8 or [4, 3], a block
// size <= 0, ...), or if the algorithm is not "max" or empty.
void validate_quantize_config(const QuantizeConfig& config);

// Sets the attributes a rule names on `attributes`, leaving the others. `where` names the
// rule in messages. Throws ConfigError as validate_quantize_config describes.
void apply_rule_attributes(const google::protobuf::Struct& rule, const std::string& where,
                           QuantizerAttributes* attributes);

// The attributes of the quantizer `name` ("fc1.weight_quantizer") in a layer of class
// `layer_class` ("nn.Linear"): those of the last matching rule, trying the rule "default"
// first and then the others in order; `defaults` when no rule matches. As in the Python
// original, a rule sets every attribute: those it omits take their default values
// (enabled, 8 bits, signed, one scale per tensor, no blocks).
QuantizerAttributes resolve_attributes(const QuantizeConfig& config, const std::string& name,
                                       const std::string& layer_class,
                                       QuantizerAttributes defaults);

// `attributes` in the Python original's form: {"enable": true, "num_bits": 8, "axis": 0,
// "unsigned": false, "block_sizes": null}.
nlohmann::ordered_json attributes_to_json(const QuantizerAttributes& attributes);

}  // namespace quantization
}  // namespace mto
