#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "modes/quantization/quantization.pb.h"

namespace mto {
namespace quantization {

// The step a calibrated quantizer quantizes with, amax / bound (amax / 448 for FP8 E4M3),
// float32, in the shape of its `_amax`: what a deployed checkpoint stores as the scale.
at::Tensor quantizer_scale(const QuantizerAttributes& attributes, const at::Tensor& amax);

// The bit pattern of every value of `x` as FP8 E4M3 (sign, 4 exponent bits of bias 7,
// 3 mantissa bits; 0x7F for NaN), uint8. The values must be E4M3 values already
// (quantize_e4m3 gives them); others are rounded toward zero.
at::Tensor e4m3_bits(const at::Tensor& x);

// The float32 values of E4M3 bit patterns (a uint8 tensor).
at::Tensor e4m3_values(const at::Tensor& bits);

// Packs the int4 codes `codes` (integers in [-8, 7], any dtype, an even number of rows) two
// per byte along dim 0, as Model Optimizer's unified checkpoints do: byte [r, ...] holds
// codes [2r, ...] in its low nibble and codes [2r + 1, ...] in its high nibble, each as
// two's complement. Returns uint8 of [rows / 2, ...].
at::Tensor pack_int4_rows(const at::Tensor& codes);

// The int4 codes pack_int4_rows packed, as float32 of [2 * rows, ...].
at::Tensor unpack_int4_rows(const at::Tensor& packed);

// The weight of a layer as a deployed checkpoint stores it, quantized with `scale`
// (quantizer_scale of its weight quantizer, of `attributes`): int8 codes (I8) for 8-bit
// integers, E4M3 bit patterns (uint8, stored as F8_E4M3) for FP8, int4 codes packed by
// pack_int4_rows for 4-bit blocks along the last of two dimensions. Throws
// std::invalid_argument for any other format.
at::Tensor encode_weight(const at::Tensor& weight, const at::Tensor& scale, const QuantizerAttributes& attributes);

// The float32 weight of `sizes` that `codes` (encode_weight's) and `scale` stand for:
// equal, bit for bit, to the weight quantizer's fake-quantized weight.
at::Tensor decode_weight(const at::Tensor& codes, const at::Tensor& scale, const QuantizerAttributes& attributes,
                         at::IntArrayRef sizes);

}  // namespace quantization
}  // namespace mto
