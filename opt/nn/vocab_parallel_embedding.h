#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <string>

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include "distributed/communicator.h"
#include "distributed/tensor_slice.h"

namespace mto {
namespace nn {

// Options of a VocabParallelEmbedding; sizes are those of the global (unsplit) table.
struct VocabParallelEmbeddingOptions {
  VocabParallelEmbeddingOptions(int64_t num_embeddings, int64_t embedding_dim)
      : num_embeddings_(num_embeddings), embedding_dim_(embedding_dim) {}

  // The vocabulary size, split over the tensor-parallel group.
  TORCH_ARG(int64_t, num_embeddings);
  TORCH_ARG(int64_t, embedding_dim);
  // Seed of the initialization (see global_init.h): the same seed gives the same global
  // table at every tensor-parallel size.
  TORCH_ARG(uint64_t, seed) = 0;
  // Standard deviation of the normal initialization (1, as torch::nn::Embedding's).
  TORCH_ARG(double, init_std) = 1.0;
  // The tensor-parallel group; nullptr means default_mesh()->tp().
  TORCH_ARG(std::shared_ptr<Communicator>, tp) = nullptr;
};

// An embedding table whose rows (the vocabulary) are split over a tensor-parallel group
// (Megatron's VocabParallelEmbedding): rank t holds rows [t * V / tp, (t + 1) * V / tp) of
// the global table [V, dim]. Each rank looks up the tokens in its range, zeros the others,
// and the results are summed over the group, so every rank gets the whole output. With a
// group of one rank it computes what torch::nn::Embedding computes. Not safe to share
// between threads.
class VocabParallelEmbeddingImpl : public torch::nn::Cloneable<VocabParallelEmbeddingImpl>,
                                   public SplitModule {
 public:
  // Throws DistributedError if the tensor-parallel size does not divide num_embeddings.
  explicit VocabParallelEmbeddingImpl(VocabParallelEmbeddingOptions options);

  // Creates the weight and initializes it with reset_parameters().
  void reset() override;
  // Initializes the global table with normal values (mean 0, std options.init_std)
  // from the seed seed_for(seed, "weight"), and keeps this rank's rows.
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  // The embeddings [..., dim] of the int64 `tokens` [...], which must be the same on every
  // rank of the group and lie in [0, num_embeddings) (with more than one rank, tokens out of
  // range give zeros instead of an error). Collective: every rank of the group must call it,
  // in the same order.
  at::Tensor forward(const at::Tensor& tokens);

  // "weight" is rows of the global table; anything else is whole (std::nullopt).
  std::optional<TensorSlice> slice_of(const std::string& key, const at::Tensor& local) const override;
  const std::shared_ptr<Communicator>& split_group() const override { return options.tp(); }

  // The first global row this rank holds.
  int64_t vocab_begin() const;

  // The options as given, with tp filled in.
  VocabParallelEmbeddingOptions options;
  // This rank's rows, shape [num_embeddings / tp, embedding_dim].
  at::Tensor weight;
};

TORCH_MODULE(VocabParallelEmbedding);

}  // namespace nn
}  // namespace mto
