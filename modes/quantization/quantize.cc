#include "modes/quantization/quantize.h"

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "modes/quantization/presets.h"
#include "modes/quantization/quantization.pb.h"
#include "modes/quantization/quantize_config.h"
#include "opt/registry.h"

namespace mto {
namespace quantization {

std::vector<ModeWithConfig> quantize_modes(const std::string& config) {
  const auto descriptor = ModeRegistry::get_from_any("quantize");
  MessagePtr parsed = descriptor->config_class();
  std::string json;
  if (!config.empty()) {
    // JSON, or text that starts as an object, array, string or number does (whose parse
    // error then says what is wrong), is a config; anything else is a preset name, the
    // whitespace around it (a file's last newline) aside.
    const absl::string_view text = absl::StripAsciiWhitespace(config);
    const bool is_json = nlohmann::json::accept(text) ||
                         (!text.empty() && absl::StrContains("{[\"-0123456789", text.front()));
    json = is_json ? config : quantize_preset(std::string(text));
    descriptor->config_from_json(json, parsed.get());
  }
  std::vector<ModeWithConfig> modes{json.empty() ? ModeWithConfig("quantize") : ModeWithConfig("quantize", json)};
  const auto& quantize_config = message_as<QuantizeConfig>(*parsed, "config of mode 'quantize'");
  if (quantize_config.algorithm() == "max") {
    // max_calibrate's config is the options alone (it records no method): an option it does
    // not know is refused there, as the other calibrations refuse theirs.
    nlohmann::ordered_json options = algorithm_json(quantize_config);
    options.erase("method");
    modes.push_back(options.empty() ? ModeWithConfig("max_calibrate")
                                    : ModeWithConfig("max_calibrate", options.dump()));
  } else if (!quantize_config.algorithm().empty()) {
    modes.emplace_back(quantize_config.algorithm() + "_calibrate", algorithm_json(quantize_config).dump());
  }
  return modes;
}

ModulePtr quantize(ModulePtr model, const std::string& config, ForwardLoop forward_loop,
                   std::shared_ptr<Communicator> communicator) {
  RuntimeContext context;
  if (forward_loop) context.set(kForwardLoop, std::move(forward_loop));
  if (communicator) context.set_data_parallel_group(std::move(communicator));
  return apply_mode(model, ModeList(quantize_modes(config)), nullptr, std::nullopt, context);
}

}  // namespace quantization
}  // namespace mto
