#include "modes/nas/layers.h"

#include <optional>

#include "absl/strings/str_cat.h"
#include "opt/errors.h"

namespace mto {
namespace nas {

ModulesByName modules_by_name(torch::nn::Module& model) {
  ModulesByName out;
  for (const auto& item : model.named_modules()) out[item.key()] = item.value().get();
  return out;
}

void Layer::set_in_width(int64_t width) const {
  if (linear) {
    linear->options.in_features(width);
  } else {
    conv->options.in_channels(width);
  }
}

void Layer::set_out_width(int64_t width) const {
  if (linear) {
    linear->options.out_features(width);
  } else {
    conv->options.out_channels(width);
  }
}

Layer find_layer(const ModulesByName& modules, const std::string& name) {
  auto it = modules.find(name);
  Layer layer;
  layer.name = name;
  if (it != modules.end()) {
    layer.module = it->second;
    layer.dynamic = dynamic_cast<nn::DynamicLayer*>(it->second);
    layer.linear = dynamic_cast<nn::LinearImpl*>(it->second);
    layer.conv = dynamic_cast<nn::Conv2dImpl*>(it->second);
  }
  if (layer.linear == nullptr && layer.conv == nullptr) {
    throw ApplyModeError(absl::StrCat("fastnas: the model has no mto::nn::Linear or mto::nn::Conv2d '", name, "'"));
  }
  return layer;
}

BatchNorm find_batch_norm(const ModulesByName& modules, const std::string& name) {
  auto it = modules.find(name);
  std::optional<BatchNorm> norm = it == modules.end() ? std::nullopt : as_batch_norm(*it->second);
  if (!norm) throw ApplyModeError(absl::StrCat("fastnas: the model has no BatchNorm1d or BatchNorm2d '", name, "'"));
  return *norm;
}

}  // namespace nas
}  // namespace mto
