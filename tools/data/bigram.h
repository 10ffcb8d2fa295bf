#pragma once

#include <ATen/core/Tensor.h>

namespace mto {
namespace data {

// The reference point a byte-level language model is judged against: a byte-bigram model,
// P(next | previous) = (count(previous, next) + 1) / (count(previous) + 256), its counts
// taken from a training stream (add-one smoothing, so no byte has probability zero).
class BigramModel {
 public:
  // Counts the byte pairs of `train` (uint8 [bytes]).
  explicit BigramModel(const at::Tensor& train);

  // The mean negative log2-likelihood per predicted byte of `windows` (uint8 [N, L + 1],
  // as token_windows cuts them): byte t + 1 of each window given byte t, for t < L; the
  // same positions a language model predicts from the window's first L bytes. Returns 0
  // for no windows.
  double bits_per_byte(const at::Tensor& windows) const;

 private:
  // log2 P(next | previous), float64 [256, 256].
  at::Tensor log2_probability_;
};

}  // namespace data
}  // namespace mto
