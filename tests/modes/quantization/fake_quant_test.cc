// Numerics of fake quantization against hand-computed values: integer rounding and
// clamping, unsigned ranges, per-channel and block scales, FP8 E4M3 against the table of
// its representable values and its rounding boundaries, and straight-through gradients.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "modes/quantization/fake_quant.h"
#include "modes/quantization/tensor_quantizer.h"
#include "tests/testing/errors.h"

namespace mto {
namespace quantization {
namespace {

at::Tensor values(std::vector<float> v) { return at::tensor(v, at::kFloat); }

void expect_values(const at::Tensor& actual, std::vector<float> expected) {
  ASSERT_EQ(actual.numel(), static_cast<int64_t>(expected.size()));
  const at::Tensor flat = actual.reshape({-1});
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(flat[i].item<float>(), expected[i]) << "element " << i;
  }
}

TEST(FakeQuantInt, RoundsHalfToEvenAndClampsToTheTwosComplementRange) {
  // 4 bits: bound 7; amax 7 makes the scale 1, so the quantized values are the rounded ones,
  // in [-8, 7] (Model Optimizer's narrow_range=False): only values below -amax reach -8.
  const at::Tensor x = values({0.5, 1.5, 2.5, -0.5, -2.5, 3.2, 6.6, 7.4, 9, -9, -7.4, -7.6});
  expect_values(fake_quant_int(x, at::scalar_tensor(7.0f), 4, false),
                {0, 2, 2, -0.0f, -2, 3, 7, 7, 7, -8, -7, -8});
}

TEST(FakeQuantInt, ScalesByBoundOverAmax) {
  // 8 bits: bound 127; amax 127 / 64 makes the scale 64, so steps are 1/64; codes in
  // [-128, 127].
  const at::Tensor x = values({1.0f / 128, 3.0f / 128, 0.3f, -5, 5});
  expect_values(fake_quant_int(x, at::scalar_tensor(127.0f / 64), 8, false),
                {0, 2.0f / 64, 19.0f / 64, -128.0f / 64, 127.0f / 64});
}

TEST(FakeQuantInt, UnsignedUsesZeroToTwiceTheBound) {
  // 4 bits unsigned: bound 15; amax 15 makes the scale 1; negatives clamp to 0.
  const at::Tensor x = values({-3, 0.5, 1.5, 14.5, 20});
  expect_values(fake_quant_int(x, at::scalar_tensor(15.0f), 4, true), {0, 0, 2, 14, 15});
}

TEST(FakeQuantInt, TwoBitsHasFourLevels) {
  // 2 bits: bound 1, so the values are -2 amax, -amax, 0 and amax; amax 2 makes the scale 1/2.
  const at::Tensor x = values({-1.8f, -0.8f, 0.98f, 1.02f, 3, -3.2f, -9});
  expect_values(fake_quant_int(x, at::scalar_tensor(2.0f), 2, false), {-2, -0.0f, 0, 2, 2, -4, -4});
}

TEST(FakeQuantInt, ZeroAmaxGivesZeros) {
  const at::Tensor out = fake_quant_int(values({0, 0, 0}), at::scalar_tensor(0.0f), 8, false);
  expect_values(out, {0, 0, 0});
}

// Every non-negative E4M3 value: subnormals m * 2^-9 and normals (1 + m/8) * 2^e.
std::vector<double> e4m3_table() {
  std::vector<double> table;
  for (int m = 0; m < 8; ++m) table.push_back(m * std::ldexp(1.0, -9));
  for (int e = -6; e <= 8; ++e) {
    for (int m = 0; m < 8; ++m) {
      const double v = (1 + m / 8.0) * std::ldexp(1.0, e);
      if (v <= 448) table.push_back(v);
    }
  }
  return table;
}

TEST(RoundToE4m3, KeepsEveryRepresentableValue) {
  const std::vector<double> table = e4m3_table();
  ASSERT_EQ(table.size(), 127u);  // 0, 7 subnormals, 15 binades of 8 minus 448's successor
  ASSERT_EQ(table.back(), 448.0);
  std::vector<float> both;
  for (double v : table) {
    both.push_back(static_cast<float>(v));
    both.push_back(static_cast<float>(-v));
  }
  const at::Tensor x = values(both);
  EXPECT_TRUE(round_to_e4m3(x).equal(x));
}

TEST(RoundToE4m3, RoundsMidpointsToEvenMantissas) {
  const std::vector<double> table = e4m3_table();
  for (size_t i = 0; i + 1 < table.size(); ++i) {
    const double low = table[i], high = table[i + 1];
    const float mid = static_cast<float>((low + high) / 2);
    // The even neighbour is the one whose mantissa index (position in the table) is even.
    const double even = i % 2 == 0 ? low : high;
    const at::Tensor out = round_to_e4m3(values({mid, -mid, std::nextafter(mid, 0.0f),
                                                 std::nextafter(mid, 1000.0f)}));
    EXPECT_EQ(out[0].item<float>(), static_cast<float>(even)) << "between " << low << " and " << high;
    EXPECT_EQ(out[1].item<float>(), -static_cast<float>(even)) << "between " << low << " and " << high;
    EXPECT_EQ(out[2].item<float>(), static_cast<float>(low)) << "just below the midpoint of " << low;
    EXPECT_EQ(out[3].item<float>(), static_cast<float>(high)) << "just above the midpoint of " << low;
  }
}

TEST(RoundToE4m3, SaturatesAndHandlesTinyValues) {
  expect_values(round_to_e4m3(values({448, 460, 500, 1e6f, -1e6f})), {448, 448, 448, 448, -448});
  // Half the smallest subnormal ties to 0; three quarters rounds up to it.
  const float smallest = std::ldexp(1.0f, -9);
  expect_values(round_to_e4m3(values({smallest / 2, smallest * 0.75f, 1e-30f})), {0, smallest, 0});
  EXPECT_TRUE(std::isnan(round_to_e4m3(values({NAN}))[0].item<float>()));
}

TEST(FakeQuantE4m3, ScalesAmaxTo448) {
  // amax 448 / 4 makes the scale 4: x * 4 is rounded to E4M3 and divided by 4.
  const at::Tensor x = values({112, 1, 0.3f, -200});
  // 0.3 * 4 = 1.2 -> 1.25 (spacing 1/8 in [1, 2)); -800 saturates at -448.
  expect_values(fake_quant_e4m3(x, at::scalar_tensor(112.0f)), {112, 1, 1.25f / 4, -112});
}

QuantizerAttributes int_attributes(int bits) {
  QuantizerAttributes attributes;
  attributes.set_enable(true);
  attributes.set_num_bits(bits);
  return attributes;
}

TEST(TensorQuantizer, PerChannelScalesAlongTheAxis) {
  QuantizerAttributes attributes = int_attributes(4);
  attributes.set_axis(0);
  TensorQuantizer quantizer("fc.weight_quantizer", attributes, /*keepdim_amax=*/true);
  // Row 0: amax 7 (scale 1); row 1: amax 7/8 (scale 8).
  const at::Tensor w = at::tensor({7.0f, 1.4f, -2.5f, 0.875f, 0.3125f, -0.0625f}).reshape({2, 3});
  const at::Tensor amax = quantizer->compute_amax(w);
  EXPECT_EQ(amax.sizes(), (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(quantizer->amax_shape(w.sizes()), (std::vector<int64_t>{2, 1}));
  expect_values(amax, {7, 0.875f});
  quantizer->set_amax(amax);
  expect_values(quantizer->forward(w), {7, 1, -2, 0.875f, 0.25f, -0.0f});
}

// An unsigned quantizer refuses negative inputs, calibrating or quantizing, naming itself, as
// Model Optimizer does: clamping them to 0 would change the model without a word.
TEST(TensorQuantizer, UnsignedRefusesNegativeInputs) {
  QuantizerAttributes attributes = int_attributes(8);
  attributes.set_is_unsigned(true);
  TensorQuantizer quantizer("fc1.input_quantizer", attributes, /*keepdim_amax=*/false);
  const at::Tensor x = at::tensor({0.5f, -0.25f, 2.0f});
  const std::string expected =
      "fc1.input_quantizer: negative values encountered in unsigned quantization (-0.25); an unsigned quantizer "
      "takes non-negative inputs only";
  quantizer->begin_calibration();
  EXPECT_EQ(test::error_of<std::invalid_argument>([&] { quantizer->forward(x); }), expected);
  quantizer->forward(x.abs());
  quantizer->set_amax(quantizer->end_calibration());
  EXPECT_EQ(test::error_of<std::invalid_argument>([&] { quantizer->forward(x); }), expected);
  expect_values(quantizer->forward(at::tensor({0.0f, 2.0f})), {0, 2});
}

TEST(TensorQuantizer, SetAmaxTwiceReplacesTheBuffer) {
  TensorQuantizer quantizer("fc.weight_quantizer", int_attributes(8), /*keepdim_amax=*/true);
  quantizer->set_amax(at::ones({2, 1}));
  quantizer->set_amax(at::full({3}, 2.0f));
  EXPECT_EQ(quantizer->named_buffers().size(), 1u);
  expect_values(quantizer->named_buffers()["_amax"], {2, 2, 2});
}

TEST(TensorQuantizer, ActivationAxisKeepsOneValuePerFeature) {
  QuantizerAttributes attributes = int_attributes(8);
  attributes.set_axis(-1);
  TensorQuantizer quantizer("fc.input_quantizer", attributes, /*keepdim_amax=*/false);
  const at::Tensor x = at::tensor({1.0f, -4.0f, -3.0f, 2.0f}).reshape({2, 2});
  const at::Tensor amax = quantizer->compute_amax(x);
  EXPECT_EQ(amax.sizes(), (std::vector<int64_t>{2}));
  EXPECT_EQ(quantizer->amax_shape(x.sizes()), (std::vector<int64_t>{2}));
  expect_values(amax, {3, 4});
  // A 3-D input broadcasts the same per-feature amax.
  quantizer->set_amax(amax);
  EXPECT_EQ(quantizer->forward(x.reshape({2, 1, 2})).sizes(), (std::vector<int64_t>{2, 1, 2}));
}

TEST(TensorQuantizer, BlocksPadTheLastBlock) {
  QuantizerAttributes attributes = int_attributes(4);
  attributes.set_block_size(4);
  attributes.set_block_axis(-1);
  TensorQuantizer quantizer("fc.weight_quantizer", attributes, /*keepdim_amax=*/true);
  // Block 0: amax 7 (scale 1); block 1 (2 values + 2 of padding): amax 7/8 (scale 8).
  const at::Tensor w = at::tensor({7.0f, 1.4f, -3.5f, 2.0f, 0.875f, -0.3125f}).reshape({1, 6});
  const at::Tensor amax = quantizer->compute_amax(w);
  EXPECT_EQ(amax.sizes(), (std::vector<int64_t>{1, 2, 1}));
  EXPECT_EQ(quantizer->amax_shape(w.sizes()), (std::vector<int64_t>{1, 2, 1}));
  expect_values(amax, {7, 0.875f});
  quantizer->set_amax(amax);
  const at::Tensor out = quantizer->forward(w);
  EXPECT_EQ(out.sizes(), w.sizes());
  expect_values(out, {7, 1, -4, 2, 0.875f, -0.25f});
}

TEST(TensorQuantizer, PerTensorAmaxIsAScalar) {
  TensorQuantizer quantizer("fc.weight_quantizer", int_attributes(8), /*keepdim_amax=*/true);
  const at::Tensor w = at::ones({3, 5});
  EXPECT_EQ(quantizer->compute_amax(w).sizes().vec(), quantizer->amax_shape(w.sizes()));
  EXPECT_TRUE(quantizer->amax_shape(w.sizes()).empty());
}

TEST(TensorQuantizer, GradientsPassStraightThrough) {
  TensorQuantizer quantizer("fc.input_quantizer", int_attributes(4), false);
  quantizer->set_amax(at::scalar_tensor(1.0f));
  const at::Tensor x = at::tensor({0.1f, 0.7f, 5.0f, -9.0f}).requires_grad_();
  const at::Tensor out = quantizer->forward(x);
  EXPECT_TRUE(out.requires_grad());
  (out * at::tensor({1.0f, 2.0f, 3.0f, 4.0f})).sum().backward();
  // Even the clamped values pass their gradient unchanged.
  expect_values(x.grad(), {1, 2, 3, 4});
  // The forward value is exactly the fake-quantized one.
  EXPECT_TRUE(out.detach().equal(fake_quant_int(x.detach(), at::scalar_tensor(1.0f), 4, false)));
}

TEST(TensorQuantizer, CalibrationRecordsTheRunningMaximum) {
  TensorQuantizer quantizer("fc.input_quantizer", int_attributes(8), false);
  quantizer->begin_calibration();
  const at::Tensor a = values({1, -3}), b = values({2, 2.5f});
  EXPECT_TRUE(quantizer->forward(a).equal(a));  // calibration does not quantize
  quantizer->forward(b);
  expect_values(quantizer->end_calibration(), {3});
  EXPECT_FALSE(quantizer->calibrating());
}

TEST(TensorQuantizer, DisabledPassesThroughAndUncalibratedFails) {
  QuantizerAttributes attributes = int_attributes(8);
  TensorQuantizer quantizer("fc1.input_quantizer", attributes, false);
  try {
    quantizer->forward(values({1}));
    FAIL() << "expected an error";
  } catch (const std::logic_error& e) {
    EXPECT_STREQ(e.what(),
                 "fc1.input_quantizer is enabled but has no amax: calibrate the model (mode "
                 "'max_calibrate') before running it");
  }
  attributes.set_enable(false);
  quantizer->set_attributes(attributes);
  const at::Tensor x = values({0.123f});
  EXPECT_TRUE(quantizer->forward(x).equal(x));
}

TEST(TensorQuantizer, Fp8AttributesUseE4m3) {
  QuantizerAttributes attributes;
  attributes.set_enable(true);
  attributes.set_exponent_bits(4);
  attributes.set_mantissa_bits(3);
  TensorQuantizer quantizer("fc.weight_quantizer", attributes, true);
  quantizer->set_amax(at::scalar_tensor(448.0f));
  expect_values(quantizer->forward(values({17.0f, 0.3f})), {16, 0.3125f});
}

}  // namespace
}  // namespace quantization
}  // namespace mto
