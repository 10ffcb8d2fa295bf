#include "opt/state_dict.h"

namespace mto {

std::vector<NamedTensor> model_state_dict(const torch::nn::Module& model) {
  std::vector<NamedTensor> out;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    if (item.value().defined()) out.push_back({item.key(), item.value()});
  }
  for (const auto& item : model.named_buffers(/*recurse=*/true)) {
    if (item.value().defined()) out.push_back({item.key(), item.value()});
  }
  return out;
}

}  // namespace mto
