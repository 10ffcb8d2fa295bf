#pragma once

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

namespace mto {
namespace zoo {

// Runs the forward pass of a zoo model (FashionCnn, FashionMlp or Gpt) held as a plain
// torch::nn::Module, as mto's generic code and mto::restore return it, looking through a
// DataParallel wrapper. Throws std::invalid_argument if `model` is no zoo model (a
// ModelLikeModule is none: build it first).
at::Tensor forward(torch::nn::Module& model, const at::Tensor& input);

// The token values of the zoo's text: bytes.
inline constexpr int64_t kByteVocabulary = 256;

// The longest token sequence the zoo language model `model` (a Gpt, possibly wrapped in
// DataParallel) accepts, or 0 when `model` is no language model (an image classifier).
// Throws std::invalid_argument, naming the vocabulary, for a language model whose vocabulary
// cannot take the zoo's text (under kByteVocabulary entries).
int64_t language_model_context(torch::nn::Module& model);

}  // namespace zoo
}  // namespace mto
