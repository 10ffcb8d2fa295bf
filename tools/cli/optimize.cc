// mto optimize: restores a checkpoint on a data x tensor parallel mesh, applies modes
// (calibration on images or text split over the replicas, pruning search split over the
// ranks) and saves the result.
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <system_error>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "distributed/sharding.h"
#include "distributed/world.h"
#include "modes/nas/search.h"
#include "modes/nas/trace.h"
#include "modes/quantization/auto_quantize.h"
#include "modes/quantization/calibrate.h"
#include "modes/quantization/presets.h"
#include "modes/quantization/quantize.h"
#include "opt/checkpoint.h"
#include "opt/collective.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "tools/cli/commands.h"
#include "tools/cli/evaluate.h"
#include "tools/cli/mesh_option.h"
#include "tools/cli/out_option.h"
#include "tools/cli/progress.h"
#include "tools/cli/validators.h"
#include "tools/data/fashion_mnist.h"
#include "tools/data/text_corpus.h"
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
  int64_t search_candidates = 32;
  uint64_t search_seed = 0;
  int64_t val_samples = 2000;
  std::string search_checkpoint;
  std::string formats = "int4_blockwise,int8,fp8";
  int64_t score_samples = 128;
  std::string score_method = "gradient";
  int tp = 1;
  std::string out;
  // The search options given on the command line, each with the searches it applies to.
  std::vector<std::pair<std::string, std::vector<std::string>>> given_search_options;
};

// One mode to apply and, for fastnas, the constraint of the search that follows it; for
// auto_quantize, the effective bits of its search instead.
struct Step {
  ModeWithConfig mode;
  std::optional<nas::Constraint> constraint;
  std::optional<double> effective_bits = std::nullopt;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read the config file " + path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The modes to apply, from "--mode NAME[:ARG]" and "--config FILE". For quantize, ARG is a
// preset (or inline JSON) naming its config, and its algorithm's calibration follows, as
// the Python mtq.quantize does ("max_calibrate" for "max", unless the next --mode is a
// calibration already). For fastnas, ARG is the constraint of the search that follows
// ("params=0.5"). The one mode given without a preset takes the config file.
std::vector<Step> parse_modes(const OptimizeOptions& options) {
  std::vector<Step> out;
  // auto_quantize makes its config from --formats.
  auto takes_config_file = [](const std::string& spec) {
    return (spec.find(':') == std::string::npos && spec != "auto_quantize") || spec.rfind("fastnas:", 0) == 0;
  };
  const int64_t without_preset = std::count_if(options.modes.begin(), options.modes.end(), takes_config_file);
  if (!options.config_file.empty() && without_preset != 1) {
    throw ConfigError(absl::StrFormat(
        "--config needs exactly one --mode without a preset to apply to (got %d)", without_preset));
  }
  for (size_t i = 0; i < options.modes.size(); ++i) {
    const std::string& spec = options.modes[i];
    const size_t colon = spec.find(':');
    const std::string name = spec.substr(0, colon);
    const std::string argument = colon == std::string::npos ? "" : spec.substr(colon + 1);
    const std::string config_file =
        options.config_file.empty() || !takes_config_file(spec) ? "" : read_text(options.config_file);
    if (name == "kd_loss" || name == "export_student") {
      throw ConfigError(absl::StrFormat("--mode %s: distillation trains the student; use mto train --teacher", name));
    }
    if (name == "fastnas") {
      if (argument.empty()) {
        throw ConfigError("--mode fastnas needs the constraint of its search, e.g. fastnas:params=0.5 or "
                          "fastnas:flops=0.6");
      }
      out.push_back({config_file.empty() ? ModeWithConfig(name) : ModeWithConfig(name, config_file),
                     nas::Constraint::parse(argument)});
      continue;
    }
    if (name == "auto_quantize") {
      double bits = 4.8;
      if (!argument.empty() && (argument.rfind("effective_bits=", 0) != 0 ||
                                !absl::SimpleAtod(argument.substr(std::string("effective_bits=").size()), &bits))) {
        throw ConfigError("--mode " + spec + ": expected auto_quantize:effective_bits=B, e.g. effective_bits=4.8");
      }
      out.push_back({ModeWithConfig(name), std::nullopt, bits});
      continue;
    }
    if (colon != std::string::npos && name != "quantize") {
      throw ConfigError(absl::StrFormat(
          "--mode %s: only quantize takes a preset (%s), fastnas a constraint (fastnas:params=0.5) and "
          "auto_quantize its effective bits (auto_quantize:effective_bits=4.8)", spec,
          absl::StrJoin(quantization::quantize_preset_names(), ", ")));
    }
    const std::string config = colon != std::string::npos ? argument : config_file;
    if (name != "quantize") {
      out.push_back({config.empty() ? ModeWithConfig(name) : ModeWithConfig(name, config), std::nullopt});
      continue;
    }
    std::vector<ModeWithConfig> quantize;
    try {
      quantize = quantization::quantize_modes(config);
    } catch (const ConfigError& e) {
      if (colon != std::string::npos) throw;
      throw ConfigError(absl::StrCat("--config ", options.config_file, ": ", e.what()));
    }
    const bool calibration_follows =
        i + 1 < options.modes.size() &&
        options.modes[i + 1].substr(0, options.modes[i + 1].find(':')).find("_calibrate") != std::string::npos;
    // The calibration given next replaces the max_calibrate that the "max" algorithm adds;
    // another algorithm's calibration (SmoothQuant, AWQ) is what the config asks for, and
    // the next one runs after it.
    if (calibration_follows && quantize.size() > 1 && quantize.back().mode == "max_calibrate") quantize.pop_back();
    for (ModeWithConfig& mode : quantize) out.push_back({std::move(mode), std::nullopt});
  }
  return out;
}

// The data an optimization runs on, for one kind of model: this rank's calibration batches,
// a tiny batch to trace the search space with, and a score on held-out training data.
struct OptimizeData {
  std::string description;  // "1024 images", "512 sequences of 64 bytes"
  // Runs this rank's share of the calibration data through a model.
  quantization::ForwardLoop calibrate_loop;
  // Runs all of the calibration data (batch norms are measured again for each candidate).
  quantization::ForwardLoop calibrate_all;
  nas::DummyForward trace;
  // auto_quantize: the first --score-samples training examples in batches of --batch-size
  // (every rank has them all; auto_quantize deals the batches out).
  quantization::ScoreBatches scoring;
  // Higher is better: accuracy, or minus the validation loss of a language model. Every
  // rank scores alone on all of the held-out data.
  std::function<double(torch::nn::Module&)> score;
  // A score as people read it: "validation accuracy 85.10%".
  std::function<std::string(double)> show_score;
  // How many held-out examples `score` runs on: --val-samples, or all there are if fewer.
  int64_t validation_count = 0;
  // Names those examples and the calibration data, for the search checkpoint.
  std::string validation_fingerprint;
};

// Runs `forward` on consecutive batches of `batch_size` rows of `rows`.
template <typename Forward>
void in_batches(int64_t rows, int64_t batch_size, Forward forward) {
  for (int64_t begin = 0; begin < rows; begin += batch_size) forward(begin, std::min(batch_size, rows - begin));
}

// A function of the examples [begin, begin + count) of a data set.
using RowsFunction = std::function<at::Tensor(torch::nn::Module&, int64_t begin, int64_t count)>;

// auto_quantize's scoring batches: `rows` examples, `batch_size` at a time.
quantization::ScoreBatches score_batches(int64_t rows, int64_t batch_size, RowsFunction loss, RowsFunction logits,
                                         std::string fingerprint) {
  quantization::ScoreBatches batches;
  batches.count = (rows + batch_size - 1) / batch_size;
  auto of_batch = [rows, batch_size](RowsFunction f) {
    return [rows, batch_size, f](torch::nn::Module& m, int64_t index) {
      const int64_t begin = index * batch_size;
      return f(m, begin, std::min(batch_size, rows - begin));
    };
  };
  batches.loss = of_batch(std::move(loss));
  batches.logits = of_batch(std::move(logits));
  batches.fingerprint = absl::StrFormat("%s, batches of %d", fingerprint, batch_size);
  return batches;
}

// Fashion-MNIST: calibration on the first calib_samples training images, the search scored
// on the last val_samples (which calibration and the test set never touch).
OptimizeData fashion_data(const OptimizeOptions& options, const Mesh& mesh, bool searches) {
  // Each rank reads its own copy: one missing or unreadable on one node fails every rank.
  const data::Dataset calibration_set = make_on_every_rank<data::Dataset>(*mesh.world(), [&] {
    return data::load_fashion_mnist(data::Split::kTrain, data::default_fashion_mnist_root(), options.calib_samples);
  });
  const data::Dataset mine = data::shard(calibration_set, mesh.dp()->rank(), mesh.dp()->world_size());
  const int64_t batch_size = options.batch_size;
  OptimizeData out;
  out.description = absl::StrFormat("%d images", calibration_set.size());
  out.calibrate_loop = [mine, batch_size](torch::nn::Module& m) {
    in_batches(mine.size(), batch_size,
               [&](int64_t begin, int64_t count) { zoo::forward(m, mine.images.narrow(0, begin, count)); });
  };
  out.calibrate_all = [calibration_set, batch_size](torch::nn::Module& m) {
    in_batches(calibration_set.size(), batch_size, [&](int64_t begin, int64_t count) {
      zoo::forward(m, calibration_set.images.narrow(0, begin, count));
    });
  };
  const data::Dataset scoring =
      data::load_fashion_mnist(data::Split::kTrain, data::default_fashion_mnist_root(), options.score_samples);
  out.scoring = score_batches(
      scoring.size(), batch_size,
      [scoring](torch::nn::Module& m, int64_t begin, int64_t count) {
        return at::cross_entropy_loss(zoo::forward(m, scoring.images.narrow(0, begin, count)),
                                      scoring.labels.narrow(0, begin, count));
      },
      [scoring](torch::nn::Module& m, int64_t begin, int64_t count) {
        return zoo::forward(m, scoring.images.narrow(0, begin, count));
      },
      absl::StrFormat("Fashion-MNIST: calibration on %d, scoring on %d", calibration_set.size(), scoring.size()));
  const at::Tensor trace_input = calibration_set.images.narrow(0, 0, std::min<int64_t>(2, calibration_set.size()));
  out.trace = [trace_input](torch::nn::Module& m) { return zoo::forward(m, trace_input); };
  out.show_score = [](double score) { return absl::StrFormat("validation accuracy %.2f%%", 100 * score); };
  if (searches) {
    const data::Dataset train = data::load_fashion_mnist(data::Split::kTrain, data::default_fashion_mnist_root(), -1);
    const int64_t count = std::min(options.val_samples, train.size());
    out.validation_count = count;
    out.validation_fingerprint = absl::StrFormat("fashion-mnist: the last %d training images in batches of %d, "
                                                 "batch norms measured on %s",
                                                 count, batch_size, out.description);
    data::Dataset validation{train.images.narrow(0, train.size() - count, count),
                             train.labels.narrow(0, train.size() - count, count)};
    std::shared_ptr<Communicator> alone = mesh.world()->split(mesh.world()->rank(), 0);
    out.score = [validation, alone, batch_size](torch::nn::Module& m) {
      return evaluate(m, validation, *alone, batch_size, /*show_progress=*/false).accuracy;
    };
  }
  return out;
}

// The text corpus: calibration on the first calib_samples training sequences (split over
// the data-parallel ranks), the search scored on the last val_samples.
OptimizeData text_data(const OptimizeOptions& options, const Mesh& mesh, int64_t context, bool searches) {
  // Each rank reads its own copy: one missing or unreadable on one node fails every rank.
  const data::TextCorpus corpus =
      make_on_every_rank<data::TextCorpus>(*mesh.world(), [] { return data::load_text_corpus(); });
  const at::Tensor calibration_set = data::corpus_windows(corpus.train, "training", context, options.calib_samples);
  const Range range = split_range(calibration_set.size(0), mesh.dp()->rank(), mesh.dp()->world_size());
  const at::Tensor mine = calibration_set.narrow(0, range.begin, range.size());
  const int64_t batch_size = options.batch_size;
  auto run = [batch_size, context](torch::nn::Module& m, const at::Tensor& windows) {
    in_batches(windows.size(0), batch_size, [&](int64_t begin, int64_t count) {
      zoo::forward(m, windows.narrow(0, begin, count).narrow(1, 0, context).to(at::kLong));
    });
  };
  OptimizeData out;
  out.description = absl::StrFormat("%d sequences of %d bytes", calibration_set.size(0), context);
  out.calibrate_loop = [run, mine](torch::nn::Module& m) { run(m, mine); };
  out.calibrate_all = [run, calibration_set](torch::nn::Module& m) { run(m, calibration_set); };
  const at::Tensor scoring = data::corpus_windows(corpus.train, "training", context, options.score_samples);
  out.scoring = score_batches(
      scoring.size(0), batch_size,
      [scoring](torch::nn::Module& m, int64_t begin, int64_t count) {
        return language_model_loss(m, scoring.narrow(0, begin, count));
      },
      [scoring, context](torch::nn::Module& m, int64_t begin, int64_t count) {
        return zoo::forward(m, scoring.narrow(0, begin, count).narrow(1, 0, context).to(at::kLong));
      },
      absl::StrFormat("fortunes: calibration on %d, scoring on %d windows of %d", calibration_set.size(0),
                      scoring.size(0), context));
  const at::Tensor trace_input = calibration_set.narrow(0, 0, std::min<int64_t>(2, calibration_set.size(0)))
                                     .narrow(1, 0, context)
                                     .to(at::kLong);
  out.trace = [trace_input](torch::nn::Module& m) { return zoo::forward(m, trace_input); };
  out.show_score = [](double score) { return absl::StrFormat("validation loss %.4f", -score); };
  if (searches) {
    const at::Tensor all = data::corpus_windows(corpus.train, "training", context);
    const int64_t count = std::min(options.val_samples, all.size(0));
    out.validation_count = count;
    out.validation_fingerprint = absl::StrFormat("fortunes: the last %d windows of %d bytes in batches of %d", count,
                                                 context, batch_size);
    const at::Tensor validation = all.narrow(0, all.size(0) - count, count);
    std::shared_ptr<Communicator> alone = mesh.world()->split(mesh.world()->rank(), 0);
    out.score = [validation, alone, batch_size](torch::nn::Module& m) {
      return -evaluate_language_model(m, validation, *alone, batch_size, /*show_progress=*/false).loss;
    };
  }
  return out;
}

// Makes the directory of --search-checkpoint, where the search's files go, on rank 0 or on
// every rank (`every_rank`: each writes its own file there, and their file systems may
// differ); one that cannot be made fails every rank, naming the option. Collective over
// `world`.
void make_search_checkpoint_dir(Communicator& world, const std::string& dir, bool every_rank) {
  run_on_every_rank(world, [&] {
    if (!every_rank && world.rank() != 0) return;
    std::error_code error;
    std::filesystem::create_directories(dir, error);
    if (error) throw ConfigError(absl::StrFormat("--search-checkpoint %s: cannot create it: %s", dir, error.message()));
  });
}

// Searches the subnet of the fastnas model `model` with the best score on held-out data
// within `constraint`, the candidates split over the ranks; prints what it found.
void run_search(const ModulePtr& model, const nas::Constraint& constraint, const OptimizeData& data,
                const OptimizeOptions& options, const std::shared_ptr<Communicator>& comm) {
  nas::SearchOptions search;
  search.constraint = constraint;
  search.num_candidates = options.search_candidates;
  search.seed = options.search_seed;
  search.communicator = comm;
  search.score = data.score;
  search.calibrate_loop = data.calibrate_all;
  search.data_fingerprint = data.validation_fingerprint;
  if (!options.search_checkpoint.empty()) {
    make_search_checkpoint_dir(*comm, options.search_checkpoint, /*every_rank=*/true);
    search.checkpoint = absl::StrFormat("%s/search-rank-%d.json", options.search_checkpoint, comm->rank());
  }
  const double full_score = search.score(*model);
  const auto start = std::chrono::steady_clock::now();
  const nas::SearchResult result = nas::search(model, search);
  const double seconds = seconds_since(start);
  if (comm->rank() != 0) return;
  std::vector<std::string> widths;
  for (const nas::LayerWidth& entry : result.subnet) widths.push_back(absl::StrFormat("%s=%d", entry.layer(), entry.width()));
  std::cout << absl::StrFormat(
                   "searched %d candidates within %s on %d rank(s) in %.2f s (rank 0 scored %d%s)\n"
                   "best subnet: %s; %d of %d parameters%s; %s (full model: %s) on the last %d training "
                   "examples\n",
                   result.candidates, constraint.to_string(), comm->world_size(), seconds, result.scored_here,
                   result.resumed ? absl::StrFormat(", %d from its checkpoint", result.resumed) : "",
                   absl::StrJoin(widths, " "), result.params, result.full_params,
                   // The fraction is of what the constraint bounds.
                   constraint.kind == nas::Constraint::Kind::kParams
                       ? absl::StrFormat(" (%.3f of the parameters)", result.fraction)
                       : absl::StrFormat(", %.3f of the multiply-accumulates", result.fraction),
                   data.show_score(result.score), data.show_score(full_score), data.validation_count)
            << std::flush;
}

// Searches a format per layer within `effective_bits` (auto_quantize), applies the choice
// and prints it.
ModulePtr run_auto_quantize(ModulePtr model, double effective_bits, const OptimizeData& data,
                            const OptimizeOptions& options, const RuntimeContext& runtime, const Mesh& mesh) {
  quantization::AutoQuantizeOptions search;
  search.formats = absl::StrSplit(options.formats, ',', absl::SkipEmpty());
  search.effective_bits = effective_bits;
  search.method = options.score_method == "kl_div" ? quantization::ScoreMethod::kKlDiv
                                                   : quantization::ScoreMethod::kGradient;
  search.score = data.scoring;
  search.verbose = true;
  search.context = runtime;
  if (!options.search_checkpoint.empty()) {
    // Rank 0 keeps the checkpoint.
    make_search_checkpoint_dir(*mesh.world(), options.search_checkpoint, /*every_rank=*/false);
    search.checkpoint = options.search_checkpoint + "/auto_quantize.search";
  }
  const auto start = std::chrono::steady_clock::now();
  auto [quantized, result] = quantization::auto_quantize(model, search);
  const double seconds = seconds_since(start);
  if (mesh.world()->rank() != 0) return quantized;
  const std::string memory =
      result.peak_extra_bytes < 0
          ? "peak extra memory not measured (/proc/self/clear_refs is not writable)"
          : absl::StrFormat("peak extra memory %.1f MiB per rank", result.peak_extra_bytes / 1048576.0);
  std::cout << absl::StrFormat(
      "auto_quantize: effective bits %.3f within %g over %d linear layers, scored on %d %s (%d batches, %d from the "
      "search checkpoint) over %d replica(s) in %.2f s, %s (%s score: %s)\n",
      result.effective_bits, effective_bits, result.layers.size(), options.score_samples,
      zoo::language_model_context(*model) > 0 ? "sequences" : "images", data.scoring.count, result.batches_resumed,
      mesh.dp_size(), seconds, memory, options.score_method,
      search.method == quantization::ScoreMethod::kGradient
          ? "sum over the batches of (dLoss/dY * (Y_format - Y))^2"
          : "sum over the batches of KL(p_float || p_format), one layer quantized at a time");
  if (!result.excluded.empty()) {
    std::cout << "left in floating point (convolutions, and layers a candidate format does not quantize): "
              << absl::StrJoin(result.excluded, ", ") << "\n";
  }
  // One column per format, as wide as its heading ("int4_blockwise (4 bit)").
  std::cout << absl::StrFormat("%-24s %-16s", "layer", "choice");
  std::vector<int> widths;
  for (size_t f = 0; f < result.formats.size(); ++f) {
    const std::string heading = absl::StrFormat("%s (%d bit)", result.formats[f], result.bits[f]);
    widths.push_back(std::max<int>(16, heading.size()));
    std::cout << absl::StrFormat(" %*s", widths.back(), heading);
  }
  std::cout << "\n";
  for (const quantization::AutoQuantizeLayer& layer : result.layers) {
    std::cout << absl::StrFormat("%-24s %-16s", layer.name, result.formats[layer.chosen]);
    for (size_t f = 0; f < layer.scores.size(); ++f) {
      std::cout << absl::StrFormat(" %*.4e", f < widths.size() ? widths[f] : 16, layer.scores[f]);
    }
    std::cout << "\n";
  }
  std::cout << std::flush;
  return quantized;
}

// Refuses a search option that no --mode runs a search for: it would be ignored.
void check_search_options(const OptimizeOptions& options, const std::vector<Step>& steps) {
  for (const auto& given : options.given_search_options) {
    const std::vector<std::string>& searches = given.second;
    const bool used = std::any_of(steps.begin(), steps.end(), [&](const Step& step) {
      return (step.constraint || step.effective_bits) &&
             std::find(searches.begin(), searches.end(), step.mode.mode) != searches.end();
    });
    if (used) continue;
    throw ConfigError(absl::StrFormat("%s applies to the search of %s, and no --mode runs one", given.first,
                                      absl::StrJoin(searches, " or ")));
  }
}

void run_optimize(const OptimizeOptions& options) {
  const std::shared_ptr<Mesh> mesh = join_mesh(options.tp);
  // Rank 0 decides, for the ranks' file systems may see the paths differently.
  run_on_every_rank(*mesh->world(), [&] {
    if (mesh->world()->rank() != 0 || options.search_checkpoint.empty()) return;
    if (!is_within(options.search_checkpoint, options.out)) return;
    throw ConfigError(absl::StrFormat(
        "--search-checkpoint %s is --out %s or lies inside it: the save would replace the search's files; give "
        "them two separate directories",
        options.search_checkpoint, options.out));
  });
  check_out(*mesh->world(), options.out);
  const std::shared_ptr<Communicator>& comm = mesh->world();
  const bool rank0 = comm->rank() == 0;
  const std::vector<Step> steps = parse_modes(options);
  check_search_options(options, steps);
  auto start = std::chrono::steady_clock::now();
  ModulePtr model = restore(options.checkpoint);
  const double restore_seconds = seconds_since(start);
  check_model_splits(*mesh, zoo::language_model_context(*model) > 0, options.checkpoint);

  const bool searches =
      std::any_of(steps.begin(), steps.end(), [](const Step& step) { return step.constraint.has_value(); });
  const int64_t context = zoo::language_model_context(*model);
  const OptimizeData data =
      context > 0 ? text_data(options, *mesh, context, searches) : fashion_data(options, *mesh, searches);
  // Calibration statistics are reduced over the replicas; a split layer's over its tp group.
  RuntimeContext runtime;
  runtime.set(quantization::kForwardLoop, data.calibrate_loop);
  runtime.set(nas::kDummyForward, data.trace);
  runtime.set_mesh(mesh);

  for (const auto* axis : {&comm, &mesh->dp(), &mesh->tp()}) (*axis)->reset_stats();
  start = std::chrono::steady_clock::now();
  for (const Step& step : steps) {
    if (step.effective_bits) {
      model = run_auto_quantize(model, *step.effective_bits, data, options, runtime, *mesh);
      continue;
    }
    model = apply_mode(model, ModeList({step.mode}), nullptr, std::nullopt, runtime);
    if (step.constraint) run_search(model, *step.constraint, data, options, comm);
  }
  const double apply_seconds = seconds_since(start);
  // The world's and the replicas' collectives are the modes' own syncs; the tensor-parallel
  // group's include the forward passes' all-reduces.
  const CommunicatorStats stats{comm->stats().collectives + mesh->dp()->stats().collectives,
                                comm->stats().bytes + mesh->dp()->stats().bytes};
  const CommunicatorStats tp_stats = mesh->tp()->stats();

  start = std::chrono::steady_clock::now();
  save(*model, options.out);
  const double save_seconds = seconds_since(start);
  if (rank0) {
    std::vector<std::string> names;
    for (const Step& step : steps) names.push_back(step.mode.mode);
    // Calibrations, and the searches (which measure each candidate on the calibration data).
    const bool uses_data = std::any_of(steps.begin(), steps.end(), [](const Step& step) {
      return absl::StrContains(step.mode.mode, "calibrate") || step.constraint || step.effective_bits;
    });
    std::cout << absl::StrFormat("restored %s in %.2f s\n", options.checkpoint, restore_seconds)
              << absl::StrFormat("applied %s on %d rank(s) %s in %.2f s (%s%d "
                                 "collective(s), %d bytes%s)\n",
                                 absl::StrJoin(names, " + "), comm->world_size(), mesh->describe(), apply_seconds,
                                 uses_data ? absl::StrCat("calibration over ", data.description, "; ") : "",
                                 stats.collectives, stats.bytes,
                                 mesh->tp_size() == 1 ? ""
                                                      : absl::StrFormat("; the tensor-parallel group %d, %d bytes, "
                                                                        "forward passes included",
                                                                        tp_stats.collectives, tp_stats.bytes))
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
                      "A mode to apply, in order: NAME, quantize:PRESET (presets: " +
                          absl::StrJoin(quantization::quantize_preset_names(), ", ") +
                          "), fastnas:params=F or fastnas:flops=F (search the best subnet within that "
                          "fraction), export_nas, sparse_magnitude, export_sparse, auto_quantize:effective_bits=B "
                          "(a format per layer from --formats within B bits per weight on average)")
      ->required();
  command->add_option("--config", options->config_file,
                      "JSON config (the Python original's form) of the one --mode given without a preset");
  add_tp_option(command, &options->tp);
  command->add_option("--calib-samples", options->calib_samples,
                      "Calibrate on the first N training images or sequences, split over the data-parallel ranks "
                      "(all when negative)")
      ->capture_default_str()
      ->check(sample_count());
  command->add_option("--batch-size", options->batch_size,
                      "Images or sequences per forward pass of the calibration, the search and the scoring")
      ->capture_default_str()
      ->check(positive());
  command->add_option("--search-candidates", options->search_candidates,
                      "fastnas: subnets to score, split over the ranks")
      ->capture_default_str()
      ->check(positive());
  command->add_option("--search-seed", options->search_seed, "fastnas: seed of the random candidates")
      ->capture_default_str()
      ->check(non_negative());
  command->add_option("--val-samples", options->val_samples,
                      "fastnas: score candidates on the last N training images or sequences")
      ->capture_default_str()
      ->check(positive());
  command->add_option("--search-checkpoint", options->search_checkpoint,
                      "fastnas and auto_quantize: directory of search checkpoints (fastnas: one per rank; "
                      "auto_quantize: one, kept by rank 0); an interrupted search resumes, auto_quantize's on any "
                      "number of ranks");
  command->add_option("--formats", options->formats,
                      "auto_quantize: the candidate formats, comma-separated (any quantize preset)")
      ->capture_default_str();
  command->add_option("--score-samples", options->score_samples,
                      "auto_quantize: score on the first N training images or sequences, in batches of "
                      "--batch-size dealt out over the data-parallel ranks")
      ->capture_default_str()
      ->check(positive());
  command->add_option("--score-method", options->score_method,
                      "auto_quantize: gradient (the loss's sensitivity to each layer's output) or kl_div (the "
                      "change of the output distribution, one layer quantized at a time)")
      ->capture_default_str()
      ->check(CLI::IsMember({"gradient", "kl_div"}));
  command->add_option("--out", options->out, "Checkpoint directory to write")->required();
  const std::vector<std::pair<CLI::Option*, std::vector<std::string>>> search_options = {
      {command->get_option("--search-candidates"), {"fastnas"}},
      {command->get_option("--search-seed"), {"fastnas"}},
      {command->get_option("--val-samples"), {"fastnas"}},
      {command->get_option("--search-checkpoint"), {"fastnas", "auto_quantize"}},
      {command->get_option("--formats"), {"auto_quantize"}},
      {command->get_option("--score-samples"), {"auto_quantize"}},
      {command->get_option("--score-method"), {"auto_quantize"}}};
  command->callback([options, search_options] {
    for (const auto& [option, searches] : search_options) {
      if (option->count() > 0) options->given_search_options.emplace_back(option->get_name(), searches);
    }
    run_optimize(*options);
  });
}

}  // namespace cli
}  // namespace mto
