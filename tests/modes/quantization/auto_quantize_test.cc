// AutoQuantize in one process: the multiple-choice knapsack against brute force (hand-made
// ties, budget extremes, random instances), and auto_quantize on a tiny zoo GPT: every score
// recomputed by hand from the float model's output gradients and our own fake quantization,
// the monotone adjustment, the budget extremes, the applied config, the modelopt state, a
// save/restore round trip and the refusals.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/nn/module.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "modes/quantization/auto_quantize.h"
#include "modes/quantization/fake_quant.h"
#include "modes/quantization/multiple_choice_knapsack.h"
#include "modes/quantization/quantization.pb.h"
#include "modes/quantization/quantize.h"
#include "modes/quantization/quantized_model.h"
#include "modes/quantization/tensor_quantizer.h"
#include "opt/checkpoint.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/model_like.h"
#include "opt/nn/linear.h"
#include "tests/testing/errors.h"
#include "tests/testing/model_checks.h"
#include "tests/testing/temp_dir.h"
#include "tools/zoo/forward.h"
#include "tools/zoo/gpt.h"

namespace mto {
namespace quantization {
namespace {

using ::testing::HasSubstr;
using test::error_of;
using test::same_bytes;

// --- The knapsack against brute force ------------------------------------------------------

using Groups = std::vector<std::vector<KnapsackOption>>;

// Every choice, in lexicographic order; the best is the least (score, cost), the
// lexicographically first among equals. Scores sum in group order, as the solver does.
std::optional<std::vector<int>> brute_force(const Groups& groups, uint64_t budget) {
  std::optional<std::vector<int>> best;
  double best_score = 0;
  uint64_t best_cost = 0;
  std::vector<int> choice(groups.size(), 0);
  while (true) {
    uint64_t cost = 0;
    double score = 0;
    for (size_t g = 0; g < groups.size(); ++g) {
      cost += groups[g][choice[g]].cost;
      score += groups[g][choice[g]].score;
    }
    if (cost <= budget && (!best || std::tie(score, cost) < std::tie(best_score, best_cost))) {
      best = choice;
      best_score = score;
      best_cost = cost;
    }
    size_t g = groups.size();
    while (g > 0 && choice[g - 1] + 1 == static_cast<int>(groups[g - 1].size())) choice[--g] = 0;
    if (g == 0) break;
    ++choice[g - 1];
  }
  return best;
}

TEST(MultipleChoiceKnapsack, HandMadeCasesMatchBruteForce) {
  // Options per group: cheap and lossy first.
  const Groups groups = {{{4, 9.0}, {8, 2.0}, {16, 0.0}}, {{4, 5.0}, {8, 1.0}, {16, 0.0}}, {{2, 3.0}, {16, 0.0}}};
  // Everything at the most expensive option fits: the best scores.
  EXPECT_EQ(solve_multiple_choice_knapsack(groups, 48), (std::vector<int>{2, 2, 1}));
  EXPECT_EQ(solve_multiple_choice_knapsack(groups, 1000), (std::vector<int>{2, 2, 1}));
  // Only the cheapest options fit.
  EXPECT_EQ(solve_multiple_choice_knapsack(groups, 10), (std::vector<int>{0, 0, 0}));
  // Below the cheapest: nothing fits.
  EXPECT_EQ(solve_multiple_choice_knapsack(groups, 9), std::nullopt);
  EXPECT_EQ(solve_multiple_choice_knapsack(groups, 0), std::nullopt);
  // Budget 20: {8,8,2} = score 6 (cost 18) beats {16,4,...}.
  EXPECT_EQ(solve_multiple_choice_knapsack(groups, 20), (std::vector<int>{1, 1, 0}));
  for (uint64_t budget = 0; budget <= 50; ++budget) {
    EXPECT_EQ(solve_multiple_choice_knapsack(groups, budget), brute_force(groups, budget)) << budget;
  }
  // No groups: the empty choice.
  EXPECT_EQ(solve_multiple_choice_knapsack({}, 0), std::vector<int>{});
}

TEST(MultipleChoiceKnapsack, TiesGoToLeastCostThenEarliestOptions) {
  // Equal scores: the least cost wins.
  const Groups equal_scores = {{{3, 1.0}, {2, 1.0}}, {{5, 0.0}, {4, 0.0}}};
  EXPECT_EQ(solve_multiple_choice_knapsack(equal_scores, 100), (std::vector<int>{1, 1}));
  // Equal scores and costs: the earliest options.
  const Groups identical = {{{2, 1.0}, {2, 1.0}}, {{3, 2.0}, {3, 2.0}, {3, 2.0}}, {{1, 0.0}, {1, 0.0}}};
  EXPECT_EQ(solve_multiple_choice_knapsack(identical, 100), (std::vector<int>{0, 0, 0}));
  // Equal totals reached by different splits: the lexicographically first choice.
  const Groups crossed = {{{2, 1.0}, {1, 2.0}}, {{1, 2.0}, {2, 1.0}}, {{1, 0.0}}};
  for (uint64_t budget = 0; budget <= 6; ++budget) {
    EXPECT_EQ(solve_multiple_choice_knapsack(crossed, budget), brute_force(crossed, budget)) << budget;
  }
}

TEST(MultipleChoiceKnapsack, RandomInstancesMatchBruteForce) {
  std::mt19937 random(1234);
  for (int instance = 0; instance < 50; ++instance) {
    const int group_count = 1 + static_cast<int>(random() % 4);
    Groups groups(group_count);
    uint64_t most = 0;
    for (auto& group : groups) {
      const int options = 1 + static_cast<int>(random() % 4);
      uint64_t largest = 0;
      for (int o = 0; o < options; ++o) {
        // Small integers: many ties in cost and in score (sums of small integers are exact).
        group.push_back({random() % 6, static_cast<double>(random() % 5)});
        largest = std::max(largest, group.back().cost);
      }
      most += largest;
    }
    for (uint64_t budget = 0; budget <= most + 1; ++budget) {
      ASSERT_EQ(solve_multiple_choice_knapsack(groups, budget), brute_force(groups, budget))
          << "instance " << instance << " budget " << budget;
    }
  }
}

// --- auto_quantize on the zoo GPT ----------------------------------------------------------

constexpr int64_t kContext = 16;
constexpr int64_t kVocab = 256;

ModelLike gpt_like() {
  return ModelLike("gpt", {{"width", 128}, {"depth", 1}, {"heads", 4}, {"context", kContext}, {"seed", 7}});
}

const std::vector<std::string> kLayers = {"blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.fc1", "blocks.0.fc2"};

// Fixed windows of kContext + 1 tokens.
at::Tensor windows(int64_t seed, int64_t rows) {
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randint(kVocab, {rows, kContext + 1}, generator, at::kLong);
}

at::Tensor lm_loss(torch::nn::Module& model, const at::Tensor& w) {
  const int64_t length = w.size(1) - 1;
  const at::Tensor logits = zoo::forward(model, w.narrow(1, 0, length));
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), w.narrow(1, 1, length).reshape({-1}));
}

std::vector<at::Tensor> calibration_batches() { return {windows(1, 2), windows(2, 2)}; }
std::vector<at::Tensor> score_batches() { return {windows(11, 2), windows(12, 2), windows(13, 2)}; }

ForwardLoop calibration_loop() {
  return [](torch::nn::Module& model) {
    for (const at::Tensor& w : calibration_batches()) zoo::forward(model, w.narrow(1, 0, kContext));
  };
}

LossLoop score_loop() {
  return [](torch::nn::Module& model, const std::function<void(const at::Tensor&)>& backward) {
    for (const at::Tensor& w : score_batches()) backward(lm_loss(model, w));
  };
}

AutoQuantizeOptions options(double effective_bits) {
  AutoQuantizeOptions o;
  o.formats = {"int4_blockwise", "int8", "fp8"};
  o.effective_bits = effective_bits;
  o.score_loop = score_loop();
  o.context.set(kForwardLoop, calibration_loop());
  return o;
}

ModulePtr float_gpt() { return gpt_like().build(); }

// Captures a layer's inputs, outputs and the gradients of the loss at its outputs.
struct Captured {
  std::vector<at::Tensor> x, y, g;
};

class CaptureImpl : public nn::TransformImpl {
 public:
  CaptureImpl(Captured* c, bool output) : c_(c), output_(output) {}
  at::Tensor forward(const at::Tensor& t) override {
    if (!output_) {
      c_->x.push_back(t.detach().clone());
      return t;
    }
    c_->y.push_back(t.detach().clone());
    if (t.requires_grad()) {
      Captured* c = c_;
      t.register_hook([c](const at::Tensor& grad) { c->g.push_back(grad.detach().clone()); });
    }
    return t;
  }

 private:
  Captured* c_;
  bool output_;
};

nn::LinearImpl* linear(torch::nn::Module& model, const std::string& name) {
  for (const auto& entry : model.named_modules()) {
    if (entry.key() == name) return dynamic_cast<nn::LinearImpl*>(entry.value().get());
  }
  throw std::runtime_error("no layer " + name);
}

// The raw scores by hand, [layer][format] with formats int4_blockwise, int8, fp8.
std::vector<std::vector<double>> scores_by_hand() {
  ModulePtr model = float_gpt();
  std::map<std::string, Captured> calibration, scoring;
  auto attach = [&](std::map<std::string, Captured>& into) {
    for (const std::string& name : kLayers) {
      linear(*model, name)->add_transform(nn::Slot::kInput, "capture_in", std::make_shared<CaptureImpl>(&into[name], false));
      linear(*model, name)->add_transform(nn::Slot::kOutput, "capture_out", std::make_shared<CaptureImpl>(&into[name], true));
    }
  };
  auto detach = [&]() {
    for (const std::string& name : kLayers) {
      linear(*model, name)->remove_transform("capture_in");
      linear(*model, name)->remove_transform("capture_out");
    }
  };
  attach(calibration);
  {
    torch::NoGradGuard no_grad;
    calibration_loop()(*model);
  }
  detach();
  attach(scoring);
  for (const at::Tensor& w : score_batches()) lm_loss(*model, w).backward();
  detach();

  std::vector<std::vector<double>> out;
  torch::NoGradGuard no_grad;
  for (const std::string& name : kLayers) {
    nn::LinearImpl* layer = linear(*model, name);
    const at::Tensor w = layer->weight.detach();
    at::Tensor input_amax = at::zeros({}, at::kFloat);
    for (const at::Tensor& x : calibration[name].x) input_amax = at::max(input_amax, x.abs().max());
    const int64_t rows = w.size(0), cols = w.size(1);
    const at::Tensor blocks = w.reshape({rows, cols / 128, 128});
    const at::Tensor w_int4 = fake_quant_int(blocks, blocks.abs().amax({2}, true), 4, false).reshape({rows, cols});
    const at::Tensor w_int8 = fake_quant_int(w, w.abs().amax({1}, true), 8, false);
    const at::Tensor w_fp8 = fake_quant_e4m3(w, w.abs().max());
    const Captured& c = scoring[name];
    EXPECT_EQ(c.x.size(), score_batches().size()) << name;
    EXPECT_EQ(c.g.size(), score_batches().size()) << name;
    std::vector<double> s(3, 0.0);
    for (size_t b = 0; b < c.x.size(); ++b) {
      const at::Tensor& x = c.x[b];
      const at::Tensor& y = c.y[b];
      const at::Tensor& g = c.g[b];
      const std::vector<at::Tensor> quantized = {
          at::linear(x, w_int4, layer->bias),
          at::linear(fake_quant_int(x, input_amax, 8, false), w_int8, layer->bias),
          at::linear(fake_quant_e4m3(x, input_amax), w_fp8, layer->bias),
      };
      for (size_t f = 0; f < 3; ++f) s[f] += (g * (quantized[f] - y)).square().sum().item<double>();
    }
    out.push_back(s);
  }
  return out;
}

TensorQuantizerImpl* quantizer_of(torch::nn::Module& model, const std::string& name) {
  for (const QuantizerSlot& slot : quantizer_slots(model)) {
    if (slot.name == name) return slot.quantizer();
  }
  return nullptr;
}

bool enabled(torch::nn::Module& model, const std::string& name) {
  TensorQuantizerImpl* q = quantizer_of(model, name);
  return q != nullptr && q->attributes().enable();
}

class AutoQuantizeGpt : public ::testing::Test {
 protected:
  void SetUp() override { at::set_num_threads(1); }
};

TEST_F(AutoQuantizeGpt, ScoresMatchTheGradientScoreByHandMadeMonotone) {
  const auto [model, result] = auto_quantize(float_gpt(), options(6));
  EXPECT_EQ(result.formats, (std::vector<std::string>{"int4_blockwise", "int8", "fp8", "none"}));
  EXPECT_EQ(result.bits, (std::vector<int>{4, 8, 8, 16}));
  EXPECT_EQ(result.excluded, std::vector<std::string>{"lm_head"});
  ASSERT_EQ(result.layers.size(), kLayers.size());
  const std::vector<std::vector<double>> raw = scores_by_hand();
  for (size_t l = 0; l < kLayers.size(); ++l) {
    const AutoQuantizeLayer& layer = result.layers[l];
    EXPECT_EQ(layer.name, kLayers[l]);
    EXPECT_EQ(layer.params, linear(*model, kLayers[l])->weight.numel());
    ASSERT_EQ(layer.scores.size(), 4u);
    // Monotone: int8 and fp8 (8 bits) at most int4's; equal bits keep their own; none 0.
    const std::vector<double> expected = {raw[l][0], std::min(raw[l][1], raw[l][0]), std::min(raw[l][2], raw[l][0]),
                                          0.0};
    for (size_t f = 0; f < 4; ++f) {
      EXPECT_NEAR(layer.scores[f], expected[f], 1e-5 * std::abs(expected[f]) + 1e-30) << layer.name << " " << f;
    }
    EXPECT_GT(raw[l][0], 0) << layer.name;
    for (size_t f = 1; f < 4; ++f) EXPECT_LE(layer.scores[f], layer.scores[0]) << layer.name;
  }
}

// The exact optimum over all 4^layers choices of the result's scores and costs.
std::vector<int> best_choice(const AutoQuantizeResult& result, double effective_bits) {
  Groups groups;
  uint64_t total = 0;
  for (const AutoQuantizeLayer& layer : result.layers) {
    auto& group = groups.emplace_back();
    for (size_t f = 0; f < result.formats.size(); ++f) {
      group.push_back({static_cast<uint64_t>(layer.params) * result.bits[f], layer.scores[f]});
    }
    total += layer.params;
  }
  return *brute_force(groups, static_cast<uint64_t>(std::floor(total * effective_bits)));
}

TEST_F(AutoQuantizeGpt, BudgetExtremes) {
  {
    const auto [model, result] = auto_quantize(float_gpt(), options(16));
    for (const AutoQuantizeLayer& layer : result.layers) EXPECT_EQ(result.formats[layer.chosen], "none") << layer.name;
    EXPECT_DOUBLE_EQ(result.effective_bits, 16);
    for (const QuantizerSlot& slot : quantizer_slots(*model)) EXPECT_FALSE(enabled(*model, slot.name)) << slot.name;
  }
  {
    const auto [model, result] = auto_quantize(float_gpt(), options(4));
    for (const AutoQuantizeLayer& layer : result.layers) {
      EXPECT_EQ(result.formats[layer.chosen], "int4_blockwise") << layer.name;
    }
    EXPECT_DOUBLE_EQ(result.effective_bits, 4);
  }
}

TEST_F(AutoQuantizeGpt, ChoiceWithinBudgetAppliedAndRestored) {
  const double budget = 7;
  const auto [model, result] = auto_quantize(float_gpt(), options(budget));
  EXPECT_LE(result.effective_bits, budget);
  std::vector<int> chosen;
  uint64_t used = 0, total = 0;
  for (const AutoQuantizeLayer& layer : result.layers) {
    chosen.push_back(layer.chosen);
    used += layer.params * result.bits[layer.chosen];
    total += layer.params;
  }
  EXPECT_DOUBLE_EQ(result.effective_bits, static_cast<double>(used) / total);
  EXPECT_EQ(chosen, best_choice(result, budget));
  // A real mix: not every layer at the same format.
  EXPECT_NE(std::count(chosen.begin(), chosen.end(), chosen[0]), static_cast<long>(chosen.size()));

  // The model's quantizers are exactly the choice.
  for (const AutoQuantizeLayer& layer : result.layers) {
    const std::string& format = result.formats[layer.chosen];
    const std::string w = layer.name + ".weight_quantizer", in = layer.name + ".input_quantizer";
    SCOPED_TRACE(layer.name + " " + format);
    if (format == "none") {
      EXPECT_FALSE(enabled(*model, w));
      EXPECT_FALSE(enabled(*model, in));
      continue;
    }
    ASSERT_TRUE(enabled(*model, w));
    const QuantizerAttributes& a = quantizer_of(*model, w)->attributes();
    EXPECT_TRUE(quantizer_of(*model, w)->has_amax());
    if (format == "int4_blockwise") {
      EXPECT_EQ(a.num_bits(), 4);
      EXPECT_GT(a.block_size(), 0);
      EXPECT_FALSE(enabled(*model, in));
    } else if (format == "int8") {
      EXPECT_EQ(a.num_bits(), 8);
      EXPECT_EQ(a.exponent_bits(), 0);
      EXPECT_TRUE(a.has_axis());
      ASSERT_TRUE(enabled(*model, in));
      EXPECT_EQ(quantizer_of(*model, in)->attributes().num_bits(), 8);
    } else {
      EXPECT_EQ(a.exponent_bits(), 4);
      EXPECT_EQ(a.mantissa_bits(), 3);
      ASSERT_TRUE(enabled(*model, in));
      EXPECT_EQ(quantizer_of(*model, in)->attributes().exponent_bits(), 4);
    }
  }
  EXPECT_FALSE(enabled(*model, "lm_head.weight_quantizer"));
  EXPECT_FALSE(enabled(*model, "lm_head.input_quantizer"));

  // The modelopt state records quantize and max_calibrate; restore needs no data.
  std::vector<std::string> modes;
  const ModeloptState state = modelopt_state(*model);
  for (const ModeEntry& entry : state.modelopt_state_dict()) modes.push_back(entry.mode());
  EXPECT_EQ(modes, (std::vector<std::string>{"quantize", "max_calibrate"}));
  const std::string dir = test::make_temp_dir() + "/auto";
  save(*model, dir);
  ModulePtr restored = restore(gpt_like(), dir);
  torch::NoGradGuard no_grad;
  const at::Tensor input = windows(99, 2).narrow(1, 0, kContext);
  EXPECT_TRUE(same_bytes(zoo::forward(*restored, input), zoo::forward(*model, input)));
  // And the quantized model differs from the float one.
  EXPECT_FALSE(at::equal(zoo::forward(*float_gpt(), input), zoo::forward(*model, input)));
}

TEST_F(AutoQuantizeGpt, Refusals) {
  auto with = [](auto change) {
    return [change]() {
      AutoQuantizeOptions o = options(6);
      change(o);
      auto_quantize(float_gpt(), o);
    };
  };
  EXPECT_THAT(error_of<ConfigError>(with([](AutoQuantizeOptions& o) { o.formats = {"int8", "int3"}; })),
              HasSubstr("int3"));
  EXPECT_THAT(error_of<ConfigError>(with([](AutoQuantizeOptions& o) { o.formats = {"int4_awq"}; })),
              HasSubstr("int4_awq"));
  EXPECT_THAT(error_of<ConfigError>(with([](AutoQuantizeOptions& o) { o.formats = {"fp8", "int8_smoothquant"}; })),
              HasSubstr("int8_smoothquant"));
  EXPECT_THAT(error_of<ConfigError>(with([](AutoQuantizeOptions& o) { o.formats = {}; })), HasSubstr("formats"));
  EXPECT_THAT(error_of<ConfigError>(with([](AutoQuantizeOptions& o) { o.effective_bits = 3.9; })),
              HasSubstr("effective_bits"));
  EXPECT_THAT(error_of<ConfigError>(with([](AutoQuantizeOptions& o) {
                o.formats = {"int8", "fp8"};
                o.effective_bits = 7.5;
              })),
              HasSubstr("effective_bits"));
  EXPECT_THAT(error_of<ConfigError>(with([](AutoQuantizeOptions& o) { o.effective_bits = 16.5; })),
              HasSubstr("effective_bits"));
  EXPECT_THAT(error_of<ConfigError>(with([](AutoQuantizeOptions& o) { o.effective_bits = std::nan(""); })),
              HasSubstr("effective_bits"));
  EXPECT_THAT(error_of<ApplyModeError>(with([](AutoQuantizeOptions& o) { o.context = RuntimeContext(); })),
              HasSubstr("forward_loop"));
  // A quantized model.
  EXPECT_THAT(error_of<ApplyModeError>([] {
                RuntimeContext context;
                context.set(kForwardLoop, calibration_loop());
                ModulePtr quantized = apply_mode(float_gpt(), ModeList(quantize_modes("int8")), nullptr, std::nullopt,
                                                 context);
                auto_quantize(quantized, options(6));
              }),
              HasSubstr("quantized already"));
  // A failed search leaves the model as it was: no probes left behind.
  ModulePtr model = float_gpt();
  AutoQuantizeOptions failing = options(6);
  failing.score_loop = [](torch::nn::Module&, const std::function<void(const at::Tensor&)>&) {
    throw std::runtime_error("scoring failed");
  };
  EXPECT_EQ(error_of<std::runtime_error>([&] { auto_quantize(model, failing); }), "scoring failed");
  for (const std::string& name : kLayers) {
    EXPECT_TRUE(linear(*model, name)->transform_names(nn::Slot::kInput).empty()) << name;
    EXPECT_TRUE(linear(*model, name)->transform_names(nn::Slot::kOutput).empty()) << name;
  }
}

}  // namespace
}  // namespace quantization
}  // namespace mto
