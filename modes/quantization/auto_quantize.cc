#include "modes/quantization/auto_quantize.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <memory>
#include <optional>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "distributed/tensor_slice.h"
#include "modes/quantization/multiple_choice_knapsack.h"
#include "modes/quantization/presets.h"
#include "modes/quantization/quantize.h"
#include "modes/quantization/quantize_config.h"
#include "modes/quantization/quantized_model.h"
#include "modes/quantization/tensor_quantizer.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/nn/linear.h"

namespace mto {
namespace quantization {
namespace {

constexpr char kInputProbe[] = "auto_quantize_input_probe";
constexpr char kOutputProbe[] = "auto_quantize_output_probe";
constexpr int kNoneBits = 16;

// A candidate format: its name, its parsed config and the bits its weights count for.
struct Format {
  std::string name;
  QuantizeConfig config;
  int bits = kNoneBits;
};

QuantizerAttributes resolve(const Format& format, const std::string& layer, bool weight) {
  return resolve_attributes(format.config, absl::StrCat(layer.empty() ? "" : layer + ".",
                                                        weight ? "weight_quantizer" : "input_quantizer"),
                            "nn.Linear", default_quantizer_attributes(weight ? nn::Slot::kWeight : nn::Slot::kInput));
}

int bits_of(const QuantizerAttributes& a) {
  return a.exponent_bits() > 0 ? a.exponent_bits() + a.mantissa_bits() + 1 : a.num_bits();
}

// Model Optimizer's count: the fewest bits of any enabled quantizer of the format.
Format parse_format(const std::string& name) {
  Format format;
  format.name = name;
  parse_quantize_config(quantize_preset(name), &format.config);
  if (format.config.algorithm() != "max") {
    throw ConfigError(absl::StrCat("auto_quantize: format '", name, "' calibrates with '", format.config.algorithm(),
                                   "'; auto_quantize takes formats calibrated with max (int8, fp8, int4_blockwise)"));
  }
  for (const bool weight : {true, false}) {
    const QuantizerAttributes a = resolve(format, "layer", weight);
    if (a.enable()) format.bits = std::min(format.bits, bits_of(a));
  }
  return format;
}

// What the probes of one layer keep: its candidates' quantizers, the input's amax while
// calibrating, the last input while scoring, and the scores.
struct LayerProbe {
  std::string name;
  nn::LinearImpl* layer = nullptr;
  std::vector<std::shared_ptr<TensorQuantizerImpl>> weight_quantizers, input_quantizers;
  bool calibrating = true;
  at::Tensor input_amax;
  at::Tensor input;
  std::vector<double> scores;
};

// In the input slot: records the input's amax (calibrating) or the input (scoring).
class InputProbeImpl : public nn::TransformImpl {
 public:
  explicit InputProbeImpl(LayerProbe* probe) : probe_(probe) {}
  at::Tensor forward(const at::Tensor& x) override {
    if (probe_->calibrating) {
      const at::Tensor amax = x.detach().abs().max().to(at::kFloat);
      probe_->input_amax = probe_->input_amax.defined() ? at::max(probe_->input_amax, amax) : amax;
    } else {
      probe_->input = x.detach();
    }
    return x;
  }

 private:
  LayerProbe* probe_;
};

// In the output slot: while scoring, the change each candidate makes to the output, and a
// hook that adds sum((dLoss/dY * change)^2) to its score when the loss back-propagates.
class OutputProbeImpl : public nn::TransformImpl {
 public:
  explicit OutputProbeImpl(LayerProbe* probe) : probe_(probe) {}
  at::Tensor forward(const at::Tensor& y) override {
    if (probe_->calibrating || !y.requires_grad()) return y;
    auto changes = std::make_shared<std::vector<at::Tensor>>();
    {
      torch::NoGradGuard no_grad;
      const at::Tensor reference = y.detach();
      const at::Tensor weight = probe_->layer->weight.detach();
      for (size_t f = 0; f < probe_->weight_quantizers.size(); ++f) {
        const at::Tensor quantized = at::linear(probe_->input_quantizers[f]->forward(probe_->input),
                                                probe_->weight_quantizers[f]->forward(weight), probe_->layer->bias);
        changes->push_back(quantized - reference);
      }
    }
    LayerProbe* probe = probe_;
    y.register_hook([probe, changes](const at::Tensor& grad) {
      for (size_t f = 0; f < changes->size(); ++f) {
        probe->scores[f] += (grad.detach() * (*changes)[f]).clamp(-1e10, 1e10).square().sum().item<double>();
      }
      return grad;
    });
    return y;
  }

 private:
  LayerProbe* probe_;
};

// The searched layers of `model` and the ones a format leaves unquantized.
std::vector<std::unique_ptr<LayerProbe>> searched_layers(torch::nn::Module& model, const std::vector<Format>& formats,
                                                         std::vector<std::string>* excluded) {
  std::vector<std::unique_ptr<LayerProbe>> out;
  for (const nn::NamedDynamicLayer& entry : nn::named_dynamic_layers(model)) {
    auto* linear = dynamic_cast<nn::LinearImpl*>(entry.layer);
    if (linear == nullptr) continue;
    if (const auto* split = dynamic_cast<const SplitModule*>(entry.layer); split && split->split_group()->world_size() > 1) {
      throw ApplyModeError(absl::StrCat("auto_quantize: layer '", entry.name, "' is split over ",
                                        split->split_group()->world_size(),
                                        " tensor-parallel ranks; auto_quantize runs at tp = 1 for now"));
    }
    if (!entry.layer->transform_names(nn::Slot::kWeight).empty()) {
      throw ApplyModeError(absl::StrCat("auto_quantize: layer '", entry.name, "' transforms its weight (",
                                        absl::StrJoin(entry.layer->transform_names(nn::Slot::kWeight), ", "),
                                        "); auto_quantize searches float layers"));
    }
    auto probe = std::make_unique<LayerProbe>();
    probe->name = entry.name;
    probe->layer = linear;
    bool searched = true;
    for (const Format& format : formats) {
      const QuantizerAttributes weight = resolve(format, entry.name, true);
      const QuantizerAttributes input = resolve(format, entry.name, false);
      if (!weight.enable()) searched = false;
      if (input.enable() && (input.has_axis() || input.block_size() > 0)) {
        throw ConfigError(absl::StrCat("auto_quantize: format '", format.name,
                                       "' quantizes inputs per channel or per block; auto_quantize takes per-tensor "
                                       "inputs"));
      }
      probe->weight_quantizers.push_back(
          std::make_shared<TensorQuantizerImpl>(entry.name + ".weight_quantizer", weight, /*keepdim_amax=*/true));
      probe->input_quantizers.push_back(
          std::make_shared<TensorQuantizerImpl>(entry.name + ".input_quantizer", input, /*keepdim_amax=*/false));
    }
    probe->scores.assign(formats.size(), 0.0);
    if (searched) {
      out.push_back(std::move(probe));
    } else {
      excluded->push_back(entry.name);
    }
  }
  return out;
}

// The quantize config of the choice: everything off but the chosen layers' quantizers.
std::string choice_config(const std::vector<std::unique_ptr<LayerProbe>>& layers, const std::vector<Format>& formats,
                          const std::vector<int>& chosen) {
  nlohmann::ordered_json rules = nlohmann::ordered_json::object();
  rules["default"] = {{"enable", false}};
  for (size_t l = 0; l < layers.size(); ++l) {
    if (chosen[l] >= static_cast<int>(formats.size())) continue;
    const Format& format = formats[chosen[l]];
    for (const bool weight : {true, false}) {
      rules[absl::StrCat(layers[l]->name, weight ? ".weight_quantizer" : ".input_quantizer")] =
          attributes_to_json(resolve(format, layers[l]->name, weight));
    }
  }
  return nlohmann::ordered_json{{"quant_cfg", rules}, {"algorithm", "max"}}.dump();
}

// Takes the probes out of the layers when it goes, whatever happened.
struct ProbeRemover {
  const std::vector<std::unique_ptr<LayerProbe>>& layers;
  ~ProbeRemover() {
    for (const auto& probe : layers) {
      probe->layer->remove_transform(kInputProbe);
      probe->layer->remove_transform(kOutputProbe);
    }
  }
};

// Rethrows this rank's `failure`; else throws ApplyModeError if `failed` (synced over the
// ranks) says another rank failed in `phase`.
void throw_if_failed(const std::exception_ptr& failure, double failed, const char* phase) {
  if (failure) std::rethrow_exception(failure);
  if (failed > 0) {
    throw ApplyModeError(absl::StrCat("auto_quantize: ", phase,
                                      " failed on another rank (its own error says why); no rank went on"));
  }
}

// The bits of candidate `f` (formats, then none).
int result_bits(const std::vector<Format>& formats, size_t f) {
  return f < formats.size() ? formats[f].bits : kNoneBits;
}

// Calibrates every candidate and scores it on every layer (see auto_quantize): the scores,
// [layers x formats] in order, summed over `group`.
at::Tensor measure_scores(torch::nn::Module& model, const std::vector<std::unique_ptr<LayerProbe>>& layers,
                          const std::vector<Format>& formats, const AutoQuantizeOptions& options,
                          const std::shared_ptr<Communicator>& group) {
  for (const auto& probe : layers) {
    probe->layer->add_transform(nn::Slot::kInput, kInputProbe, std::make_shared<InputProbeImpl>(probe.get()));
    probe->layer->add_transform(nn::Slot::kOutput, kOutputProbe, std::make_shared<OutputProbeImpl>(probe.get()));
  }
  const ProbeRemover remover{layers};

  // Calibrate: every candidate's per-tensor input amax is the input's, synced in one MAX
  // whose last value says which rank, if any, failed (the others must not wait for it).
  std::exception_ptr failure;
  try {
    torch::NoGradGuard no_grad;
    options.context.get(kForwardLoop)(model);
  } catch (...) {
    failure = std::current_exception();
  }
  at::Tensor amax = at::zeros({static_cast<int64_t>(layers.size()) + 1}, at::kDouble);
  for (size_t l = 0; l < layers.size(); ++l) {
    if (layers[l]->input_amax.defined()) amax[l] = layers[l]->input_amax.item<double>();
  }
  if (failure) amax[-1] = (group ? group->rank() : 0) + 1;
  if (group) group->all_reduce(amax, ReduceOp::kMax);
  throw_if_failed(failure, amax[-1].item<double>(), "calibration");
  for (size_t l = 0; l < layers.size(); ++l) {
    LayerProbe& probe = *layers[l];
    const at::Tensor weight = probe.layer->weight.detach();
    for (size_t f = 0; f < formats.size(); ++f) {
      probe.weight_quantizers[f]->set_amax(probe.weight_quantizers[f]->compute_amax(weight));
      probe.input_quantizers[f]->set_amax(amax[l].to(at::kFloat));
    }
    probe.calibrating = false;
  }

  // Score: the loss back-propagates through the float model; the hooks add the scores,
  // summed over the ranks in one collective that carries a failing rank as well.
  try {
    options.score_loop(model, [](const at::Tensor& loss) { loss.backward(); });
  } catch (...) {
    failure = std::current_exception();
  }
  for (at::Tensor& p : model.parameters()) p.mutable_grad().reset();
  at::Tensor scores = at::zeros({static_cast<int64_t>(layers.size() * formats.size()) + 1}, at::kDouble);
  for (size_t l = 0; l < layers.size(); ++l) {
    for (size_t f = 0; f < formats.size(); ++f) scores[l * formats.size() + f] = layers[l]->scores[f];
  }
  if (failure) scores[-1] = 1;
  if (group) group->all_reduce(scores, ReduceOp::kSum);
  throw_if_failed(failure, scores[-1].item<double>(), "scoring");
  return scores.narrow(0, 0, scores.size(0) - 1);
}

}  // namespace

std::pair<ModulePtr, AutoQuantizeResult> auto_quantize(ModulePtr model, const AutoQuantizeOptions& options) {
  if (options.formats.empty()) throw ConfigError("auto_quantize: no candidate formats");
  std::vector<Format> formats;
  for (const std::string& name : options.formats) formats.push_back(parse_format(name));
  std::stable_sort(formats.begin(), formats.end(), [](const Format& a, const Format& b) { return a.bits < b.bits; });
  if (!(options.effective_bits >= formats.front().bits && options.effective_bits <= kNoneBits)) {
    throw ConfigError(absl::StrCat("auto_quantize: effective_bits ", options.effective_bits, " is outside [",
                                   formats.front().bits, ", 16] (the fewest bits of a candidate, and no quantization)"));
  }
  if (!quantized_slots(*model).empty()) throw ApplyModeError("auto_quantize: the model is quantized already");
  options.context.get(kForwardLoop);  // fails early, naming the missing loop
  const std::shared_ptr<Communicator> group = options.context.data_parallel_group();

  AutoQuantizeResult result;
  std::vector<std::unique_ptr<LayerProbe>> layers = searched_layers(*model, formats, &result.excluded);
  if (layers.empty()) throw ApplyModeError("auto_quantize: the model has no linear layer to search");
  const at::Tensor scores = measure_scores(*model, layers, formats, options, group);

  // The knapsack: per layer, the formats from fewest bits up, then none; a format never
  // scores worse than one with fewer bits (Model Optimizer's monotone scores; formats of
  // equal bits keep their own).
  std::vector<std::vector<KnapsackOption>> groups;
  uint64_t params_total = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    AutoQuantizeLayer& layer = result.layers.emplace_back();
    layer.name = layers[l]->name;
    layer.params = layers[l]->layer->weight.numel();
    params_total += static_cast<uint64_t>(layer.params);
    std::vector<KnapsackOption>& options_of_layer = groups.emplace_back();
    double best_fewer_bits = std::numeric_limits<double>::infinity();
    double best_these_bits = std::numeric_limits<double>::infinity();
    for (size_t f = 0; f <= formats.size(); ++f) {
      const int bits = result_bits(formats, f);
      if (f > 0 && bits > result_bits(formats, f - 1)) best_fewer_bits = std::min(best_fewer_bits, best_these_bits);
      const double score =
          std::min(f < formats.size() ? scores[l * formats.size() + f].item<double>() : 0.0, best_fewer_bits);
      best_these_bits = f > 0 && bits == result_bits(formats, f - 1) ? std::min(best_these_bits, score) : score;
      options_of_layer.push_back({static_cast<uint64_t>(layer.params) * bits, score});
      layer.scores.push_back(score);
    }
  }
  const uint64_t budget = static_cast<uint64_t>(std::floor(static_cast<double>(params_total) * options.effective_bits));
  const std::optional<std::vector<int>> chosen = solve_multiple_choice_knapsack(groups, budget);
  if (!chosen) {
    throw ApplyModeError(absl::StrCat("auto_quantize: no choice of formats fits effective_bits ",
                                      options.effective_bits));
  }
  uint64_t used = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    result.layers[l].chosen = (*chosen)[l];
    used += groups[l][(*chosen)[l]].cost;
  }
  for (const Format& format : formats) {
    result.formats.push_back(format.name);
    result.bits.push_back(format.bits);
  }
  result.formats.push_back("none");
  result.bits.push_back(kNoneBits);
  result.effective_bits = static_cast<double>(used) / static_cast<double>(params_total);
  result.config = choice_config(layers, formats, *chosen);
  ModulePtr quantized = apply_mode(model, ModeList(quantize_modes(result.config)), nullptr, std::nullopt,
                                   options.context);
  return {quantized, std::move(result)};
}

}  // namespace quantization
}  // namespace mto
