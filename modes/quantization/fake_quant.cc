#include "modes/quantization/fake_quant.h"

#include <ATen/ATen.h>

#include <cmath>

namespace mto {
namespace quantization {

at::Tensor fake_quant_int(const at::Tensor& x, const at::Tensor& amax, int bits,
                          bool is_unsigned) {
  const double bound = std::ldexp(1.0, bits - 1 + (is_unsigned ? 1 : 0)) - 1;
  const at::Tensor scale = bound / amax.clamp_min(kMinAmax);
  return at::round(x * scale).clamp_(is_unsigned ? 0.0 : -bound, bound).div_(scale);
}

at::Tensor round_to_e4m3(const at::Tensor& x) {
  // |x| = m * 2^e with m in [0.5, 1), so floor(log2 |x|) = e - 1. Below the smallest
  // normal exponent (-6) the spacing stays that of the subnormals, 2^-9; above, 3 mantissa
  // bits give a spacing of 2^(exponent - 3). Dividing by a power of two is exact.
  const at::Tensor exponent = std::get<1>(at::frexp(x)).sub_(1).clamp_min_(-6);
  const at::Tensor spacing = at::exp2(exponent.to(x.scalar_type()).sub_(3));
  return at::round(x / spacing).mul_(spacing).clamp_(-kE4M3Max, kE4M3Max);
}

at::Tensor fake_quant_e4m3(const at::Tensor& x, const at::Tensor& amax) {
  const at::Tensor scale = kE4M3Max / amax.clamp_min(kMinAmax);
  return round_to_e4m3(x * scale).div_(scale);
}

}  // namespace quantization
}  // namespace mto
