// The "fastnas" mode: makes the widths of mto::nn layers searchable (traced from one
// forward pass), so that a search can pick the best subnet and "export_nas" can cut it out.
#include <memory>

#include "absl/strings/str_cat.h"
#include "distributed/tensor_slice.h"

#include "modes/nas/nas.pb.h"
#include "modes/nas/search.h"
#include "modes/nas/search_space.h"
#include "modes/nas/trace.h"
#include "opt/nn/dynamic_layer.h"
#include "opt/registry.h"

namespace mto {
namespace nas {
namespace {

constexpr char kConfig[] = "config of mode 'fastnas'";
constexpr char kMetadata[] = "metadata of mode 'fastnas'";

// fastnas traces and cuts whole layers: a layer split over tensor-parallel ranks would be
// measured and cut by its local width. Throws ApplyModeError naming the first such layer and
// ending with `advice` (what to do instead).
void refuse_split_layers(torch::nn::Module& model, const char* advice) {
  for (const auto& [name, layer] : nn::named_dynamic_layers(model)) {
    if (const SplitModule* split = split_over_ranks(layer)) {
      throw ApplyModeError(absl::StrCat("fastnas: layer ", name, " is split over ", split->split_group()->world_size(),
                                        " tensor-parallel ranks; fastnas searches whole layers only (", advice, ")"));
    }
  }
}

class FastNasModeDescriptor : public ModeDescriptor {
 public:
  std::string name() const override { return "fastnas"; }

  MessagePtr config_class() const override {
    auto config = std::make_unique<FastNasConfig>();
    for (int eighth = 1; eighth <= 8; ++eighth) config->add_width_ratios(eighth / 8.0);
    config->set_channel_divisor(4);
    return config;
  }
  MessagePtr metadata_class() const override { return std::make_unique<FastNasMetadata>(); }

  void validate_config(const Message& message) const override {
    const auto& config = message_as<FastNasConfig>(message, kConfig);
    if (config.width_ratios().empty()) throw ConfigError("fastnas: width_ratios must not be empty");
    for (double ratio : config.width_ratios()) {
      if (!(ratio > 0 && ratio <= 1)) {
        throw ConfigError("fastnas: every entry of width_ratios must be in (0, 1], got " + std::to_string(ratio));
      }
    }
    if (config.channel_divisor() < 1) {
      throw ConfigError("fastnas: channel_divisor must be at least 1, got " +
                        std::to_string(config.channel_divisor()));
    }
  }

  std::optional<std::string> export_mode() const override { return "export_nas"; }

  std::optional<ModeSet> next_modes() const override {
    // As in the Python original, plus max_calibrate, which follows quantize while fastnas
    // is still on the export stack; only the modes linked in take part.
    return ModeRegistry::registered(
        {"export_nas", "kd_loss", "quantize", "sparse_magnitude", "sparsegpt", "max_calibrate",
         "smoothquant_calibrate", "awq_lite_calibrate", "awq_clip_calibrate", "awq_full_calibrate"});
  }

  SearcherFactory search_algorithm() const override {
    return [] { return std::make_unique<FastNasSearcher>(); };
  }

  // Mode argument: "dummy_forward" (DummyForward), one forward pass on a small input.
  ConvertResult convert(ModulePtr model, const Message& config, const RuntimeContext& context) const override {
    refuse_split_layers(*model, "apply it at tp = 1");
    FastNasMetadata metadata = trace_search_space(*model, context.get(kDummyForward),
                                                  message_as<FastNasConfig>(config, kConfig));
    SearchSpace::install(*model, metadata);
    return {model, std::make_unique<FastNasMetadata>(std::move(metadata))};
  }

  ModulePtr restore(ModulePtr model, const Message&, const Message& metadata) const override {
    refuse_split_layers(*model, "a checkpoint pruned by it restores at tp = 1 only, e.g. mto eval --tp 1");
    SearchSpace::install(*model, message_as<FastNasMetadata>(metadata, kMetadata));
    return model;
  }

  void update_for_new_mode(torch::nn::Module& model, Message&, Message& metadata) const override {
    record_subnet(model, metadata);
  }
  void update_for_save(torch::nn::Module& model, Message&, Message& metadata) const override {
    record_subnet(model, metadata);
  }

 private:
  // The active widths go into the metadata, so that restore selects the same subnet.
  static void record_subnet(torch::nn::Module& model, Message& metadata) {
    auto& fastnas = message_as<FastNasMetadata>(metadata, kMetadata);
    fastnas.clear_subnet_config();
    for (LayerWidth& entry : SearchSpace(model).subnet_config()) *fastnas.add_subnet_config() = std::move(entry);
  }
};

MTO_REGISTER_MODE(nas, FastNasModeDescriptor);

}  // namespace
}  // namespace nas
}  // namespace mto
