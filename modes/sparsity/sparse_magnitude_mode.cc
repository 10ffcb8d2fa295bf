// The "sparse_magnitude" mode: 2:4 magnitude sparsity on every chosen mto::nn::Linear and
// mto::nn::Conv2d layer, with the mask kept in the layer's `_weight_mask` buffer.
#include <fnmatch.h>

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <vector>

#include "absl/strings/str_cat.h"
#include "modes/sparsity/sparsity.h"
#include "modes/sparsity/sparsity.pb.h"
#include "opt/registry.h"

namespace mto {
namespace sparsity {
namespace {

constexpr char kConfig[] = "config of mode 'sparse_magnitude'";
constexpr char kMetadata[] = "metadata of mode 'sparse_magnitude'";

bool matches_any(const google::protobuf::RepeatedPtrField<std::string>& patterns, const std::string& name) {
  for (const std::string& pattern : patterns) {
    if (fnmatch(pattern.c_str(), name.c_str(), /*flags=*/0) == 0) return true;
  }
  return false;
}

class SparseMagnitudeModeDescriptor : public ModeDescriptor {
 public:
  std::string name() const override { return "sparse_magnitude"; }

  MessagePtr config_class() const override {
    auto config = std::make_unique<SparseMagnitudeConfig>();
    config->add_layers("*");
    return config;
  }
  MessagePtr metadata_class() const override { return std::make_unique<SparseMagnitudeMetadata>(); }

  std::optional<std::string> export_mode() const override { return "export_sparse"; }

  std::optional<ModeSet> next_modes() const override {
    // The next modes of the Python original, plus max_calibrate: calibration is recorded as
    // its own entry after quantize and must pass the export stack, whose top is this mode.
    // Only the modes linked in take part, so that the relation names no missing mode.
    return ModeRegistry::registered({"export_sparse", "kd_loss", "quantize", "max_calibrate",
                                      "smoothquant_calibrate", "awq_lite_calibrate", "awq_clip_calibrate",
                                      "awq_full_calibrate"});
  }

  ConvertResult convert(ModulePtr model, const Message& message, const RuntimeContext&) const override {
    const auto& config = message_as<SparseMagnitudeConfig>(message, kConfig);
    std::vector<std::pair<nn::NamedDynamicLayer, at::Tensor>> masks;
    for (const nn::NamedDynamicLayer& layer : nn::named_dynamic_layers(*model)) {
      if (!matches_any(config.layers(), layer.name) || matches_any(config.exclude(), layer.name)) continue;
      if (weight_mask(*layer.layer).defined()) {
        throw ApplyModeError(absl::StrCat("sparse_magnitude: layer '", layer.name, "' is sparse already"));
      }
      // Layers whose input dimension does not split into groups of 4 stay dense.
      if (!is_sparsifiable(*layer.layer)) continue;
      try {
        masks.emplace_back(layer, mask_2to4(layer.layer->as_module().named_parameters(false)["weight"]));
      } catch (const std::invalid_argument& e) {
        throw ApplyModeError(absl::StrCat("sparse_magnitude: layer '", layer.name, "': ", e.what()));
      }
    }
    if (masks.empty()) {
      throw ApplyModeError(
          "sparse_magnitude: the model has no layer to sparsify (2:4 sparsity takes mto::nn::Linear and "
          "mto::nn::Conv2d layers whose input dimension is a multiple of 4 and whose name the config selects)");
    }
    // Every layer was checked first, so a failure leaves the model unchanged.
    auto metadata = std::make_unique<SparseMagnitudeMetadata>();
    for (const auto& [layer, mask] : masks) {
      add_weight_mask(*layer.layer, mask);
      metadata->add_sparse_layers(layer.name);
    }
    return {model, std::move(metadata)};
  }

  ModulePtr restore(ModulePtr model, const Message&, const Message& message) const override {
    const auto& metadata = message_as<SparseMagnitudeMetadata>(message, kMetadata);
    std::map<std::string, nn::DynamicLayer*> layers;
    for (const auto& [name, layer] : nn::named_dynamic_layers(*model)) layers[name] = layer;
    std::vector<nn::DynamicLayer*> sparse;
    std::set<std::string> listed;
    for (const std::string& name : metadata.sparse_layers()) {
      if (!listed.insert(name).second) {
        throw ApplyModeError(absl::StrCat("sparse_magnitude: layer '", name, "' is listed twice in the metadata"));
      }
      auto it = layers.find(name);
      if (it == layers.end()) {
        throw ApplyModeError(absl::StrCat("sparse_magnitude: the model has no layer '", name,
                                          "' to restore the 2:4 mask of"));
      }
      if (!is_sparsifiable(*it->second)) {
        throw ApplyModeError(absl::StrCat("sparse_magnitude: layer '", name, "' cannot hold a 2:4 mask (not a ",
                                          "mto::nn::Linear or mto::nn::Conv2d with an input dimension that is a "
                                          "multiple of 4)"));
      }
      if (weight_mask(*it->second).defined()) {
        throw ApplyModeError(absl::StrCat("sparse_magnitude: layer '", name, "' is sparse already"));
      }
      sparse.push_back(it->second);
    }
    // The masks' values come with the state dict.
    for (nn::DynamicLayer* layer : sparse) {
      const at::Tensor weight = layer->as_module().named_parameters(false)["weight"];
      add_weight_mask(*layer, at::ones(weight.sizes(), weight.options().dtype(at::kBool)));
    }
    return model;
  }
};

MTO_REGISTER_MODE(sparsity, SparseMagnitudeModeDescriptor);

}  // namespace
}  // namespace sparsity
}  // namespace mto
