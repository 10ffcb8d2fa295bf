// Fuzzes the quantize config in the Python original's form (`mto optimize --config`,
// `--mode quantize:{...}`, and the config of every quantized checkpoint): parse, validate,
// resolve the attributes of a few quantizers and print it back. Every input must give a
// config or a ConfigError naming the quantize mode.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "modes/quantization/quantize_config.h"
#include "opt/errors.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  mto::quantization::QuantizeConfig config;
  try {
    mto::quantization::parse_quantize_config(json, &config);
    mto::quantization::validate_quantize_config(config);
  } catch (const mto::ConfigError& e) {
    mto::fuzz::check_names(e, "config of mode 'quantize'");
    return 0;
  }
  mto::quantization::QuantizerAttributes defaults;
  defaults.set_enable(true);
  defaults.set_num_bits(8);
  for (const char* layer : {"nn.Linear", "nn.Conv2d"}) {
    for (const char* quantizer : {"fc1.weight_quantizer", "blocks.0.attn.input_quantizer"}) {
      mto::quantization::attributes_to_json(
          mto::quantization::resolve_attributes(config, quantizer, layer, defaults));
    }
  }
  mto::quantization::quantize_config_to_json(config).dump();
  return 0;
}
