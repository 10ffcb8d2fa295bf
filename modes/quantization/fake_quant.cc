#include "modes/quantization/fake_quant.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace mto {
namespace quantization {

at::Tensor fake_quant_int(const at::Tensor& x, const at::Tensor& amax, int bits,
                          bool is_unsigned) {
  const double bound = std::ldexp(1.0, bits - 1 + (is_unsigned ? 1 : 0)) - 1;
  const at::Tensor scale = bound / amax.clamp_min(kMinAmax);
  return at::round(x * scale).clamp_(is_unsigned ? 0.0 : -bound, bound).div_(scale);
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

at::Tensor fake_quant_e4m3(const at::Tensor& x, const at::Tensor& amax) {
  const at::Tensor scale = kE4M3Max / amax.clamp_min(kMinAmax);
  at::Tensor scaled = (x * scale).to(at::kFloat).contiguous();
  round_to_e4m3_(scaled);
  return scaled.div_(scale).to(x.scalar_type());
}

}  // namespace quantization
}  // namespace mto
