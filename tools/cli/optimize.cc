// mto optimize: restores a checkpoint, applies modes (calibration sharded over the ranks)
// and saves the result.
#include <ATen/ATen.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "distributed/world.h"
#include "modes/quantization/calibrate.h"
#include "modes/quantization/presets.h"
#include "modes/quantization/quantize.h"
#include "opt/checkpoint.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "tools/cli/commands.h"
#include "tools/cli/progress.h"
#include "tools/data/fashion_mnist.h"
#include "tools/zoo/forward.h"

namespace mto {
namespace cli {
namespace {

struct OptimizeOptions {
  std::string checkpoint;
  std::vector<std::string> modes;
  std::string config_file;
  int64_t calib_samples = 512;
  int64_t batch_size = 64;
  std::string out;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read the config file " + path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The modes to apply, from "--mode NAME[:PRESET]" and "--config FILE": a preset names the
// config of its mode; the one mode given without a preset takes the config file. After
// "quantize" whose algorithm is "max" comes "max_calibrate", as the Python mtq.quantize
// does, unless the next --mode is a calibration already.
std::vector<ModeWithConfig> parse_modes(const OptimizeOptions& options) {
  std::vector<ModeWithConfig> out;
  int without_preset = 0;
  for (const std::string& spec : options.modes) {
    if (spec.find(':') == std::string::npos) ++without_preset;
  }
  if (!options.config_file.empty() && without_preset != 1) {
    throw ConfigError(absl::StrFormat(
        "--config needs exactly one --mode without a preset to apply to (got %d)", without_preset));
  }
  for (size_t i = 0; i < options.modes.size(); ++i) {
    const std::string& spec = options.modes[i];
    const size_t colon = spec.find(':');
    const std::string name = spec.substr(0, colon);
    if (colon != std::string::npos && name != "quantize") {
      throw ConfigError(absl::StrFormat("--mode %s: only quantize has presets (%s)", spec,
                                        absl::StrJoin(quantization::quantize_preset_names(), ", ")));
    }
    const std::string config = colon != std::string::npos ? spec.substr(colon + 1)
                               : options.config_file.empty() ? std::string()
                                                             : read_text(options.config_file);
    if (name != "quantize") {
      out.push_back(config.empty() ? ModeWithConfig(name) : ModeWithConfig(name, config));
      continue;
    }
    std::vector<ModeWithConfig> quantize = quantization::quantize_modes(config);
    const bool calibration_follows =
        i + 1 < options.modes.size() && options.modes[i + 1].rfind("max_calibrate", 0) == 0;
    if (calibration_follows && quantize.size() > 1) quantize.pop_back();
    out.insert(out.end(), quantize.begin(), quantize.end());
  }
  return out;
}

void run_optimize(const OptimizeOptions& options) {
  auto comm = world();
  const bool rank0 = comm->rank() == 0;
  const std::vector<ModeWithConfig> modes = parse_modes(options);
  auto start = std::chrono::steady_clock::now();
  ModulePtr model = restore(options.checkpoint);
  const double restore_seconds = seconds_since(start);

  // Each rank calibrates on its own contiguous slice of the first calib_samples images.
  const data::Dataset calibration_set =
      data::load_fashion_mnist(data::Split::kTrain, data::default_fashion_mnist_root(), options.calib_samples);
  const data::Dataset calibration = data::shard(calibration_set, comm->rank(), comm->world_size());
  const int64_t batch_size = options.batch_size;
  quantization::ForwardLoop forward_loop = [&calibration, batch_size](torch::nn::Module& m) {
    for (int64_t begin = 0; begin < calibration.size(); begin += batch_size) {
      zoo::forward(m, calibration.images.narrow(0, begin, std::min(batch_size, calibration.size() - begin)));
    }
  };
  ModeKwargs kwargs;
  kwargs.set("forward_loop", forward_loop);
  kwargs.set("communicator", comm);

  comm->reset_stats();
  start = std::chrono::steady_clock::now();
  model = apply_mode(model, ModeList(modes), nullptr, std::nullopt, kwargs);
  const double apply_seconds = seconds_since(start);
  const CommunicatorStats stats = comm->stats();

  start = std::chrono::steady_clock::now();
  save(*model, options.out);
  const double save_seconds = seconds_since(start);
  if (rank0) {
    std::vector<std::string> names;
    for (const ModeWithConfig& mode : modes) names.push_back(mode.mode);
    std::cout << absl::StrFormat("restored %s in %.2f s\n", options.checkpoint, restore_seconds)
              << absl::StrFormat("applied %s on %d rank(s) in %.2f s (calibration over %d images; %d "
                                 "collective(s), %d bytes)\n",
                                 absl::StrJoin(names, " + "), comm->world_size(), apply_seconds,
                                 calibration_set.size(),
                                 stats.collectives, stats.bytes)
              << absl::StrFormat("saved %s in %.2f s\n", options.out, save_seconds);
  }
}

}  // namespace

void add_optimize_command(CLI::App& app) {
  auto options = std::make_shared<OptimizeOptions>();
  CLI::App* command = app.add_subcommand(
      "optimize", "Restore a checkpoint, apply modes (calibration sharded over the ranks) and save");
  command->add_option("checkpoint", options->checkpoint, "Checkpoint directory to restore")->required();
  command->add_option("--mode", options->modes,
                      "A mode to apply, in order: NAME or NAME:PRESET, e.g. quantize:int8 (presets: " +
                          absl::StrJoin(quantization::quantize_preset_names(), ", ") + ")")
      ->required();
  command->add_option("--config", options->config_file,
                      "JSON config (the Python original's form) of the one --mode given without a preset");
  command->add_option("--calib-samples", options->calib_samples,
                      "Calibrate on the first N training images, split over the ranks")
      ->capture_default_str();
  command->add_option("--batch-size", options->batch_size, "Calibration batch size")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  command->add_option("--out", options->out, "Checkpoint directory to write")->required();
  command->callback([options] { run_optimize(*options); });
}

}  // namespace cli
}  // namespace mto
