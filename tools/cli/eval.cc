// mto eval: restores a checkpoint on however many ranks run it and evaluates it on the
// Fashion-MNIST test split, sharded over the ranks.
#include <chrono>
#include <iostream>
#include <memory>

#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "distributed/world.h"
#include "opt/checkpoint.h"
#include "tools/cli/commands.h"
#include "tools/cli/evaluate.h"
#include "tools/cli/progress.h"
#include "tools/data/fashion_mnist.h"

namespace mto {
namespace cli {
namespace {

struct EvalOptions {
  std::string checkpoint;
  int64_t samples = -1;
  int64_t batch_size = 256;
  std::string strategy = "read-all";
  bool json = false;
};

void run_eval(const EvalOptions& options) {
  auto comm = world();
  RestoreOptions restore_options;
  restore_options.strategy =
      options.strategy == "read-share" ? RestoreStrategy::kReadShareBroadcast : RestoreStrategy::kReadAll;
  auto start = std::chrono::steady_clock::now();
  ModulePtr model = restore(options.checkpoint, restore_options);
  const double restore_seconds = seconds_since(start);

  const data::Dataset test =
      data::load_fashion_mnist(data::Split::kTest, data::default_fashion_mnist_root(), options.samples);
  start = std::chrono::steady_clock::now();
  const Evaluation evaluation =
      evaluate(*model, test, *comm, options.batch_size, /*show_progress=*/comm->rank() == 0 && !options.json);
  const double eval_seconds = seconds_since(start);
  if (comm->rank() != 0) return;
  if (options.json) {
    const nlohmann::ordered_json out = {{"checkpoint", options.checkpoint}, {"accuracy", evaluation.accuracy},
                                        {"loss", evaluation.loss},          {"samples", evaluation.samples},
                                        {"ranks", comm->world_size()},      {"restore_seconds", restore_seconds},
                                        {"eval_seconds", eval_seconds}};
    std::cout << out.dump() << "\n";
    return;
  }
  std::cout << absl::StrFormat("%s: accuracy %.2f%%  loss %.4f  (%d test images on %d rank(s); restore %.2f s, "
                               "eval %.2f s)\n",
                               options.checkpoint, 100 * evaluation.accuracy, evaluation.loss, evaluation.samples,
                               comm->world_size(), restore_seconds, eval_seconds);
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto options = std::make_shared<EvalOptions>();
  CLI::App* command = app.add_subcommand(
      "eval", "Restore a checkpoint on the mpirun ranks and evaluate it on the Fashion-MNIST test split");
  command->add_option("checkpoint", options->checkpoint, "Checkpoint directory")->required();
  command->add_option("--samples", options->samples, "Evaluate only the first N test images (all when negative)")
      ->capture_default_str();
  command->add_option("--batch-size", options->batch_size, "Images per forward pass")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  command->add_option("--strategy", options->strategy,
                      "How the ranks read the weights: read-all (each rank reads everything) or "
                      "read-share (each reads 1/N, then broadcast)")
      ->capture_default_str()
      ->check(CLI::IsMember({"read-all", "read-share"}));
  command->add_flag("--json", options->json, "Print one JSON line instead of text");
  command->callback([options] { run_eval(*options); });
}

}  // namespace cli
}  // namespace mto
