#include "opt/state_dict.h"

#include <unordered_map>

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

std::vector<StateTensor> model_state_slices(const torch::nn::Module& model) {
  std::unordered_map<std::string, TensorSlice> slices;
  auto visit = [&](const std::string& prefix, const torch::nn::Module& module) {
    const auto* split = dynamic_cast<const SplitModule*>(&module);
    if (split == nullptr) return;
    for (const auto& t : model_state_dict(module)) {
      std::optional<TensorSlice> slice = split->slice_of(t.name, t.tensor);
      if (slice) slices[prefix.empty() ? t.name : prefix + "." + t.name] = std::move(*slice);
    }
  };
  visit("", model);
  for (const auto& item : model.named_modules("", /*include_self=*/false)) visit(item.key(), *item.value());
  std::vector<StateTensor> out;
  for (auto& t : model_state_dict(model)) {
    auto it = slices.find(t.name);
    out.push_back({std::move(t.name), std::move(t.tensor),
                   it == slices.end() ? std::nullopt : std::optional<TensorSlice>(it->second)});
  }
  return out;
}

}  // namespace mto
