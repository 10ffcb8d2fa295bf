#include "opt/nn/dynamic_layer.h"

#include <algorithm>
#include <stdexcept>

namespace mto {
namespace nn {

void DynamicLayer::add_transform(Slot slot, const std::string& name,
                                 std::shared_ptr<TransformImpl> transform) {
  torch::nn::Module& module = as_module();
  for (const auto& child : module.named_children()) {
    if (child.key() == name) {
      throw std::invalid_argument("layer " + module.name() + " already has a submodule '" +
                                  name + "'");
    }
  }
  module.register_module(name, transform);
  transforms_.push_back(Entry{slot, name, std::move(transform)});
}

void DynamicLayer::replace_transform(const std::string& name, std::shared_ptr<TransformImpl> transform) {
  auto it = std::find_if(transforms_.begin(), transforms_.end(),
                         [&](const Entry& e) { return e.name == name; });
  if (it == transforms_.end()) {
    throw std::invalid_argument("layer " + as_module().name() + " has no transform '" + name + "'");
  }
  as_module().unregister_module(name);
  as_module().register_module(name, transform);
  it->transform = std::move(transform);
}

at::Tensor DynamicLayer::register_layer_tensor(const std::string& name, const at::Tensor& tensor, Extent extent) {
  torch::nn::Module& module = as_module();
  if (module.named_parameters(/*recurse=*/false).contains(name) ||
      module.named_buffers(/*recurse=*/false).contains(name)) {
    throw std::invalid_argument("layer " + module.name() + " already has a tensor '" + name + "'");
  }
  layer_tensors_[name] = extent;
  return module.register_buffer(name, tensor);
}

std::optional<Extent> DynamicLayer::layer_tensor_extent(const std::string& key) const {
  auto it = layer_tensors_.find(key);
  if (it == layer_tensors_.end()) return std::nullopt;
  return it->second;
}

std::shared_ptr<TransformImpl> DynamicLayer::remove_transform(const std::string& name) {
  auto it = std::find_if(transforms_.begin(), transforms_.end(),
                         [&](const Entry& e) { return e.name == name; });
  if (it == transforms_.end()) return nullptr;
  std::shared_ptr<TransformImpl> removed = std::move(it->transform);
  transforms_.erase(it);
  as_module().unregister_module(name);
  return removed;
}

std::shared_ptr<TransformImpl> DynamicLayer::transform(const std::string& name) const {
  for (const auto& e : transforms_) {
    if (e.name == name) return e.transform;
  }
  return nullptr;
}

std::vector<std::string> DynamicLayer::transform_names(Slot slot) const {
  std::vector<std::string> out;
  for (const auto& e : transforms_) {
    if (e.slot == slot) out.push_back(e.name);
  }
  return out;
}

bool DynamicLayer::is_transform_key(Slot slot, const std::string& key) const {
  const size_t dot = key.find('.');
  if (dot == std::string::npos) return false;
  const std::vector<std::string> names = transform_names(slot);
  return std::find(names.begin(), names.end(), key.substr(0, dot)) != names.end();
}

at::Tensor DynamicLayer::apply_transforms(Slot slot, const at::Tensor& x) const {
  at::Tensor out = x;
  for (const auto& e : transforms_) {
    if (e.slot == slot) out = e.transform->forward(out);
  }
  return out;
}

std::vector<NamedDynamicLayer> named_dynamic_layers(torch::nn::Module& model) {
  std::vector<NamedDynamicLayer> out;
  if (auto* layer = dynamic_cast<DynamicLayer*>(&model)) out.push_back({"", layer});
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    if (auto* layer = dynamic_cast<DynamicLayer*>(item.value().get())) {
      out.push_back({item.key(), layer});
    }
  }
  return out;
}

}  // namespace nn
}  // namespace mto
