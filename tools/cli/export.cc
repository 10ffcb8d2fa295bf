// mto export: restores a quantized checkpoint on the mpirun ranks and writes it as a
// deployable checkpoint: real low-bit weights and their scales under Model Optimizer's
// unified Hugging Face names, hf_quant_config.json and config.json, each rank writing its
// own slices in parallel.
#include <chrono>
#include <filesystem>
#include <iostream>
#include <memory>

#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "modes/quantization/deploy.h"
#include "opt/checkpoint.h"
#include "opt/conversion.h"
#include "opt/model_like.h"
#include "tools/cli/commands.h"
#include "tools/cli/mesh_option.h"
#include "tools/cli/out_option.h"
#include "tools/cli/progress.h"
#include "tools/zoo/forward.h"

namespace mto {
namespace cli {
namespace {

struct ExportOptions {
  std::string checkpoint;
  int tp = 1;
  std::string out;
};

// The bytes of the regular files in `dir`.
uint64_t directory_bytes(const std::string& dir) {
  uint64_t total = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.is_regular_file()) total += entry.file_size();
  }
  return total;
}

// config.json's description of the model: the zoo model and arguments it was built from.
nlohmann::json model_config(torch::nn::Module& model) {
  const ModeloptState state = modelopt_state(model);
  if (!state.has_model_like()) return nlohmann::json::object();
  const ModelLike like = ModelLike::from_proto(state.model_like());
  return {{"mto_model", like.factory}, {"mto_model_args", like.args}};
}

void run_export(const ExportOptions& options) {
  const std::shared_ptr<Mesh> mesh = join_mesh(options.tp);
  check_out(*mesh->world(), options.out);
  const bool rank0 = mesh->world()->rank() == 0;
  auto start = std::chrono::steady_clock::now();
  ModulePtr model = restore(options.checkpoint);
  const double restore_seconds = seconds_since(start);
  check_model_splits(*mesh, zoo::language_model_context(*model) > 0, options.checkpoint);
  // Measured before the save, which may replace the checkpoint (--out the same directory).
  const double source = rank0 ? static_cast<double>(directory_bytes(options.checkpoint)) : 0;
  start = std::chrono::steady_clock::now();
  model = quantization::save_deployed(model, options.out, {}, model_config(*model));
  const double save_seconds = seconds_since(start);
  if (!rank0) return;
  const auto files = quantization::deployment_files(*model);
  const double written = static_cast<double>(directory_bytes(options.out));
  std::cout << absl::StrFormat(
      "exported %s to %s on %d rank(s) %s: restored in %.2f s, converted and saved in %.2f s (each rank its own "
      "slices)\n%.2f MiB, %.3fx the source checkpoint (%.2f MiB)\n",
      options.checkpoint, options.out, mesh->world()->world_size(), mesh->describe(), restore_seconds, save_seconds,
      written / (1 << 20), written / source, source / (1 << 20));
  if (files.empty()) {
    std::cout << "no layer is quantized: the weights stay in floating point and no hf_quant_config.json is written\n";
    return;
  }
  const nlohmann::json quant = nlohmann::json::parse(files.at("hf_quant_config.json"))["quantization"];
  std::cout << "hf_quant_config.json: quant_algo " << quant["quant_algo"].get<std::string>();
  if (quant.contains("group_size")) std::cout << ", group_size " << quant["group_size"];
  if (quant.contains("exclude_modules")) {
    std::cout << ", exclude_modules [" << absl::StrJoin(quant["exclude_modules"].get<std::vector<std::string>>(), ", ")
              << "]";
  }
  std::cout << "\n";
}

}  // namespace

void add_export_command(CLI::App& app) {
  auto options = std::make_shared<ExportOptions>();
  CLI::App* command = app.add_subcommand(
      "export",
      "Write a quantized checkpoint as a deployable one: real int8 / FP8 E4M3 / packed int4 weights with their "
      "scales under Model Optimizer's unified Hugging Face names, hf_quant_config.json and config.json. The "
      "mpirun ranks restore it on a (dp, tp) mesh and each writes its own slices; mto eval and mto generate "
      "(and mto::restore from C++) read the result, whose outputs equal the fake-quantized model's bit for bit");
  command->add_option("checkpoint", options->checkpoint, "Checkpoint directory of a calibrated quantized model")
      ->required();
  add_tp_option(command, &options->tp);
  command->add_option("--out", options->out, "Directory of the deployable checkpoint to write")->required();
  command->callback([options] { run_export(*options); });
}

}  // namespace cli
}  // namespace mto
