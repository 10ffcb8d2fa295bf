// AWQ-lite calibration in one process: the statistics, scales and alpha against an
// independent computation of Model Optimizer's formulas, the smoothed layer's output, the
// gain over plain max int4, independence from how the data falls into forward calls, and
// every error with the culprit named.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <cmath>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "modes/quantization/awq_lite.h"
#include "modes/quantization/quantized_model.h"
#include "modes/quantization/tensor_quantizer.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/model_like.h"
#include "opt/nn/linear.h"
#include "tests/opt/testing/test_modes.h"
#include "tests/testing/errors.h"

namespace mto {
namespace quantization {
namespace {

using test::error_of;

// Int4 weights in blocks of 8 input features; nothing else quantized; no calibration.
constexpr char kInt4Block8[] = R"({"quant_cfg": {
    "*weight_quantizer": {"num_bits": 4, "block_sizes": {"-1": 8}, "enable": true},
    "*input_quantizer": {"enable": false},
    "default": {"enable": false}}, "algorithm": null})";
constexpr int64_t kBlock = 8;
constexpr float kTiny = std::numeric_limits<float>::min();

// One nn::Linear, "fc".
class OneLinearImpl : public torch::nn::Module {
 public:
  OneLinearImpl(int64_t in, int64_t out) { fc = register_module("fc", nn::Linear(in, out)); }
  nn::Linear fc{nullptr};
};

// Two nn::Linear layers side by side, "a" and "b".
class TwoLinearImpl : public torch::nn::Module {
 public:
  TwoLinearImpl(int64_t in, int64_t out) {
    a = register_module("a", nn::Linear(in, out));
    b = register_module("b", nn::Linear(in, out));
  }
  nn::Linear a{nullptr}, b{nullptr};
};

std::shared_ptr<OneLinearImpl> one_linear(int64_t in, int64_t out, const std::string& config = kInt4Block8) {
  at::manual_seed(7);
  auto model = std::make_shared<OneLinearImpl>(in, out);
  apply_mode(model, {{"quantize", config}});
  return model;
}

// Runs every batch through `fc`, one forward call each.
ForwardLoop run_fc(std::vector<at::Tensor> batches) {
  return [batches](torch::nn::Module& model) {
    auto& net = dynamic_cast<OneLinearImpl&>(model);
    for (const at::Tensor& x : batches) net.fc->forward(x);
  };
}

TensorQuantizerImpl* quantizer(torch::nn::Module& model, const std::string& name) {
  for (const QuantizerSlot& slot : quantized_slots(model)) {
    if (slot.name == name) return slot.quantizer();
  }
  throw std::runtime_error("no quantizer " + name);
}

// --- Model Optimizer's formulas, written out independently -------------------------------

// Int4 fake quantization with one amax per block of 8 input features (signed, [-7, 7]), as
// a deployed checkpoint dequantizes: codes round(w / scale) times scale = amax / 7.
at::Tensor int4_blocks(const at::Tensor& w) {
  const at::Tensor blocks = w.reshape({w.size(0), w.size(1) / kBlock, kBlock});
  const at::Tensor amax = blocks.abs().amax(-1, /*keepdim=*/true);
  const at::Tensor scale = amax.clamp_min(1e-12) / 7.0;
  return at::round(blocks / scale).clamp_(-7, 7).mul_(scale).reshape(w.sizes());
}

// Mean over output rows of |W| / (max |W| of its block + tiny).
at::Tensor w_mean(const at::Tensor& w) {
  const at::Tensor blocks = w.abs().reshape({w.size(0), w.size(1) / kBlock, kBlock});
  return (blocks / (blocks.amax(-1, true) + kTiny)).reshape(w.sizes()).to(at::kDouble).mean(0).to(at::kFloat);
}

// Mean of |x| per channel over every token of every batch.
at::Tensor act_mean(const std::vector<at::Tensor>& batches) {
  return at::cat(batches).abs().to(at::kDouble).mean(0).to(at::kFloat);
}

at::Tensor scale(const at::Tensor& act, const at::Tensor& weight_mean, double alpha) {
  const at::Tensor s = (act.pow(alpha) / (weight_mean.pow(1 - alpha) + kTiny)).clamp(1e-4, 1e4);
  return s / (s.max() * s.min()).sqrt();
}

// Squared error of (x / s) @ Q(W s)^T against x @ W^T, summed over the batches.
double output_error(const at::Tensor& w, const at::Tensor& s, const std::vector<at::Tensor>& batches) {
  double error = 0;
  const at::Tensor quantized = int4_blocks(w * s.unsqueeze(0));
  for (const at::Tensor& x : batches) {
    error += (at::linear(x / s, quantized) - at::linear(x, w)).to(at::kDouble).square().sum().item<double>();
  }
  return error;
}

std::vector<double> grid(double step) {
  std::vector<double> out;
  for (int k = 0; k * step < 1 + 1e-9; ++k) out.push_back(std::min(k * step, 1.0));
  return out;
}

// Inputs with a few channels of large magnitude, as activations of LLMs have.
std::vector<at::Tensor> outlier_batches(const std::vector<int64_t>& tokens, int64_t in, int seed) {
  at::manual_seed(seed);
  at::Tensor gain = at::ones({in});
  gain[1] = 30;
  gain[in / 2] = 12;
  gain[in - 3] = 20;
  std::vector<at::Tensor> out;
  for (int64_t t : tokens) out.push_back(at::randn({t, in}) * gain);
  return out;
}

// --- The statistics and the choice ---------------------------------------------------------

TEST(AwqLite, ScalesAndAlphaFollowTheFormulas) {
  auto model = one_linear(16, 4);
  // A tiny weight, and two batches whose values are multiples of 1/64 (so the means are exact).
  const at::Tensor weight = (at::arange(64, at::kFloat).reshape({4, 16}).remainder(7) - 3) / 4 +
                            at::arange(16, at::kFloat).unsqueeze(0) / 32;
  model->fc->weight.detach().copy_(weight);
  std::vector<at::Tensor> batches = outlier_batches({3, 5}, 16, /*seed=*/3);
  for (at::Tensor& x : batches) x = at::round(x * 64) / 64;

  const ForwardLoop loop = run_fc(batches);
  const AwqLiteResult result = calibrate_awq_lite(*model, &loop, nullptr, 0.1);

  // Independently: every alpha's scale and error, and the first of the least error.
  const at::Tensor wm = w_mean(weight), am = act_mean(batches);
  const std::vector<double> alphas = grid(0.1);
  ASSERT_EQ(alphas.size(), 11u);
  std::vector<double> errors;
  size_t best = 0;
  for (size_t a = 0; a < alphas.size(); ++a) {
    errors.push_back(output_error(weight, scale(am, wm, alphas[a]), batches));
    if (errors[a] < errors[best]) best = a;
  }
  for (size_t a = 0; a < alphas.size(); ++a) {
    if (a != best) {
      EXPECT_GT(errors[a], errors[best] * (1 + 1e-4)) << "a near tie makes this test fragile";
    }
  }
  EXPECT_GT(best, 0u) << "the data should favour some activation awareness";

  ASSERT_EQ(result.alphas.size(), 1u);
  EXPECT_EQ(result.alphas[0].first, "fc");
  EXPECT_DOUBLE_EQ(result.alphas[0].second, alphas[best]);
  const at::Tensor s = scale(am, wm, alphas[best]);
  const TensorQuantizerImpl* input = quantizer(*model, "fc.input_quantizer");
  ASSERT_TRUE(input->has_pre_quant_scale());
  EXPECT_FALSE(input->attributes().enable());
  EXPECT_EQ(input->pre_quant_scale().sizes(), (std::vector<int64_t>{16}));
  EXPECT_TRUE(at::allclose(input->pre_quant_scale(), 1 / s, 1e-5, 0)) << input->pre_quant_scale() << 1 / s;
  // The weight is smoothed in place; its amax is the max calibration of the smoothed weight.
  EXPECT_TRUE(at::allclose(model->fc->weight, weight * s.unsqueeze(0), 1e-5, 0));
  const TensorQuantizerImpl* weight_quantizer = quantizer(*model, "fc.weight_quantizer");
  ASSERT_TRUE(weight_quantizer->has_amax());
  EXPECT_TRUE(at::equal(weight_quantizer->amax(),
                        model->fc->weight.detach().abs().reshape({4, 2, kBlock}).amax(-1, true)));
  // The observer is gone.
  EXPECT_EQ(model->fc->transform_names(nn::Slot::kInput), (std::vector<std::string>{"input_quantizer"}));
}

TEST(AwqLite, SmoothedLayerComputesScaledInputTimesQuantizedScaledWeight) {
  auto model = one_linear(32, 8);
  const at::Tensor original = model->fc->weight.detach().clone();
  const std::vector<at::Tensor> batches = outlier_batches({6, 10}, 32, /*seed=*/5);
  const ForwardLoop loop = run_fc(batches);
  calibrate_awq_lite(*model, &loop, nullptr, 0.1);

  const at::Tensor pre_quant_scale = quantizer(*model, "fc.input_quantizer")->pre_quant_scale();
  const at::Tensor smoothed = model->fc->weight.detach();
  for (const at::Tensor& x : batches) {
    // Exactly the layer's own computation ...
    EXPECT_TRUE(at::equal(model->fc->forward(x),
                          at::linear(x * pre_quant_scale, int4_blocks(smoothed), model->fc->bias)));
    // ... which is (x / s) @ Q(W s)^T + b.
    const at::Tensor s = 1 / pre_quant_scale;
    EXPECT_TRUE(at::allclose(model->fc->forward(x),
                             at::linear(x / s, int4_blocks(original * s.unsqueeze(0)), model->fc->bias), 1e-4, 1e-5));
  }
}

TEST(AwqLite, SecondRunComposesWithTheFirstScale) {
  auto model = one_linear(32, 8);
  const std::vector<at::Tensor> batches = outlier_batches({6, 10}, 32, /*seed=*/9);
  const ForwardLoop loop = run_fc(batches);
  calibrate_awq_lite(*model, &loop, nullptr, 0.1);
  const at::Tensor first = quantizer(*model, "fc.input_quantizer")->pre_quant_scale().clone();
  const at::Tensor first_weight = model->fc->weight.detach().clone();
  // The second run sees x * first; its scale multiplies the first.
  calibrate_awq_lite(*model, &loop, nullptr, 0.1);
  const at::Tensor both = quantizer(*model, "fc.input_quantizer")->pre_quant_scale();
  const at::Tensor second = model->fc->weight.detach() / first_weight;  // s of the second run per column
  EXPECT_TRUE(at::allclose(both, first / second.mean(0), 1e-4, 0));
  for (const at::Tensor& x : batches) {
    EXPECT_TRUE(at::equal(model->fc->forward(x),
                          at::linear(x * both, int4_blocks(model->fc->weight.detach()), model->fc->bias)));
  }
}

TEST(AwqLite, BeatsPlainMaxInt4OnOutlierChannels) {
  auto model = one_linear(32, 16);
  const at::Tensor weight = model->fc->weight.detach().clone();
  const at::Tensor bias = model->fc->bias.detach().clone();
  const std::vector<at::Tensor> batches = outlier_batches({16, 16, 8}, 32, /*seed=*/11);
  const ForwardLoop loop = run_fc(batches);
  const AwqLiteResult result = calibrate_awq_lite(*model, &loop, nullptr, 0.1);

  double awq = 0;
  for (const at::Tensor& x : batches) {
    awq += (model->fc->forward(x) - at::linear(x, weight, bias)).to(at::kDouble).square().sum().item<double>();
  }
  const double alpha_zero = output_error(weight, scale(act_mean(batches), w_mean(weight), 0.0), batches);
  const double plain = output_error(weight, at::ones({32}), batches);
  EXPECT_LE(awq, alpha_zero * (1 + 1e-5)) << "alpha " << result.alphas[0].second;
  EXPECT_LT(awq, 0.8 * plain) << "alpha " << result.alphas[0].second;
}

TEST(AwqLite, HowTheDataFallsIntoForwardCallsChangesNothing) {
  const std::vector<at::Tensor> batches = outlier_batches({5, 9, 1, 13}, 24, /*seed=*/21);
  auto together = one_linear(24, 8);
  auto apart = one_linear(24, 8);
  ASSERT_TRUE(at::equal(together->fc->weight, apart->fc->weight));

  const ForwardLoop one_call = run_fc({at::cat(batches)});
  const ForwardLoop reversed = run_fc({batches[3], batches[2], batches[1], batches[0]});
  const AwqLiteResult a = calibrate_awq_lite(*together, &one_call, nullptr, 0.1);
  const AwqLiteResult b = calibrate_awq_lite(*apart, &reversed, nullptr, 0.1);

  EXPECT_EQ(a.alphas, b.alphas);
  EXPECT_TRUE(at::equal(quantizer(*together, "fc.input_quantizer")->pre_quant_scale(),
                        quantizer(*apart, "fc.input_quantizer")->pre_quant_scale()));
  EXPECT_TRUE(at::equal(together->fc->weight, apart->fc->weight));
  EXPECT_TRUE(at::equal(quantizer(*together, "fc.weight_quantizer")->amax(),
                        quantizer(*apart, "fc.weight_quantizer")->amax()));
}

TEST(AwqLite, EveryLinearOfAModelInModuleOrder) {
  ModulePtr model = ModelLike("test_mlp", {{"hidden", 16}, {"seed", 1}}).build();
  model = apply_mode(model, {{"quantize", kInt4Block8}});
  const ForwardLoop loop = [](torch::nn::Module& m) {
    auto self = m.shared_from_this();
    for (int i = 0; i < 3; ++i) {
      at::manual_seed(100 + i);
      test::test_forward(self, at::randn({4, 8}) * (i + 1));
    }
  };
  const AwqLiteResult result = calibrate_awq_lite(*model, &loop, nullptr, 0.25);
  ASSERT_EQ(result.alphas.size(), 3u);
  const std::vector<std::string> names = {"fc1", "fc2", "fc3"};
  const std::vector<int64_t> features = {8, 16, 16};
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(result.alphas[i].first, names[i]);
    const double alpha = result.alphas[i].second;
    EXPECT_TRUE(alpha == 0 || alpha == 0.25 || alpha == 0.5 || alpha == 0.75 || alpha == 1) << alpha;
    EXPECT_EQ(quantizer(*model, names[i] + ".input_quantizer")->pre_quant_scale().sizes(),
              (std::vector<int64_t>{features[i]}));
  }
  // Running the calibrated model needs nothing more.
  EXPECT_NO_THROW(test::test_forward(model, at::randn({2, 8})));
}

// --- Errors ------------------------------------------------------------------------------

TEST(AwqLiteErrors, EnabledInputQuantizer) {
  auto model = one_linear(16, 4, R"({"quant_cfg": {
      "*weight_quantizer": {"num_bits": 4, "block_sizes": {"-1": 8}, "enable": true},
      "*input_quantizer": {"num_bits": 8, "enable": true},
      "default": {"enable": false}}, "algorithm": null})");
  const ForwardLoop loop = run_fc({at::randn({2, 16})});
  EXPECT_EQ(error_of<ApplyModeError>([&] { calibrate_awq_lite(*model, &loop, nullptr, 0.1); }),
            "awq_lite: layer fc has an enabled input quantizer; AWQ-lite here calibrates weight-only formats "
            "(W4A16), disable it");
}

TEST(AwqLiteErrors, WeightQuantizerOnAnotherLayerClass) {
  ModulePtr model = apply_mode(ModelLike("test_cnn", {{"seed", 1}}), {{"quantize", R"({"quant_cfg": {
      "*weight_quantizer": {"num_bits": 4, "axis": 0, "enable": true},
      "default": {"enable": false}}, "algorithm": null})"}});
  const ForwardLoop loop = [](torch::nn::Module& m) {
    test::test_forward(m.shared_from_this(), at::randn({2, 1, 8, 8}));
  };
  EXPECT_EQ(error_of<ApplyModeError>([&] { calibrate_awq_lite(*model, &loop, nullptr, 0.1); }),
            "awq_lite: layer conv (nn.Conv2d) has an enabled weight quantizer; AWQ-lite smooths nn.Linear layers "
            "only, disable it");
}

TEST(AwqLiteErrors, AlphaStepOutOfRange) {
  auto model = one_linear(16, 4);
  const ForwardLoop loop = run_fc({at::randn({2, 16})});
  EXPECT_EQ(error_of<ConfigError>([&] { calibrate_awq_lite(*model, &loop, nullptr, 0); }),
            "awq_lite: alpha_step must be in (0, 1], got 0");
  EXPECT_EQ(error_of<ConfigError>([&] { calibrate_awq_lite(*model, &loop, nullptr, 1.5); }),
            "awq_lite: alpha_step must be in (0, 1], got 1.5");
  EXPECT_EQ(error_of<ConfigError>([&] { calibrate_awq_lite(*model, &loop, nullptr, std::nan("")); }),
            "awq_lite: alpha_step must be in (0, 1], got nan");
  // alpha_step = 1 is the grid {0, 1}.
  const AwqLiteResult result = calibrate_awq_lite(*model, &loop, nullptr, 1);
  EXPECT_TRUE(result.alphas[0].second == 0 || result.alphas[0].second == 1);
}

TEST(AwqLiteErrors, ForwardLoopErrorPropagatesAndLeavesTheModelAsItWas) {
  for (int failing_call : {1, 2}) {
    auto model = one_linear(16, 4);
    const at::Tensor weight = model->fc->weight.detach().clone();
    int calls = 0;
    const ForwardLoop loop = [&](torch::nn::Module& m) {
      dynamic_cast<OneLinearImpl&>(m).fc->forward(at::randn({3, 16}));
      if (++calls == failing_call) throw std::runtime_error("boom");
    };
    EXPECT_EQ(error_of<std::runtime_error>([&] { calibrate_awq_lite(*model, &loop, nullptr, 0.1); }), "boom");
    EXPECT_EQ(model->fc->transform_names(nn::Slot::kInput), (std::vector<std::string>{"input_quantizer"}));
    EXPECT_TRUE(at::equal(model->fc->weight, weight));
    EXPECT_FALSE(quantizer(*model, "fc.input_quantizer")->has_pre_quant_scale());
    EXPECT_TRUE(quantizer(*model, "fc.weight_quantizer")->attributes().enable());  // bypassed only while running
  }
}

TEST(AwqLiteErrors, LayerTheLoopNeverRunsIsNamed) {
  at::manual_seed(3);
  auto model = std::make_shared<TwoLinearImpl>(16, 4);
  apply_mode(model, {{"quantize", kInt4Block8}});
  const ForwardLoop only_a = [](torch::nn::Module& m) {
    dynamic_cast<TwoLinearImpl&>(m).a->forward(at::randn({3, 16}));
  };
  EXPECT_EQ(error_of<ApplyModeError>([&] { calibrate_awq_lite(*model, &only_a, nullptr, 0.1); }),
            "awq_lite: no rank saw calibration data for b (does the forward loop run these layers?)");
  EXPECT_EQ(error_of<ApplyModeError>([&] { calibrate_awq_lite(*model, nullptr, nullptr, 0.1); }),
            "awq_lite needs the mode argument 'forward_loop' to calibrate a, b");
}

TEST(AwqLiteErrors, ActivationsBeyondTheExactStatistics) {
  auto model = one_linear(16, 4);
  at::Tensor x = at::randn({2, 16});
  x[1][3] = 3e9;
  const ForwardLoop huge = run_fc({x});
  EXPECT_EQ(error_of<ApplyModeError>([&] { calibrate_awq_lite(*model, &huge, nullptr, 0.1); }),
            "awq_lite: layer fc: an input of magnitude 3e+09 is beyond the range of the exact activation "
            "statistics (|x| < 2^30, and a channel's sum of |x| below 2^38 / data-parallel ranks)");
  x[1][3] = std::numeric_limits<float>::quiet_NaN();
  const ForwardLoop nan = run_fc({x});
  EXPECT_EQ(error_of<ApplyModeError>([&] { calibrate_awq_lite(*model, &nan, nullptr, 0.1); }),
            "awq_lite: layer fc: the calibration data holds infinities or NaNs");
}

}  // namespace
}  // namespace quantization
}  // namespace mto
