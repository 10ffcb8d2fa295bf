#pragma once

#include <cstdint>
#include <memory>
#include <ostream>
#include <string>

#include <nlohmann/json.hpp>
#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "distributed/mesh.h"
#include "opt/nn/column_parallel_linear.h"
#include "opt/nn/row_parallel_linear.h"
#include "opt/nn/vocab_parallel_embedding.h"

namespace mto {
namespace zoo {

// Options of Gpt; every value must be positive, width divisible by heads, and the mesh's
// tensor-parallel size must divide heads and vocab.
struct GptOptions {
  // Reads the model-like arguments {"vocab", "width", "depth", "heads", "context", "seed",
  // "tie_embeddings"}, all optional. Throws mto::ConfigError on an unknown key or a value of
  // the wrong type.
  static GptOptions from_json(const nlohmann::json& args);

  // Number of distinct tokens.
  TORCH_ARG(int64_t, vocab) = 256;
  // Embedding width of every block.
  TORCH_ARG(int64_t, width) = 128;
  // Number of transformer blocks.
  TORCH_ARG(int64_t, depth) = 2;
  // Attention heads per block.
  TORCH_ARG(int64_t, heads) = 4;
  // Longest sequence the model accepts (rows of the position embedding).
  TORCH_ARG(int64_t, context) = 64;
  // Seed of the initialization: the global weights depend on it alone, never on the mesh.
  TORCH_ARG(int64_t, seed) = 0;
  // Whether the logits are computed with the token embedding's weight (GPT-2's tied head)
  // instead of a separate lm_head. Both embeddings then start at a standard deviation of
  // 1 / sqrt(width) instead of torch's 1, so that the first logits are of order one.
  TORCH_ARG(bool, tie_embeddings) = false;
  // The mesh the model is split over (heads, MLP width and vocabulary over its tp group);
  // nullptr means default_mesh(). Not a model-like argument: a checkpoint fits any mesh.
  TORCH_ARG(std::shared_ptr<Mesh>, mesh) = nullptr;
};

// Causal multi-head self-attention, split over the tensor-parallel group by heads
// (Megatron's layout): qkv (column-parallel) projects to each head's query, key and value,
// its output rows ordered [head][q, k, v][head_width] so that a slice of rows is a set of
// whole heads; proj (row-parallel) mixes the heads and sums over the group.
class CausalSelfAttentionImpl : public torch::nn::Module {
 public:
  // `seed` and `name` ("blocks.0.attn") key the initialization.
  CausalSelfAttentionImpl(int64_t width, int64_t heads, uint64_t seed, const std::string& name,
                          std::shared_ptr<Communicator> tp);

  // Maps [B, T, width] to [B, T, width]; position t attends to positions 0..t.
  at::Tensor forward(const at::Tensor& x);

  void pretty_print(std::ostream& stream) const override;

  // All heads, and those of this rank.
  int64_t heads;
  int64_t local_heads;
  mto::nn::ColumnParallelLinear qkv{nullptr};
  mto::nn::RowParallelLinear proj{nullptr};
};

TORCH_MODULE(CausalSelfAttention);

// A pre-norm transformer block: x + attn(ln1(x)), then x + fc2(gelu(fc1(ln2(x)))), with
// fc1 widening to 4 * width (column-parallel) and fc2 back (row-parallel).
class GptBlockImpl : public torch::nn::Module {
 public:
  GptBlockImpl(int64_t width, int64_t heads, uint64_t seed, const std::string& name,
               std::shared_ptr<Communicator> tp);

  // Maps [B, T, width] to [B, T, width].
  at::Tensor forward(const at::Tensor& x);

  void pretty_print(std::ostream& stream) const override;

  torch::nn::LayerNorm ln1{nullptr};
  CausalSelfAttention attn{nullptr};
  torch::nn::LayerNorm ln2{nullptr};
  mto::nn::ColumnParallelLinear fc1{nullptr};
  mto::nn::RowParallelLinear fc2{nullptr};
};

TORCH_MODULE(GptBlock);

// A GPT-like decoder: token (vocab-parallel) and position embeddings, `depth` GptBlocks, a
// final LayerNorm and a language-model head lm_head (column-parallel, no bias, gathered; the
// quantize presets leave it alone, as Model Optimizer's do) or, with tie_embeddings, the
// token embedding's weight in its place (no lm_head: GPT-2's tied head), split
// Megatron-style over the tensor-parallel group of its mesh. Each rank creates and
// initializes only its slices; the global weights depend on the seed alone, so the model at
// tp = 1 equals the gathered model at any tp. State-dict keys and global shapes are the same
// at every tp: "tok_emb.weight", "pos_emb.weight", "blocks.<i>.attn.qkv.weight",
// "blocks.<i>.fc1.weight", "ln_f.weight", "lm_head.weight", ... It holds about
// 12 * depth * width^2 parameters (width 2048, depth 16: 805 M, 3.2 GB in float32).
// Registered as the model-like "gpt". Not safe to share between threads that train it.
class GptImpl : public torch::nn::Module {
 public:
  // Throws mto::ConfigError if an option is out of range or the mesh's tensor-parallel size
  // does not divide heads or vocab (naming both numbers), before allocating anything.
  explicit GptImpl(GptOptions options = {});

  // Maps int64 tokens [B, T] (T <= context, each in [0, vocab)) to logits [B, T, vocab],
  // the same on every rank of the tensor-parallel group; throws std::invalid_argument on
  // another shape or dtype. Collective over the tp group when it has more than one rank.
  at::Tensor forward(const at::Tensor& tokens);

  void pretty_print(std::ostream& stream) const override;

  GptOptions options;
  mto::nn::VocabParallelEmbedding tok_emb{nullptr};
  torch::nn::Embedding pos_emb{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm ln_f{nullptr};
  // nullptr when options.tie_embeddings().
  mto::nn::ColumnParallelLinear lm_head{nullptr};
};

TORCH_MODULE(Gpt);

}  // namespace zoo
}  // namespace mto
