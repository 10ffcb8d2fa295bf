#pragma once

#include <cstdint>
#include <ostream>

#include <nlohmann/json.hpp>
#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "opt/nn/linear.h"

namespace mto {
namespace zoo {

// Options of Gpt; every value must be positive and width divisible by heads.
struct GptOptions {
  // Reads the model-like arguments {"vocab", "width", "depth", "heads", "context"}, all
  // optional. Throws mto::ConfigError on an unknown key or a value of the wrong type.
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
};

// Causal multi-head self-attention: qkv projects to queries, keys and values, proj mixes
// the heads. Both are mto::nn::Linear.
class CausalSelfAttentionImpl : public torch::nn::Module {
 public:
  CausalSelfAttentionImpl(int64_t width, int64_t heads);

  // Maps [B, T, width] to [B, T, width]; position t attends to positions 0..t.
  at::Tensor forward(const at::Tensor& x);

  void pretty_print(std::ostream& stream) const override;

  int64_t heads;
  mto::nn::Linear qkv{nullptr};
  mto::nn::Linear proj{nullptr};
};

TORCH_MODULE(CausalSelfAttention);

// A pre-norm transformer block: x + attn(ln1(x)), then x + fc2(gelu(fc1(ln2(x)))), with
// fc1 widening to 4 * width.
class GptBlockImpl : public torch::nn::Module {
 public:
  GptBlockImpl(int64_t width, int64_t heads);

  // Maps [B, T, width] to [B, T, width].
  at::Tensor forward(const at::Tensor& x);

  void pretty_print(std::ostream& stream) const override;

  torch::nn::LayerNorm ln1{nullptr};
  CausalSelfAttention attn{nullptr};
  torch::nn::LayerNorm ln2{nullptr};
  mto::nn::Linear fc1{nullptr};
  mto::nn::Linear fc2{nullptr};
};

TORCH_MODULE(GptBlock);

// A GPT-like decoder: token and position embeddings, `depth` GptBlocks, a final LayerNorm
// and a language-model head (mto::nn::Linear without bias). State-dict keys read
// "tok_emb.weight", "pos_emb.weight", "blocks.<i>.attn.qkv.weight", "blocks.<i>.fc1.weight",
// "ln_f.weight", "head.weight", ... It holds about 12 * depth * width^2 parameters
// (width 2048, depth 16: 805 M, 3.2 GB in float32). Registered as the model-like "gpt".
// Not safe to share between threads that train it.
class GptImpl : public torch::nn::Module {
 public:
  // Throws mto::ConfigError if an option is out of range.
  explicit GptImpl(GptOptions options = {});

  // Maps int64 tokens [B, T] (T <= context, each in [0, vocab)) to logits
  // [B, T, vocab]; throws std::invalid_argument on another shape or dtype.
  at::Tensor forward(const at::Tensor& tokens);

  void pretty_print(std::ostream& stream) const override;

  GptOptions options;
  torch::nn::Embedding tok_emb{nullptr};
  torch::nn::Embedding pos_emb{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm ln_f{nullptr};
  mto::nn::Linear head{nullptr};
};

TORCH_MODULE(Gpt);

}  // namespace zoo
}  // namespace mto
