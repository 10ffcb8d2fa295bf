// The calibration modes, each recorded after "quantize" (Model Optimizer's
// "<algorithm>_calibrate" entries): "max_calibrate", "smoothquant_calibrate",
// "awq_lite_calibrate", "awq_clip_calibrate" and "awq_full_calibrate". Each sets the
// quantizers' amax (and, for SmoothQuant and AWQ-lite, the input quantizers'
// pre-quantization scales and the smoothed weights) from the weights and a forward loop
// over this rank's calibration data, synchronized over the ranks. Restore needs no data:
// the metadata records every quantizer's buffers, the state dict their values.
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "modes/quantization/awq_clip.h"
#include "modes/quantization/awq_lite.h"
#include "modes/quantization/calibrate.h"
#include "modes/quantization/quantization.pb.h"
#include "modes/quantization/quantized_model.h"
#include "modes/quantization/smoothquant.h"
#include "opt/registry.h"

namespace mto {
namespace quantization {
namespace {

// Throws ConfigError unless the config's method is `expected`.
void check_method(const std::string& what, const std::string& method, const std::string& expected) {
  if (method != expected) {
    throw ConfigError(absl::StrCat(what, ": method must be \"", expected, "\", got \"", method, "\""));
  }
}

// Throws ConfigError unless AWQ-lite's alpha step is in (0, 1].
void check_alpha_step(const std::string& what, double alpha_step) {
  if (!(alpha_step > 0 && alpha_step <= 1)) {
    throw ConfigError(absl::StrCat(what, ": alpha_step must be in (0, 1], got ", alpha_step));
  }
}

// What every calibration mode shares: the mode arguments, the quantizer-state metadata, and
// restore.
class CalibrateModeDescriptor : public ModeDescriptor {
 public:
  MessagePtr metadata_class() const override { return std::make_unique<QuantizeMetadata>(); }

  // From the context: kForwardLoop, needed when activations are calibrated, and the data
  // parallel group, the ranks that share the calibration data (the mesh's dp group unless
  // set).
  ConvertResult convert(ModulePtr model, const Message& config, const RuntimeContext& context) const override {
    if (quantized_slots(*model).empty()) {
      throw ApplyModeError(absl::StrCat(name(), ": the model has no quantizers; apply the mode 'quantize' first"));
    }
    const ForwardLoop* forward_loop = context.find(kForwardLoop);
    std::shared_ptr<Communicator> communicator;
    if (synchronizes(config)) communicator = context.data_parallel_group();
    calibrate(*model, config, forward_loop, communicator.get());
    return {model, std::make_unique<QuantizeMetadata>(quantizer_state(*model))};
  }

  ModulePtr restore(ModulePtr model, const Message&, const Message& metadata) const override {
    if (quantized_slots(*model).empty()) {
      throw ApplyModeError(absl::StrCat(name(), ": the model has no quantizers to restore the calibration of"));
    }
    restore_quantizer_state(*model, message_as<QuantizeMetadata>(metadata, metadata_name()),
                            /*insert=*/false);
    return model;
  }

  void update_for_new_mode(torch::nn::Module& model, Message&, Message& metadata) const override {
    message_as<QuantizeMetadata>(metadata, metadata_name()) = quantizer_state(model);
  }
  void update_for_save(torch::nn::Module& model, Message&, Message& metadata) const override {
    message_as<QuantizeMetadata>(metadata, metadata_name()) = quantizer_state(model);
  }

 protected:
  // Calibrates `model` as the mode's config says.
  virtual void calibrate(torch::nn::Module& model, const Message& config, const ForwardLoop* forward_loop,
                         Communicator* communicator) const = 0;
  // Whether the statistics are synchronized over the ranks.
  virtual bool synchronizes(const Message&) const { return true; }

  std::string config_name() const { return absl::StrCat("config of mode '", name(), "'"); }
  std::string metadata_name() const { return absl::StrCat("metadata of mode '", name(), "'"); }
};

class MaxCalibrateModeDescriptor : public CalibrateModeDescriptor {
 public:
  std::string name() const override { return "max_calibrate"; }
  MessagePtr config_class() const override {
    auto config = std::make_unique<MaxCalibrateConfig>();
    config->set_distributed_sync(true);
    return config;
  }

 protected:
  void calibrate(torch::nn::Module& model, const Message&, const ForwardLoop* forward_loop,
                 Communicator* communicator) const override {
    calibrate_max(model, forward_loop, communicator);
  }
  bool synchronizes(const Message& config) const override {
    return message_as<MaxCalibrateConfig>(config, config_name()).distributed_sync();
  }
};

class SmoothQuantCalibrateModeDescriptor : public CalibrateModeDescriptor {
 public:
  std::string name() const override { return "smoothquant_calibrate"; }
  MessagePtr config_class() const override {
    auto config = std::make_unique<SmoothQuantCalibrateConfig>();
    config->set_method("smoothquant");
    config->set_alpha(1.0);
    return config;
  }
  void validate_config(const Message& message) const override {
    const auto& config = message_as<SmoothQuantCalibrateConfig>(message, config_name());
    check_method(config_name(), config.method(), "smoothquant");
    if (!(config.alpha() >= 0 && config.alpha() <= 1)) {
      throw ConfigError(absl::StrCat(config_name(), ": alpha must be in [0, 1], got ", config.alpha()));
    }
  }

 protected:
  void calibrate(torch::nn::Module& model, const Message& config, const ForwardLoop* forward_loop,
                 Communicator* communicator) const override {
    calibrate_smoothquant(model, forward_loop, communicator,
                          message_as<SmoothQuantCalibrateConfig>(config, config_name()).alpha());
  }
};

class AwqLiteCalibrateModeDescriptor : public CalibrateModeDescriptor {
 public:
  std::string name() const override { return "awq_lite_calibrate"; }
  MessagePtr config_class() const override {
    auto config = std::make_unique<AwqLiteCalibrateConfig>();
    config->set_method("awq_lite");
    config->set_alpha_step(0.1);
    return config;
  }
  void validate_config(const Message& message) const override {
    const auto& config = message_as<AwqLiteCalibrateConfig>(message, config_name());
    check_method(config_name(), config.method(), "awq_lite");
    check_alpha_step(config_name(), config.alpha_step());
  }

 protected:
  void calibrate(torch::nn::Module& model, const Message& config, const ForwardLoop* forward_loop,
                 Communicator* communicator) const override {
    calibrate_awq_lite(model, forward_loop, communicator,
                       message_as<AwqLiteCalibrateConfig>(config, config_name()).alpha_step());
  }
};

// AWQ clip's options from a config that holds them (AwqClipCalibrateConfig,
// AwqFullCalibrateConfig).
template <typename Config>
AwqClipOptions clip_options(const Config& config) {
  AwqClipOptions options;
  options.min_clip_ratio = config.min_clip_ratio();
  options.shrink_step = config.shrink_step();
  options.max_co_batch_size = config.max_co_batch_size();
  return options;
}

// Model Optimizer's AWQClipCalibConfig defaults, into either config.
template <typename Config>
void set_clip_defaults(Config* config) {
  const AwqClipOptions defaults;
  config->set_max_co_batch_size(defaults.max_co_batch_size);
  config->set_max_tokens_per_batch(64);
  config->set_min_clip_ratio(defaults.min_clip_ratio);
  config->set_shrink_step(defaults.shrink_step);
}

class AwqClipCalibrateModeDescriptor : public CalibrateModeDescriptor {
 public:
  std::string name() const override { return "awq_clip_calibrate"; }
  MessagePtr config_class() const override {
    auto config = std::make_unique<AwqClipCalibrateConfig>();
    config->set_method("awq_clip");
    set_clip_defaults(config.get());
    return config;
  }
  void validate_config(const Message& message) const override {
    const auto& config = message_as<AwqClipCalibrateConfig>(message, config_name());
    check_method(config_name(), config.method(), "awq_clip");
    check_awq_clip_options(clip_options(config), config_name());
  }

 protected:
  void calibrate(torch::nn::Module& model, const Message& config, const ForwardLoop* forward_loop,
                 Communicator* communicator) const override {
    calibrate_awq_clip(model, forward_loop, communicator,
                       clip_options(message_as<AwqClipCalibrateConfig>(config, config_name())));
  }
};

// AWQ-lite, then AWQ clip on the smoothed weights (Model Optimizer's "awq_full").
class AwqFullCalibrateModeDescriptor : public CalibrateModeDescriptor {
 public:
  std::string name() const override { return "awq_full_calibrate"; }
  MessagePtr config_class() const override {
    auto config = std::make_unique<AwqFullCalibrateConfig>();
    config->set_method("awq_full");
    config->set_alpha_step(0.1);
    set_clip_defaults(config.get());
    return config;
  }
  void validate_config(const Message& message) const override {
    const auto& config = message_as<AwqFullCalibrateConfig>(message, config_name());
    check_method(config_name(), config.method(), "awq_full");
    check_alpha_step(config_name(), config.alpha_step());
    check_awq_clip_options(clip_options(config), config_name());
  }

 protected:
  void calibrate(torch::nn::Module& model, const Message& message, const ForwardLoop* forward_loop,
                 Communicator* communicator) const override {
    const auto& config = message_as<AwqFullCalibrateConfig>(message, config_name());
    check_awq_clip_layers(model);
    calibrate_awq_lite(model, forward_loop, communicator, config.alpha_step());
    calibrate_awq_clip(model, forward_loop, communicator, clip_options(config));
  }
};

MTO_REGISTER_MODE(quantization, MaxCalibrateModeDescriptor);
MTO_REGISTER_MODE(quantization, SmoothQuantCalibrateModeDescriptor);
MTO_REGISTER_MODE(quantization, AwqLiteCalibrateModeDescriptor);
MTO_REGISTER_MODE(quantization, AwqClipCalibrateModeDescriptor);
MTO_REGISTER_MODE(quantization, AwqFullCalibrateModeDescriptor);

}  // namespace
}  // namespace quantization
}  // namespace mto
