#include "modes/quantization/quantize.h"

#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/ascii.h"
#include "distributed/world.h"
#include "modes/quantization/presets.h"
#include "modes/quantization/quantization.pb.h"
#include "modes/quantization/quantize_config.h"
#include "opt/conversion.h"

namespace mto {
namespace quantization {

ModulePtr quantize(ModulePtr model, const std::string& config, ForwardLoop forward_loop,
                   std::shared_ptr<Communicator> communicator) {
  const bool is_json = absl::StartsWith(absl::StripLeadingAsciiWhitespace(config), "{");
  const std::string json = is_json ? config : quantize_preset(config);
  QuantizeConfig parsed;
  parsed.set_algorithm("max");  // the default of the mode's config
  parse_quantize_config(json, &parsed);
  ModeKwargs kwargs;
  if (forward_loop) kwargs.set("forward_loop", std::move(forward_loop));
  kwargs.set("communicator", communicator ? std::move(communicator) : world());
  std::vector<ModeWithConfig> modes{{"quantize", json}};
  if (parsed.algorithm() == "max") modes.emplace_back("max_calibrate");
  return apply_mode(model, ModeList(std::move(modes)), nullptr, std::nullopt, kwargs);
}

}  // namespace quantization
}  // namespace mto
