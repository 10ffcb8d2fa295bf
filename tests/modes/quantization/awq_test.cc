// AWQ calibration in one process. AWQ-lite: the statistics, scales and alpha against an
// independent computation of Model Optimizer's formulas, the smoothed layer's output, the
// gain over plain max int4. AWQ clip: every block's ratio against the error computed token
// by token, the gain over plain max int4, the modes "awq_clip_calibrate" and
// "awq_full_calibrate" recorded and restored. Both: independence from how the data falls
// into forward calls, and every error with the culprit named.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/nn/module.h>

#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "modes/quantization/awq_clip.h"
#include "modes/quantization/awq_lite.h"
#include "modes/quantization/quantization.pb.h"
#include "modes/quantization/quantize.h"
#include "modes/quantization/quantized_model.h"
#include "modes/quantization/tensor_quantizer.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/model_like.h"
#include "opt/nn/linear.h"
#include "opt/state_dict.h"
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

// Int4 fake quantization with one amax per block of 8 input features (signed, [-8, 7]), as
// a deployed checkpoint dequantizes: codes round(w / scale) times scale = amax / 7.
at::Tensor int4_blocks(const at::Tensor& w) {
  const at::Tensor blocks = w.reshape({w.size(0), w.size(1) / kBlock, kBlock});
  const at::Tensor amax = blocks.abs().amax(-1, /*keepdim=*/true);
  const at::Tensor scale = amax.clamp_min(1e-12) / 7.0;
  return at::round(blocks / scale).clamp_(-8, 7).mul_(scale).reshape(w.sizes());
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

// torch.arange(0, 1 + step, step), in double.
std::vector<double> grid(double step) {
  std::vector<double> out;
  for (int k = 0; k < std::ceil((1 + step) / step); ++k) out.push_back(k * step);
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
            "awq_lite: layer fc has an enabled input quantizer; awq_lite here calibrates weight-only formats "
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
            "awq_lite: layer conv (nn.Conv2d) has an enabled weight quantizer; awq_lite calibrates nn.Linear "
            "layers only, disable it");
}

// A step that does not divide 1 searches as Model Optimizer's arange does, past 1: 0.4 gives
// 0, 0.4, 0.8 and 1.2; data that favours the largest alpha (one input channel a thousand
// times the others, found by a search over seeds) gets 1.2.
TEST(AwqLite, AStepThatDoesNotDivideOneSearchesPastIt) {
  auto model = one_linear(16, 4);
  at::manual_seed(3);
  const at::Tensor weight = at::randn({4, 16});
  model->fc->weight.detach().copy_(weight);
  at::manual_seed(107);
  at::Tensor gain = at::ones({16});
  gain[7] = 1330;
  const std::vector<at::Tensor> batches = {at::randn({6, 16}) * gain, at::randn({6, 16}) * gain};
  const ForwardLoop loop = run_fc(batches);
  const AwqLiteResult result = calibrate_awq_lite(*model, &loop, nullptr, 0.4);
  const std::vector<double> alphas = grid(0.4);
  ASSERT_EQ(alphas.size(), 4u);
  EXPECT_DOUBLE_EQ(alphas.back(), 1.2);
  std::vector<double> errors;
  size_t best = 0;
  for (size_t a = 0; a < alphas.size(); ++a) {
    errors.push_back(output_error(weight, scale(act_mean(batches), w_mean(weight), alphas[a]), batches));
    if (errors[a] < errors[best]) best = a;
  }
  ASSERT_EQ(best, 3u) << "the data should favour the largest alpha: errors " << errors[0] << ", " << errors[1]
                      << ", " << errors[2] << ", " << errors[3];
  EXPECT_LT(errors[3], 0.9 * errors[2]) << "a near tie makes this test fragile";
  EXPECT_DOUBLE_EQ(result.alphas[0].second, 1.2);
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

// --- AWQ clip ------------------------------------------------------------------------------

// Int4 of one block of weights `w` [block] with amax `amax`, as int4_blocks quantizes.
at::Tensor int4_clipped(const at::Tensor& w, const at::Tensor& amax) {
  const at::Tensor scale = amax.clamp_min(1e-12) / 7.0;
  return at::round(w / scale).clamp_(-8, 7).mul_(scale);  // int4: codes in [-8, 7]
}

std::vector<double> clip_grid() {
  std::vector<double> out;
  for (int k = 0; k <= 10; ++k) out.push_back(1.0 - k * 0.05);
  return out;
}

// Squared error of a block's part of the output, token by token: sum over x of
// (x_block . (Q(w) - w))^2.
double block_error(const at::Tensor& w, const at::Tensor& quantized, const std::vector<at::Tensor>& blocks_of_x) {
  double error = 0;
  for (const at::Tensor& x : blocks_of_x) {
    error += at::matmul(x.to(at::kDouble), (quantized - w).to(at::kDouble)).square().sum().item<double>();
  }
  return error;
}

TEST(AwqClip, EveryBlockGetsTheRatioOfLeastOutputError) {
  // 20 input features: blocks [0, 8), [8, 16) and the partial [16, 20). The middle block's
  // inputs are all zero, so every ratio ties there (no error at all): it keeps ratio 1.
  auto model = one_linear(20, 4);
  const at::Tensor weight = model->fc->weight.detach().clone();
  std::vector<at::Tensor> batches = outlier_batches({7, 12}, 20, /*seed=*/13);
  for (at::Tensor& x : batches) x.narrow(1, 8, 8).zero_();
  const ForwardLoop loop = run_fc(batches);
  const AwqClipResult result = calibrate_awq_clip(*model, &loop, nullptr, AwqClipOptions());

  ASSERT_EQ(result.ratios.size(), 1u);
  EXPECT_EQ(result.ratios[0].first, "fc");
  const at::Tensor ratios = result.ratios[0].second;
  ASSERT_EQ(ratios.sizes(), (std::vector<int64_t>{4, 3}));
  const std::vector<double> grid = clip_grid();
  at::Tensor block_max = at::empty({4, 3, 1});
  int clipped = 0;
  for (int64_t row = 0; row < 4; ++row) {
    for (int64_t block = 0; block < 3; ++block) {
      SCOPED_TRACE("row " + std::to_string(row) + " block " + std::to_string(block));
      const int64_t width = std::min<int64_t>(kBlock, 20 - block * kBlock);
      const at::Tensor w = weight[row].narrow(0, block * kBlock, width);
      block_max[row][block][0] = w.abs().max();
      if (block == 1) {
        EXPECT_EQ(ratios[row][block].item<float>(), 1.0f);
        continue;
      }
      std::vector<at::Tensor> xs;
      for (const at::Tensor& x : batches) xs.push_back(x.narrow(1, block * kBlock, width));
      std::vector<double> errors;
      size_t best = 0;
      for (size_t r = 0; r < grid.size(); ++r) {
        const at::Tensor amax = w.abs().max() * static_cast<float>(grid[r]);
        errors.push_back(block_error(w, int4_clipped(w, amax), xs));
        if (errors[r] < errors[best]) best = r;
      }
      for (size_t r = 0; r < grid.size(); ++r) {
        if (r == best) continue;
        EXPECT_GT(errors[r], errors[best] * (1 + 1e-9)) << "a near tie makes this test fragile";
      }
      EXPECT_EQ(ratios[row][block].item<float>(), static_cast<float>(grid[best]));
      clipped += best > 0;
    }
  }
  EXPECT_GT(clipped, 0) << "int4 should gain from clipping some block";
  // The weight is unchanged; its amax is each block's max |W| times the ratio.
  EXPECT_TRUE(at::equal(model->fc->weight, weight));
  EXPECT_TRUE(at::equal(quantizer(*model, "fc.weight_quantizer")->amax(), block_max * ratios.unsqueeze(-1)));
  EXPECT_FALSE(quantizer(*model, "fc.input_quantizer")->has_pre_quant_scale());
  EXPECT_EQ(model->fc->transform_names(nn::Slot::kInput), (std::vector<std::string>{"input_quantizer"}));
}

TEST(AwqClip, BeatsPlainMaxInt4) {
  // One block per row: the layer's output error is the sum of its blocks' errors.
  auto model = one_linear(8, 32);
  const at::Tensor weight = model->fc->weight.detach().clone();
  const at::Tensor bias = model->fc->bias.detach().clone();
  const std::vector<at::Tensor> batches = outlier_batches({32, 32}, 8, /*seed=*/17);
  const ForwardLoop loop = run_fc(batches);
  calibrate_awq_clip(*model, &loop, nullptr, AwqClipOptions());
  double clipped = 0, plain = 0;
  for (const at::Tensor& x : batches) {
    const at::Tensor reference = at::linear(x, weight, bias);
    clipped += (model->fc->forward(x) - reference).to(at::kDouble).square().sum().item<double>();
    plain += (at::linear(x, int4_blocks(weight), bias) - reference).to(at::kDouble).square().sum().item<double>();
  }
  EXPECT_LT(clipped, 0.9 * plain);
}

TEST(AwqClip, HowTheDataFallsIntoForwardCallsChangesNothing) {
  const std::vector<at::Tensor> batches = outlier_batches({5, 9, 1, 13}, 24, /*seed=*/23);
  auto together = one_linear(24, 8);
  auto apart = one_linear(24, 8);
  const ForwardLoop one_call = run_fc({at::cat(batches)});
  const ForwardLoop reversed = run_fc({batches[3], batches[2], batches[1], batches[0]});
  const AwqClipResult a = calibrate_awq_clip(*together, &one_call, nullptr, AwqClipOptions());
  const AwqClipResult b = calibrate_awq_clip(*apart, &reversed, nullptr, AwqClipOptions());
  EXPECT_TRUE(at::equal(a.ratios[0].second, b.ratios[0].second));
  EXPECT_TRUE(at::equal(quantizer(*together, "fc.weight_quantizer")->amax(),
                        quantizer(*apart, "fc.weight_quantizer")->amax()));
}

TEST(AwqClip, RowsAtATimeAndTheRatioGridFromTheOptions) {
  const std::vector<at::Tensor> batches = outlier_batches({16}, 16, /*seed=*/29);
  const ForwardLoop loop = run_fc(batches);
  auto whole = one_linear(16, 12);
  auto in_fives = one_linear(16, 12);
  AwqClipOptions five_rows;  // 12 rows: 5, 5 and 2
  five_rows.max_co_batch_size = 5;
  EXPECT_TRUE(at::equal(calibrate_awq_clip(*whole, &loop, nullptr, AwqClipOptions()).ratios[0].second,
                        calibrate_awq_clip(*in_fives, &loop, nullptr, five_rows).ratios[0].second));

  // A row whose other weights are multiples of 1/7 within [-1, 1] beside a weight of 4 that
  // sees no input: amax 4 * r = 1 quantizes them exactly, so the coarse grid 1, 0.75, 0.5,
  // 0.25 ends in its minimum, where the default grid stops at 0.5.
  auto coarse = one_linear(8, 1);
  {
    torch::NoGradGuard no_grad;
    coarse->fc->weight.copy_(
        at::tensor(std::vector<float>{4.0f, 1.0f, -6 / 7.0f, 5 / 7.0f, -3 / 7.0f, 2 / 7.0f, -1 / 7.0f, 1.0f}).unsqueeze(0));
  }
  at::Tensor x = at::randn({32, 8});
  x.select(1, 0).zero_();
  const ForwardLoop no_input_for_the_outlier = run_fc({x});
  AwqClipOptions quarter;
  quarter.min_clip_ratio = 0.25;
  quarter.shrink_step = 0.25;
  EXPECT_EQ(calibrate_awq_clip(*coarse, &no_input_for_the_outlier, nullptr, quarter).ratios[0].second.item<float>(),
            0.25f);
  EXPECT_GE(calibrate_awq_clip(*coarse, &no_input_for_the_outlier, nullptr, AwqClipOptions())
                .ratios[0].second.item<float>(),
            0.5f);
}

// AWQ-lite, then clip, recorded as one mode after quantize; restored with no data.
TEST(AwqClip, AwqFullIsRecordedAfterQuantizeAndRestoresWithNoData) {
  const std::string config = R"({"quant_cfg": {
      "*weight_quantizer": {"num_bits": 4, "block_sizes": {"-1": 8}, "enable": true},
      "*input_quantizer": {"enable": false}, "default": {"enable": false}},
      "algorithm": {"method": "awq_full", "shrink_step": 0.1}})";
  const std::vector<ModeWithConfig> modes = quantize_modes(config);
  ASSERT_EQ(modes.size(), 2u);
  EXPECT_EQ(modes[1].mode, "awq_full_calibrate");
  const ModelLike like("test_mlp", {{"hidden", 16}, {"seed", 1}});
  RuntimeContext context;
  context.set(kForwardLoop, ForwardLoop([](torch::nn::Module& m) {
                for (int i = 0; i < 3; ++i) {
                  at::manual_seed(300 + i);
                  test::test_forward(m.shared_from_this(), at::randn({6, 8}) * (i + 1));
                }
              }));
  ModulePtr model = apply_mode(like.build(), ModeList(modes), nullptr, std::nullopt, context);
  const ModeloptState state = modelopt_state(*model);
  ASSERT_EQ(state.modelopt_state_dict_size(), 2);
  EXPECT_EQ(state.modelopt_state_dict(1).mode(), "awq_full_calibrate");
  AwqFullCalibrateConfig recorded;
  ASSERT_TRUE(state.modelopt_state_dict(1).config().UnpackTo(&recorded));
  EXPECT_EQ(recorded.method(), "awq_full");
  EXPECT_EQ(recorded.alpha_step(), 0.1);
  EXPECT_EQ(recorded.min_clip_ratio(), 0.5);
  EXPECT_EQ(recorded.shrink_step(), 0.1);
  EXPECT_EQ(recorded.max_co_batch_size(), 1024);
  EXPECT_EQ(recorded.max_tokens_per_batch(), 64);
  // Smoothed (AWQ-lite's pre_quant_scale) and clipped (amax below the block maxima).
  EXPECT_TRUE(quantizer(*model, "fc1.input_quantizer")->has_pre_quant_scale());
  const at::Tensor weight = model->as<test::TestMlpImpl>()->fc1->weight.detach();
  const at::Tensor block_max = weight.abs().reshape({16, 1, kBlock}).amax(-1, true);
  const at::Tensor amax = quantizer(*model, "fc1.weight_quantizer")->amax();
  EXPECT_TRUE((amax <= block_max).all().item<bool>());
  EXPECT_TRUE((amax < block_max).any().item<bool>());

  ModulePtr restored = restore_from_modelopt_state(like.build(), state);
  std::map<std::string, at::Tensor> expected;
  for (const auto& entry : model_state_dict(*model)) expected[entry.name] = entry.tensor;
  for (const auto& entry : model_state_dict(*restored)) {
    ASSERT_TRUE(expected.count(entry.name)) << entry.name;
    ASSERT_EQ(entry.tensor.sizes(), expected.at(entry.name).sizes()) << entry.name;
    entry.tensor.detach().copy_(expected.at(entry.name));
  }
  torch::NoGradGuard no_grad;
  const at::Tensor x = at::randn({5, 8});
  EXPECT_TRUE(at::equal(test::test_forward(restored, x), test::test_forward(model, x)));
}

TEST(AwqClipErrors, EveryCulpritNamed) {
  // A weight quantizer without blocks along the input features.
  auto per_channel = one_linear(16, 4, R"({"quant_cfg": {
      "*weight_quantizer": {"num_bits": 4, "axis": 0, "enable": true},
      "*input_quantizer": {"enable": false}, "default": {"enable": false}}, "algorithm": null})");
  const ForwardLoop loop = run_fc({at::randn({2, 16})});
  EXPECT_EQ(error_of<ApplyModeError>([&] { calibrate_awq_clip(*per_channel, &loop, nullptr, AwqClipOptions()); }),
            "awq_clip: fc.weight_quantizer has no blocks along the input features; awq_clip searches a clip ratio "
            "per block (block_sizes {-1: N}), disable it or use awq_lite");
  // awq_full refuses it before AWQ-lite changes anything.
  const at::Tensor per_channel_weight = per_channel->fc->weight.detach().clone();
  EXPECT_EQ(error_of<ApplyModeError>([&] {
              RuntimeContext context;
              context.set(kForwardLoop, loop);
              apply_mode(per_channel, {{"awq_full_calibrate", "{}"}}, nullptr, std::nullopt, context);
            }),
            "awq_clip: fc.weight_quantizer has no blocks along the input features; awq_clip searches a clip ratio "
            "per block (block_sizes {-1: N}), disable it or use awq_lite");
  EXPECT_TRUE(at::equal(per_channel->fc->weight, per_channel_weight));
  EXPECT_FALSE(quantizer(*per_channel, "fc.input_quantizer")->has_pre_quant_scale());
  // Options out of range.
  auto model = one_linear(16, 4);
  AwqClipOptions options;
  options.min_clip_ratio = 0;
  EXPECT_EQ(error_of<ConfigError>([&] { calibrate_awq_clip(*model, &loop, nullptr, options); }),
            "awq_clip: min_clip_ratio must be in (0, 1], got 0");
  options = AwqClipOptions();
  options.shrink_step = std::nan("");
  EXPECT_EQ(error_of<ConfigError>([&] { calibrate_awq_clip(*model, &loop, nullptr, options); }),
            "awq_clip: shrink_step must be in (0, 1], got nan");
  options = AwqClipOptions();
  options.shrink_step = 1e-6;
  EXPECT_EQ(error_of<ConfigError>([&] { calibrate_awq_clip(*model, &loop, nullptr, options); }),
            "awq_clip: min_clip_ratio 0.5 and shrink_step 1e-06 make more than 1001 ratios to search");
  options = AwqClipOptions();
  options.max_co_batch_size = 0;
  EXPECT_EQ(error_of<ConfigError>([&] { calibrate_awq_clip(*model, &loop, nullptr, options); }),
            "awq_clip: max_co_batch_size must be at least 1, got 0");
  EXPECT_EQ(error_of<ConfigError>(
                [] { apply_mode(one_linear(16, 4), {{"awq_clip_calibrate", R"({"min_clip_ratio": 1.5})"}}); }),
            "config of mode 'awq_clip_calibrate': min_clip_ratio must be in (0, 1], got 1.5");
  // No data, a missing loop, a loop that fails, data that is not finite.
  at::manual_seed(3);
  auto two = std::make_shared<TwoLinearImpl>(16, 4);
  apply_mode(two, {{"quantize", kInt4Block8}});
  const ForwardLoop only_a = [](torch::nn::Module& m) {
    dynamic_cast<TwoLinearImpl&>(m).a->forward(at::randn({3, 16}));
  };
  EXPECT_EQ(error_of<ApplyModeError>([&] { calibrate_awq_clip(*two, &only_a, nullptr, AwqClipOptions()); }),
            "awq_clip: no rank saw calibration data for b (does the forward loop run these layers?)");
  EXPECT_EQ(error_of<ApplyModeError>([&] { calibrate_awq_clip(*two, nullptr, nullptr, AwqClipOptions()); }),
            "awq_clip needs the mode argument 'forward_loop' to calibrate a, b");
  const ForwardLoop failing = [](torch::nn::Module& m) {
    dynamic_cast<OneLinearImpl&>(m).fc->forward(at::randn({3, 16}));
    throw std::runtime_error("boom");
  };
  EXPECT_EQ(error_of<std::runtime_error>([&] { calibrate_awq_clip(*model, &failing, nullptr, AwqClipOptions()); }),
            "boom");
  EXPECT_EQ(model->fc->transform_names(nn::Slot::kInput), (std::vector<std::string>{"input_quantizer"}));
  EXPECT_TRUE(quantizer(*model, "fc.weight_quantizer")->attributes().enable());
  EXPECT_FALSE(quantizer(*model, "fc.weight_quantizer")->has_amax());
  at::Tensor x = at::randn({2, 16});
  x[1][3] = std::numeric_limits<float>::infinity();
  // The bad input comes first; the loop still runs to its end (a tensor-parallel peer whose
  // slice was fine would be waiting in the forwards' collectives), then the error is raised.
  int calls = 0;
  const ForwardLoop infinite = [&](torch::nn::Module& m) {
    for (const at::Tensor& batch : {x, at::randn({2, 16}), at::randn({2, 16})}) {
      dynamic_cast<OneLinearImpl&>(m).fc->forward(batch);
      ++calls;
    }
  };
  EXPECT_EQ(error_of<ApplyModeError>([&] { calibrate_awq_clip(*model, &infinite, nullptr, AwqClipOptions()); }),
            "awq_clip: layer fc: the calibration data holds infinities or NaNs");
  EXPECT_EQ(calls, 3);
}

}  // namespace
}  // namespace quantization
}  // namespace mto
