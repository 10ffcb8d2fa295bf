// The "export_nas" mode: cuts the active subnet of a "fastnas" search space out of the
// model, so that its layers are physically smaller.
#include <memory>

#include "modes/nas/nas.pb.h"
#include "modes/nas/search_space.h"
#include "opt/registry.h"

namespace mto {
namespace nas {
namespace {

constexpr char kMetadata[] = "metadata of mode 'export_nas'";

class ExportNasModeDescriptor : public ModeDescriptor {
 public:
  std::string name() const override { return "export_nas"; }
  MessagePtr config_class() const override { return std::make_unique<ExportNasConfig>(); }
  MessagePtr metadata_class() const override { return std::make_unique<ExportNasMetadata>(); }
  bool is_export_mode() const override { return true; }

  ConvertResult convert(ModulePtr model, const Message&, const RuntimeContext&) const override {
    SearchSpace space(*model);
    auto metadata = std::make_unique<ExportNasMetadata>();
    for (LayerWidth& entry : space.subnet_config()) *metadata->add_subnet_config() = std::move(entry);
    space.export_subnet();
    return {model, std::move(metadata)};
  }

  // Rebuilds the exported architecture from subnet_config; the weights then load into it.
  ModulePtr restore(ModulePtr model, const Message&, const Message& metadata) const override {
    SearchSpace space(*model);
    space.select(message_as<ExportNasMetadata>(metadata, kMetadata).subnet_config());
    space.export_subnet();
    return model;
  }
};

MTO_REGISTER_MODE(nas, ExportNasModeDescriptor);

}  // namespace
}  // namespace nas
}  // namespace mto
