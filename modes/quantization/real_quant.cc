#include "modes/quantization/real_quant.h"

#include <ATen/ATen.h>

#include <array>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "modes/quantization/fake_quant.h"

namespace mto {
namespace quantization {
namespace {

bool is_e4m3(const QuantizerAttributes& a) { return a.exponent_bits() == 4 && a.mantissa_bits() == 3; }
bool is_int4_blocks(const QuantizerAttributes& a) {
  return a.exponent_bits() == 0 && a.num_bits() == 4 && !a.is_unsigned() && a.block_size() > 0;
}
bool is_int8(const QuantizerAttributes& a) {
  return a.exponent_bits() == 0 && a.num_bits() == 8 && !a.is_unsigned() && a.block_size() == 0;
}

// `scale` (of any shape with its values in order) shaped to broadcast against a weight of
// `sizes`: per tensor, per index of the axis, or [rows, blocks, 1] against the blocked
// weight.
at::Tensor broadcast_scale(const at::Tensor& scale, const QuantizerAttributes& a, at::IntArrayRef sizes) {
  const int64_t dim = static_cast<int64_t>(sizes.size());
  if (a.block_size() > 0) return scale.reshape({sizes[0], -1, 1});
  if (!a.has_axis()) return scale.reshape({});
  std::vector<int64_t> shape(dim, 1);
  shape[a.axis() < 0 ? a.axis() + dim : a.axis()] = -1;
  return scale.reshape(shape);
}

// Throws unless `sizes` can hold blocks of `a`: two dimensions, blocks along the last, an
// even number of rows and whole blocks.
void check_blocks(const QuantizerAttributes& a, at::IntArrayRef sizes) {
  const int64_t dim = static_cast<int64_t>(sizes.size());
  if (dim != 2 || (a.block_axis() != -1 && a.block_axis() != 1)) {
    throw std::invalid_argument("int4 weights deploy with blocks along the last dimension of a matrix");
  }
  if (sizes[1] % a.block_size() != 0) {
    throw std::invalid_argument("blocks of " + std::to_string(a.block_size()) + " do not divide the " +
                                std::to_string(sizes[1]) + " input features");
  }
  if (sizes[0] % 2 != 0) {
    throw std::invalid_argument("int4 weights pack two rows per byte; " + std::to_string(sizes[0]) +
                                " rows is odd");
  }
}

// The float32 value of every E4M3 bit pattern.
const std::array<float, 256>& e4m3_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int b = 0; b < 256; ++b) {
      const int exponent = (b >> 3) & 0xF;
      const int mantissa = b & 0x7;
      float magnitude = exponent == 0 ? std::ldexp(static_cast<float>(mantissa), -9)
                                      : std::ldexp(1.0f + mantissa / 8.0f, exponent - 7);
      if ((b & 0x7F) == 0x7F) magnitude = NAN;
      t[b] = (b & 0x80) ? -magnitude : magnitude;
    }
    return t;
  }();
  return table;
}

uint8_t e4m3_bits_of(float v) {
  if (std::isnan(v)) return 0x7F;
  const uint8_t sign = std::signbit(v) ? 0x80 : 0;
  const float magnitude = std::fabs(v);
  if (magnitude < std::ldexp(1.0f, -6)) {
    return sign | static_cast<uint8_t>(magnitude * 512.0f);
  }
  int exponent = 0;
  const float fraction = std::frexp(magnitude, &exponent);  // magnitude = fraction * 2^exponent, fraction in [0.5, 1)
  const int biased = exponent - 1 + 7;
  const int mantissa = static_cast<int>((fraction * 2.0f - 1.0f) * 8.0f);
  // Above 448 (480 and up would be the NaN pattern 0x7F), and infinity: the largest value.
  if (std::isinf(magnitude) || biased > 15 || (biased == 15 && mantissa == 7)) return sign | 0x7E;
  return sign | static_cast<uint8_t>(biased << 3) | static_cast<uint8_t>(mantissa);
}

}  // namespace

at::Tensor quantizer_scale(const QuantizerAttributes& attributes, const at::Tensor& amax) {
  if (attributes.exponent_bits() > 0) return e4m3_scale(amax);
  return int_scale(amax, attributes.num_bits(), attributes.is_unsigned());
}

at::Tensor e4m3_bits(const at::Tensor& x) {
  const at::Tensor values = x.to(at::kFloat).contiguous();
  at::Tensor out = at::empty(values.sizes(), at::kByte);
  const float* in = values.data_ptr<float>();
  uint8_t* bits = out.data_ptr<uint8_t>();
  for (int64_t i = 0; i < values.numel(); ++i) bits[i] = e4m3_bits_of(in[i]);
  return out;
}

at::Tensor e4m3_values(const at::Tensor& bits) {
  const at::Tensor codes = bits.contiguous();
  at::Tensor out = at::empty(codes.sizes(), at::kFloat);
  const uint8_t* in = codes.data_ptr<uint8_t>();
  float* values = out.data_ptr<float>();
  const std::array<float, 256>& table = e4m3_table();
  for (int64_t i = 0; i < codes.numel(); ++i) values[i] = table[in[i]];
  return out;
}

at::Tensor pack_int4_rows(const at::Tensor& codes) {
  const at::Tensor nibbles = codes.to(at::kChar).bitwise_and(0xF).to(at::kByte);
  const at::Tensor pairs = nibbles.reshape({codes.size(0) / 2, 2, -1});
  const at::Tensor low = pairs.select(1, 0);
  const at::Tensor high = pairs.select(1, 1);
  std::vector<int64_t> shape = codes.sizes().vec();
  shape[0] /= 2;
  return low.bitwise_or(high.bitwise_left_shift(4)).reshape(shape);
}

at::Tensor unpack_int4_rows(const at::Tensor& packed) {
  const at::Tensor bytes = packed.to(at::kShort);
  // Sign-extends a nibble n: (n ^ 8) - 8.
  const at::Tensor low = bytes.bitwise_and(0xF).bitwise_xor(8).sub(8);
  const at::Tensor high = bytes.bitwise_right_shift(4).bitwise_xor(8).sub(8);
  std::vector<int64_t> shape = packed.sizes().vec();
  shape[0] *= 2;
  return at::stack({low, high}, 1).reshape(shape).to(at::kFloat);
}

at::Tensor encode_weight(const at::Tensor& weight, const at::Tensor& scale, const QuantizerAttributes& attributes) {
  const at::IntArrayRef sizes = weight.sizes();
  const at::Tensor s = broadcast_scale(scale, attributes, sizes);
  if (is_e4m3(attributes) && attributes.block_size() == 0) return e4m3_bits(quantize_e4m3(weight, s));
  if (is_int8(attributes)) return quantize_int(weight, s, 8, false).to(at::kChar);
  if (is_int4_blocks(attributes)) {
    check_blocks(attributes, sizes);
    const at::Tensor blocked = weight.reshape({sizes[0], -1, attributes.block_size()});
    return pack_int4_rows(quantize_int(blocked, s, 4, false).reshape(sizes));
  }
  throw std::invalid_argument(
      "the weight format has no encoding (encodable: signed int8 per tensor or per channel, FP8 E4M3 per "
      "tensor or per channel, signed int4 in blocks along the input features)");
}

at::Tensor decode_weight(const at::Tensor& codes, const at::Tensor& scale, const QuantizerAttributes& attributes,
                         at::IntArrayRef sizes) {
  const at::Tensor s = broadcast_scale(scale, attributes, sizes);
  if (is_int4_blocks(attributes)) {
    return unpack_int4_rows(codes).reshape({sizes[0], -1, attributes.block_size()}).mul_(s).reshape(sizes);
  }
  if (is_e4m3(attributes)) return e4m3_values(codes).mul_(s);
  return codes.to(at::kFloat).mul_(s);
}

}  // namespace quantization
}  // namespace mto
