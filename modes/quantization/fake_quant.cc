#include "modes/quantization/fake_quant.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace mto {
namespace quantization {

namespace {

double int_bound(int bits, bool is_unsigned) { return std::ldexp(1.0, bits - 1 + (is_unsigned ? 1 : 0)) - 1; }

}  // namespace

at::Tensor int_scale(const at::Tensor& amax, int bits, bool is_unsigned) {
  return amax.to(at::kFloat).clamp_min(kMinAmax).div_(int_bound(bits, is_unsigned));
}

at::Tensor quantize_int(const at::Tensor& x, const at::Tensor& scale, int bits, bool is_unsigned) {
  const double bound = int_bound(bits, is_unsigned);
  // The full two's-complement range, as Model Optimizer's default narrow_range=False: codes
  // reach -(bound + 1) (-128 for int8, -8 for int4), which only values below -amax take.
  // round gives -0 for values in (-0.5, 0); adding +0 makes it +0, as an integer code has no
  // sign of zero, so that fake quantization equals the deployed codes * scale bit for bit.
  return at::round(x.to(at::kFloat) / scale).clamp_(is_unsigned ? 0.0 : -bound - 1, bound).add_(0.0);
}

at::Tensor fake_quant_int(const at::Tensor& x, const at::Tensor& amax, int bits,
                          bool is_unsigned) {
  const at::Tensor scale = int_scale(amax, bits, is_unsigned);
  return quantize_int(x, scale, bits, is_unsigned).mul_(scale).to(x.scalar_type());
}

namespace {

// The E4M3 value nearest to `v`. The exponent bits of |v| alone are 2^floor(log2 |v|); with 3
// mantissa bits the spacing of E4M3 values there is an eighth of that, and never below the
// subnormal spacing 2^-9. Dividing and multiplying by a power of two is exact, and
// nearbyint rounds half to even.
float round_e4m3(float v) {
  if (std::isnan(v)) return v;
  const float magnitude = std::fabs(v);
  if (magnitude >= static_cast<float>(kE4M3Max)) return std::copysign(static_cast<float>(kE4M3Max), v);
  uint32_t bits;
  std::memcpy(&bits, &magnitude, sizeof(bits));
  bits &= 0x7F800000u;
  float power;
  std::memcpy(&power, &bits, sizeof(power));
  const float spacing = std::max(power * 0.125f, 1.0f / 512);
  const float rounded = std::min(std::nearbyint(magnitude / spacing) * spacing, static_cast<float>(kE4M3Max));
  return std::copysign(rounded, v);
}

// Rounds the float32 tensor `x` to E4M3 in place, in one pass.
void round_to_e4m3_(at::Tensor& x) {
  float* data = x.data_ptr<float>();
  at::parallel_for(0, x.numel(), 1 << 16, [data](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) data[i] = round_e4m3(data[i]);
  });
}

}  // namespace

at::Tensor round_to_e4m3(const at::Tensor& x) {
  at::Tensor out = x.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true).contiguous();
  round_to_e4m3_(out);
  return out.to(x.scalar_type());
}

at::Tensor e4m3_scale(const at::Tensor& amax) { return amax.to(at::kFloat).clamp_min(kMinAmax).div_(kE4M3Max); }

at::Tensor quantize_e4m3(const at::Tensor& x, const at::Tensor& scale) {
  at::Tensor scaled = (x.to(at::kFloat) / scale).contiguous();
  round_to_e4m3_(scaled);
  return scaled;
}

at::Tensor fake_quant_e4m3(const at::Tensor& x, const at::Tensor& amax) {
  const at::Tensor scale = e4m3_scale(amax);
  return quantize_e4m3(x, scale).mul_(scale).to(x.scalar_type());
}

}  // namespace quantization
}  // namespace mto
