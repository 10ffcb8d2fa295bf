// mto import: reads a plain safetensors set (Hugging Face style: one file, or shards and an
// index; no MANIFEST, no checksums) into a zoo model on any mesh and writes it as an mto
// checkpoint, so that everything after it is checked.
#include <ATen/ATen.h>

#include <chrono>
#include <exception>
#include <iostream>
#include <memory>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "opt/checkpoint.h"
#include "opt/errors.h"
#include "opt/load_safetensors.h"
#include "opt/model_like.h"
#include "tools/cli/commands.h"
#include "tools/cli/mesh_option.h"
#include "tools/cli/out_option.h"
#include "tools/cli/progress.h"
#include "tools/zoo/forward.h"

namespace mto {
namespace cli {
namespace {

struct ImportOptions {
  std::string source;
  std::string model_like;
  std::vector<std::string> renames;
  bool allow_missing = false;
  int tp = 1;
  std::string out;
};

// "gpt" or "gpt:{\"width\": 128}".
ModelLike parse_model_like(const std::string& text) {
  const size_t colon = text.find(':');
  nlohmann::json args = nlohmann::json::object();
  if (colon != std::string::npos) {
    try {
      args = nlohmann::json::parse(text.substr(colon + 1));
    } catch (const nlohmann::json::exception& e) {
      throw ConfigError("--model-like " + text + ": the arguments are not valid JSON: " + e.what());
    }
  }
  return ModelLike(text.substr(0, colon), args);
}

void run_import(const ImportOptions& options) {
  const std::shared_ptr<Mesh> mesh = join_mesh(options.tp);
  check_out(*mesh->world(), options.out);
  const std::shared_ptr<Communicator>& world = mesh->world();
  LoadSafetensorsOptions load;
  for (const std::string& rule : options.renames) {
    const size_t equals = rule.find('=');
    if (equals == std::string::npos) throw ConfigError("--rename " + rule + ": expected FROM=TO, e.g. model.=");
    load.rename_prefixes.emplace_back(rule.substr(0, equals), rule.substr(equals + 1));
  }
  load.allow_missing = options.allow_missing;
  ModulePtr model = parse_model_like(options.model_like).build();
  check_model_splits(*mesh, zoo::language_model_context(*model) > 0, options.model_like);

  // Every rank reads on its own; they agree on the outcome before the collective save.
  auto start = std::chrono::steady_clock::now();
  LoadSafetensorsReport report;
  std::exception_ptr failure;
  try {
    report = load_safetensors(*model, options.source, load);
  } catch (...) {
    failure = std::current_exception();
  }
  at::Tensor failed = at::full({1}, failure ? world->rank() + 1.0 : 0.0, at::kDouble);
  world->all_reduce(failed, ReduceOp::kMax);
  at::Tensor bytes = at::full({1}, static_cast<double>(report.bytes_read), at::kDouble);
  world->all_reduce(bytes, ReduceOp::kSum);
  if (failure) std::rethrow_exception(failure);
  if (failed.item<double>() > 0) {
    throw std::runtime_error(absl::StrFormat("import of %s failed on rank %d (its own error says why)", options.source,
                                          static_cast<int>(failed.item<double>()) - 1));
  }
  const double read_seconds = seconds_since(start);
  const bool rank0 = world->rank() == 0;
  if (rank0) {
    std::cout << absl::StrFormat(
        "read %d tensors of %s from %s on %d rank(s) %s (%.1f MiB in all, each rank its own slices) in %.2f s\n"
        "note: a plain safetensors set has no checksums: only its headers could be checked; the checkpoint "
        "written now checksums every byte\n",
        report.loaded, options.model_like, options.source, world->world_size(), mesh->describe(),
        bytes.item<double>() / (1 << 20), read_seconds);
    if (!report.missing.empty()) {
      std::cout << "left as initialized (--allow-missing): " << absl::StrJoin(report.missing, ", ") << "\n";
    }
    for (const auto& [from, to] : report.unused_renames) {
      std::cout << "warning: --rename " << from << "=" << to << " matched no tensor name of " << options.source << "\n";
    }
  }
  start = std::chrono::steady_clock::now();
  save(*model, options.out);
  if (rank0) std::cout << absl::StrFormat("saved %s in %.2f s\n", options.out, seconds_since(start));
}

}  // namespace

void add_import_command(CLI::App& app) {
  auto options = std::make_shared<ImportOptions>();
  CLI::App* command = app.add_subcommand(
      "import",
      "Read a plain safetensors set (one file, or shards and model.safetensors.index.json) into a zoo model on the "
      "mpirun ranks, each rank reading only its own slices, and save it as a checksummed mto checkpoint");
  command->add_option("source", options->source, "Directory of the safetensors set")->required();
  command
      ->add_option("--model-like", options->model_like,
                   "The model to read into: NAME or NAME:JSON_ARGS, e.g. 'gpt:{\"width\": 128, \"depth\": 2}'")
      ->required();
  command->add_option("--rename", options->renames,
                      "FROM=TO: source names that start with FROM get TO instead (repeatable; 'model.=' strips)");
  command->add_flag("--allow-missing", options->allow_missing,
                    "Leave model tensors the set lacks as initialized instead of failing");
  add_tp_option(command, &options->tp);
  command->add_option("--out", options->out, "Checkpoint directory to write")->required();
  command->callback([options] { run_import(*options); });
}

}  // namespace cli
}  // namespace mto
