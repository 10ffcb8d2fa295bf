#include "opt/nn/vocab_parallel_embedding.h"

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "distributed/distributed_error.h"
#include "distributed/global_init.h"
#include "distributed/mesh.h"
#include "distributed/tensor_parallel_ops.h"
#include "opt/nn/uninitialized.h"

namespace mto {
namespace nn {

VocabParallelEmbeddingImpl::VocabParallelEmbeddingImpl(VocabParallelEmbeddingOptions options)
    : options(std::move(options)) {
  if (!this->options.tp()) this->options.tp(default_mesh()->tp());
  const int tp = this->options.tp()->world_size();
  if (this->options.num_embeddings() % tp != 0) {
    throw DistributedError(absl::StrCat("VocabParallelEmbedding: the tensor-parallel size ", tp,
                                        " does not divide num_embeddings (the vocabulary size) ",
                                        this->options.num_embeddings()));
  }
  reset();
}

void VocabParallelEmbeddingImpl::reset() {
  const int64_t rows = options.num_embeddings() / options.tp()->world_size();
  weight = register_parameter("weight", at::empty({rows, options.embedding_dim()}));
  reset_parameters();
}

void VocabParallelEmbeddingImpl::reset_parameters() {
  if (parameters_uninitialized()) return;
  global_normal_(weight, TensorSlice{{options.num_embeddings(), options.embedding_dim()}, 0, vocab_begin()},
                 seed_for(options.seed(), "weight"), 0.0, options.init_std());
}

int64_t VocabParallelEmbeddingImpl::vocab_begin() const { return options.tp()->rank() * weight.size(0); }

void VocabParallelEmbeddingImpl::pretty_print(std::ostream& stream) const {
  stream << "mto::nn::VocabParallelEmbedding(num_embeddings=" << options.num_embeddings() << " (local "
         << weight.size(0) << "), embedding_dim=" << options.embedding_dim()
         << ", tp=" << options.tp()->world_size() << ")";
}

at::Tensor VocabParallelEmbeddingImpl::forward(const at::Tensor& tokens) {
  Communicator& tp = *options.tp();
  if (tp.world_size() == 1) return at::embedding(weight, tokens);
  const int64_t begin = vocab_begin();
  const at::Tensor outside = tokens.lt(begin).logical_or(tokens.ge(begin + weight.size(0)));
  const at::Tensor rows = at::embedding(weight, (tokens - begin).masked_fill(outside, 0));
  return reduce_from_tensor_parallel(rows.masked_fill(outside.unsqueeze(-1), 0.0), tp);
}

std::optional<TensorSlice> VocabParallelEmbeddingImpl::slice_of(const std::string& key,
                                                                const at::Tensor& local) const {
  if (key != "weight" || options.tp()->world_size() == 1) return std::nullopt;
  return TensorSlice{{options.num_embeddings(), local.size(1)}, 0, vocab_begin()};
}

}  // namespace nn
}  // namespace mto
