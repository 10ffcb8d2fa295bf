// The "export_sparse" mode: folds every 2:4 mask into its layer's weight and removes the
// sparse machinery (the `_weight_mask` buffers and their transforms), leaving a plain model
// with the same outputs.
#include <memory>

#include "modes/sparsity/sparsity.h"
#include "modes/sparsity/sparsity.pb.h"
#include "opt/registry.h"

namespace mto {
namespace sparsity {
namespace {

// Folds the masks of every sparse layer; returns how many there were.
int fold_all(torch::nn::Module& model) {
  int folded = 0;
  for (const auto& [name, layer] : nn::named_dynamic_layers(model)) folded += fold_weight_mask(*layer);
  return folded;
}

class ExportSparseModeDescriptor : public ModeDescriptor {
 public:
  std::string name() const override { return "export_sparse"; }
  MessagePtr config_class() const override { return std::make_unique<ExportSparseConfig>(); }
  bool is_export_mode() const override { return true; }

  ConvertResult convert(ModulePtr model, const Message&, const RuntimeContext&) const override {
    if (fold_all(*model) == 0) throw ApplyModeError("export_sparse: the model has no sparse layers");
    return {model, metadata_class()};
  }

  // The restored masks hold ones until the weights load; the weights in a checkpoint of an
  // exported model are already folded, so removing the masks is all that is left.
  ModulePtr restore(ModulePtr model, const Message&, const Message&) const override {
    if (fold_all(*model) == 0) throw ApplyModeError("export_sparse: the model has no sparse layers to export");
    return model;
  }
};

MTO_REGISTER_MODE(sparsity, ExportSparseModeDescriptor);

}  // namespace
}  // namespace sparsity
}  // namespace mto
