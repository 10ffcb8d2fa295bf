// The "quantize" and "max_calibrate" modes in one process: the Python config form and the
// presets, rule order, attributes on the model, state-dict keys, save and restore, the
// relations, and every error with the culprit named.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <string>
#include <vector>

#include "modes/quantization/presets.h"
#include "modes/quantization/quantization.pb.h"
#include "modes/quantization/quantize.h"
#include "modes/quantization/quantized_model.h"
#include "opt/checkpoint.h"
#include "opt/config.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/registry.h"
#include "opt/state_dict.h"
#include "opt/state_manager.h"
#include "serialization/deterministic.h"
#include "tests/opt/testing/test_modes.h"
#include "tests/testing/temp_dir.h"

namespace mto {
namespace quantization {
namespace {

ModelLike mlp_like(int seed = 1) { return ModelLike("test_mlp", {{"hidden", 16}, {"seed", seed}}); }
ModelLike cnn_like(int seed = 1) { return ModelLike("test_cnn", {{"seed", seed}}); }

// Runs `batches` batches of inputs that fit `model` through it.
ForwardLoop loop_over(int batches) {
  return [batches](torch::nn::Module& model) {
    auto self = model.shared_from_this();
    const std::vector<int64_t> shape = test::test_input(self).sizes().vec();
    for (int i = 0; i < batches; ++i) {
      at::manual_seed(1000 + i);
      test::test_forward(self, at::randn(shape) * (i + 1));
    }
  };
}

const QuantizerAttributes& attributes(ModulePtr model, const std::string& name) {
  for (const QuantizerSlot& slot : quantized_slots(*model)) {
    if (slot.name == name) return slot.quantizer()->attributes();
  }
  throw std::runtime_error("no quantizer " + name);
}

// The ConfigError message of applying "quantize" with `json`.
std::string config_error(const std::string& json) {
  try {
    apply_mode(mlp_like().build(), {{"quantize", json}});
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}

// The ApplyModeError message of `step`.
template <typename F>
std::string apply_error(F step) {
  try {
    step();
  } catch (const ApplyModeError& e) {
    return e.what();
  }
  return "no error";
}

TEST(QuantizeConfig, PresetsParseInThePythonForm) {
  for (const char* name : {"int8", "fp8", "int4_blockwise", "INT8_DEFAULT_CFG", "FP8_DEFAULT_CFG",
                          "INT4_BLOCKWISE_WEIGHT_ONLY_CFG"}) {
    EXPECT_NO_THROW(apply_mode(mlp_like().build(), {{"quantize", quantize_preset(name)}})) << name;
  }
}

TEST(QuantizeConfig, Int8IsPerChannelWeightsAndPerTensorInputs) {
  ModulePtr model = quantize(mlp_like().build(), "int8", loop_over(2));
  const QuantizerAttributes& weight = attributes(model, "fc1.weight_quantizer");
  EXPECT_TRUE(weight.enable());
  EXPECT_EQ(weight.num_bits(), 8);
  ASSERT_TRUE(weight.has_axis());
  EXPECT_EQ(weight.axis(), 0);
  const QuantizerAttributes& input = attributes(model, "fc2.input_quantizer");
  EXPECT_TRUE(input.enable());
  EXPECT_FALSE(input.has_axis());
  EXPECT_FALSE(attributes(model, "fc2.output_quantizer").enable());  // "default" disables it

  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& entry : model_state_dict(*model)) shapes[entry.name] = entry.tensor.sizes().vec();
  EXPECT_EQ(shapes.at("fc1.weight_quantizer._amax"), (std::vector<int64_t>{16, 1}));
  EXPECT_EQ(shapes.at("fc1.input_quantizer._amax"), (std::vector<int64_t>{}));
  EXPECT_EQ(shapes.count("fc1.output_quantizer._amax"), 0u);
}

TEST(QuantizeConfig, Fp8AndInt4Attributes) {
  ModulePtr fp8 = quantize(mlp_like().build(), "fp8", loop_over(1));
  EXPECT_EQ(attributes(fp8, "fc1.weight_quantizer").exponent_bits(), 4);
  EXPECT_EQ(attributes(fp8, "fc1.input_quantizer").mantissa_bits(), 3);

  // Weight-only: no forward loop needed.
  ModulePtr int4 = quantize(mlp_like().build(), "int4_blockwise");
  const QuantizerAttributes& weight = attributes(int4, "fc2.weight_quantizer");
  EXPECT_EQ(weight.num_bits(), 4);
  EXPECT_EQ(weight.block_size(), 128);
  EXPECT_EQ(weight.block_axis(), -1);
  EXPECT_FALSE(attributes(int4, "fc2.input_quantizer").enable());
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& entry : model_state_dict(*int4)) shapes[entry.name] = entry.tensor.sizes().vec();
  EXPECT_EQ(shapes.at("fc2.weight_quantizer._amax"), (std::vector<int64_t>{16, 1, 1}));
}

TEST(QuantizeConfig, DefaultAppliesFirstAndLaterRulesOverride) {
  ModulePtr model = apply_mode(mlp_like().build(), {{"quantize", R"({"quant_cfg": {
      "*quantizer": {"num_bits": 4},
      "fc1.*": {"num_bits": 6},
      "default": {"enable": false}}})"}});
  // A rule sets every attribute, so "*quantizer" enables what "default" disabled.
  EXPECT_TRUE(attributes(model, "fc2.output_quantizer").enable());
  EXPECT_EQ(attributes(model, "fc2.weight_quantizer").num_bits(), 4);
  EXPECT_FALSE(attributes(model, "fc2.weight_quantizer").has_axis());
  EXPECT_EQ(attributes(model, "fc1.input_quantizer").num_bits(), 6);
}

TEST(QuantizeConfig, LayerClassRulesOnlyMatchThatClass) {
  ModulePtr model = apply_mode(cnn_like().build(), {{"quantize", R"({"quant_cfg": {
      "default": {"enable": false},
      "nn.Conv2d": {"*weight_quantizer": {"num_bits": 4, "axis": 0}},
      "nn.BatchNorm2d": {"*": {"enable": false}}}})"}});
  EXPECT_TRUE(attributes(model, "conv.weight_quantizer").enable());
  EXPECT_EQ(attributes(model, "conv.weight_quantizer").num_bits(), 4);
  EXPECT_FALSE(attributes(model, "fc.weight_quantizer").enable());
}

TEST(QuantizeConfig, JsonRoundTripKeepsTheRuleOrder) {
  const auto mode = ModeRegistry::get_from_any("quantize");
  MessagePtr config = mode->config_class();
  const std::string json =
      R"({"quant_cfg":{"b*":{"enable":false},"nn.Linear":{"a*":{"num_bits":4}},"default":{"axis":0}},"algorithm":"max"})";
  mode->config_from_json(json, config.get());
  EXPECT_EQ(mode->config_to_json(*config), json);
}

TEST(QuantizeConfig, ErrorsNameTheCulprit) {
  EXPECT_EQ(config_error(R"({"quant_cfg": {"*weight_quantizer": {"bits": 8}}})"),
            "config of mode 'quantize': quant_cfg['*weight_quantizer']: unknown attribute 'bits' "
            "(known: axis, block_sizes, calibrator, enable, fake_quant, num_bits, unsigned)");
  EXPECT_EQ(config_error(R"({"quant_cfg": {"*weight_quantizer": {"num_bits": 9}}})"),
            "config of mode 'quantize': quant_cfg['*weight_quantizer']['num_bits'] must be an "
            "integer in [2, 8] or [4, 3] (FP8 E4M3), got 9");
  EXPECT_EQ(config_error(R"({"quant_cfg": {"nn.Linear": {"*input_quantizer": {"num_bits": [5, 2]}}}})"),
            "config of mode 'quantize': quant_cfg['nn.Linear']['*input_quantizer']['num_bits'] must be "
            "an integer in [2, 8] or [4, 3] (FP8 E4M3), got [5,2]");
  EXPECT_EQ(config_error(R"({"quant_cfg": {"*": {"block_sizes": {"-1": 0}}}})"),
            "config of mode 'quantize': quant_cfg['*']['block_sizes']['-1'] must be a positive block "
            "size, got 0");
  EXPECT_EQ(config_error(R"({"quant_cfg": {"*": [{"num_bits": 4}, {"num_bits": 8}]}})"),
            "config of mode 'quantize': quant_cfg['*']: lists of attribute sets (sequential "
            "quantizers) are not supported");
  EXPECT_EQ(config_error(R"({"quant_config": {}})"),
            "config of mode 'quantize': unknown field 'quant_config' (known: algorithm, quant_cfg)");
  EXPECT_EQ(config_error(R"({"algorithm": "gptq"})"),
            "config of mode 'quantize': algorithm: unknown calibration algorithm 'gptq' (known: "
            "\"max\", \"smoothquant\", \"awq_lite\", \"awq_clip\", \"awq_full\", or null for none)");
  try {
    quantize_preset("int3");
    FAIL() << "expected an error";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "unknown quantization preset 'int3' (known: int8, fp8, int4_blockwise, int8_smoothquant, "
                           "int4_awq)");
  }
}

// The ConfigError message of quantize_modes(`config`).
std::string quantize_modes_error(const std::string& config) {
  try {
    quantize_modes(config);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}

// What a config file may hold, its last newline included: JSON that is not an object is
// named as such, never looked up as a preset; a preset name is read without the whitespace
// around it.
TEST(QuantizeConfig, ConfigTextIsAPresetNameOrAJsonObject) {
  EXPECT_EQ(quantize_modes_error("[]\n"), "config of mode 'quantize': must be a JSON object, got []");
  EXPECT_EQ(quantize_modes_error("[1, 2").rfind("config of mode 'quantize': not valid JSON", 0), 0u)
      << quantize_modes_error("[1, 2");
  EXPECT_EQ(quantize_modes_error("1e999").rfind("config of mode 'quantize': not valid JSON", 0), 0u)
      << quantize_modes_error("1e999");
  EXPECT_EQ(quantize_modes_error("8\n"), "config of mode 'quantize': must be a JSON object, got 8");
  EXPECT_EQ(quantize_modes_error("null"), "config of mode 'quantize': must be a JSON object, got null");
  EXPECT_EQ(quantize_modes_error("\"int8\"\n"), "config of mode 'quantize': must be a JSON object, got \"int8\"");
  EXPECT_EQ(quantize_modes_error("int3\n"),
            "unknown quantization preset 'int3' (known: int8, fp8, int4_blockwise, int8_smoothquant, int4_awq)");
  const std::vector<ModeWithConfig> modes = quantize_modes(" int8\n");
  ASSERT_EQ(modes.size(), 2u);
  EXPECT_EQ(modes[0].mode, "quantize");
  ASSERT_NE(modes[0].config.json(), nullptr);
  EXPECT_EQ(*modes[0].config.json(), quantize_preset("int8"));
  EXPECT_EQ(modes[1].mode, "max_calibrate");
}

// The options of {"method": "max", ...} reach max_calibrate's config, and one it does not
// know is refused there, as the other algorithms' are.
TEST(QuantizeConfig, MaxAlgorithmOptionsReachMaxCalibrate) {
  const std::string rules =
      R"("quant_cfg": {"default": {"enable": false}, "*weight_quantizer": {"num_bits": 8, "axis": 0}})";
  std::vector<ModeWithConfig> modes =
      quantize_modes("{" + rules + R"(, "algorithm": {"method": "max", "distributed_sync": false}})");
  ASSERT_EQ(modes.size(), 2u);
  EXPECT_EQ(modes[1].mode, "max_calibrate");
  ASSERT_NE(modes[1].config.json(), nullptr);
  EXPECT_EQ(*modes[1].config.json(), R"({"distributed_sync":false})");
  const ModulePtr model = apply_mode(mlp_like().build(), ModeList(modes));
  const ModeloptStateDict entries = ModeloptStateManager(model).state_dict();
  ASSERT_EQ(entries.size(), 2);
  MaxCalibrateConfig recorded;
  ASSERT_TRUE(entries[1].config().UnpackTo(&recorded));
  EXPECT_FALSE(recorded.distributed_sync());
  modes = quantize_modes("{" + rules + R"(, "algorithm": {"method": "max", "bogus": 1}})");
  try {
    apply_mode(mlp_like().build(), ModeList(modes));
    FAIL() << "an unknown option of max was accepted";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "config of mode 'max_calibrate': unknown field 'bogus' (known fields: distributed_sync)");
  }
}

TEST(QuantizeMode, AttributesThatDoNotFitTheLayerFail) {
  EXPECT_EQ(apply_error([] {
              apply_mode(mlp_like().build(), {{"quantize", R"({"quant_cfg": {"*input_quantizer": {"axis": 0}}})"}});
            }),
            "fc1.input_quantizer: axis 0 does not index the layer's features; per-channel activation "
            "quantization takes axis -1 for nn.Linear");
  EXPECT_EQ(apply_error([] {
              apply_mode(mlp_like().build(), {{"quantize", R"({"quant_cfg": {"*weight_quantizer": {"axis": 2}}})"}});
            }),
            "fc1.weight_quantizer: axis 2 is out of range for a weight of 2 dimensions");
}

TEST(QuantizeMode, QuantizingTwiceFails) {
  ModulePtr model = quantize(mlp_like().build(), "int4_blockwise");
  EXPECT_EQ(apply_error([&] { apply_mode(model, "quantize"); }),
            "fc1.input_quantizer already exists: the model is already quantized");
}

TEST(QuantizeMode, ProhibitsSparsityAfterIt) {
  // A stand-in for the sparsity mode of the Python original, registered here only.
  class SparseMagnitude : public ModeDescriptor {
   public:
    std::string name() const override { return "sparse_magnitude"; }
    MessagePtr config_class() const override { return std::make_unique<google::protobuf::Struct>(); }
    ConvertResult convert(ModulePtr model, const Message&, const RuntimeContext&) const override {
      return {model, metadata_class()};
    }
    ModulePtr restore(ModulePtr model, const Message&, const Message&) const override { return model; }
  };
  ModeRegistry::get_registry("sparsity").register_mode(std::make_shared<SparseMagnitude>());
  try {
    apply_mode(mlp_like().build(), {"quantize", "sparse_magnitude"});
    ADD_FAILURE() << "expected an error";
  } catch (const StateError& e) {
    EXPECT_STREQ(e.what(), "quantize does not allow sparse_magnitude to be its next mode.");
  }
  ModeRegistry::get_registry("sparsity").remove_mode("sparse_magnitude");
}

TEST(MaxCalibrate, ErrorsNameTheQuantizers) {
  EXPECT_EQ(apply_error([] { apply_mode(mlp_like().build(), "max_calibrate"); }),
            "max_calibrate: the model has no quantizers; apply the mode 'quantize' first");
  EXPECT_EQ(apply_error([] { quantize(mlp_like().build(), R"({"quant_cfg": {"default": {"enable": false},
                                 "fc2.input_quantizer": {}}})"); }),
            "max_calibrate needs the mode argument 'forward_loop' to calibrate fc2.input_quantizer");
  EXPECT_EQ(apply_error([] {
              quantize(mlp_like().build(), "int8", [](torch::nn::Module&) {});
            }),
            "max_calibrate: no rank saw calibration data for fc1.input_quantizer, fc2.input_quantizer, "
            "fc3.input_quantizer (does the forward loop run these layers?)");
}

TEST(MaxCalibrate, AFailingForwardLoopLeavesNoQuantizerCalibrating) {
  ModulePtr model = apply_mode(mlp_like().build(), {{"quantize", quantize_preset("int8")}});
  RuntimeContext context;
  context.set(kForwardLoop, ForwardLoop([](torch::nn::Module& m) {
               test::test_forward(m.shared_from_this(), at::ones({2, 8}));
               throw std::runtime_error("data loader broke");
             }));
  try {
    apply_mode(model, "max_calibrate", nullptr, std::nullopt, context);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "data loader broke");
  }
  for (const QuantizerSlot& slot : quantized_slots(*model)) {
    EXPECT_FALSE(slot.quantizer()->calibrating()) << slot.name;
    EXPECT_FALSE(slot.quantizer()->has_amax()) << slot.name;
  }
}

TEST(MaxCalibrate, AmaxIsTheMaximumOverTheData) {
  ModulePtr model = quantize(mlp_like().build(), "int8", loop_over(3));
  // Recompute fc1's input amax by hand: fc1 sees the raw inputs.
  float expected = 0;
  for (int i = 0; i < 3; ++i) {
    at::manual_seed(1000 + i);
    expected = std::max(expected, (at::randn({2, 8}) * (i + 1)).abs().max().item<float>());
  }
  for (const QuantizerSlot& slot : quantized_slots(*model)) {
    if (slot.name == "fc1.input_quantizer") {
      EXPECT_EQ(slot.quantizer()->amax().item<float>(), expected);
    }
    if (slot.name == "fc1.weight_quantizer") {
      EXPECT_TRUE(slot.quantizer()->amax().equal(slot.weight().abs().amax({1}, true)));
    }
  }
}

TEST(QuantizeMode, QuantizationAwareTrainingGetsGradients) {
  ModulePtr model = quantize(mlp_like().build(), "int8", loop_over(2));
  at::Tensor out = test::test_forward(model, at::randn({4, 8}));
  out.pow(2).sum().backward();
  for (const auto& param : model->named_parameters()) {
    ASSERT_TRUE(param.value().grad().defined()) << param.key();
    EXPECT_GT(param.value().grad().abs().sum().item<float>(), 0) << param.key();
  }
}

class QuantizeSaveRestore : public ::testing::TestWithParam<std::string> {};

TEST_P(QuantizeSaveRestore, RestoresTheSameModelAndOutputs) {
  for (ModelLike like : {mlp_like(), cnn_like()}) {
    ModulePtr model = quantize(like.build(), GetParam(), loop_over(2));
    const std::string dir = test::make_temp_dir() + "/ckpt";
    save(*model, dir);
    ModulePtr restored = restore(dir);  // the model-like in the state rebuilds it
    EXPECT_EQ(serialize_deterministic(modelopt_state(*restored)), serialize_deterministic(modelopt_state(*model)));
    at::manual_seed(5);
    at::Tensor x = at::randn(test::test_input(model).sizes()) * 3;
    torch::NoGradGuard no_grad;
    const at::Tensor expected = test::test_forward(model, x);
    EXPECT_TRUE(test::test_forward(restored, x).equal(expected)) << like.factory;
    // Fake quantization really changes the outputs.
    EXPECT_FALSE(test::test_forward(like.build(), x).equal(expected)) << like.factory;

    // Restoring into a model that is already quantized fails.
    try {
      restore(model, dir);
      ADD_FAILURE() << "expected an error";
    } catch (const StateError& e) {
      EXPECT_STREQ(e.what(), "Model already has modelopt state!");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Presets, QuantizeSaveRestore, ::testing::Values("int8", "fp8", "int4_blockwise"));

// `state` with the metadata of its entry `mode` changed by `edit`.
ModeloptState edit_metadata(ModeloptState state, const std::string& mode,
                            const std::function<void(QuantizeMetadata&)>& edit) {
  for (auto& entry : *state.mutable_modelopt_state_dict()) {
    if (entry.mode() != mode) continue;
    QuantizeMetadata metadata;
    entry.metadata().UnpackTo(&metadata);
    edit(metadata);
    entry.mutable_metadata()->PackFrom(metadata);
  }
  return state;
}

TEST(QuantizeMode, RestoreRequiresTheSameQuantizerNames) {
  const ModeloptState state = modelopt_state(*quantize(mlp_like().build(), "int8", loop_over(1)));
  const ModeloptState unmatched = edit_metadata(state, "quantize", [](QuantizeMetadata& m) {
    (*m.mutable_quantizer_state())["fc9.weight_quantizer"] = m.quantizer_state().at("fc1.weight_quantizer");
  });
  EXPECT_EQ(apply_error([&] { restore_from_modelopt_state(mlp_like().build(), unmatched); }),
            "Unmatched keys in the quantizer state: {'fc9.weight_quantizer'} (the model has no such "
            "layer slots)");
  const ModeloptState extra = edit_metadata(state, "max_calibrate", [](QuantizeMetadata& m) {
    m.mutable_quantizer_state()->erase("fc3.output_quantizer");
  });
  EXPECT_EQ(apply_error([&] { restore_from_modelopt_state(mlp_like().build(), extra); }),
            "Extra keys in the model: {'fc3.output_quantizer'} (the quantizer state does not list them)");
  const ModeloptState huge = edit_metadata(state, "max_calibrate", [](QuantizeMetadata& m) {
    auto& shape = *(*m.mutable_quantizer_state())["fc1.weight_quantizer"].mutable_amax_shape();
    shape.Set(0, int64_t{1} << 40);
  });
  EXPECT_EQ(apply_error([&] { restore_from_modelopt_state(mlp_like().build(), huge); }),
            "fc1.weight_quantizer: the recorded amax shape [1099511627776, 1] does not fit the layer");
}

}  // namespace
}  // namespace quantization
}  // namespace mto
