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
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
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
#include "serialization/checkpoint_error.h"
#include "serialization/file.h"
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

ScoreBatches scoring() {
  ScoreBatches batches;
  batches.count = static_cast<int64_t>(score_batches().size());
  batches.loss = [](torch::nn::Module& model, int64_t index) { return lm_loss(model, score_batches()[index]); };
  batches.logits = [](torch::nn::Module& model, int64_t index) {
    return zoo::forward(model, score_batches()[index].narrow(1, 0, kContext));
  };
  batches.fingerprint = "windows 11-13";
  return batches;
}

AutoQuantizeOptions options(double effective_bits, ScoreMethod method = ScoreMethod::kGradient) {
  AutoQuantizeOptions o;
  o.formats = {"int4_blockwise", "int8", "fp8"};
  o.effective_bits = effective_bits;
  o.method = method;
  o.score = scoring();
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

// Our own fake quantization of one layer in the three formats (int4_blockwise, int8, fp8),
// with the per-tensor input amax of the calibration data.
struct HandFormats {
  nn::LinearImpl* layer = nullptr;
  at::Tensor input_amax, w_int4, w_int8, w_fp8;

  at::Tensor output(const at::Tensor& x, size_t f) const {
    switch (f) {
      case 0:
        return at::linear(x, w_int4, layer->bias);
      case 1:
        return at::linear(fake_quant_int(x, input_amax, 8, false), w_int8, layer->bias);
      default:
        return at::linear(fake_quant_e4m3(x, input_amax), w_fp8, layer->bias);
    }
  }
};

// The float model's layers' inputs over the calibration data, and the formats from them.
std::map<std::string, HandFormats> hand_formats(torch::nn::Module& model) {
  std::map<std::string, Captured> calibration;
  for (const std::string& name : kLayers) {
    linear(model, name)->add_transform(nn::Slot::kInput, "capture_in", std::make_shared<CaptureImpl>(&calibration[name], false));
  }
  {
    torch::NoGradGuard no_grad;
    calibration_loop()(model);
  }
  std::map<std::string, HandFormats> out;
  torch::NoGradGuard no_grad;
  for (const std::string& name : kLayers) {
    nn::LinearImpl* layer = linear(model, name);
    layer->remove_transform("capture_in");
    const at::Tensor w = layer->weight.detach();
    HandFormats& formats = out[name];
    formats.layer = layer;
    formats.input_amax = at::zeros({}, at::kFloat);
    for (const at::Tensor& x : calibration[name].x) formats.input_amax = at::max(formats.input_amax, x.abs().max());
    const int64_t rows = w.size(0), cols = w.size(1);
    const at::Tensor blocks = w.reshape({rows, cols / 128, 128});
    formats.w_int4 = fake_quant_int(blocks, blocks.abs().amax({2}, true), 4, false).reshape({rows, cols});
    formats.w_int8 = fake_quant_int(w, w.abs().amax({1}, true), 8, false);
    formats.w_fp8 = fake_quant_e4m3(w, w.abs().max());
  }
  return out;
}

// How a hand computation quantizes: the output of `layer` on its input `x` in format `f`.
using HandOutput = std::function<at::Tensor(const std::string& layer, const at::Tensor& x, size_t f)>;

// The raw gradient scores by hand, [layer][format]: per layer and format, the sum over the
// scoring batches of (dLoss/dY * (output(layer, x, f) - Y))^2, with the layer's input x,
// output Y and gradient dLoss/dY from the float model.
std::vector<std::vector<double>> gradient_scores(const HandOutput& output, size_t formats) {
  ModulePtr model = float_gpt();
  std::map<std::string, Captured> scoring;
  for (const std::string& name : kLayers) {
    linear(*model, name)->add_transform(nn::Slot::kInput, "capture_in", std::make_shared<CaptureImpl>(&scoring[name], false));
    linear(*model, name)->add_transform(nn::Slot::kOutput, "capture_out", std::make_shared<CaptureImpl>(&scoring[name], true));
  }
  for (const at::Tensor& w : score_batches()) lm_loss(*model, w).backward();

  std::vector<std::vector<double>> out;
  torch::NoGradGuard no_grad;
  for (const std::string& name : kLayers) {
    const Captured& c = scoring.at(name);
    EXPECT_EQ(c.x.size(), score_batches().size()) << name;
    EXPECT_EQ(c.g.size(), score_batches().size()) << name;
    std::vector<double> s(formats, 0.0);
    for (size_t b = 0; b < c.x.size(); ++b) {
      for (size_t f = 0; f < formats; ++f) {
        s[f] += (c.g[b] * (output(name, c.x[b], f) - c.y[b])).square().sum().item<double>();
      }
    }
    out.push_back(s);
  }
  return out;
}

// The raw gradient scores by hand with our own int4_blockwise, int8 and fp8.
std::vector<std::vector<double>> scores_by_hand() {
  ModulePtr reference = float_gpt();
  const std::map<std::string, HandFormats> formats = hand_formats(*reference);
  return gradient_scores(
      [&](const std::string& layer, const at::Tensor& x, size_t f) { return formats.at(layer).output(x, f); }, 3);
}

// In a layer's input slot: keeps the latest input.
class KeepImpl : public nn::TransformImpl {
 public:
  explicit KeepImpl(at::Tensor* latest) : latest_(latest) {}
  at::Tensor forward(const at::Tensor& x) override {
    *latest_ = x;
    return x;
  }

 private:
  at::Tensor* latest_;
};

// In a layer's output slot: the output of our own fake quantization in format `f` of the
// latest input.
class HandQuantizedImpl : public nn::TransformImpl {
 public:
  HandQuantizedImpl(const HandFormats* formats, size_t f, const at::Tensor* input)
      : formats_(formats), f_(f), input_(input) {}
  at::Tensor forward(const at::Tensor&) override { return formats_->output(*input_, f_); }

 private:
  const HandFormats* formats_;
  size_t f_;
  const at::Tensor* input_;
};

// The raw kl_div scores by hand, [layer][format]: the float model with that one layer's
// output replaced by our own fake-quantized one, KL(p_float || p_quantized) summed over the
// batches' tokens.
std::vector<std::vector<double>> kl_scores_by_hand() {
  ModulePtr model = float_gpt();
  const std::map<std::string, HandFormats> formats = hand_formats(*model);
  torch::NoGradGuard no_grad;
  std::vector<std::vector<double>> out;
  for (const std::string& name : kLayers) {
    nn::LinearImpl* layer = linear(*model, name);
    std::vector<double> s(3, 0.0);
    for (const at::Tensor& w : score_batches()) {
      const at::Tensor input = w.narrow(1, 0, kContext);
      const at::Tensor log_p = at::log_softmax(zoo::forward(*model, input), -1);
      for (size_t f = 0; f < 3; ++f) {
        at::Tensor latest;
        layer->add_transform(nn::Slot::kInput, "keep", std::make_shared<KeepImpl>(&latest));
        layer->add_transform(nn::Slot::kOutput, "hand", std::make_shared<HandQuantizedImpl>(&formats.at(name), f, &latest));
        const at::Tensor log_q = at::log_softmax(zoo::forward(*model, input), -1);
        layer->remove_transform("keep");
        layer->remove_transform("hand");
        s[f] += (log_p.exp() * (log_p - log_q)).sum().item<double>();
      }
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

// auto_quantize's scores with `method` against `raw` (by hand), made monotone.
void expect_scores(ScoreMethod method, const std::vector<std::vector<double>>& raw) {
  const auto [model, result] = auto_quantize(float_gpt(), options(6, method));
  EXPECT_EQ(result.formats, (std::vector<std::string>{"int4_blockwise", "int8", "fp8", "none"}));
  EXPECT_EQ(result.bits, (std::vector<int>{4, 8, 8, 16}));
  EXPECT_EQ(result.excluded, std::vector<std::string>{"lm_head"});
  EXPECT_EQ(result.batches_scored_here, 3);
  EXPECT_EQ(result.batches_resumed, 0);
  ASSERT_EQ(result.layers.size(), kLayers.size());
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

TEST_F(AutoQuantizeGpt, ScoresMatchTheGradientScoreByHandMadeMonotone) {
  expect_scores(ScoreMethod::kGradient, scores_by_hand());
}

// Scoring needs the gradients at the layers' outputs only: a frozen model scores as a
// trainable one (Model Optimizer turns gradients on while scoring), and the parameters'
// requires_grad and .grad are left as they were.
TEST_F(AutoQuantizeGpt, FrozenParametersScoreAlikeAndGradientsAreLeftAlone) {
  const auto [trainable, expected] = auto_quantize(float_gpt(), options(6));
  ModulePtr frozen = float_gpt();
  for (at::Tensor& p : frozen->parameters()) p.requires_grad_(false);
  const auto [frozen_result, result] = auto_quantize(frozen, options(6));
  ASSERT_EQ(result.layers.size(), expected.layers.size());
  for (size_t l = 0; l < result.layers.size(); ++l) {
    EXPECT_GT(result.layers[l].scores[0], 0) << result.layers[l].name;
    for (size_t f = 0; f < result.layers[l].scores.size(); ++f) {
      const double want = expected.layers[l].scores[f];
      EXPECT_NEAR(result.layers[l].scores[f], want, 1e-9 * std::abs(want)) << result.layers[l].name << " " << f;
    }
    EXPECT_EQ(result.layers[l].chosen, expected.layers[l].chosen) << result.layers[l].name;
  }
  for (const at::Tensor& p : frozen_result->parameters()) EXPECT_FALSE(p.requires_grad());

  ModulePtr model = float_gpt();
  const at::Tensor grad = at::full_like(linear(*model, "blocks.0.fc1")->weight, 0.25);
  linear(*model, "blocks.0.fc1")->weight.mutable_grad() = grad.clone();
  const auto [quantized, unused] = auto_quantize(model, options(6));
  for (const auto& p : quantized->named_parameters()) {
    EXPECT_TRUE(p.value().requires_grad()) << p.key();
    if (p.key() == "blocks.0.fc1.weight") {
      EXPECT_TRUE(at::equal(p.value().grad(), grad)) << "the caller's gradient changed";
    } else {
      EXPECT_FALSE(p.value().grad().defined()) << p.key() << " got a gradient";
    }
  }
}

TEST_F(AutoQuantizeGpt, ScoresMatchTheKlDivScoreByHandMadeMonotone) {
  expect_scores(ScoreMethod::kKlDiv, kl_scores_by_hand());
}

std::vector<std::vector<double>> scores_of(const AutoQuantizeResult& result) {
  std::vector<std::vector<double>> out;
  for (const AutoQuantizeLayer& layer : result.layers) out.push_back(layer.scores);
  return out;
}

// A search killed at its last batch resumes from its checkpoint to the uninterrupted
// result, scoring only that batch and calibrating only the final choice.
TEST_F(AutoQuantizeGpt, InterruptedSearchResumesFromItsCheckpoint) {
  const AutoQuantizeResult uninterrupted = auto_quantize(float_gpt(), options(6)).second;
  const std::string checkpoint = test::make_temp_dir() + "/search";
  AutoQuantizeOptions failing = options(6);
  failing.checkpoint = checkpoint;
  failing.score.loss = [](torch::nn::Module& model, int64_t index) {
    if (index == 2) throw std::runtime_error("node lost");
    return lm_loss(model, score_batches()[index]);
  };
  EXPECT_EQ(error_of<std::runtime_error>([&] { auto_quantize(float_gpt(), failing); }), "node lost");
  EXPECT_FALSE(std::filesystem::exists(checkpoint + ".tmp"));

  AutoQuantizeOptions resumed = options(6);
  resumed.checkpoint = checkpoint;
  std::vector<int64_t> scored;
  resumed.score.loss = [&scored](torch::nn::Module& model, int64_t index) {
    scored.push_back(index);
    return lm_loss(model, score_batches()[index]);
  };
  int calibrations = 0;
  resumed.context.set(kForwardLoop, ForwardLoop([&calibrations](torch::nn::Module& model) {
                        ++calibrations;
                        calibration_loop()(model);
                      }));
  const AutoQuantizeResult result = auto_quantize(float_gpt(), resumed).second;
  EXPECT_EQ(scored, std::vector<int64_t>{2});
  EXPECT_EQ(calibrations, 1);  // the final max_calibrate only
  EXPECT_EQ(result.batches_resumed, 2);
  EXPECT_EQ(result.batches_scored_here, 1);
  EXPECT_EQ(scores_of(result), scores_of(uninterrupted));  // to the bit
  EXPECT_EQ(result.config, uninterrupted.config);

  // Finished: a rerun scores nothing.
  scored.clear();
  EXPECT_EQ(scores_of(auto_quantize(float_gpt(), resumed).second), scores_of(uninterrupted));
  EXPECT_TRUE(scored.empty());
}

TEST_F(AutoQuantizeGpt, ACheckpointOfAnotherSearchIsRefused) {
  const std::string checkpoint = test::make_temp_dir() + "/search";
  AutoQuantizeOptions first = options(6);
  first.checkpoint = checkpoint;
  auto_quantize(float_gpt(), first);
  auto refused = [&](const std::function<void(AutoQuantizeOptions&)>& change,
                     ModulePtr model = nullptr) {
    AutoQuantizeOptions o = options(6);
    o.checkpoint = checkpoint;
    change(o);
    return error_of<CheckpointError>([&] { auto_quantize(model ? model : float_gpt(), o); });
  };
  const std::string tail = "; delete it to start the search over";
  EXPECT_EQ(refused([](AutoQuantizeOptions& o) { o.formats = {"fp8", "int8", "int4_blockwise"}; }),
            "auto_quantize: search checkpoint " + checkpoint +
                " was written for formats [\"int4_blockwise\",\"int8\",\"fp8\"], not [\"int4_blockwise\",\"fp8\",\"int8\"]" + tail);
  EXPECT_THAT(refused([](AutoQuantizeOptions& o) { o.method = ScoreMethod::kKlDiv; }),
              HasSubstr("was written for method \"gradient\", not \"kl_div\""));
  EXPECT_THAT(refused([](AutoQuantizeOptions& o) { o.score.fingerprint = "other data"; }),
              HasSubstr("was written for data \"windows 11-13\", not \"other data\""));
  EXPECT_THAT(refused([](AutoQuantizeOptions& o) { o.score.count = 2; }), HasSubstr("was written for batches 3, not 2"));
  ModulePtr other = ModelLike("gpt", {{"width", 128}, {"depth", 1}, {"heads", 4}, {"context", kContext}, {"seed", 8}}).build();
  EXPECT_THAT(refused([](AutoQuantizeOptions&) {}, other), HasSubstr("was written for model \""));
  // The effective bits are not part of the search: the same checkpoint serves any budget.
  EXPECT_EQ(refused([](AutoQuantizeOptions& o) { o.effective_bits = 8; }), "no error");
  // A damaged byte.
  std::string bytes = read_file(checkpoint, 1 << 20);
  bytes[bytes.size() / 2] ^= 4;
  write_file_synced(checkpoint, bytes);
  EXPECT_THAT(refused([](AutoQuantizeOptions&) {}), HasSubstr(checkpoint + " is damaged"));
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

// --- formats that smooth: SmoothQuant and AWQ-lite ---------------------------------------

AutoQuantizeOptions options_with(double effective_bits, std::vector<std::string> formats) {
  AutoQuantizeOptions o = options(effective_bits);
  o.formats = std::move(formats);
  return o;
}

// The raw gradient scores by hand of `formats` as each calibrates on its own: a layer's
// output in format f is that layer of quantize(float GPT, f) (smoothed weight,
// pre_quant_scale, amaxes) on the float model's input.
std::vector<std::vector<double>> scores_of_quantized_models(const std::vector<std::string>& formats) {
  std::vector<ModulePtr> quantized;
  for (const std::string& format : formats) quantized.push_back(quantize(float_gpt(), format, calibration_loop()));
  return gradient_scores(
      [&](const std::string& layer, const at::Tensor& x, size_t f) { return linear(*quantized[f], layer)->forward(x); },
      formats.size());
}

// Every parameter and buffer of `a` equals `b`'s, bit for bit, under the same names.
void expect_same_tensors(torch::nn::Module& a, torch::nn::Module& b) {
  std::map<std::string, at::Tensor> left, right;
  for (const auto& p : a.named_parameters()) left[p.key()] = p.value();
  for (const auto& p : a.named_buffers()) left[p.key()] = p.value();
  for (const auto& p : b.named_parameters()) right[p.key()] = p.value();
  for (const auto& p : b.named_buffers()) right[p.key()] = p.value();
  std::vector<std::string> left_names, right_names;
  for (const auto& [name, tensor] : left) left_names.push_back(name);
  for (const auto& [name, tensor] : right) right_names.push_back(name);
  ASSERT_EQ(left_names, right_names);
  for (const auto& [name, tensor] : left) EXPECT_TRUE(same_bytes(tensor, right.at(name))) << name;
}

// int4_awq and int8_smoothquant candidates are calibrated as quantize() calibrates them on
// their own, so their scores are those of the layers of quantize(float, format); a model that
// mixes them saves and restores to the same outputs.
TEST_F(AutoQuantizeGpt, SmoothingFormatsScoreAsTheirOwnCalibration) {
  const std::vector<std::vector<double>> raw = scores_of_quantized_models({"int4_awq", "int8_smoothquant"});
  const std::vector<std::vector<double>> max_calibrated = scores_by_hand();
  const auto [model, result] = auto_quantize(float_gpt(), options_with(6, {"int8_smoothquant", "int4_awq"}));
  EXPECT_EQ(result.formats, (std::vector<std::string>{"int4_awq", "int8_smoothquant", "none"}));
  ASSERT_EQ(result.layers.size(), kLayers.size());
  int smoothing_changed = 0;
  std::set<int> chosen;
  for (size_t l = 0; l < kLayers.size(); ++l) {
    const AutoQuantizeLayer& layer = result.layers[l];
    EXPECT_NEAR(layer.scores[0], raw[l][0], 1e-5 * raw[l][0]) << layer.name;
    const double sq = std::min(raw[l][1], raw[l][0]);
    EXPECT_NEAR(layer.scores[1], sq, 1e-5 * sq + 1e-30) << layer.name;
    EXPECT_GT(raw[l][0], 0) << layer.name;
    // AWQ's smoothing moves the score away from int4_blockwise's (max calibration).
    if (std::abs(raw[l][0] - max_calibrated[l][0]) > 1e-3 * max_calibrated[l][0]) ++smoothing_changed;
    chosen.insert(layer.chosen);
  }
  EXPECT_GT(smoothing_changed, 0);
  EXPECT_TRUE(chosen.count(0) == 1 && chosen.count(1) == 1);  // both formats in the choice at 6 bits

  const std::string dir = test::make_temp_dir() + "/smoothed";
  save(*model, dir);
  ModulePtr restored = restore(gpt_like(), dir);
  expect_same_tensors(*restored, *model);
  torch::NoGradGuard no_grad;
  const at::Tensor input = windows(99, 2).narrow(1, 0, kContext);
  EXPECT_TRUE(same_bytes(zoo::forward(*restored, input), zoo::forward(*model, input)));
}

// With one smoothing format and the budget of its bits, every layer takes it, and the
// model is the one quantize() gives with that format: the same tensors, bit for bit.
TEST_F(AutoQuantizeGpt, ASmoothingFormatEverywhereIsThatFormatsQuantizedModel) {
  for (const auto& [format, bits] : std::vector<std::pair<std::string, double>>{{"int4_awq", 4}, {"int8_smoothquant", 8}}) {
    SCOPED_TRACE(format);
    const auto [model, result] = auto_quantize(float_gpt(), options_with(bits, {format}));
    for (const AutoQuantizeLayer& layer : result.layers) EXPECT_EQ(layer.chosen, 0) << layer.name;
    ModulePtr expected = quantize(float_gpt(), format, calibration_loop());
    expect_same_tensors(*model, *expected);
    EXPECT_TRUE(quantizer_of(*model, "blocks.0.fc1.input_quantizer")->has_pre_quant_scale());
    torch::NoGradGuard no_grad;
    const at::Tensor input = windows(99, 2).narrow(1, 0, kContext);
    EXPECT_TRUE(same_bytes(zoo::forward(*model, input), zoo::forward(*expected, input)));
  }
}

// An unsplit layer whose inputs end in a partial block of int4's 128 (160 inputs: one block
// and 32) is searched with the block formats, and quantized as quantize() quantizes it.
TEST_F(AutoQuantizeGpt, ALayerEndingInAPartialBlockTakesBlockFormats) {
  const ModelLike like("gpt", {{"width", 160}, {"depth", 1}, {"heads", 4}, {"context", kContext}, {"seed", 7}});
  for (const std::string& format : {"int4_blockwise", "int4_awq"}) {
    SCOPED_TRACE(format);
    const auto [model, result] = auto_quantize(like.build(), options_with(4, {format, "int8", "fp8"}));
    EXPECT_EQ(linear(*model, "blocks.0.fc1")->weight.size(1), 160);
    ASSERT_EQ(result.layers.size(), kLayers.size());
    for (const AutoQuantizeLayer& layer : result.layers) {
      EXPECT_EQ(result.formats[layer.chosen], format) << layer.name;
      EXPECT_TRUE(std::isfinite(layer.scores[0]) && layer.scores[0] > 0) << layer.name << " " << layer.scores[0];
    }
    ModulePtr expected = quantize(like.build(), format, calibration_loop());
    expect_same_tensors(*model, *expected);
    torch::NoGradGuard no_grad;
    const at::Tensor input = windows(99, 2).narrow(1, 0, kContext);
    EXPECT_TRUE(same_bytes(zoo::forward(*model, input), zoo::forward(*expected, input)));
  }
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
  EXPECT_THAT(error_of<ConfigError>(with([](AutoQuantizeOptions& o) { o.formats = {}; })), HasSubstr("formats"));
  EXPECT_EQ(error_of<ConfigError>(with([](AutoQuantizeOptions& o) { o.formats = {"int8", "fp8", "int8"}; })),
            "auto_quantize: the candidate format 'int8' is listed twice");
  EXPECT_EQ(error_of<ConfigError>(with([](AutoQuantizeOptions& o) { o.formats = {"int8", "INT8_DEFAULT_CFG"}; })),
            "auto_quantize: the candidate formats 'int8' and 'INT8_DEFAULT_CFG' are the same preset");
  // A loss that is not finite on one batch leaves no score to rank by: refused, naming the
  // first score it spoiled, rather than every layer taking the fewest bits.
  EXPECT_EQ(error_of<ApplyModeError>(with([](AutoQuantizeOptions& o) {
              o.score.loss = [](torch::nn::Module& model, int64_t index) {
                return lm_loss(model, score_batches()[index]) * (index == 1 ? std::nan("") : 1.0);
              };
            })),
            "auto_quantize: the gradient score of format 'int4_blockwise' on layer 'blocks.0.attn.qkv' is nan (the "
            "loss or the logits were not finite on some batch); nothing was chosen");
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
              HasSubstr("quantized already (layer 'blocks.0.attn.qkv' has quantizers)"));
  // A failed search leaves the model as it was: no probes left behind.
  ModulePtr model = float_gpt();
  AutoQuantizeOptions failing = options(6);
  failing.score.loss = [](torch::nn::Module&, int64_t) -> at::Tensor { throw std::runtime_error("scoring failed"); };
  EXPECT_EQ(error_of<std::runtime_error>([&] { auto_quantize(model, failing); }), "scoring failed");
  for (const std::string& name : kLayers) {
    EXPECT_TRUE(linear(*model, name)->transform_names(nn::Slot::kInput).empty()) << name;
    EXPECT_TRUE(linear(*model, name)->transform_names(nn::Slot::kOutput).empty()) << name;
  }
  // So does a calibration of a smoothing format that fails (AWQ-lite's second pass here):
  // no quantizer left in a slot, the float weights back.
  ModulePtr smoothed = float_gpt();
  const at::Tensor before = linear(*smoothed, "blocks.0.fc1")->weight.detach().clone();
  AutoQuantizeOptions failing_calibration = options_with(6, {"int4_awq", "int8"});
  int calls = 0;
  failing_calibration.context.set(kForwardLoop, ForwardLoop([&calls](torch::nn::Module& m) {
                                    if (++calls == 2) throw std::runtime_error("calibration failed");
                                    calibration_loop()(m);
                                  }));
  EXPECT_EQ(error_of<std::runtime_error>([&] { auto_quantize(smoothed, failing_calibration); }),
            "calibration failed");
  for (const std::string& name : kLayers) {
    for (const nn::Slot slot : {nn::Slot::kInput, nn::Slot::kWeight, nn::Slot::kOutput}) {
      EXPECT_TRUE(linear(*smoothed, name)->transform_names(slot).empty()) << name;
    }
  }
  EXPECT_TRUE(same_bytes(linear(*smoothed, "blocks.0.fc1")->weight.detach(), before));
}

}  // namespace
}  // namespace quantization
}  // namespace mto
