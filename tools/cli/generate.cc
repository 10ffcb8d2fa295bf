// mto generate: restores a language model on any mesh and samples a continuation of a
// prompt, byte by byte, so that a person can read what the model learned.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <iostream>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "opt/checkpoint.h"
#include "opt/errors.h"
#include "tools/cli/commands.h"
#include "tools/cli/mesh_option.h"
#include "tools/cli/validators.h"
#include "tools/zoo/forward.h"

namespace mto {
namespace cli {
namespace {

struct GenerateOptions {
  std::string checkpoint;
  std::string prompt;
  int64_t tokens = 200;
  uint64_t seed = 0;
  double temperature = 0.8;
  int64_t top_k = 0;
  int tp = 1;
};

// Samples `options.tokens` bytes after the prompt from the restored model's distribution
// (softened by the temperature, cut to the top_k most likely bytes when top_k > 0), feeding
// at most the model's context of the latest bytes back. The generator is seeded with
// `options.seed` alone and every rank of a tensor-parallel group sees the same logits, so
// every rank draws the same bytes.
std::string sample(torch::nn::Module& model, int64_t context, const GenerateOptions& options) {
  torch::NoGradGuard no_grad;
  model.eval();
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  std::string text = options.prompt;
  for (int64_t i = 0; i < options.tokens; ++i) {
    const int64_t begin = std::max<int64_t>(0, static_cast<int64_t>(text.size()) - context);
    const std::vector<int64_t> window(reinterpret_cast<const uint8_t*>(text.data()) + begin,
                                      reinterpret_cast<const uint8_t*>(text.data()) + text.size());
    const at::Tensor tokens = at::tensor(window, at::kLong).unsqueeze(0);
    at::Tensor logits = zoo::forward(model, tokens).select(1, tokens.size(1) - 1).squeeze(0).to(at::kDouble);
    logits = logits / options.temperature;
    if (options.top_k > 0 && options.top_k < logits.size(0)) {
      const at::Tensor kth = std::get<0>(logits.topk(options.top_k)).min();
      logits = logits.masked_fill(logits < kth, -std::numeric_limits<double>::infinity());
    }
    const at::Tensor probabilities = at::softmax(logits, 0);
    text.push_back(static_cast<char>(at::multinomial(probabilities, 1, false, generator).item<int64_t>()));
  }
  return text;
}

void run_generate(const GenerateOptions& options) {
  const std::shared_ptr<Mesh> mesh = join_mesh(options.tp);
  ModulePtr model = restore(options.checkpoint);
  const int64_t context = zoo::language_model_context(*model);
  if (context == 0) {
    throw ConfigError(absl::StrFormat("%s holds no language model (mto generate samples text from a gpt)",
                                      options.checkpoint));
  }
  if (options.prompt.empty()) throw ConfigError("--prompt must not be empty");
  const std::string text = sample(*model, context, options);
  if (mesh->world()->rank() == 0) std::cout << text << "\n";
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto options = std::make_shared<GenerateOptions>();
  CLI::App* command = app.add_subcommand(
      "generate", "Restore a language model on the mpirun ranks and print a sampled continuation of a prompt");
  command->add_option("checkpoint", options->checkpoint, "Checkpoint directory of a language model")->required();
  command->add_option("--prompt", options->prompt, "The text to continue")->required();
  command->add_option("--tokens", options->tokens, "Bytes to sample")
      ->capture_default_str()
      ->check(non_negative());
  command->add_option("--seed", options->seed, "Seed of the sampling: the same seed gives the same text")
      ->capture_default_str()
      ->check(non_negative());
  command->add_option("--temperature", options->temperature,
                      "Divides the logits: below 1 the likely bytes are likelier still")
      ->capture_default_str()
      ->check(positive());
  command->add_option("--top-k", options->top_k, "Sample from the K most likely bytes only (0: all)")
      ->capture_default_str()
      ->check(non_negative());
  add_tp_option(command, &options->tp);
  command->callback([options] { run_generate(*options); });
}

}  // namespace cli
}  // namespace mto
