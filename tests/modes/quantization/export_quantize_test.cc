// "export_quantize" in one process: for every preset, the deployed model computes the same
// bits as the fake-quantized one, holds Model Optimizer's tensors (names, dtypes, shapes,
// values) and saves and restores to the same bits; the codes, scales and packed bytes of a
// small layer computed by hand; the E4M3 and int4 encodings; hf_quant_config.json and
// config.json; and every refusal with the culprit named.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/nn/module.h>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "modes/quantization/deploy.h"
#include "modes/quantization/export_quantize.h"
#include "modes/quantization/fake_quant.h"
#include "modes/quantization/hf_quant_config.h"
#include "modes/quantization/quantization.pb.h"
#include "modes/quantization/quantize.h"
#include "modes/quantization/quantized_model.h"
#include "modes/quantization/real_quant.h"
#include "opt/checkpoint.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/model_like.h"
#include "opt/nn/linear.h"
#include "opt/state_dict.h"
#include "opt/version.h"
#include "serialization/checkpoint_reader.h"
#include "serialization/safetensors.h"
#include "tests/testing/errors.h"
#include "tests/testing/model_checks.h"
#include "tests/testing/temp_dir.h"
#include "tools/zoo/gpt.h"

namespace mto {
namespace quantization {
namespace {

using ::testing::HasSubstr;
using test::error_of;
using test::same_bytes;

// --- Helpers ------------------------------------------------------------------------------

// The zoo GPT: one block of width 128, so every Linear but lm_head takes whole blocks of 128
// input features and has an even number of rows.
ModelLike gpt_like(int seed = 3) {
  return ModelLike("gpt", {{"vocab", 32}, {"width", 128}, {"depth", 1}, {"heads", 4}, {"context", 8}, {"seed", seed}});
}

const std::vector<std::string> kGptLayers = {"blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.fc1",
                                             "blocks.0.fc2"};

at::Tensor tokens(int64_t shift = 0) {
  return at::arange(16, at::kLong).reshape({2, 8}).mul(7).add(shift).remainder(32);
}

ForwardLoop gpt_loop() {
  return [](torch::nn::Module& model) {
    for (int b = 0; b < 3; ++b) dynamic_cast<zoo::GptImpl&>(model).forward(tokens(5 * b + 1));
  };
}

at::Tensor gpt_forward(const ModulePtr& model) {
  torch::NoGradGuard no_grad;
  return std::dynamic_pointer_cast<zoo::GptImpl>(model)->forward(tokens());
}

// The GPT (built from its model-like, which the state records) quantized with `preset` and
// calibrated with its algorithm.
// int4_awq with Model Optimizer's awq_full (AWQ-lite, then the clip search), which no preset
// names.
constexpr char kInt4AwqFull[] = R"({"quant_cfg": {
    "*weight_quantizer": {"num_bits": 4, "block_sizes": {"-1": 128}, "enable": true},
    "*input_quantizer": {"enable": false}, "*lm_head*": {"enable": false}, "default": {"enable": false}},
    "algorithm": {"method": "awq_full"}})";

// The GPT quantized with a preset, or with kInt4AwqFull for "int4_awq_full".
ModulePtr quantized_gpt(const std::string& preset) {
  RuntimeContext context;
  context.set(kForwardLoop, gpt_loop());
  const std::string config = preset == "int4_awq_full" ? kInt4AwqFull : preset;
  return apply_mode(gpt_like(), ModeList(quantize_modes(config)), nullptr, std::nullopt, context);
}

std::map<std::string, at::Tensor> tensors(const torch::nn::Module& model) {
  std::map<std::string, at::Tensor> out;
  for (const auto& entry : model_state_dict(model)) out[entry.name] = entry.tensor;
  return out;
}

TensorQuantizerImpl* quantizer(torch::nn::Module& model, const std::string& name) {
  for (const QuantizerSlot& slot : quantized_slots(model)) {
    if (slot.name == name) return slot.quantizer();
  }
  throw std::runtime_error("no quantizer " + name);
}

std::vector<int64_t> sizes(std::initializer_list<int64_t> s) { return s; }

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// One mto::nn::Linear, "fc", with the given weight (and a zero bias).
class OneLinearImpl : public torch::nn::Module {
 public:
  explicit OneLinearImpl(const at::Tensor& weight) {
    fc = register_module("fc", nn::Linear(weight.size(1), weight.size(0)));
    torch::NoGradGuard no_grad;
    fc->weight.copy_(weight);
    fc->bias.zero_();
  }
  at::Tensor forward(const at::Tensor& x) { return fc->forward(x); }
  nn::Linear fc{nullptr};
};

// Two Linears side by side, "a" and "b", of the same shape.
class TwoLinearImpl : public torch::nn::Module {
 public:
  TwoLinearImpl(int64_t in, int64_t out) {
    at::manual_seed(11);
    a = register_module("a", nn::Linear(in, out));
    b = register_module("b", nn::Linear(in, out));
  }
  at::Tensor forward(const at::Tensor& x) { return a->forward(x) + b->forward(x); }
  nn::Linear a{nullptr}, b{nullptr};
};

// A weight-only config: `weight` (the weight quantizer's attributes) on every layer,
// everything else off, calibrated with max (weights need no data).
std::string weight_only(const std::string& weight) {
  return R"({"quant_cfg": {"default": {"enable": false}, "*weight_quantizer": )" + weight + R"(},
             "algorithm": "max"})";
}

ModulePtr quantized_linear(const at::Tensor& weight, const std::string& config) {
  auto model = std::make_shared<OneLinearImpl>(weight);
  return quantize(model, config);
}

at::Tensor linear_forward(const ModulePtr& model, const at::Tensor& x) {
  torch::NoGradGuard no_grad;
  return std::dynamic_pointer_cast<OneLinearImpl>(model)->forward(x);
}

// A fixed pattern of values k / 16 for k in [-15, 15].
at::Tensor pattern(int64_t rows, int64_t cols) {
  at::Tensor w = at::empty({rows, cols}, at::kFloat);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) w[r][c] = static_cast<float>((r * 53 + c * 29) % 31 - 15) / 16.0f;
  }
  return w;
}

// --- Every preset on the GPT --------------------------------------------------------------

struct PresetCase {
  std::string preset;
  c10::ScalarType weight_dtype;
  bool int4;                 // weight [out/2, in], weight_scale [out, in/128]
  bool per_channel;          // weight_scale [out]
  double weight_bound;       // amax / scale
  bool input_scale;
  double input_bound;
  bool pre_quant_scale;
};

const std::vector<PresetCase>& preset_cases() {
  static const auto* cases = new std::vector<PresetCase>{
      {"int8", at::kChar, false, true, 127, true, 127, false},
      {"fp8", at::kByte, false, false, 448, true, 448, false},
      {"int4_blockwise", at::kByte, true, false, 7, false, 0, false},
      {"int8_smoothquant", at::kChar, false, true, 127, true, 127, true},
      {"int4_awq", at::kByte, true, false, 7, false, 0, true},
      {"int4_awq_full", at::kByte, true, false, 7, false, 0, true},
  };
  return *cases;
}

class ExportEveryPreset : public ::testing::TestWithParam<PresetCase> {};

TEST_P(ExportEveryPreset, SameBitsModelOptimizerTensorsAndARoundTrip) {
  const PresetCase& c = GetParam();
  ModulePtr model = quantized_gpt(c.preset);
  const at::Tensor before = gpt_forward(model);

  // What the fake-quantized layers hold, to check the deployed tensors against.
  struct Fake {
    at::Tensor weight, fake_weight, weight_amax, input_amax, pre_quant_scale;
    QuantizerAttributes weight_attributes;
  };
  std::map<std::string, Fake> fake;
  for (const std::string& layer : kGptLayers) {
    TensorQuantizerImpl* w = quantizer(*model, layer + ".weight_quantizer");
    TensorQuantizerImpl* in = quantizer(*model, layer + ".input_quantizer");
    ASSERT_TRUE(w->has_amax()) << layer;
    Fake& f = fake[layer];
    f.weight = tensors(*model).at(layer + ".weight").detach().clone();
    {
      torch::NoGradGuard no_grad;
      f.fake_weight = w->forward(f.weight).clone();
    }
    f.weight_amax = w->amax().clone();
    f.weight_attributes = w->attributes();
    if (in->has_amax()) f.input_amax = in->amax().clone();
    if (in->has_pre_quant_scale()) f.pre_quant_scale = in->pre_quant_scale().clone();
    EXPECT_EQ(in->has_pre_quant_scale(), c.pre_quant_scale) << layer;
  }
  const at::Tensor lm_head = tensors(*model).at("lm_head.weight").clone();

  ModulePtr exported = apply_mode(model, "export_quantize");
  EXPECT_TRUE(same_bytes(gpt_forward(exported), before)) << "outputs changed by the export";

  const auto state = tensors(*exported);
  for (const auto& [key, tensor] : state) {
    EXPECT_EQ(key.find("_amax"), std::string::npos) << key;
    EXPECT_EQ(key.find("_pre_quant_scale"), std::string::npos) << key;
    EXPECT_EQ(key.find("quantizer"), std::string::npos) << key;
  }
  for (const std::string& layer : kGptLayers) {
    SCOPED_TRACE(layer);
    const Fake& f = fake.at(layer);
    const int64_t out = f.weight.size(0), in = f.weight.size(1);
    const at::Tensor& weight = state.at(layer + ".weight");
    const at::Tensor& weight_scale = state.at(layer + ".weight_scale");
    EXPECT_EQ(weight.scalar_type(), c.weight_dtype);
    EXPECT_EQ(weight_scale.scalar_type(), at::kFloat);
    at::Tensor expected_scale = f.weight_amax.clamp_min(kMinAmax) / c.weight_bound;
    if (c.int4) {
      EXPECT_EQ(weight.sizes(), sizes({out / 2, in}));
      EXPECT_EQ(weight_scale.sizes(), sizes({out, in / 128}));
      expected_scale = expected_scale.reshape({out, in / 128});
    } else if (c.per_channel) {
      EXPECT_EQ(weight.sizes(), sizes({out, in}));
      EXPECT_EQ(weight_scale.sizes(), sizes({out}));
      expected_scale = expected_scale.reshape({out});
    } else {
      EXPECT_EQ(weight.sizes(), sizes({out, in}));
      EXPECT_EQ(weight_scale.dim(), 0);
      expected_scale = expected_scale.reshape({});
    }
    EXPECT_TRUE(same_bytes(weight_scale, expected_scale));
    // The codes times the scales are the fake-quantized weight, bit for bit.
    EXPECT_TRUE(same_bytes(decode_weight(weight, weight_scale, f.weight_attributes, f.weight.sizes()), f.fake_weight));
    if (c.input_scale) {
      ASSERT_TRUE(state.count(layer + ".input_scale"));
      const at::Tensor& input_scale = state.at(layer + ".input_scale");
      EXPECT_EQ(input_scale.dim(), 0);
      EXPECT_TRUE(same_bytes(input_scale, (f.input_amax.clamp_min(kMinAmax) / c.input_bound).reshape({})));
    } else {
      EXPECT_EQ(state.count(layer + ".input_scale"), 0u);
    }
    if (c.pre_quant_scale) {
      ASSERT_TRUE(state.count(layer + ".pre_quant_scale"));
      EXPECT_EQ(state.at(layer + ".pre_quant_scale").sizes(), sizes({in}));
      EXPECT_TRUE(same_bytes(state.at(layer + ".pre_quant_scale"), f.pre_quant_scale));
    } else {
      EXPECT_EQ(state.count(layer + ".pre_quant_scale"), 0u);
    }
  }
  // lm_head stays in floating point, untouched.
  EXPECT_TRUE(same_bytes(state.at("lm_head.weight"), lm_head));
  for (const char* key : {"lm_head.weight_scale", "lm_head.input_scale", "lm_head.pre_quant_scale"}) {
    EXPECT_EQ(state.count(key), 0u) << key;
  }
  const ModeloptState modes = modelopt_state(*exported);
  ASSERT_EQ(modes.modelopt_state_dict_size(), 3);
  EXPECT_EQ(modes.modelopt_state_dict(2).mode(), "export_quantize");

  // Saved and restored, into a model of other weights and from the model-like alone.
  const std::string dir = test::make_temp_dir() + "/deployed";
  save(*exported, dir);
  for (const bool from_model_like : {false, true}) {
    SCOPED_TRACE(from_model_like ? "restored from the model-like" : "restored into a GPT of seed 9");
    ModulePtr restored = from_model_like ? restore(dir) : restore(gpt_like(/*seed=*/9).build(), dir);
    EXPECT_TRUE(same_bytes(gpt_forward(restored), before));
    const auto restored_state = tensors(*restored);
    ASSERT_EQ(restored_state.size(), state.size());
    for (const auto& [key, tensor] : state) {
      ASSERT_TRUE(restored_state.count(key)) << key;
      EXPECT_TRUE(same_bytes(restored_state.at(key), tensor)) << key;
    }
  }

  // The checkpoint records FP8 codes as F8_E4M3 (the mode's stored dtypes), in the manifest
  // and in the safetensors header; the scales stay F32.
  const CheckpointContents contents = read_checkpoint_contents(dir);
  std::map<std::string, std::string> dtypes;
  for (const TensorRecord& record : contents.manifest.tensors()) dtypes[record.name()] = record.dtype();
  std::map<std::string, std::string> header_dtypes;
  for (const ShardRecord& shard : contents.manifest.shards()) {
    for (const SafetensorsEntry& entry : read_safetensors_header(dir + "/" + shard.file()).entries) {
      header_dtypes[entry.name] = entry.dtype;
    }
  }
  const std::string weight_dtype = c.preset == "fp8" ? "F8_E4M3" : c.weight_dtype == at::kChar ? "I8" : "U8";
  for (const std::string& layer : kGptLayers) {
    EXPECT_EQ(dtypes.at(layer + ".weight"), weight_dtype) << layer;
    EXPECT_EQ(header_dtypes.at(layer + ".weight"), weight_dtype) << layer;
    EXPECT_EQ(dtypes.at(layer + ".weight_scale"), "F32") << layer;
  }
  EXPECT_EQ(dtypes.at("lm_head.weight"), "F32");
}

INSTANTIATE_TEST_SUITE_P(Presets, ExportEveryPreset, ::testing::ValuesIn(preset_cases()),
                         [](const ::testing::TestParamInfo<PresetCase>& info) { return info.param.preset; });

// --- Codes, scales and packed bytes computed by hand ----------------------------------------

// Round half to even, as the default floating-point environment's nearbyint does.
float round_even(float x) { return std::nearbyint(x); }

TEST(ExportByHand, Int4BlocksOf128) {
  at::Tensor w = pattern(4, 256);
  // Block (0, 0): amax 3.5, so the scale is 0.5 exactly and these are ties: 0.5 -> 0,
  // 1.5 -> 2, -2.5 -> -2 (the pattern adds more: k / 16 / 0.5 = k / 8).
  w[0][0] = 3.5f;
  w[0][1] = 0.25f;
  w[0][2] = 0.75f;
  w[0][3] = -1.25f;
  w[1].narrow(0, 128, 128).zero_();  // a block of zeros: amax 0
  w[3][200] = -5.0f;                 // a negative amax
  ModulePtr model = quantized_linear(w, weight_only(R"({"num_bits": 4, "block_sizes": {"-1": 128}})"));
  const at::Tensor x = at::randn({3, 256});
  const at::Tensor before = linear_forward(model, x);
  ModulePtr exported = apply_mode(model, "export_quantize");
  EXPECT_TRUE(same_bytes(linear_forward(exported, x), before));

  const auto state = tensors(*exported);
  const at::Tensor packed = state.at("fc.weight");
  const at::Tensor scale = state.at("fc.weight_scale");
  ASSERT_EQ(packed.sizes(), sizes({2, 256}));
  ASSERT_EQ(scale.sizes(), sizes({4, 2}));
  const auto wa = w.accessor<float, 2>();
  int8_t q[4][256];
  float s[4][2];
  for (int r = 0; r < 4; ++r) {
    for (int b = 0; b < 2; ++b) {
      float amax = 0;
      for (int c = 0; c < 128; ++c) amax = std::max(amax, std::fabs(wa[r][b * 128 + c]));
      s[r][b] = std::max(amax, static_cast<float>(kMinAmax)) / 7.0f;
      EXPECT_EQ(scale[r][b].item<float>(), s[r][b]) << r << ", " << b;
      for (int c = 0; c < 128; ++c) {
        const float code = std::min(7.0f, std::max(-7.0f, round_even(wa[r][b * 128 + c] / s[r][b])));
        q[r][b * 128 + c] = static_cast<int8_t>(code);
      }
    }
  }
  EXPECT_EQ(s[0][0], 0.5f);
  EXPECT_EQ(q[0][0], 7);
  EXPECT_EQ(q[0][1], 0);
  EXPECT_EQ(q[0][2], 2);
  EXPECT_EQ(q[0][3], -2);
  EXPECT_EQ(q[3][200], -7);
  const auto bytes = packed.accessor<uint8_t, 2>();
  for (int r = 0; r < 2; ++r) {
    for (int c = 0; c < 256; ++c) {
      const uint8_t expected = static_cast<uint8_t>((q[2 * r][c] & 0xF) | ((q[2 * r + 1][c] & 0xF) << 4));
      ASSERT_EQ(bytes[r][c], expected) << "byte [" << r << ", " << c << "]";
    }
  }
}

TEST(ExportByHand, Int8PerChannel) {
  at::Tensor w = pattern(4, 128);
  // Row 0: amax 31.75, so the scale is 0.25 exactly; 0.125 -> 0.5 -> 0, 0.375 -> 1.5 -> 2,
  // -0.625 -> -2.5 -> -2.
  w[0][0] = 31.75f;
  w[0][1] = 0.125f;
  w[0][2] = 0.375f;
  w[0][3] = -0.625f;
  w[2].zero_();
  w[3].mul_(-1.0f).clamp_max_(0.0f);
  ModulePtr model = quantized_linear(w, weight_only(R"({"num_bits": 8, "axis": 0})"));
  const at::Tensor x = at::randn({3, 128});
  const at::Tensor before = linear_forward(model, x);
  ModulePtr exported = apply_mode(model, "export_quantize");
  EXPECT_TRUE(same_bytes(linear_forward(exported, x), before));

  const auto state = tensors(*exported);
  const at::Tensor codes = state.at("fc.weight");
  const at::Tensor scale = state.at("fc.weight_scale");
  ASSERT_EQ(codes.scalar_type(), at::kChar);
  ASSERT_EQ(codes.sizes(), sizes({4, 128}));
  ASSERT_EQ(scale.sizes(), sizes({4}));
  const auto wa = w.accessor<float, 2>();
  const auto ca = codes.accessor<int8_t, 2>();
  for (int r = 0; r < 4; ++r) {
    float amax = 0;
    for (int c = 0; c < 128; ++c) amax = std::max(amax, std::fabs(wa[r][c]));
    const float s = std::max(amax, static_cast<float>(kMinAmax)) / 127.0f;
    EXPECT_EQ(scale[r].item<float>(), s) << r;
    for (int c = 0; c < 128; ++c) {
      const int expected = static_cast<int>(std::min(127.0f, std::max(-128.0f, round_even(wa[r][c] / s))));
      ASSERT_EQ(ca[r][c], expected) << "[" << r << ", " << c << "]";
    }
  }
  EXPECT_EQ(scale[0].item<float>(), 0.25f);
  EXPECT_EQ(ca[0][0], 127);
  EXPECT_EQ(ca[0][1], 0);
  EXPECT_EQ(ca[0][2], 2);
  EXPECT_EQ(ca[0][3], -2);
  // Weight-only int8 is W8A16: no input scale.
  EXPECT_EQ(state.count("fc.input_scale"), 0u);
}

// The value of an E4M3 bit pattern, computed here independently.
float e4m3_value(int bits) {
  const int exponent = (bits >> 3) & 0xF, mantissa = bits & 7;
  const float magnitude = exponent == 0 ? mantissa * std::ldexp(1.0f, -9)
                                        : (1.0f + mantissa / 8.0f) * std::ldexp(1.0f, exponent - 7);
  return (bits & 0x80) ? -magnitude : magnitude;
}

// The E4M3 pattern nearest to `v` (|v| <= 448), ties to the even pattern.
int nearest_e4m3(float v) {
  int best = 0;
  for (int b = 1; b <= 0x7E; ++b) {
    const float d = std::fabs(std::fabs(v) - e4m3_value(b)), best_d = std::fabs(std::fabs(v) - e4m3_value(best));
    if (d < best_d || (d == best_d && b % 2 == 0 && best % 2 == 1)) best = b;
  }
  return (std::signbit(v) ? 0x80 : 0) | best;
}

TEST(ExportByHand, Fp8PerTensor) {
  at::Tensor w = pattern(4, 128).mul_(100.0f);
  // amax 448: the scale is 1 and the codes are the E4M3 patterns of the weights themselves.
  const std::vector<std::pair<float, int>> known = {
      {448.0f, 0x7E},  {1.0f, 0x38},     {-2.0f, 0xC0},
      {std::ldexp(1.0f, -9), 0x01},       // the smallest subnormal
      {std::ldexp(1.0f, -6), 0x08},       // the smallest normal
      {0.0f, 0x00},    {-448.0f, 0xFE},  {240.0f, 0x77},
      {1.0625f, 0x38},                    // halfway between 1 and 1.125: to even, 1
      {1.1875f, 0x3A},                    // halfway between 1.125 and 1.25: to even, 1.25
      {std::ldexp(1.0f, -10), 0x00},      // halfway between 0 and 2^-9: to even, 0
      {3 * std::ldexp(1.0f, -10), 0x02},  // halfway between 2^-9 and 2^-8: to even, 2^-8
  };
  for (size_t i = 0; i < known.size(); ++i) w[0][static_cast<int64_t>(i)] = known[i].first;
  ModulePtr model = quantized_linear(w, weight_only(R"({"num_bits": [4, 3], "axis": null})"));
  const at::Tensor x = at::randn({3, 128});
  const at::Tensor before = linear_forward(model, x);
  ModulePtr exported = apply_mode(model, "export_quantize");
  EXPECT_TRUE(same_bytes(linear_forward(exported, x), before));

  const auto state = tensors(*exported);
  const at::Tensor codes = state.at("fc.weight");
  ASSERT_EQ(codes.scalar_type(), at::kByte);
  ASSERT_EQ(codes.sizes(), sizes({4, 128}));
  ASSERT_EQ(state.at("fc.weight_scale").dim(), 0);
  EXPECT_EQ(state.at("fc.weight_scale").item<float>(), 1.0f);
  const auto ca = codes.accessor<uint8_t, 2>();
  for (size_t i = 0; i < known.size(); ++i) {
    EXPECT_EQ(ca[0][i], known[i].second) << known[i].first;
  }
  const auto wa = w.accessor<float, 2>();
  for (int r = 0; r < 4; ++r) {
    for (int c = 0; c < 128; ++c) ASSERT_EQ(ca[r][c], nearest_e4m3(wa[r][c])) << "[" << r << ", " << c << "] " << wa[r][c];
  }
}

// --- The encodings ------------------------------------------------------------------------

TEST(RealQuant, E4m3BitsAndValuesRoundTripEveryPatternButNan) {
  at::Tensor bits = at::arange(256, at::kInt).to(at::kByte);
  const at::Tensor values = e4m3_values(bits);
  const at::Tensor back = e4m3_bits(values);
  for (int b = 0; b < 256; ++b) {
    if (b == 0x7F || b == 0xFF) {
      EXPECT_TRUE(std::isnan(values[b].item<float>())) << b;
      continue;
    }
    EXPECT_EQ(values[b].item<float>(), e4m3_value(b)) << b;
    EXPECT_EQ(back[b].item<uint8_t>(), b) << b;
  }
  EXPECT_EQ(values[0x80].item<float>(), 0.0f);
  EXPECT_TRUE(std::signbit(values[0x80].item<float>()));
  // Other values round toward zero: below 448 to the E4M3 value under them, above it to 448
  // (never to the NaN pattern 0x7F), subnormals to a multiple of 2^-9; NaN is 0x7F.
  const std::vector<std::pair<float, int>> others = {
      {1.1f, 0x38},  {-1.2f, 0xB9}, {470.0f, 0x7E}, {480.0f, 0x7E},     {511.0f, 0x7E},
      {-1e6f, 0xFE}, {INFINITY, 0x7E}, {-INFINITY, 0xFE}, {NAN, 0x7F}, {std::ldexp(1.5f, -9), 0x01}};
  at::Tensor x = at::empty({static_cast<int64_t>(others.size())}, at::kFloat);
  for (size_t i = 0; i < others.size(); ++i) x[static_cast<int64_t>(i)] = others[i].first;
  const at::Tensor x_bits = e4m3_bits(x);
  for (size_t i = 0; i < others.size(); ++i) {
    EXPECT_EQ(x_bits[static_cast<int64_t>(i)].item<uint8_t>(), others[i].second) << others[i].first;
  }
}

TEST(RealQuant, Int4PackingRoundTripsEveryNibblePair) {
  at::Tensor codes = at::empty({2, 256}, at::kFloat);
  for (int lo = -8; lo < 8; ++lo) {
    for (int hi = -8; hi < 8; ++hi) {
      const int c = (lo + 8) * 16 + (hi + 8);
      codes[0][c] = lo;
      codes[1][c] = hi;
    }
  }
  const at::Tensor packed = pack_int4_rows(codes);
  ASSERT_EQ(packed.scalar_type(), at::kByte);
  ASSERT_EQ(packed.sizes(), sizes({1, 256}));
  for (int lo = -8; lo < 8; ++lo) {
    for (int hi = -8; hi < 8; ++hi) {
      const int c = (lo + 8) * 16 + (hi + 8);
      EXPECT_EQ(packed[0][c].item<uint8_t>(), static_cast<uint8_t>((lo & 0xF) | ((hi & 0xF) << 4))) << lo << ", " << hi;
    }
  }
  // Every byte value occurs once.
  EXPECT_EQ(std::get<0>(at::_unique(packed)).numel(), 256);
  EXPECT_TRUE(same_bytes(unpack_int4_rows(packed), codes));
  // More dimensions pack along the first.
  const at::Tensor three = codes.reshape({2, 16, 16});
  EXPECT_TRUE(same_bytes(pack_int4_rows(three), packed.reshape({1, 16, 16})));
  EXPECT_TRUE(same_bytes(unpack_int4_rows(pack_int4_rows(three)), three));
}

// --- hf_quant_config.json and config.json -------------------------------------------------

std::string producer() { return std::string(R"("producer": {"name": "mto", "version": ")") + kModeloptVersion + "\"}"; }

nlohmann::ordered_json parse(const std::string& text) { return nlohmann::ordered_json::parse(text); }

TEST(HfQuantConfig, EveryPresetOnTheGpt) {
  const std::map<std::string, std::string> expected = {
      {"int8", R"("quant_algo": "W8A8_SQ_PER_CHANNEL", "kv_cache_quant_algo": null, "exclude_modules": ["lm_head"])"},
      {"int8_smoothquant",
       R"("quant_algo": "W8A8_SQ_PER_CHANNEL", "kv_cache_quant_algo": null, "exclude_modules": ["lm_head"])"},
      {"fp8", R"("quant_algo": "FP8", "kv_cache_quant_algo": null, "exclude_modules": ["lm_head"])"},
      {"int4_blockwise", R"("quant_algo": "W4A16_AWQ", "kv_cache_quant_algo": null, "group_size": 128,
                            "has_zero_point": false, "pre_quant_scale": true, "exclude_modules": ["lm_head"])"},
      {"int4_awq", R"("quant_algo": "W4A16_AWQ", "kv_cache_quant_algo": null, "group_size": 128,
                      "has_zero_point": false, "pre_quant_scale": true, "exclude_modules": ["lm_head"])"},
      {"int4_awq_full", R"("quant_algo": "W4A16_AWQ", "kv_cache_quant_algo": null, "group_size": 128,
                           "has_zero_point": false, "pre_quant_scale": true, "exclude_modules": ["lm_head"])"},
  };
  for (const auto& [preset, quantization] : expected) {
    SCOPED_TRACE(preset);
    ModulePtr exported = apply_mode(quantized_gpt(preset), "export_quantize");
    const std::map<std::string, std::string> files = deployment_files(*exported);
    ASSERT_EQ(files.size(), 2u);
    const nlohmann::ordered_json want = parse("{" + producer() + R"(, "quantization": {)" + quantization + "}}");
    // Key order included, written with an indent of 4 as Model Optimizer's json.dump does.
    EXPECT_EQ(files.at("hf_quant_config.json"), want.dump(4) + "\n");

    const nlohmann::ordered_json config = parse(files.at("config.json")).at("quantization_config");
    EXPECT_EQ(config.at("quant_method"), "modelopt");
    EXPECT_EQ(config.at("quant_algo"), want["quantization"]["quant_algo"]);
    EXPECT_EQ(config.at("producer"), want["producer"]);
    EXPECT_EQ(config.at("ignore"), nlohmann::ordered_json::array({"lm_head"}));
    if (preset == "fp8") {
      const nlohmann::ordered_json number = {{"dynamic", false}, {"num_bits", 8}, {"type", "float"}};
      ASSERT_TRUE(config.contains("config_groups"));
      const nlohmann::ordered_json& group = config.at("config_groups").at("group_0");
      EXPECT_EQ(config.at("config_groups").size(), 1u);
      EXPECT_EQ(group.at("weights"), number);
      EXPECT_EQ(group.at("input_activations"), number);
      EXPECT_EQ(group.at("targets"), nlohmann::ordered_json::array({"Linear"}));
    } else {
      // Single-format W4A16_AWQ and W8A8_SQ_PER_CHANNEL get no config_groups.
      EXPECT_FALSE(config.contains("config_groups")) << config.dump();
    }
  }
}

TEST(HfQuantConfig, WeightOnlyInt8IsW8A16) {
  ModulePtr exported = apply_mode(quantize(gpt_like().build(), R"({"quant_cfg": {"default": {"enable": false},
      "*weight_quantizer": {"num_bits": 8, "axis": 0}, "*lm_head*": {"enable": false}}, "algorithm": "max"})"),
                                  "export_quantize");
  const nlohmann::ordered_json config = parse(deployment_files(*exported).at("hf_quant_config.json"));
  EXPECT_EQ(config["quantization"].dump(),
            R"({"quant_algo":"W8A16","kv_cache_quant_algo":null,"exclude_modules":["lm_head"]})");
}

TEST(HfQuantConfig, MixedFormatsListTheQuantizedLayers) {
  RuntimeContext context;
  context.set(kForwardLoop, gpt_loop());
  ModulePtr model = apply_mode(gpt_like(), ModeList(quantize_modes(R"({"quant_cfg": {"default": {"enable": false},
      "*attn.qkv.weight_quantizer": {"num_bits": 8, "axis": 0},
      "*attn.qkv.input_quantizer": {"num_bits": 8, "axis": null},
      "*fc1.weight_quantizer": {"num_bits": 4, "block_sizes": {"-1": 128}},
      "*fc2.weight_quantizer": {"num_bits": [4, 3], "axis": null},
      "*fc2.input_quantizer": {"num_bits": [4, 3], "axis": null}}, "algorithm": "max"})")),
                               nullptr, std::nullopt, context);
  const at::Tensor before = gpt_forward(model);
  ModulePtr exported = apply_mode(model, "export_quantize");
  EXPECT_TRUE(same_bytes(gpt_forward(exported), before));
  const auto files = deployment_files(*exported);
  const nlohmann::ordered_json want = parse("{" + producer() + R"(, "quantization": {
      "quant_algo": "MIXED_PRECISION", "kv_cache_quant_algo": null, "quantized_layers": {
        "blocks.0.attn.qkv": {"quant_algo": "W8A8_SQ_PER_CHANNEL"},
        "blocks.0.fc1": {"quant_algo": "W4A16_AWQ", "group_size": 128, "has_zero_point": false,
                         "pre_quant_scale": true},
        "blocks.0.fc2": {"quant_algo": "FP8"}}}})");
  EXPECT_EQ(files.at("hf_quant_config.json"), want.dump(4) + "\n");
  EXPECT_FALSE(want["quantization"].contains("exclude_modules"));

  const nlohmann::ordered_json config = parse(files.at("config.json")).at("quantization_config");
  EXPECT_EQ(config.at("quant_algo"), "MIXED_PRECISION");
  EXPECT_EQ(config.at("ignore"), nlohmann::ordered_json::array());
  EXPECT_EQ(config.at("quantized_layers"), want["quantization"]["quantized_layers"]);
  // One group per distinct layer config, naming its layers.
  const nlohmann::ordered_json& groups = config.at("config_groups");
  ASSERT_EQ(groups.size(), 3u);
  std::map<std::string, nlohmann::ordered_json> by_target;
  for (const auto& [name, group] : groups.items()) {
    ASSERT_EQ(group.at("targets").size(), 1u) << name;
    by_target[group.at("targets")[0]] = group;
  }
  EXPECT_EQ(by_target.at("blocks.0.fc1").at("weights"),
            parse(R"({"dynamic": false, "num_bits": 4, "type": "int", "group_size": 128})"));
  EXPECT_EQ(by_target.at("blocks.0.attn.qkv").at("weights").at("strategy"), "channel");
  EXPECT_EQ(by_target.at("blocks.0.attn.qkv").at("input_activations").at("type"), "int");
  EXPECT_EQ(by_target.at("blocks.0.fc2").at("weights").at("type"), "float");
}

TEST(HfQuantConfig, SummarizedExcludedModules) {
  using Names = std::vector<std::string>;
  EXPECT_EQ(summarize_excluded_modules({"lm_head"}, {"blocks.0.fc1"}), Names({"lm_head"}));
  // Model Optimizer's example: a quantized sibling keeps the excluded names whole.
  EXPECT_EQ(summarize_excluded_modules({"linears.2", "linears.0"}, {"linears.1"}), Names({"linears.0", "linears.2"}));
  // A prefix that no quantized layer shares becomes a wildcard, cut at a '.'.
  EXPECT_EQ(summarize_excluded_modules({"enc.0.fc", "enc.1.fc"}, {"dec.0.fc"}), Names({"enc.*"}));
  EXPECT_EQ(summarize_excluded_modules({"blocks.0.attn.qkv", "blocks.0.attn.proj", "lm_head"}, {"blocks.0.fc1"}),
            Names({"blocks.0.attn.*", "lm_head"}));
  EXPECT_EQ(summarize_excluded_modules({}, {"fc"}), Names());
}

TEST(HfQuantConfig, ModelsWithNothingQuantizedWriteNoFiles) {
  ModulePtr exported = apply_mode(quantize(gpt_like().build(), R"({"quant_cfg": {"default": {"enable": false}},
      "algorithm": "max"})"),
                                  "export_quantize");
  EXPECT_TRUE(deployment_files(*exported).empty());
}

TEST(Deploy, SaveDeployedWritesTheConfigsBesideTheWeights) {
  ModulePtr model = quantized_gpt("int4_awq");
  const at::Tensor before = gpt_forward(model);
  // Not exported yet: no deployment files.
  EXPECT_THAT(error_of<StateError>([&] { deployment_files(*model); }), HasSubstr("has not been exported"));
  EXPECT_THAT(error_of<StateError>([&] { deployment_files(*gpt_like().build()); }),
              HasSubstr("has not been exported"));

  const std::string dir = test::make_temp_dir() + "/deployed";
  const nlohmann::json config = {{"model_type", "gpt"}, {"vocab_size", 32}, {"hidden_size", 128}};
  ModulePtr exported = save_deployed(model, dir, {}, config);
  EXPECT_TRUE(same_bytes(gpt_forward(exported), before));
  const auto files = deployment_files(*exported, config);
  EXPECT_EQ(read_text(dir + "/hf_quant_config.json"), files.at("hf_quant_config.json"));
  EXPECT_EQ(read_text(dir + "/config.json"), files.at("config.json"));
  const nlohmann::ordered_json written = parse(read_text(dir + "/config.json"));
  EXPECT_EQ(written.at("model_type"), "gpt");
  EXPECT_EQ(written.at("vocab_size"), 32);
  EXPECT_EQ(written.at("hidden_size"), 128);
  EXPECT_EQ(written.at("quantization_config").at("quant_method"), "modelopt");
  EXPECT_EQ(written.at("quantization_config").at("quant_algo"), "W4A16_AWQ");
  EXPECT_EQ(written.at("quantization_config").at("ignore"), nlohmann::ordered_json::array({"lm_head"}));
  EXPECT_EQ(parse(read_text(dir + "/hf_quant_config.json")).at("quantization").at("quant_algo"), "W4A16_AWQ");
  // Recorded in the manifest and checked like the other files.
  const CheckpointContents contents = read_checkpoint_contents(dir);
  std::vector<std::string> extra;
  for (const FileRecord& file : contents.manifest.extra_files()) extra.push_back(file.file());
  EXPECT_EQ(extra, (std::vector<std::string>{"config.json", "hf_quant_config.json"}));
  EXPECT_NO_THROW(verify_checkpoint(dir));

  // An exported model is saved as it is (export_quantize is not applied twice).
  const std::string again = test::make_temp_dir() + "/again";
  ModulePtr same = save_deployed(exported, again);
  EXPECT_EQ(same.get(), exported.get());
  EXPECT_EQ(modelopt_state(*same).modelopt_state_dict_size(), 3);
  EXPECT_TRUE(same_bytes(gpt_forward(restore(again)), before));
}

// --- Refusals -----------------------------------------------------------------------------

TEST(ExportErrors, AnUncalibratedModel) {
  ModulePtr model = apply_mode(gpt_like().build(), {{"quantize", R"({"quant_cfg": {"default": {"enable": false},
      "*weight_quantizer": {"num_bits": 8, "axis": 0}, "*input_quantizer": {"num_bits": 8, "axis": null},
      "*lm_head*": {"enable": false}}, "algorithm": null})"}});
  EXPECT_EQ(error_of<ApplyModeError>([&] { apply_mode(model, "export_quantize"); }),
            "export_quantize: layer 'blocks.0.attn.qkv': the weight quantizer has no amax: calibrate the model first");
}

// Runs a few batches through a OneLinear or TwoLinear of `in` input features.
ForwardLoop linear_loop(int64_t in) {
  return [in](torch::nn::Module& model) {
    for (int b = 0; b < 2; ++b) {
      at::manual_seed(300 + b);
      const at::Tensor x = at::randn({3, in});
      if (auto* one = dynamic_cast<OneLinearImpl*>(&model)) one->forward(x);
      if (auto* two = dynamic_cast<TwoLinearImpl*>(&model)) two->forward(x);
    }
  };
}

// The ApplyModeError of exporting `weight` in a OneLinear quantized with `config`.
std::string export_error(const at::Tensor& weight, const std::string& config) {
  auto model = std::make_shared<OneLinearImpl>(weight);
  ModulePtr quantized = quantize(model, config, linear_loop(weight.size(1)));
  return error_of<ApplyModeError>([&] { apply_mode(quantized, "export_quantize"); });
}

std::string rules(const std::string& rules) {
  return R"({"quant_cfg": {"default": {"enable": false}, )" + rules + R"(}, "algorithm": "max"})";
}

TEST(ExportErrors, FormatsWithNoDeployableForm) {
  const std::string no_format =
      "export_quantize: layer 'fc': its quantizers have no deployable format (deployable: FP8 E4M3 per-tensor "
      "weights with E4M3 or unquantized inputs; int8 per-output-channel weights (axis 0) with int8 per-tensor or "
      "unquantized inputs; int4 weights in blocks along the input features with unquantized inputs)";
  const at::Tensor w = pattern(4, 256);
  // 4 bits per channel, without blocks.
  EXPECT_EQ(export_error(w, weight_only(R"({"num_bits": 4, "axis": 0})")), no_format);
  // int8 weights per tensor, unsigned, or in blocks.
  EXPECT_EQ(export_error(w, weight_only(R"({"num_bits": 8, "axis": null})")), no_format);
  EXPECT_EQ(export_error(w, weight_only(R"({"num_bits": 8, "axis": 0, "unsigned": true})")), no_format);
  EXPECT_EQ(export_error(w, weight_only(R"({"num_bits": 8, "block_sizes": {"-1": 128}})")), no_format);
  // FP8 per channel, and other bit widths.
  EXPECT_EQ(export_error(w, weight_only(R"({"num_bits": [4, 3], "axis": 0})")), no_format);
  EXPECT_EQ(export_error(w, weight_only(R"({"num_bits": 6, "axis": 0})")), no_format);
  // int4 blocks with quantized inputs (W4A8 has no deployable form here).
  EXPECT_EQ(export_error(w, rules(R"("*weight_quantizer": {"num_bits": 4, "block_sizes": {"-1": 128}},
                                     "*input_quantizer": {"num_bits": 8, "axis": null})")),
            no_format);
  // Mixed weight and input formats.
  EXPECT_EQ(export_error(w, rules(R"("*weight_quantizer": {"num_bits": 8, "axis": 0},
                                     "*input_quantizer": {"num_bits": [4, 3], "axis": null})")),
            no_format);
  EXPECT_EQ(export_error(w, rules(R"("*weight_quantizer": {"num_bits": 8, "axis": 0},
                                     "*input_quantizer": {"num_bits": 8, "axis": -1})")),
            "export_quantize: layer 'fc': its input is quantized per channel or per block; deployable formats take "
            "one input scale per tensor");
  EXPECT_EQ(export_error(w, rules(R"("*input_quantizer": {"num_bits": 8, "axis": null})")),
            "export_quantize: layer 'fc': its input is quantized but its weight is not, which no deployable format "
            "does");
  EXPECT_EQ(export_error(w, rules(R"("*weight_quantizer": {"num_bits": 8, "axis": 0},
                                     "*output_quantizer": {"num_bits": 8, "axis": null})")),
            "export_quantize: layer 'fc': its output is quantized; deployable formats quantize weights and inputs "
            "only");
}

TEST(ExportErrors, Int4WeightsThatCannotBePacked) {
  const std::string int4 = weight_only(R"({"num_bits": 4, "block_sizes": {"-1": 128}})");
  EXPECT_EQ(export_error(pattern(3, 256), int4),
            "export_quantize: layer 'fc': int4 weights pack two rows per byte; 3 rows is odd");
  EXPECT_EQ(export_error(pattern(4, 200), int4),
            "export_quantize: layer 'fc': blocks of 128 do not divide the 200 input features");
}

TEST(ExportErrors, EveryLayerIsCheckedBeforeAnyChanges) {
  auto model = std::make_shared<TwoLinearImpl>(128, 4);
  ModulePtr quantized = quantize(model, rules(R"("a.weight_quantizer": {"num_bits": 8, "axis": 0},
                                                 "b.weight_quantizer": {"num_bits": 8, "axis": null})"));
  const at::Tensor x = at::randn({2, 128});
  at::Tensor before;
  {
    torch::NoGradGuard no_grad;
    before = model->forward(x);
  }
  EXPECT_THAT(error_of<ApplyModeError>([&] { apply_mode(quantized, "export_quantize"); }),
              HasSubstr("export_quantize: layer 'b': its quantizers have no deployable format"));
  // Layer a, which could deploy, is untouched.
  EXPECT_EQ(model->a->weight.scalar_type(), at::kFloat);
  EXPECT_EQ(tensors(*model).count("a.weight_scale"), 0u);
  EXPECT_TRUE(quantizer(*model, "a.weight_quantizer")->has_amax());
  EXPECT_FALSE(quantizer(*model, "a.weight_quantizer")->is_exported());
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(same_bytes(model->forward(x), before));
}

TEST(ExportErrors, AModelWithNoQuantizers) {
  EXPECT_EQ(error_of<ApplyModeError>(
                [] { apply_mode(std::make_shared<OneLinearImpl>(pattern(4, 128)), "export_quantize"); }),
            "export_quantize: the model has no quantizers (apply quantize first)");
}

// Restore names both sides when the recorded layers and the model's quantized ones differ.
TEST(ExportErrors, RecordedLayersThatDoNotMatchTheModel) {
  ModulePtr model = quantized_linear(pattern(4, 128), weight_only(R"({"num_bits": 8, "axis": 0})"));
  ExportQuantizeMetadata metadata;
  (*metadata.mutable_layers())["gone"].set_quant_algo("W8A16");
  EXPECT_EQ(error_of<ApplyModeError>([&] { restore_exported_layers(*model, metadata); }),
            "export_quantize: the recorded layers do not match the model's quantized layers (recorded but absent: "
            "[gone]; quantized but not recorded: [fc])");
}

TEST(ExportErrors, NothingFollowsTheExportNotEvenASecondExport) {
  ModulePtr exported = apply_mode(quantized_linear(pattern(4, 128), weight_only(R"({"num_bits": 8, "axis": 0})")),
                                  "export_quantize");
  EXPECT_EQ(error_of<StateError>([&] { apply_mode(exported, "max_calibrate"); }),
            "Cannot add max_calibrate after export_quantize! Next modes of export_quantize are set().");
  EXPECT_EQ(error_of<StateError>([&] { apply_mode(exported, "export_quantize"); }),
            "Cannot add export_quantize after export_quantize! Next modes of export_quantize are set().");
  EXPECT_EQ(error_of<StateError>([&] { apply_mode(exported, "quantize"); }),
            "Cannot add quantize after export_quantize! Next modes of export_quantize are set().");
  // Below the mode chain, the layers refuse a second export too.
  EXPECT_EQ(error_of<ApplyModeError>([&] { export_quantized_layers(*exported); }),
            "export_quantize: layer 'fc': it is exported already");
}

TEST(ExportErrors, ASparseWeightMustBeExportedFirst) {
  const std::string int8 = weight_only(R"({"num_bits": 8, "axis": 0})");
  ModulePtr sparse = apply_mode(std::make_shared<OneLinearImpl>(pattern(4, 128)), "sparse_magnitude");
  ModulePtr quantized = quantize(sparse, int8);
  EXPECT_EQ(error_of<ApplyModeError>([&] { export_quantized_layers(*quantized); }),
            "export_quantize: layer 'fc': its weight passes through [sparse_weight, weight_quantizer]; only a weight "
            "quantizer can be deployed (export sparsity first)");
  // The mode chain says the same earlier: the export stack's top is sparse_magnitude.
  EXPECT_THAT(error_of<StateError>([&] { apply_mode(quantized, "export_quantize"); }),
              HasSubstr("Cannot add export_quantize after sparse_magnitude!"));
  // After export_sparse, the sparse, quantized layer deploys with the same outputs.
  ModulePtr sparse_exported = apply_mode(quantized, "export_sparse");
  const at::Tensor x = at::randn({3, 128});
  const at::Tensor before = linear_forward(sparse_exported, x);
  ModulePtr deployed = apply_mode(sparse_exported, "export_quantize");
  EXPECT_TRUE(same_bytes(linear_forward(deployed, x), before));
  EXPECT_EQ(tensors(*deployed).at("fc.weight").scalar_type(), at::kChar);
}

}  // namespace
}  // namespace quantization
}  // namespace mto
