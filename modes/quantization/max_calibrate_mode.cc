// The "max_calibrate" mode: recorded after "quantize", it sets every quantizer's amax from
// the weights and from a forward loop over this rank's calibration data, synchronized over
// the ranks in one collective.
#include <memory>

#include "distributed/mesh.h"
#include "modes/quantization/calibrate.h"
#include "modes/quantization/quantization.pb.h"
#include "modes/quantization/quantized_model.h"
#include "opt/registry.h"

namespace mto {
namespace quantization {
namespace {

constexpr char kConfig[] = "config of mode 'max_calibrate'";
constexpr char kMetadata[] = "metadata of mode 'max_calibrate'";

class MaxCalibrateModeDescriptor : public ModeDescriptor {
 public:
  std::string name() const override { return "max_calibrate"; }

  MessagePtr config_class() const override {
    auto config = std::make_unique<MaxCalibrateConfig>();
    config->set_distributed_sync(true);
    return config;
  }
  MessagePtr metadata_class() const override { return std::make_unique<QuantizeMetadata>(); }

  // Mode arguments: "forward_loop" (ForwardLoop), needed when activation quantizers are
  // enabled; "communicator" (std::shared_ptr<Communicator>), the ranks that share the
  // calibration data: the default mesh's data-parallel group (the world when tp = 1).
  ConvertResult convert(ModulePtr model, const Message& message,
                        const ModeKwargs& mode_kwargs) const override {
    const auto& config = message_as<MaxCalibrateConfig>(message, kConfig);
    if (quantized_slots(*model).empty()) {
      throw ApplyModeError("max_calibrate: the model has no quantizers; apply the mode 'quantize' first");
    }
    const ForwardLoop* forward_loop =
        mode_kwargs.contains("forward_loop") ? &mode_kwargs.get<ForwardLoop>("forward_loop") : nullptr;
    std::shared_ptr<Communicator> communicator;
    if (config.distributed_sync()) {
      communicator = mode_kwargs.contains("communicator")
                         ? mode_kwargs.get<std::shared_ptr<Communicator>>("communicator")
                         : default_mesh()->dp();
    }
    calibrate_max(*model, forward_loop, communicator.get());
    return {model, std::make_unique<QuantizeMetadata>(quantizer_state(*model))};
  }

  ModulePtr restore(ModulePtr model, const Message&, const Message& metadata) const override {
    if (quantized_slots(*model).empty()) {
      throw ApplyModeError("max_calibrate: the model has no quantizers to restore the calibration of");
    }
    restore_quantizer_state(*model, message_as<QuantizeMetadata>(metadata, kMetadata), /*insert=*/false);
    return model;
  }

  void update_for_new_mode(torch::nn::Module& model, Message&, Message& metadata) const override {
    message_as<QuantizeMetadata>(metadata, kMetadata) = quantizer_state(model);
  }
  void update_for_save(torch::nn::Module& model, Message&, Message& metadata) const override {
    message_as<QuantizeMetadata>(metadata, kMetadata) = quantizer_state(model);
  }
};

MTO_REGISTER_MODE(quantization, MaxCalibrateModeDescriptor);

}  // namespace
}  // namespace quantization
}  // namespace mto
