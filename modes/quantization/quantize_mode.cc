// The "quantize" mode: attaches input, weight and output quantizers to every quantizable
// layer, with attributes chosen by the config's ordered wildcard rules.
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "modes/quantization/quantization.pb.h"
#include "modes/quantization/quantize_config.h"
#include "modes/quantization/quantized_model.h"
#include "opt/registry.h"

namespace mto {
namespace quantization {
namespace {

class QuantizeModeDescriptor : public ModeDescriptor {
 public:
  std::string name() const override { return "quantize"; }

  MessagePtr config_class() const override {
    auto config = std::make_unique<QuantizeConfig>();
    parse_quantize_config(R"({"quant_cfg": {"default": {"num_bits": 8, "axis": null}}, "algorithm": "max"})",
                          config.get());
    return config;
  }
  MessagePtr metadata_class() const override { return std::make_unique<QuantizeMetadata>(); }

  void validate_config(const Message& config) const override {
    validate_quantize_config(message_as<QuantizeConfig>(config, "config of mode 'quantize'"));
  }
  void config_from_json(std::string_view json, Message* config) const override {
    parse_quantize_config(json, &message_as<QuantizeConfig>(*config, "config of mode 'quantize'"));
  }
  std::string config_to_json(const Message& config) const override {
    return quantize_config_to_json(message_as<QuantizeConfig>(config, "config of mode 'quantize'")).dump();
  }

  std::optional<ModeSet> next_prohibited_modes() const override {
    // The sparsity and NAS modes of the Python original; only those linked in take part.
    return ModeRegistry::registered({"sparse_magnitude", "sparsegpt", "fastnas", "autonas"});
  }

  ConvertResult convert(ModulePtr model, const Message& message, const RuntimeContext&) const override {
    const auto& config = message_as<QuantizeConfig>(message, "config of mode 'quantize'");
    const std::vector<QuantizerSlot> slots = quantizer_slots(*model);
    if (slots.empty()) {
      throw ApplyModeError(
          "quantize: the model has no quantizable layers (use mto::nn::Linear and mto::nn::Conv2d "
          "in place of their torch::nn counterparts)");
    }
    std::vector<std::pair<const QuantizerSlot*, QuantizerAttributes>> resolved;
    for (const QuantizerSlot& slot : slots) {
      slot.check_empty();
      resolved.emplace_back(&slot, resolve_attributes(config, slot.name, slot.layer_class,
                                                      default_quantizer_attributes(slot.slot)));
      check_attributes_fit(slot, resolved.back().second);
    }
    // Every slot was checked first, so a failure leaves the model unchanged.
    for (const auto& [slot, attributes] : resolved) slot->insert(attributes);
    return {model, std::make_unique<QuantizeMetadata>(quantizer_state(*model))};
  }

  ModulePtr restore(ModulePtr model, const Message&, const Message& metadata) const override {
    restore_quantizer_state(*model, message_as<QuantizeMetadata>(metadata, "metadata of mode 'quantize'"),
                            /*insert=*/true);
    return model;
  }

  void update_for_new_mode(torch::nn::Module& model, Message&, Message& metadata) const override {
    message_as<QuantizeMetadata>(metadata, "metadata of mode 'quantize'") = quantizer_state(model);
  }
  void update_for_save(torch::nn::Module& model, Message&, Message& metadata) const override {
    message_as<QuantizeMetadata>(metadata, "metadata of mode 'quantize'") = quantizer_state(model);
  }
};

MTO_REGISTER_MODE(quantization, QuantizeModeDescriptor);

}  // namespace
}  // namespace quantization
}  // namespace mto
