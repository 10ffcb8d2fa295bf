#pragma once

#include <cstdint>

#include <torch/nn/module.h>

#include "distributed/communicator.h"
#include "tools/data/dataset.h"

namespace mto {
namespace cli {

// Accuracy and mean cross-entropy loss of a classifier over a data set.
struct Evaluation {
  double accuracy = 0;
  double loss = 0;
  int64_t samples = 0;
};

// Evaluates the zoo classifier `model` on `dataset` split over the ranks of `communicator`:
// each rank runs its contiguous share in batches of `batch_size`, then one all-reduce sums
// the counts. Collective; every rank returns the same result. Shows progress when
// `show_progress`.
Evaluation evaluate(torch::nn::Module& model, const data::Dataset& dataset,
                    Communicator& communicator, int64_t batch_size, bool show_progress);

// Mean cross-entropy (nats per token) of the zoo language model `model` predicting bytes
// 1..L of each window from the bytes before them; `windows` is uint8 [B, L + 1] as
// data::token_windows cuts them. Differentiable.
at::Tensor language_model_loss(torch::nn::Module& model, const at::Tensor& windows);

// How well a byte-level language model predicts held-out text.
struct LanguageModelEvaluation {
  // Mean cross-entropy per predicted byte, in nats; exp(loss); loss / ln 2.
  double loss = 0;
  double perplexity = 0;
  double bits_per_byte = 0;
  // Predicted bytes.
  int64_t tokens = 0;
};

// Evaluates the zoo language model `model` on `windows` (uint8 [N, L + 1]) split over the
// data-parallel ranks of `communicator` (every tensor-parallel rank of a replica runs the
// same windows): each rank runs its contiguous share in batches of `batch_size`, then one
// all-reduce sums the losses. Collective over `communicator`; every rank returns the same
// result. Shows progress when `show_progress`.
LanguageModelEvaluation evaluate_language_model(torch::nn::Module& model, const at::Tensor& windows,
                                                Communicator& communicator, int64_t batch_size,
                                                bool show_progress);

}  // namespace cli
}  // namespace mto
