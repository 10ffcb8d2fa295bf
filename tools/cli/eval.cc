// mto eval: restores a checkpoint on however many ranks run it, on any mesh, and evaluates
// it: a classifier on the Fashion-MNIST test split, a language model on the validation
// text; the data is split over the data-parallel ranks.
#include <chrono>
#include <iostream>
#include <memory>

#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "distributed/world.h"
#include "opt/checkpoint.h"
#include "opt/collective.h"
#include "tools/cli/commands.h"
#include "tools/cli/evaluate.h"
#include "tools/cli/mesh_option.h"
#include "tools/cli/progress.h"
#include "tools/cli/validators.h"
#include "tools/data/bigram.h"
#include "tools/data/fashion_mnist.h"
#include "tools/data/text_corpus.h"
#include "tools/zoo/forward.h"

namespace mto {
namespace cli {
namespace {

struct EvalOptions {
  std::string checkpoint;
  int tp = 1;
  int64_t samples = -1;
  int64_t batch_size = 256;
  std::string strategy = "auto";
  bool json = false;
};

// What every evaluation prints: the checkpoint, the mesh and the times.
nlohmann::ordered_json run_facts(const EvalOptions& options, const Mesh& mesh, double restore_seconds,
                                 double eval_seconds) {
  return {{"checkpoint", options.checkpoint},   {"ranks", mesh.world()->world_size()},
          {"tp", mesh.tp_size()},               {"restore_seconds", restore_seconds},
          {"eval_seconds", eval_seconds}};
}

void evaluate_classifier(torch::nn::Module& model, const EvalOptions& options, const Mesh& mesh,
                         double restore_seconds) {
  // Each rank reads its own copy: one missing or unreadable on one node fails every rank.
  const data::Dataset test = make_on_every_rank<data::Dataset>(*mesh.world(), [&] {
    return data::load_fashion_mnist(data::Split::kTest, data::default_fashion_mnist_root(), options.samples);
  });
  const bool rank0 = mesh.world()->rank() == 0;
  const auto start = std::chrono::steady_clock::now();
  const Evaluation evaluation = evaluate(model, test, *mesh.dp(), options.batch_size, rank0 && !options.json);
  const double eval_seconds = seconds_since(start);
  if (!rank0) return;
  if (options.json) {
    nlohmann::ordered_json out = {{"accuracy", evaluation.accuracy},
                                  {"loss", evaluation.loss},
                                  {"samples", evaluation.samples}};
    out.update(run_facts(options, mesh, restore_seconds, eval_seconds));
    std::cout << out.dump() << "\n";
    return;
  }
  std::cout << absl::StrFormat("%s: accuracy %.2f%%  loss %.4f  (%d test images on %d rank(s) %s; restore %.2f s, "
                               "eval %.2f s)\n",
                               options.checkpoint, 100 * evaluation.accuracy, evaluation.loss, evaluation.samples,
                               mesh.world()->world_size(), mesh.describe(), restore_seconds, eval_seconds);
}

void evaluate_text(torch::nn::Module& model, int64_t context, const EvalOptions& options, const Mesh& mesh,
                   double restore_seconds) {
  // Each rank reads its own copy: one missing or unreadable on one node fails every rank.
  const data::TextCorpus corpus =
      make_on_every_rank<data::TextCorpus>(*mesh.world(), [] { return data::load_text_corpus(); });
  const at::Tensor windows = data::corpus_windows(corpus.validation, "validation", context, options.samples);
  const bool rank0 = mesh.world()->rank() == 0;
  // Only rank 0 prints the reference point.
  const double bigram = rank0 ? data::BigramModel(corpus.train).bits_per_byte(windows) : 0.0;
  const auto start = std::chrono::steady_clock::now();
  const LanguageModelEvaluation evaluation =
      evaluate_language_model(model, windows, *mesh.dp(), options.batch_size, rank0 && !options.json);
  const double eval_seconds = seconds_since(start);
  if (!rank0) return;
  if (options.json) {
    nlohmann::ordered_json out = {{"loss", evaluation.loss},
                                  {"perplexity", evaluation.perplexity},
                                  {"bits_per_byte", evaluation.bits_per_byte},
                                  {"bigram_bits_per_byte", bigram},
                                  {"tokens", evaluation.tokens}};
    out.update(run_facts(options, mesh, restore_seconds, eval_seconds));
    std::cout << out.dump() << "\n";
    return;
  }
  std::cout << absl::StrFormat(
      "%s: validation loss %.4f  perplexity %.4f  %.4f bits/byte (byte bigram %.4f, %.2fx)  (%d bytes on %d rank(s) "
      "%s; restore %.2f s, eval %.2f s)\n",
      options.checkpoint, evaluation.loss, evaluation.perplexity, evaluation.bits_per_byte, bigram,
      bigram > 0 ? evaluation.bits_per_byte / bigram : 0.0, evaluation.tokens, mesh.world()->world_size(),
      mesh.describe(), restore_seconds, eval_seconds);
}

void run_eval(const EvalOptions& options) {
  const std::shared_ptr<Mesh> mesh = join_mesh(options.tp);
  RestoreOptions restore_options;
  restore_options.strategy = options.strategy == "read-share" ? RestoreStrategy::kReadShareBroadcast
                             : options.strategy == "read-all" ? RestoreStrategy::kReadAll
                                                              : RestoreStrategy::kAuto;
  const auto start = std::chrono::steady_clock::now();
  ModulePtr model = restore(options.checkpoint, restore_options);
  const double restore_seconds = seconds_since(start);
  const int64_t context = zoo::language_model_context(*model);
  check_model_splits(*mesh, context > 0, options.checkpoint);
  if (context > 0) {
    evaluate_text(*model, context, options, *mesh, restore_seconds);
  } else {
    evaluate_classifier(*model, options, *mesh, restore_seconds);
  }
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto options = std::make_shared<EvalOptions>();
  CLI::App* command = app.add_subcommand(
      "eval",
      "Restore a checkpoint on the mpirun ranks and evaluate it: a classifier's accuracy on the Fashion-MNIST test "
      "split, a language model's validation loss, perplexity and bits per byte on the held-out text");
  command->add_option("checkpoint", options->checkpoint, "Checkpoint directory")->required();
  add_tp_option(command, &options->tp);
  command
      ->add_option("--samples", options->samples,
                   "Evaluate only the first N test images or validation sequences (all when negative)")
      ->capture_default_str()
      ->check(sample_count());
  command->add_option("--batch-size", options->batch_size, "Images or sequences per forward pass")
      ->capture_default_str()
      ->check(positive());
  command->add_option("--strategy", options->strategy,
                      "How the ranks read the weights: read-all (each rank reads everything), read-share "
                      "(each reads 1/N, then broadcast), or auto (read-all when the ranks share one node, "
                      "read-share when they span nodes; MTO_NODE_NAME overrides a rank's host name)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "read-all", "read-share"}));
  command->add_flag("--json", options->json, "Print one JSON line instead of text");
  command->callback([options] { run_eval(*options); });
}

}  // namespace cli
}  // namespace mto
