#pragma once

#include <ATen/core/Tensor.h>

namespace mto {
namespace quantization {

// The largest magnitude of FP8 E4M3 (the "FN" variant: no infinities, max 448).
constexpr double kE4M3Max = 448.0;

// Amax values below this are treated as this, so that all-zero channels do not divide by
// zero; such channels quantize everything to (nearly) zero.
constexpr double kMinAmax = 1e-12;

// The step of integer quantization: max(amax, kMinAmax) / bound, float32, where
// bound = 2^(bits - 1 + is_unsigned) - 1. Deployed checkpoints store it as the scale.
at::Tensor int_scale(const at::Tensor& amax, int bits, bool is_unsigned);

// The integer codes of `x`: clamp(round(x / scale), lo, bound), as float32, where lo is
// -(bound + 1) (Model Optimizer's default narrow_range=False), or 0 when is_unsigned. Rounds
// half to even; a zero code is +0, never -0. `scale` broadcasts against `x`.
at::Tensor quantize_int(const at::Tensor& x, const at::Tensor& scale, int bits, bool is_unsigned);

// Integer fake quantization: quantize_int(x, scale) * scale with scale = int_scale(amax).
// Dequantizing as codes * scale, the form deployment runtimes use, makes a deployed
// checkpoint's weights equal the fake-quantized ones bit for bit. `amax` broadcasts
// against `x`.
at::Tensor fake_quant_int(const at::Tensor& x, const at::Tensor& amax, int bits,
                          bool is_unsigned);

// Rounds every value of `x` to the nearest FP8 E4M3 value (3 mantissa bits, subnormals
// below 2^-6, ties to even) and saturates at +-448. NaN stays NaN.
at::Tensor round_to_e4m3(const at::Tensor& x);

// The step of FP8 E4M3 quantization: max(amax, kMinAmax) / 448, float32.
at::Tensor e4m3_scale(const at::Tensor& amax);

// The E4M3 values of `x` / `scale` (float32, each one exactly an E4M3 value).
at::Tensor quantize_e4m3(const at::Tensor& x, const at::Tensor& scale);

// FP8 E4M3 fake quantization: quantize_e4m3(x, scale) * scale with scale = e4m3_scale(amax).
at::Tensor fake_quant_e4m3(const at::Tensor& x, const at::Tensor& amax);

}  // namespace quantization
}  // namespace mto
