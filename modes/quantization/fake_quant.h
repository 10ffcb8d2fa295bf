#pragma once

#include <ATen/core/Tensor.h>

namespace mto {
namespace quantization {

// The largest magnitude of FP8 E4M3 (the "FN" variant: no infinities, max 448).
constexpr double kE4M3Max = 448.0;

// Amax values below this are treated as this, so that all-zero channels do not divide by
// zero; such channels quantize everything to (nearly) zero.
constexpr double kMinAmax = 1e-12;

// Integer fake quantization: with bound = 2^(bits - 1 + is_unsigned) - 1 and
// scale = bound / amax, returns clamp(round(x * scale), lo, bound) / scale where lo is
// -bound, or 0 when is_unsigned. Rounds half to even. `amax` broadcasts against `x`.
at::Tensor fake_quant_int(const at::Tensor& x, const at::Tensor& amax, int bits,
                          bool is_unsigned);

// Rounds every value of `x` to the nearest FP8 E4M3 value (3 mantissa bits, subnormals
// below 2^-6, ties to even) and saturates at +-448. NaN stays NaN.
at::Tensor round_to_e4m3(const at::Tensor& x);

// FP8 E4M3 fake quantization: scales x by 448 / amax, rounds to E4M3, scales back.
at::Tensor fake_quant_e4m3(const at::Tensor& x, const at::Tensor& amax);

}  // namespace quantization
}  // namespace mto
