#include "modes/quantization/deploy.h"

#include <optional>

#include "modes/quantization/hf_quant_config.h"
#include "modes/quantization/quantization.pb.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/state_manager.h"

namespace mto {
namespace quantization {
namespace {

constexpr char kExportMode[] = "export_quantize";

// The metadata "export_quantize" recorded on `model`, or nullptr.
const ExportQuantizeMetadata* export_metadata(const ModeloptStateManager& manager) {
  for (const auto& mode : manager.modes_with_states()) {
    if (mode.mode->name() == kExportMode) {
      return &message_as<ExportQuantizeMetadata>(mode.metadata, "metadata of mode 'export_quantize'");
    }
  }
  return nullptr;
}

bool is_exported(const ModulePtr& model) {
  if (!ModeloptStateManager::is_converted(*model, /*is_root=*/true)) return false;
  const ModeloptStateManager manager(model);
  const auto last = manager.last_mode();
  return last && last->name() == kExportMode;
}

// Refuses a model whose sparsity masks are not folded into its weights yet: the mode chain
// would refuse export_quantize with the Python original's text, which names the modes but
// not the way out.
void check_masks_folded(const ModulePtr& model) {
  if (!ModeloptStateManager::is_converted(*model, /*is_root=*/true)) return;
  bool masked = false;
  for (const auto& mode : ModeloptStateManager(model).modes_with_states()) {
    if (mode.mode->name() == "sparse_magnitude") masked = true;
    if (mode.mode->name() == "export_sparse") masked = false;
  }
  if (masked) {
    throw ApplyModeError(
        "export_quantize: the model's sparsity masks (mode sparse_magnitude) are not folded into its weights yet; "
        "apply export_sparse first (mto optimize CKPT --mode export_sparse --out DIR)");
  }
}

}  // namespace

std::map<std::string, std::string> deployment_files(torch::nn::Module& model, const nlohmann::json& config) {
  // The metadata lives in the model's state; the manager only finds it.
  std::optional<ModeloptStateManager> manager;
  if (ModeloptStateManager::is_converted(model, /*is_root=*/true)) {
    manager.emplace(ModulePtr(&model, [](torch::nn::Module*) {}));
  }
  const ExportQuantizeMetadata* metadata = manager ? export_metadata(*manager) : nullptr;
  if (metadata == nullptr) {
    throw StateError("deployment files: the model has not been exported (apply the mode 'export_quantize')");
  }
  const nlohmann::ordered_json quant_config = hf_quant_config(*metadata);
  if (quant_config.is_null()) return {};
  nlohmann::ordered_json full = nlohmann::ordered_json::parse(config.dump());
  full["quantization_config"] = hf_quantization_config(quant_config);
  return {{"hf_quant_config.json", quant_config.dump(4) + "\n"}, {"config.json", full.dump(2) + "\n"}};
}

ModulePtr save_deployed(ModulePtr model, const std::string& dir, SaveOptions options, const nlohmann::json& config) {
  if (!is_exported(model)) {
    check_masks_folded(model);
    model = apply_mode(model, kExportMode);
  }
  options.extra_files = deployment_files(*model, config);
  save(*model, dir, options);
  return model;
}

}  // namespace quantization
}  // namespace mto
