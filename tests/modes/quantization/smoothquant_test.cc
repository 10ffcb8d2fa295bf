// SmoothQuant ("int8_smoothquant", mode "smoothquant_calibrate") in one process: the scales
// computed by hand on a small layer, the smoothed weight and the quantizer buffers as Model
// Optimizer keys them, the modes recorded and restored with no data, alpha from the config,
// and the layers it refuses.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cmath>
#include <string>
#include <vector>

#include "modes/quantization/quantization.pb.h"
#include "modes/quantization/quantize.h"
#include "modes/quantization/quantized_model.h"
#include "modes/quantization/smoothquant.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/model_like.h"
#include "opt/registry.h"
#include "opt/state_dict.h"
#include "tests/opt/testing/test_modes.h"

namespace mto {
namespace quantization {
namespace {

ModelLike mlp_like() { return ModelLike("test_mlp", {{"hidden", 16}, {"seed", 5}}); }

// Input batch i: channel 3 is 20 times larger than the others (an outlier channel).
at::Tensor batch(int i) {
  at::manual_seed(700 + i);
  at::Tensor x = at::randn({4, 8});
  x.select(1, 3).mul_(20);
  return x;
}

ForwardLoop loop_over(int batches) {
  return [batches](torch::nn::Module& model) {
    for (int i = 0; i < batches; ++i) test::test_forward(model.shared_from_this(), batch(i));
  };
}

TensorQuantizerImpl* quantizer(torch::nn::Module& model, const std::string& name) {
  for (const QuantizerSlot& slot : quantized_slots(model)) {
    if (slot.name == name) return slot.quantizer();
  }
  throw std::runtime_error("no quantizer " + name);
}

std::map<std::string, at::Tensor> tensors(torch::nn::Module& model) {
  std::map<std::string, at::Tensor> out;
  for (const auto& entry : model_state_dict(model)) out[entry.name] = entry.tensor;
  return out;
}

TEST(SmoothQuantTest, ThePresetRecordsSmoothQuantCalibrationAfterQuantize) {
  const std::vector<ModeWithConfig> modes = quantize_modes("int8_smoothquant");
  ASSERT_EQ(modes.size(), 2u);
  EXPECT_EQ(modes[0].mode, "quantize");
  EXPECT_EQ(modes[1].mode, "smoothquant_calibrate");
  EXPECT_EQ(quantize_modes("INT8_SMOOTHQUANT_CFG")[1].mode, "smoothquant_calibrate");
  // An inline config's algorithm options become the calibration mode's config.
  const std::vector<ModeWithConfig> inline_modes = quantize_modes(
      R"({"quant_cfg": {"*weight_quantizer": {"num_bits": 8, "axis": 0}, "*input_quantizer": {"num_bits": 8}},
          "algorithm": {"method": "smoothquant", "alpha": 0.5}})");
  ASSERT_EQ(inline_modes.size(), 2u);
  EXPECT_EQ(inline_modes[1].mode, "smoothquant_calibrate");
  ModulePtr model = apply_mode(mlp_like().build(), ModeList(inline_modes), nullptr, std::nullopt, [] {
    RuntimeContext context;
    context.set(kForwardLoop, loop_over(3));
    return context;
  }());
  const ModeloptState state = modelopt_state(*model);
  ASSERT_EQ(state.modelopt_state_dict_size(), 2);
  EXPECT_EQ(state.modelopt_state_dict(1).mode(), "smoothquant_calibrate");
  SmoothQuantCalibrateConfig config;
  ASSERT_TRUE(state.modelopt_state_dict(1).config().UnpackTo(&config));
  EXPECT_EQ(config.method(), "smoothquant");
  EXPECT_EQ(config.alpha(), 0.5);
}

TEST(SmoothQuantTest, ScalesWeightsAndAmaxAreThoseComputedByHand) {
  for (const double alpha : {1.0, 0.5}) {
    SCOPED_TRACE(alpha);
    ModulePtr original = mlp_like().build();
    ModulePtr model = mlp_like().build();
    const std::string config = R"({"quant_cfg": {"*weight_quantizer": {"num_bits": 8, "axis": 0},
        "*input_quantizer": {"num_bits": 8, "axis": null}, "default": {"enable": false}}, "algorithm": null})";
    model = quantize(model, config, nullptr);
    const ForwardLoop loop = loop_over(3);
    calibrate_smoothquant(*model, &loop, nullptr, alpha);

    // By hand: the input of fc1 is the batches themselves.
    auto* fc1 = model->as<test::TestMlpImpl>()->fc1.get();
    const at::Tensor w = original->as<test::TestMlpImpl>()->fc1->weight.detach();
    at::Tensor a_max = at::zeros({8});
    for (int i = 0; i < 3; ++i) a_max = at::max(a_max, batch(i).abs().amax(0));
    const at::Tensor w_max = w.abs().amax(0);
    const at::Tensor s = (w_max.pow(1 - alpha) / a_max.pow(alpha)).clamp(1e-4, 1e4);
    TensorQuantizerImpl* input = quantizer(*model, "fc1.input_quantizer");
    ASSERT_TRUE(input->has_pre_quant_scale());
    EXPECT_TRUE(at::allclose(input->pre_quant_scale(), s, 1e-6, 0)) << input->pre_quant_scale() << s;
    EXPECT_TRUE(at::allclose(fc1->weight.detach(), w * (1 / s).unsqueeze(0), 1e-6, 1e-7));
    // Back to one scale per tensor: the maximum of the smoothed activations.
    EXPECT_FALSE(input->attributes().has_axis());
    EXPECT_NEAR(input->amax().item<float>(), (a_max * s).max().item<float>(), 1e-5);
    // The weight amax is taken again from the smoothed weight, per output channel.
    TensorQuantizerImpl* weight = quantizer(*model, "fc1.weight_quantizer");
    EXPECT_TRUE(weight->amax().equal(fc1->weight.detach().abs().amax(1, true)));
    // With alpha = 1 the outlier channel's range is gone from the activations: every
    // smoothed channel's maximum is 1.
    if (alpha == 1.0) {
      EXPECT_TRUE(at::allclose(a_max * s, at::ones({8}), 1e-6, 0));
    }
    // The state dict keys are Model Optimizer's.
    const auto state = tensors(*model);
    EXPECT_TRUE(state.count("fc1.input_quantizer._pre_quant_scale"));
    EXPECT_EQ(state.at("fc1.input_quantizer._pre_quant_scale").sizes(), (std::vector<int64_t>{8}));
    EXPECT_EQ(state.at("fc2.input_quantizer._pre_quant_scale").sizes(), (std::vector<int64_t>{16}));
  }
}

TEST(SmoothQuantTest, SmoothingHalfwayHelpsTheOutlierChannel) {
  // alpha = 0.5 splits the outlier channel's range between activations and weights.
  const std::string config = R"({"quant_cfg": {"*weight_quantizer": {"num_bits": 8, "axis": 0},
      "*input_quantizer": {"num_bits": 8, "axis": null}, "default": {"enable": false}},
      "algorithm": {"method": "smoothquant", "alpha": 0.5}})";
  ModulePtr original = mlp_like().build();
  ModulePtr smooth = quantize(mlp_like().build(), config, loop_over(4));
  ModulePtr plain = quantize(mlp_like().build(), "int8", loop_over(4));
  torch::NoGradGuard no_grad;
  double smooth_error = 0, plain_error = 0;
  // The first layer's output, where the outlier channel enters.
  auto first = [](const ModulePtr& m, const at::Tensor& x) { return m->as<test::TestMlpImpl>()->fc1->forward(x); };
  for (int i = 10; i < 14; ++i) {
    const at::Tensor expected = first(original, batch(i));
    smooth_error += (first(smooth, batch(i)) - expected).pow(2).sum().item<double>();
    plain_error += (first(plain, batch(i)) - expected).pow(2).sum().item<double>();
  }
  EXPECT_LT(smooth_error, plain_error);
}

TEST(SmoothQuantTest, RestoresWithNoDataToTheSameOutputs) {
  ModulePtr model = quantize(mlp_like().build(), "int8_smoothquant", loop_over(3));
  ModulePtr restored = restore_from_modelopt_state(mlp_like().build(), modelopt_state(*model));
  const auto expected = tensors(*model);
  for (const auto& entry : model_state_dict(*restored)) {
    ASSERT_TRUE(expected.count(entry.name)) << entry.name;
    EXPECT_EQ(entry.tensor.sizes(), expected.at(entry.name).sizes()) << entry.name;
    entry.tensor.detach().copy_(expected.at(entry.name));
  }
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(test::test_forward(restored, batch(20)).equal(test::test_forward(model, batch(20))));
}

TEST(SmoothQuantTest, RefusesLayersItCannotSmooth) {
  // fp8 inputs.
  const std::string fp8 = R"({"quant_cfg": {"*weight_quantizer": {"num_bits": 8, "axis": 0},
      "*input_quantizer": {"num_bits": [4, 3]}}, "algorithm": "smoothquant"})";
  try {
    quantize(mlp_like().build(), fp8, loop_over(2));
    FAIL() << "fp8 inputs were smoothed";
  } catch (const ApplyModeError& e) {
    EXPECT_NE(std::string(e.what()).find("smoothquant: layer fc1 (nn.Linear) cannot be smoothed"), std::string::npos)
        << e.what();
  }
  // Block-wise weights.
  const std::string blocks = R"({"quant_cfg": {"*weight_quantizer": {"num_bits": 8, "block_sizes": {"-1": 4}},
      "*input_quantizer": {"num_bits": 8}}, "algorithm": "smoothquant"})";
  try {
    quantize(mlp_like().build(), blocks, loop_over(2));
    FAIL() << "block-wise weights were smoothed";
  } catch (const ApplyModeError& e) {
    EXPECT_NE(std::string(e.what()).find("smoothquant: layer fc1 (nn.Linear) cannot be smoothed"), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("no blocks"), std::string::npos) << e.what();
  }
  // A convolution.
  try {
    quantize(ModelLike("test_cnn", {{"seed", 1}}).build(), "int8_smoothquant", [](torch::nn::Module& m) {
      test::test_forward(m.shared_from_this(), test::test_input(m.shared_from_this()));
    });
    FAIL() << "a convolution was smoothed";
  } catch (const ApplyModeError& e) {
    EXPECT_NE(std::string(e.what()).find("layer conv (nn.Conv2d)"), std::string::npos) << e.what();
  }
  // alpha out of range.
  const std::string bad_alpha = R"({"quant_cfg": {"*input_quantizer": {"num_bits": 8}},
      "algorithm": {"method": "smoothquant", "alpha": 1.5}})";
  EXPECT_THROW(quantize(mlp_like().build(), bad_alpha, loop_over(2)), ConfigError);
  // An unknown option of the algorithm.
  const std::string unknown = R"({"quant_cfg": {"*input_quantizer": {"num_bits": 8}},
      "algorithm": {"method": "smoothquant", "beta": 0.5}})";
  EXPECT_THROW(quantize(mlp_like().build(), unknown, loop_over(2)), ConfigError);
}

}  // namespace
}  // namespace quantization
}  // namespace mto
