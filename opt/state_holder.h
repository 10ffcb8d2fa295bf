#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "opt/config.h"
#include "opt/mode.h"
#include "opt/model_like.h"

namespace mto {

// One applied mode with the config and metadata recorded for it.
struct ModeRecord {
  std::shared_ptr<const ModeDescriptor> mode;
  MessagePtr config;
  MessagePtr metadata;
};

// The modelopt state of a converted model.
struct ModeloptStateData {
  // Applied modes, oldest first.
  std::vector<ModeRecord> records;
};

// Name of the submodule that carries the state on the root module.
inline constexpr char kStateHolderName[] = "_modelopt_state";

// A submodule registered on the root module as "_modelopt_state": it carries the modelopt
// state (and the model-like the model was built from) with the model, shows whether a
// module is converted, and has no parameters or buffers, so it never enters the state dict.
class ModeloptStateHolder : public torch::nn::Module {
 public:
  ModeloptStateHolder() : torch::nn::Module("mto::ModeloptStateHolder") {}

  // The model-like the model was built from, if any.
  std::optional<ModelLike> model_like;
  // Null until the model is converted (init_state).
  std::shared_ptr<ModeloptStateData> state;
};

// The holder registered directly on `module`, or nullptr.
std::shared_ptr<ModeloptStateHolder> find_state_holder(const torch::nn::Module& module);

// The holder of `module`, registered empty if there is none yet.
std::shared_ptr<ModeloptStateHolder> attach_state_holder(torch::nn::Module& module);

// Unregisters the holder of `module`, if any.
void detach_state_holder(torch::nn::Module& module);

}  // namespace mto
