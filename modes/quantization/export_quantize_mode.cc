// The "export_quantize" mode: puts a calibrated, fake-quantized model in its deployed form
// (real low-bit weights and their scales under Model Optimizer's unified checkpoint names;
// see export_quantize.h). Model Optimizer calls this form real_quantize / compress; here it
// is a mode, so a saved deployed checkpoint restores into a model whose outputs equal the
// fake-quantized model's, bit for bit. It is recorded as an ordinary mode rather than on the
// export stack: "quantize" declares no export mode, so that sparse_magnitude -> quantize ->
// export_sparse stays a valid chain. Nothing may follow it.
#include <memory>

#include "modes/quantization/export_quantize.h"
#include "modes/quantization/quantization.pb.h"
#include "opt/registry.h"

namespace mto {
namespace quantization {
namespace {

constexpr char kMetadataName[] = "metadata of mode 'export_quantize'";

class ExportQuantizeModeDescriptor : public ModeDescriptor {
 public:
  std::string name() const override { return "export_quantize"; }
  MessagePtr config_class() const override { return std::make_unique<ExportQuantizeConfig>(); }
  MessagePtr metadata_class() const override { return std::make_unique<ExportQuantizeMetadata>(); }
  std::optional<ModeSet> next_modes() const override { return ModeSet{}; }

  ConvertResult convert(ModulePtr model, const Message&, const RuntimeContext&) const override {
    return {model, std::make_unique<ExportQuantizeMetadata>(export_quantized_layers(*model))};
  }

  ModulePtr restore(ModulePtr model, const Message&, const Message& metadata) const override {
    restore_exported_layers(*model, message_as<ExportQuantizeMetadata>(metadata, kMetadataName));
    return model;
  }

  std::map<std::string, std::string> stored_dtypes(const Message&, const Message& metadata) const override {
    return exported_stored_dtypes(message_as<ExportQuantizeMetadata>(metadata, kMetadataName));
  }
};

MTO_REGISTER_MODE(quantization, ExportQuantizeModeDescriptor);

}  // namespace
}  // namespace quantization
}  // namespace mto
