#pragma once

#include <memory>
#include <string>
#include <vector>

#include "distributed/communicator.h"
#include "modes/quantization/calibrate.h"
#include "opt/conversion.h"
#include "opt/mode.h"

namespace mto {
namespace quantization {

// The modes that quantize with `config` (a preset name such as "int8", whitespace around it
// ignored; a JSON object in the Python form; or empty for the mode's defaults), as the
// Python original's mtq.quantize applies them: "quantize", then "max_calibrate" when the
// config's algorithm is "max". Throws ConfigError for an unknown preset, JSON that is not an
// object, or a malformed config.
std::vector<ModeWithConfig> quantize_modes(const std::string& config);

// Quantizes `model` as the Python original's mtq.quantize does: applies "quantize" with
// `config` (a preset name such as "int8", or JSON in the Python form), then, when the
// config's algorithm is "max", "max_calibrate" with `forward_loop` over this rank's data
// and every amax synchronized over `communicator` (the data-parallel ranks; when null, the
// default mesh's, i.e. the world at tp = 1) and over the tensor-parallel group of split
// layers. Collective.
// Returns the quantized model.
ModulePtr quantize(ModulePtr model, const std::string& config, ForwardLoop forward_loop = nullptr,
                   std::shared_ptr<Communicator> communicator = nullptr);

}  // namespace quantization
}  // namespace mto
