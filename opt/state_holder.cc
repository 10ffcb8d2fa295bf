#include "opt/state_holder.h"

namespace mto {

std::shared_ptr<ModeloptStateHolder> find_state_holder(const torch::nn::Module& module) {
  for (const auto& child : module.named_children()) {
    if (child.key() == kStateHolderName) {
      return std::dynamic_pointer_cast<ModeloptStateHolder>(child.value());
    }
  }
  return nullptr;
}

std::shared_ptr<ModeloptStateHolder> attach_state_holder(torch::nn::Module& module) {
  if (auto holder = find_state_holder(module)) return holder;
  return module.register_module(kStateHolderName, std::make_shared<ModeloptStateHolder>());
}

void detach_state_holder(torch::nn::Module& module) {
  if (find_state_holder(module)) module.unregister_module(kStateHolderName);
}

}  // namespace mto
