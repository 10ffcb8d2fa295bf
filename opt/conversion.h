#pragma once

#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "opt/config.h"
#include "opt/mode.h"
#include "opt/runtime_context.h"
#include "opt/model_like.h"
#include "serialization/modelopt_state.pb.h"

namespace mto {

class ModeRegistry;

// A built model, or a model-like to build it from. Converts implicitly from a
// std::shared_ptr to any module, a LibTorch module holder (e.g. torch::nn::Linear) and a
// ModelLike.
class ModelOrModelLike {
 public:
  template <typename M, typename = std::enable_if_t<std::is_base_of_v<torch::nn::Module, M>>>
  ModelOrModelLike(std::shared_ptr<M> module) : module_(std::move(module)) {}
  template <typename Impl>
  ModelOrModelLike(const torch::nn::ModuleHolder<Impl>& holder) : module_(holder.ptr()) {}
  ModelOrModelLike(ModelLike model_like) : model_like_(std::move(model_like)) {}

  // The module itself, or a new ModelLikeModule standing for the model-like.
  ModulePtr to_module() const;

 private:
  ModulePtr module_;
  std::optional<ModelLike> model_like_;
};

// One mode to apply and its config (the mode's defaults when none is given).
struct ModeWithConfig {
  ModeWithConfig(const char* mode) : mode(mode) {}
  ModeWithConfig(std::string mode) : mode(std::move(mode)) {}
  ModeWithConfig(std::string mode, ConfigInput config)
      : mode(std::move(mode)), config(std::move(config)) {}

  std::string mode;
  ConfigInput config;
};

// The modes for apply_mode: one name, a list of names, or a list of (name, config) pairs:
//   "sparse"   {"nas", "export_nas"}   {{"quantize", R"({"algorithm": "max"})"}, {"sparse"}}
class ModeList {
 public:
  ModeList(const char* mode) : items_{ModeWithConfig(mode)} {}
  ModeList(std::string mode) : items_{ModeWithConfig(std::move(mode))} {}
  ModeList(std::initializer_list<ModeWithConfig> items) : items_(items) {}
  ModeList(std::vector<ModeWithConfig> items) : items_(std::move(items)) {}

  const std::vector<ModeWithConfig>& items() const { return items_; }

 private:
  std::vector<ModeWithConfig> items_;
};

// Applies `mode` to `model` in order, records each mode with its config and metadata in the
// model's modelopt state, and returns the converted model.
//
// `model` may be a module or a model-like; a model-like is built before the first mode that
// does not require a model-like (and at the end at the latest) and recorded in the state.
// Modes are looked up in `registry`, or in every registry when it is null. `init_state`
// defaults to "the model is not converted yet"; true on a converted model throws
// StateError. Before the first new mode, the last recorded mode's update_for_new_mode runs.
// `context` (the mesh, forward loops, ...) goes to every convert and is never saved. With
// no mode, the model is returned as it is (a model-like built), no state is attached and
// `init_state` is not checked.
//
// Throws ModeError (unknown mode), ConfigError (bad config), StateError (a chain the modes'
// relations forbid, with the texts of the Python original, or a DataParallel model: apply
// modes before wrapping) or ApplyModeError (a convert failed). The state then holds the
// modes applied before the failure.
ModulePtr apply_mode(const ModelOrModelLike& model, const ModeList& mode,
                     const ModeRegistry* registry = nullptr,
                     std::optional<bool> init_state = std::nullopt,
                     const RuntimeContext& context = {});

// The modelopt state of `model`: the mto version, the model-like it was built from (if
// any) and every applied mode with its config and metadata, after the last mode's
// update_for_save. An unconverted model gives a state with no modes. It holds no weights.
// A DataParallel wrapper is looked through.
ModeloptState modelopt_state(torch::nn::Module& model);

// Replays `state` on the unmodified `model` (or builds it from the model-like): every
// config is validated again and every mode's restore is called in order, with the same
// chain checks as apply_mode. The model-like recorded in `state`, if any, is recorded on
// the restored model. Weights are not loaded. Warns if `state` was written by
// another major.minor version. Throws StateError "Model already has modelopt state!" if
// `model` is already converted, StateError for a DataParallel model (restore, then wrap),
// and the errors of apply_mode.
ModulePtr restore_from_modelopt_state(const ModelOrModelLike& model, const ModeloptState& state);

// As above, building the model from the model-like recorded in `state`; throws StateError
// if the state records none.
ModulePtr restore_from_modelopt_state(const ModeloptState& state);

}  // namespace mto
