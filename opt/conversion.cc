#include "opt/conversion.h"

#include <c10/util/Exception.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "distributed/data_parallel.h"
#include "opt/registry.h"
#include "opt/state_holder.h"
#include "opt/state_manager.h"
#include "opt/version.h"

namespace mto {
namespace {

// Builds a pending model-like unless `mode` needs it unbuilt; `mode` null means "build now".
ModulePtr check_init_modellike(ModulePtr model, const ModeDescriptor* mode) {
  auto like = std::dynamic_pointer_cast<ModelLikeModule>(model);
  if (mode != nullptr && mode->require_model_like()) {
    if (!like) {
      throw ApplyModeError(absl::StrCat("Mode '", mode->name(),
                                        "' requires a model-like (a registered model factory "
                                        "and its arguments), but the model is already built."));
    }
    return model;
  }
  return like ? like->init_modellike() : model;
}

// Makes `next`, which a mode's convert or restore returned, carry the state of `model`.
ModulePtr adopt(const ModeDescriptor& mode, const ModulePtr& model, ModulePtr next,
                const char* entrypoint) {
  if (!next) {
    throw ApplyModeError(absl::StrCat("Mode '", mode.name(), "': ", entrypoint,
                                      " returned no model."));
  }
  if (next != model) ModeloptStateManager::transfer_state_dict(*model, *next);
  return next;
}

// The first two components of a version, "0.1" of "0.1.0".
std::string major_minor(const std::string& version) {
  std::vector<std::string> parts = absl::StrSplit(version, '.');
  parts.resize(2);
  return absl::StrCat(parts[0], ".", parts[1]);
}

// Throws StateError for a DataParallel model: modes apply to the unwrapped model.
void refuse_wrapped(const torch::nn::Module& model, const char* function) {
  if (is_data_parallel(model)) {
    throw StateError(absl::StrCat(function,
                                  ": the model is wrapped in mto::DataParallel; use the unwrapped "
                                  "model (DataParallel::module()), then wrap it again."));
  }
}

}  // namespace

ModulePtr ModelOrModelLike::to_module() const {
  if (module_) return module_;
  return std::make_shared<ModelLikeModule>(*model_like_);
}

ModulePtr apply_mode(const ModelOrModelLike& model_in, const ModeList& mode,
                     const ModeRegistry* registry, std::optional<bool> init_state,
                     const RuntimeContext& context) {
  ModulePtr model = model_in.to_module();
  // No mode: the model as it is (a model-like built), with no state attached.
  if (mode.items().empty()) return check_init_modellike(model, nullptr);
  refuse_wrapped(*model, "apply_mode");
  ModeloptStateManager manager(
      model, init_state.value_or(!ModeloptStateManager::is_converted(*model)));
  manager.update_last_state_before_new_mode(*model);
  for (const ModeWithConfig& item : mode.items()) {
    std::shared_ptr<const ModeDescriptor> descriptor =
        registry ? registry->get(item.mode) : ModeRegistry::get_from_any(item.mode);
    manager.check_mode(*descriptor);
    MessagePtr config = ModeloptStateManager::get_config_class(*descriptor, item.config);
    model = check_init_modellike(model, descriptor.get());
    ConvertResult result = descriptor->convert(model, *config, context);
    model = adopt(*descriptor, model, std::move(result.model), "convert");
    if (!result.metadata) result.metadata = descriptor->metadata_class();
    manager.add_mode(descriptor, *config, *result.metadata);
  }
  return check_init_modellike(model, nullptr);
}

ModeloptState modelopt_state(torch::nn::Module& model_in) {
  auto* wrapper = dynamic_cast<DataParallelImpl*>(&model_in);
  torch::nn::Module& model = wrapper ? *wrapper->module() : model_in;
  ModeloptState out;
  out.set_modelopt_version(kModeloptVersion);
  if (auto holder = find_state_holder(model); holder && holder->model_like) {
    *out.mutable_model_like() = holder->model_like->to_proto();
  }
  if (ModeloptStateManager::is_converted(model)) {
    ModeloptStateManager manager(model.shared_from_this());
    manager.update_last_state_before_save(model);
    *out.mutable_modelopt_state_dict() = manager.state_dict();
  }
  return out;
}

ModulePtr restore_from_modelopt_state(const ModelOrModelLike& model_in,
                                      const ModeloptState& state) {
  ModulePtr model = model_in.to_module();
  refuse_wrapped(*model, "restore_from_modelopt_state");
  if (major_minor(state.modelopt_version()) != major_minor(kModeloptVersion)) {
    TORCH_WARN("The checkpoint is stored with version ", state.modelopt_version(),
               ", but current version is ", kModeloptVersion,
               ". Compatibility of checkpoint with current version is not guaranteed!");
  }
  ModeloptStateManager manager(model, /*init_state=*/true);
  manager.load_state_dict(state.modelopt_state_dict());
  for (const auto& m : manager.modes_with_states()) {
    model = check_init_modellike(model, m.mode.get());
    model = adopt(*m.mode, model, m.mode->restore(model, m.config, m.metadata), "restore");
  }
  model = check_init_modellike(model, nullptr);
  if (state.has_model_like()) {
    attach_state_holder(*model)->model_like = ModelLike::from_proto(state.model_like());
  }
  return model;
}

ModulePtr restore_from_modelopt_state(const ModeloptState& state) {
  if (!state.has_model_like()) {
    throw StateError("The modelopt state records no model-like to build the model from; "
                     "pass the model to restore into.");
  }
  return restore_from_modelopt_state(ModelLike::from_proto(state.model_like()), state);
}

}  // namespace mto
