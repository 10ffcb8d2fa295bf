#include "modes/quantization/auto_quantize.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "distributed/mesh.h"
#include "distributed/tensor_slice.h"
#include "modes/quantization/awq_lite.h"
#include "modes/quantization/multiple_choice_knapsack.h"
#include "modes/quantization/presets.h"
#include "modes/quantization/quantize.h"
#include "modes/quantization/quantize_config.h"
#include "modes/quantization/quantization.pb.h"
#include "modes/quantization/quantized_model.h"
#include "modes/quantization/smoothquant.h"
#include "modes/quantization/split_reduction.h"
#include "modes/quantization/tensor_quantizer.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/collective.h"
#include "opt/nn/conv2d.h"
#include "opt/nn/linear.h"
#include "opt/registry.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/checksum.h"
#include "serialization/checksummed_file.h"

namespace mto {
namespace quantization {
namespace {

constexpr char kInputProbe[] = "auto_quantize_input_probe";
constexpr char kOutputProbe[] = "auto_quantize_output_probe";
constexpr int kNoneBits = 16;
constexpr char kCheckpointKind[] = "auto_quantize search checkpoint";

// A candidate format: its name, its parsed config, the bits its weights count for, and its
// calibration: "max", or a smoothing ("smoothquant" with its alpha, "awq_lite" with its
// alpha_step as `smoothing`), as every preset is.
struct Format {
  std::string name;
  QuantizeConfig config;
  int bits = kNoneBits;
  std::string algorithm;
  double smoothing = 0;
};

QuantizerAttributes resolve(const Format& format, const std::string& layer, bool weight) {
  return resolve_attributes(format.config, absl::StrCat(layer.empty() ? "" : layer + ".",
                                                        weight ? "weight_quantizer" : "input_quantizer"),
                            "nn.Linear", default_quantizer_attributes(weight ? nn::Slot::kWeight : nn::Slot::kInput));
}

int bits_of(const QuantizerAttributes& a) {
  return a.exponent_bits() > 0 ? a.exponent_bits() + a.mantissa_bits() + 1 : a.num_bits();
}

// Model Optimizer's count: the fewest bits of any enabled quantizer of the format. The
// calibration's options are read (and checked) as its calibration mode reads them.
Format parse_format(const std::string& name) {
  Format format;
  format.name = name;
  parse_quantize_config(quantize_preset(name), &format.config);
  format.algorithm = format.config.algorithm();
  if (format.algorithm == "smoothquant" || format.algorithm == "awq_lite") {
    const auto descriptor = ModeRegistry::get_from_any(format.algorithm + "_calibrate");
    MessagePtr calibration = descriptor->config_class();
    descriptor->config_from_json(algorithm_json(format.config).dump(), calibration.get());
    format.smoothing = format.algorithm == "smoothquant"
                           ? message_as<SmoothQuantCalibrateConfig>(*calibration, name).alpha()
                           : message_as<AwqLiteCalibrateConfig>(*calibration, name).alpha_step();
  }
  for (const bool weight : {true, false}) {
    const QuantizerAttributes a = resolve(format, "layer", weight);
    if (a.enable()) format.bits = std::min(format.bits, bits_of(a));
  }
  return format;
}

// What the probes of one layer keep: its candidates' quantizers, the input's amax while
// calibrating, the input while scoring, and this batch's scores.
struct LayerProbe {
  enum class Phase { kCalibrating, kGradient, kKlDiv };
  std::string name;
  nn::LinearImpl* layer = nullptr;
  // The weight's parameters, of the whole layer if it is split.
  int64_t params = 0;
  std::vector<std::shared_ptr<TensorQuantizerImpl>> weight_quantizers, input_quantizers;
  // Per candidate, what its smoothing multiplies the weight by along the input features
  // (its quantizers then hold the pre_quant_scale); undefined for max calibration.
  std::vector<at::Tensor> weight_factors;
  // Split over a tensor-parallel group of more than one rank: `split` reports the slices,
  // `tp` is the group. A row-parallel layer (input features split) all-reduces its output,
  // so every rank of the group sees the whole output; a column-parallel one (output
  // features split) sees its own features.
  const SplitModule* split = nullptr;
  Communicator* tp = nullptr;
  bool row_parallel = false;
  Phase phase = Phase::kCalibrating;
  at::Tensor input_amax;
  at::Tensor input;
  // kl_div: the candidate this layer computes its output with; -1 for none (float).
  int substitute = -1;
  std::vector<double> scores;

  // The weight as candidate `f` quantizes it: smoothed, if the candidate smooths.
  at::Tensor weight_of(size_t f) const {
    const at::Tensor w = layer->weight.detach();
    return weight_factors[f].defined() ? w * weight_factors[f].unsqueeze(0) : w;
  }

  // The layer's output on its input `x` (this rank's part of it) with candidate `f`, or in
  // float with f = -1, as the layer computes it: a row-parallel layer sums the ranks' parts.
  at::Tensor output(const at::Tensor& x, int f) const {
    const at::Tensor w = layer->weight.detach();
    const at::Tensor in = f < 0 ? x : input_quantizers[f]->forward(x);
    const at::Tensor weight = f < 0 ? w : weight_quantizers[f]->forward(weight_of(f));
    if (!row_parallel) return at::linear(in, weight, layer->bias);
    at::Tensor sum = at::linear(in, weight);
    tp->all_reduce(sum, ReduceOp::kSum);
    return layer->bias.defined() ? sum + layer->bias : sum;
  }

  // Y_f - Y for every candidate f, with Y the float output: of this rank's output features
  // for a column-parallel layer, of the whole output for a row-parallel one (whose ranks'
  // parts travel in one all-reduce).
  std::vector<at::Tensor> changes(const at::Tensor& x) const {
    const at::Tensor w = layer->weight.detach();
    std::vector<at::Tensor> outputs;
    for (size_t f = 0; f < weight_quantizers.size(); ++f) {
      outputs.push_back(at::linear(input_quantizers[f]->forward(x), weight_quantizers[f]->forward(weight_of(f)),
                                   row_parallel ? at::Tensor() : layer->bias));
    }
    outputs.push_back(at::linear(x, w, row_parallel ? at::Tensor() : layer->bias));
    if (row_parallel) {
      at::Tensor all = at::stack(outputs);
      tp->all_reduce(all, ReduceOp::kSum);
      if (layer->bias.defined()) all = all + layer->bias;
      outputs = all.unbind(0);
    }
    std::vector<at::Tensor> out;
    for (size_t f = 0; f + 1 < outputs.size(); ++f) out.push_back(outputs[f] - outputs.back());
    return out;
  }
};

// In the input slot: records the input's amax (calibrating) or the input (scoring).
class InputProbeImpl : public nn::TransformImpl {
 public:
  explicit InputProbeImpl(LayerProbe* probe) : probe_(probe) {}
  at::Tensor forward(const at::Tensor& x) override {
    if (probe_->phase == LayerProbe::Phase::kCalibrating) {
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

// In the output slot. Gradient: a hook that, when the loss back-propagates, adds
// sum((dLoss/dY * (Y_f - Y))^2) to each candidate f's score, computing Y_f - Y then from the
// input (which autograd keeps anyway), so no candidate's output outlives its layer's
// backward. kl_div: the output of the substituted candidate, if any.
class OutputProbeImpl : public nn::TransformImpl {
 public:
  explicit OutputProbeImpl(LayerProbe* probe) : probe_(probe) {}
  at::Tensor forward(const at::Tensor& y) override {
    LayerProbe* probe = probe_;
    if (probe->phase == LayerProbe::Phase::kKlDiv) {
      return probe->substitute < 0 ? y : probe->output(probe->input, probe->substitute);
    }
    if (probe->phase != LayerProbe::Phase::kGradient) return y;
    // The parameters are frozen while scoring (score_batch): the first layers' outputs need
    // no gradient, and become leaves that do, so that the loss's gradient reaches them.
    at::Tensor out = y.requires_grad() ? y : y.detach().requires_grad_(true);
    out.register_hook([probe, input = probe->input](const at::Tensor& grad) {
      torch::NoGradGuard no_grad;
      const std::vector<at::Tensor> changes = probe->changes(input);
      const at::Tensor g = grad.to(at::kFloat);
      for (size_t f = 0; f < changes.size(); ++f) {
        probe->scores[f] += (g * changes[f].to(at::kFloat)).clamp(-1e10, 1e10).square().sum().item<double>();
      }
      return grad;
    });
    return out;
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
    if (linear == nullptr) {
      if (dynamic_cast<nn::Conv2dImpl*>(entry.layer) != nullptr) excluded->push_back(entry.name);
      continue;
    }
    if (!entry.layer->transform_names(nn::Slot::kWeight).empty()) {
      throw ApplyModeError(absl::StrCat("auto_quantize: layer '", entry.name, "' transforms its weight (",
                                        absl::StrJoin(entry.layer->transform_names(nn::Slot::kWeight), ", "),
                                        "); auto_quantize searches float layers"));
    }
    auto probe = std::make_unique<LayerProbe>();
    probe->name = entry.name;
    probe->layer = linear;
    probe->params = linear->weight.numel();
    if (const SplitModule* split = split_over_ranks(entry.layer)) {
      probe->split = split;
      probe->tp = split->split_group().get();
      const std::optional<TensorSlice> slice = split->slice_of("weight", linear->weight);
      probe->row_parallel = slice && slice->dim == 1;
      if (slice) probe->params = std::accumulate(slice->global_shape.begin(), slice->global_shape.end(), int64_t{1},
                                                 std::multiplies<int64_t>());
    }
    bool searched = true;
    for (const Format& format : formats) {
      const QuantizerAttributes weight = resolve(format, entry.name, true);
      const QuantizerAttributes input = resolve(format, entry.name, false);
      if (!weight.enable()) searched = false;
      // The presets' blocks run along the input features. As quantize does, a layer may end in
      // a partial block, but a row-parallel layer's slices must hold whole blocks: a block cut
      // by the split would be quantized as two partial ones.
      if (weight.enable() && weight.block_size() > 0 && probe->row_parallel &&
          linear->weight.size(1) % weight.block_size() != 0) {
        throw ConfigError(absl::StrCat("auto_quantize: format '", format.name, "' quantizes blocks of ",
                                       weight.block_size(), " input features, but layer '", entry.name, "' has ",
                                       linear->weight.size(1), " on this rank (split over ", probe->tp->world_size(),
                                       " tensor-parallel ranks); leave the format out or use a smaller tp"));
      }
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
    probe->weight_factors.resize(formats.size());
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
// ranks: the failing rank + 1, 0 for none) says another rank of `group` failed in `phase`.
void throw_if_failed(const std::exception_ptr& failure, double failed, const Communicator& group, const char* phase) {
  if (failure) std::rethrow_exception(failure);
  if (failed > 0) {
    throw ApplyModeError(absl::StrCat("auto_quantize: ", phase, " failed on rank ", static_cast<int>(failed) - 1,
                                      " of ", group.world_size(), " (its own error says why); no rank went on"));
  }
}

// The bits of candidate `f` (formats, then none).
int result_bits(const std::vector<Format>& formats, size_t f) {
  return f < formats.size() ? formats[f].bits : kNoneBits;
}

const char* method_name(ScoreMethod method) { return method == ScoreMethod::kGradient ? "gradient" : "kl_div"; }

// SplitMix64's finalizer: a 64-bit mix in which every input bit moves every output bit.
uint64_t mix(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Which float model a search checkpoint belongs to, the same however its tensors are split
// over tensor-parallel ranks: per element, a mix of its tensor's name, dtype and global
// shape, its index in the global tensor and its bits, summed modulo 2^64 over the elements
// (so the ranks' parts add up in any order) and over the tp group. A tensor every rank of
// the group holds whole counts on its first rank only.
std::string model_fingerprint(torch::nn::Module& model, Communicator* tp) {
  const bool first = tp == nullptr || tp->rank() == 0;
  uint64_t sum = 0;
  auto add = [&](const std::string& name, const at::Tensor& tensor, const SplitModule* split, const std::string& key) {
    const at::Tensor t = tensor.detach().contiguous();
    const std::optional<TensorSlice> slice = split ? split->slice_of(key, t) : std::nullopt;
    if (!slice && !first) return;
    const std::vector<int64_t> global = slice ? slice->global_shape : t.sizes().vec();
    const std::string head = absl::StrCat(name, " ", c10::toString(t.scalar_type()), " ", absl::StrJoin(global, "x"));
    const uint64_t seed = xxh3_64(head.data(), head.size());
    if (first) sum += mix(seed);
    const int64_t d = slice ? slice->dim : 0;
    int64_t outer = 1, inner = 1;
    for (int64_t i = 0; i < d; ++i) outer *= t.size(i);
    for (int64_t i = d + 1; i < t.dim(); ++i) inner *= t.size(i);
    const int64_t local = t.dim() > 0 ? t.size(d) : 1, whole = t.dim() > 0 ? global[d] : 1;
    const int64_t offset = slice ? slice->offset : 0;
    const size_t width = t.element_size();
    const char* bytes = static_cast<const char*>(t.data_ptr());
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t i = 0; i < local; ++i) {
        const uint64_t row = static_cast<uint64_t>((o * whole + offset + i) * inner);
        for (int64_t k = 0; k < inner; ++k, bytes += width) {
          uint64_t bits = 0;
          std::memcpy(&bits, bytes, std::min<size_t>(width, sizeof(bits)));
          sum += mix(seed ^ mix((row + k) * 0x9e3779b97f4a7c15ULL ^ mix(bits)));
        }
      }
    }
  };
  for (const auto& entry : model.named_modules("", /*include_self=*/true)) {
    const auto* split = dynamic_cast<const SplitModule*>(entry.value().get());
    const std::string prefix = entry.key().empty() ? "" : entry.key() + ".";
    for (const auto& p : entry.value()->named_parameters(/*recurse=*/false)) add(prefix + p.key(), p.value(), split, p.key());
    for (const auto& b : entry.value()->named_buffers(/*recurse=*/false)) add(prefix + b.key(), b.value(), split, b.key());
  }
  if (tp != nullptr) {
    const std::vector<std::string> parts = tp->all_gather(std::string(reinterpret_cast<const char*>(&sum), sizeof(sum)));
    sum = 0;
    for (const std::string& part : parts) {
      uint64_t value = 0;
      std::memcpy(&value, part.data(), sizeof(value));
      sum += value;
    }
  }
  return absl::StrFormat("%016x", sum);
}

using Json = nlohmann::ordered_json;

// A double in a search checkpoint: a JSON number, or "nan" / "inf" / "-inf".
Json exact(double value) {
  if (std::isfinite(value)) return value;
  return std::isnan(value) ? "nan" : (value > 0 ? "inf" : "-inf");
}

double exact_double(const Json& value) {
  if (value.is_number()) return value.get<double>();
  const std::string text = value.get<std::string>();
  if (text == "nan") return std::nan("");
  if (text == "inf" || text == "-inf") return (text == "inf" ? 1 : -1) * std::numeric_limits<double>::infinity();
  throw std::invalid_argument("'" + text + "' is not a number");
}

// The progress of a search, as a search checkpoint holds it: what it is for, the input
// amaxes of the calibration (empty before) and every scored batch's scores.
struct SearchProgress {
  Json identity;  // model, formats, method, layers, batches, data
  std::vector<double> input_amax;
  std::map<int64_t, std::vector<double>> scored;

  std::string serialize() const {
    Json out = identity;
    Json amax = Json::array(), rows = Json::object();
    for (double a : input_amax) amax.push_back(exact(a));
    for (const auto& [batch, scores] : scored) {
      Json& row = rows[std::to_string(batch)] = Json::array();
      for (double v : scores) row.push_back(exact(v));
    }
    out["input_amax"] = amax;
    out["scores"] = rows;
    return out.dump(1);
  }

  // Loads the progress that `text`, read from `path`, holds; throws CheckpointError if it is
  // damaged or belongs to another search.
  void load(const std::string& path, const std::string& text) {
    const std::string start_over = "; delete it to start the search over";
    try {
      const Json in = Json::parse(text);
      for (const auto& [key, expected] : identity.items()) {
        if (!in.contains(key) || in.at(key) != expected) {
          throw CheckpointError(absl::StrCat("auto_quantize: search checkpoint ", path, " was written for ", key, " ",
                                             in.contains(key) ? in.at(key).dump() : "(none)", ", not ",
                                             expected.dump(), start_over));
        }
      }
      const size_t layers = identity.at("layers").size(), formats = identity.at("formats").size();
      const int64_t batches = identity.at("batches").get<int64_t>();
      for (const auto& a : in.at("input_amax")) input_amax.push_back(exact_double(a));
      if (!input_amax.empty() && input_amax.size() != layers) throw std::invalid_argument("input_amax has a bad length");
      for (const auto& [key, row] : in.at("scores").items()) {
        int64_t batch = -1;
        if (!absl::SimpleAtoi(key, &batch) || batch < 0 || batch >= batches || row.size() != layers * formats) {
          throw std::invalid_argument(absl::StrCat("bad scores entry '", key, "'"));
        }
        std::vector<double>& out = scored[batch];
        for (const auto& v : row) out.push_back(exact_double(v));
      }
    } catch (const CheckpointError&) {
      throw;
    } catch (const std::exception& e) {  // the JSON library's errors, and the checks above
      throw CheckpointError(absl::StrCat("auto_quantize: search checkpoint ", path, " is damaged: ", e.what(), start_over));
    }
  }
};

// Reads the search checkpoint on rank 0 into `progress` on every rank; false if there is none.
bool resume(const std::string& path, SearchProgress* progress, Communicator& group) {
  std::string text;
  bool exists = false;
  run_on_every_rank(group, [&] {
    if (group.rank() != 0) return;
    exists = std::filesystem::exists(path);
    if (exists) text = read_checksummed_file(path, kCheckpointKind, kMaxMetadataBytes);
  });
  std::string flag = exists ? "1" : "0";
  group.broadcast(flag, 0);
  exists = flag == "1";
  if (exists) group.broadcast(text, 0);
  if (exists) run_on_every_rank(group, [&] { progress->load(path, text); });
  return exists;
}

// Writes `progress` to the search checkpoint (rank 0), collectively.
void keep(const std::string& path, const SearchProgress& progress, Communicator& group) {
  if (path.empty()) return;
  run_on_every_rank(group, [&] {
    if (group.rank() == 0) write_checksummed_file(path, kCheckpointKind, progress.serialize());
  });
}

// Resets Linux's peak resident-set counter; whether it could.
bool reset_peak_rss() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
  clear.flush();
  return clear.good();
}

// A "Vm...:" line of /proc/self/status in bytes; -1 if missing.
int64_t status_bytes(const std::string& key) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    int64_t kib = 0;
    if (absl::StartsWith(line, key + ":") &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::StripSuffix(line.substr(key.size() + 1), "kB")), &kib)) {
      return kib * 1024;
    }
  }
  return -1;
}

// Calibrates every candidate (per-tensor input amax, max over `group`, synced in one MAX
// whose last value says which rank, if any, failed): the amaxes, per layer.
std::vector<double> calibrate_candidates(torch::nn::Module& model, const std::vector<std::unique_ptr<LayerProbe>>& layers,
                                         const AutoQuantizeOptions& options, Communicator& group) {
  std::exception_ptr failure;
  try {
    torch::NoGradGuard no_grad;
    options.context.get(kForwardLoop)(model);
  } catch (...) {
    failure = std::current_exception();
  }
  // A row-parallel layer's ranks see parts of its input: the amax is their maximum.
  std::vector<at::Tensor> input_amax(layers.size());
  SplitReduction parts;
  for (size_t l = 0; l < layers.size(); ++l) {
    input_amax[l] = layers[l]->input_amax.defined() ? layers[l]->input_amax.reshape({1}) : at::zeros({1}, at::kFloat);
    if (layers[l]->row_parallel) parts.add(layers[l]->layer, &input_amax[l], ReduceOp::kMax);
  }
  parts.run();
  at::Tensor amax = at::zeros({static_cast<int64_t>(layers.size()) + 1}, at::kDouble);
  for (size_t l = 0; l < layers.size(); ++l) amax[l] = input_amax[l].item<double>();
  if (failure) amax[-1] = group.rank() + 1;
  group.all_reduce(amax, ReduceOp::kMax);
  throw_if_failed(failure, amax[-1].item<double>(), group, "calibration");
  const at::Tensor values = amax.narrow(0, 0, static_cast<int64_t>(layers.size())).contiguous();
  return std::vector<double>(values.data_ptr<double>(), values.data_ptr<double>() + values.numel());
}

// Puts the float weights back and takes the candidate quantizers out of the layers when it
// goes, whatever happened.
struct SmoothingScope {
  const std::vector<std::unique_ptr<LayerProbe>>& layers;
  std::vector<at::Tensor> float_weights;
  ~SmoothingScope() {
    torch::NoGradGuard no_grad;
    for (size_t l = 0; l < layers.size(); ++l) {
      layers[l]->layer->remove_transform("input_quantizer");
      layers[l]->layer->remove_transform("weight_quantizer");
      if (l < float_weights.size()) layers[l]->layer->weight.detach().copy_(float_weights[l]);
    }
  }
};

// Calibrates the candidates of every smoothing format (SmoothQuant, AWQ-lite) as its own
// calibration mode does, on all searched layers at once: the candidates' quantizers go into
// the layers' slots, the calibration runs over the forward loop (collective over `group` and
// the tensor-parallel groups), and the quantizers come out again holding their amax and
// pre_quant_scale; the factors the smoothing multiplied the weights by are kept, and the
// float weights (copied for the while) are put back.
void calibrate_smoothing_formats(torch::nn::Module& model, const std::vector<std::unique_ptr<LayerProbe>>& layers,
                                 const std::vector<Format>& formats, const AutoQuantizeOptions& options,
                                 Communicator& group) {
  const ForwardLoop& loop = options.context.get(kForwardLoop);
  for (size_t f = 0; f < formats.size(); ++f) {
    if (formats[f].algorithm == "max") continue;
    SmoothingScope scope{layers, {}};
    for (const auto& probe : layers) {
      scope.float_weights.push_back(probe->layer->weight.detach().clone());
      probe->layer->add_transform(nn::Slot::kInput, "input_quantizer", probe->input_quantizers[f]);
      probe->layer->add_transform(nn::Slot::kWeight, "weight_quantizer", probe->weight_quantizers[f]);
    }
    const std::map<std::string, at::Tensor> factors =
        formats[f].algorithm == "smoothquant"
            ? calibrate_smoothquant(model, &loop, &group, formats[f].smoothing).weight_factors
            : calibrate_awq_lite(model, &loop, &group, formats[f].smoothing).weight_factors;
    for (const auto& probe : layers) {
      const auto factor = factors.find(probe->name);
      if (factor != factors.end()) probe->weight_factors[f] = factor->second;
    }
  }
}

// Gives the layers of `model` that chose a smoothing format that format's calibration, as
// the search found it: the smoothed weight, the pre_quant_scale and the amaxes.
void apply_smoothing(torch::nn::Module& model, const std::vector<std::unique_ptr<LayerProbe>>& layers,
                     const std::vector<int>& chosen) {
  std::map<std::string, std::pair<const LayerProbe*, size_t>> smoothed;
  for (size_t l = 0; l < layers.size(); ++l) {
    const size_t f = static_cast<size_t>(chosen[l]);
    if (f < layers[l]->weight_factors.size() && layers[l]->weight_factors[f].defined()) {
      smoothed[layers[l]->name] = {layers[l].get(), f};
    }
  }
  torch::NoGradGuard no_grad;
  for (const QuantizerSlot& slot : quantizer_slots(model)) {
    const auto found = smoothed.find(slot.layer_name);
    if (found == smoothed.end() || slot.slot == nn::Slot::kOutput) continue;
    const auto& [probe, f] = found->second;
    const bool weight = slot.slot == nn::Slot::kWeight;
    const TensorQuantizerImpl& candidate = weight ? *probe->weight_quantizers[f] : *probe->input_quantizers[f];
    if (weight) slot.weight().detach().mul_(probe->weight_factors[f].unsqueeze(0));
    if (candidate.has_pre_quant_scale()) slot.quantizer()->set_pre_quant_scale(candidate.pre_quant_scale());
    if (candidate.has_amax()) slot.quantizer()->set_amax(candidate.amax());
  }
}

// Turns off requires_grad of every parameter of a model while it lives, and puts it back.
// Scoring needs the gradients of the layers' outputs only: Model Optimizer frees each
// weight's gradient as it comes, and with the parameters frozen none is computed, so a
// model's memory does not grow by its gradients and the caller's .grad stay as they were.
class FrozenParameters {
 public:
  explicit FrozenParameters(torch::nn::Module& model) : parameters_(model.parameters()) {
    for (at::Tensor& p : parameters_) {
      required_.push_back(p.requires_grad());
      p.requires_grad_(false);
    }
  }
  ~FrozenParameters() {
    for (size_t i = 0; i < parameters_.size(); ++i) parameters_[i].requires_grad_(required_[i]);
  }
  FrozenParameters(const FrozenParameters&) = delete;
  FrozenParameters& operator=(const FrozenParameters&) = delete;

 private:
  std::vector<at::Tensor> parameters_;
  std::vector<bool> required_;
};

// The scores of batch `index`, [layers x formats] in order.
std::vector<double> score_batch(torch::nn::Module& model, const std::vector<std::unique_ptr<LayerProbe>>& layers,
                                size_t formats, const AutoQuantizeOptions& options, int64_t index) {
  std::vector<double> row;
  if (options.method == ScoreMethod::kGradient) {
    for (const auto& probe : layers) probe->scores.assign(formats, 0.0);
    {
      const FrozenParameters frozen(model);
      options.score.loss(model, index).backward();
    }
    // A column-parallel layer's ranks scored their own output features: the score is their
    // sum, in one all-reduce per group (a row-parallel layer's ranks all scored the whole).
    std::vector<at::Tensor> partial(layers.size());
    SplitReduction sums;
    for (size_t l = 0; l < layers.size(); ++l) {
      partial[l] = at::tensor(layers[l]->scores, at::kDouble);
      if (layers[l]->tp && !layers[l]->row_parallel) sums.add(layers[l]->layer, &partial[l], ReduceOp::kSum);
    }
    sums.run();
    for (const at::Tensor& p : partial) row.insert(row.end(), p.data_ptr<double>(), p.data_ptr<double>() + p.numel());
    return row;
  }
  torch::NoGradGuard no_grad;
  const at::Tensor log_p = at::log_softmax(options.score.logits(model, index).to(at::kFloat), -1);
  for (const auto& probe : layers) {
    for (size_t f = 0; f < formats; ++f) {
      probe->substitute = static_cast<int>(f);
      const at::Tensor log_q = at::log_softmax(options.score.logits(model, index).to(at::kFloat), -1);
      probe->substitute = -1;
      // KL(p || q), as F.kl_div(log_q, log_p, reduction="sum", log_target=True).
      row.push_back((log_p.exp() * (log_p - log_q)).sum().item<double>());
    }
  }
  return row;
}

// What measure_scores found: the scores summed over the batches, [layers x formats].
struct Measured {
  std::vector<double> scores;
  int64_t scored_here = 0;
  int64_t resumed = 0;
  int64_t peak_extra_bytes = -1;
};

// Calibrates every candidate and scores it on every layer, resuming from and keeping the
// search checkpoint (see auto_quantize).
// `group` shares the batches; `search` (group, or the mesh's world on a tensor-parallel
// model, `tp` its tp group) keeps the search checkpoint.
Measured measure_scores(torch::nn::Module& model, const std::vector<std::unique_ptr<LayerProbe>>& layers,
                        const std::vector<Format>& formats, const AutoQuantizeOptions& options,
                        Communicator& group, Communicator& search, Communicator* tp) {
  const size_t width = layers.size() * formats.size();
  const int64_t count = options.score.count;
  SearchProgress progress;
  progress.identity["model"] = model_fingerprint(model, tp);
  for (const Format& format : formats) progress.identity["formats"].push_back(format.name);
  progress.identity["method"] = method_name(options.method);
  for (const auto& probe : layers) progress.identity["layers"].push_back(probe->name);
  progress.identity["batches"] = count;
  progress.identity["data"] = options.score.fingerprint;
  Measured out;
  if (!options.checkpoint.empty() && resume(options.checkpoint, &progress, search)) {
    out.resumed = static_cast<int64_t>(progress.scored.size());
  }

  // The smoothing formats first, on the model without probes.
  calibrate_smoothing_formats(model, layers, formats, options, group);
  for (const auto& probe : layers) {
    probe->layer->add_transform(nn::Slot::kInput, kInputProbe, std::make_shared<InputProbeImpl>(probe.get()));
    probe->layer->add_transform(nn::Slot::kOutput, kOutputProbe, std::make_shared<OutputProbeImpl>(probe.get()));
  }
  const ProbeRemover remover{layers};
  if (progress.input_amax.empty()) {
    progress.input_amax = calibrate_candidates(model, layers, options, group);
    keep(options.checkpoint, progress, search);
  }
  // Weight amaxes of the max-calibrated candidates: a split layer's ranks share those that
  // span the split dimension (per tensor; per output channel of a row-parallel layer), as
  // max_calibrate does. The smoothing candidates are calibrated already.
  std::vector<at::Tensor> weight_amax;
  weight_amax.reserve(layers.size() * formats.size());
  SplitReduction shared;
  for (const auto& probe : layers) {
    for (size_t f = 0; f < formats.size(); ++f) {
      if (formats[f].algorithm != "max") {
        weight_amax.emplace_back();
        continue;
      }
      weight_amax.push_back(probe->weight_quantizers[f]->compute_amax(probe->layer->weight.detach()));
      if (probe->split && !probe->split->slice_of("weight_quantizer._amax", weight_amax.back())) {
        shared.add(probe->layer, &weight_amax.back(), ReduceOp::kMax);
      }
    }
  }
  shared.run();
  for (size_t l = 0; l < layers.size(); ++l) {
    LayerProbe& probe = *layers[l];
    for (size_t f = 0; f < formats.size(); ++f) {
      if (formats[f].algorithm != "max") continue;
      probe.weight_quantizers[f]->set_amax(weight_amax[l * formats.size() + f]);
      probe.input_quantizers[f]->set_amax(at::scalar_tensor(progress.input_amax[l], at::kFloat));
    }
    probe.phase = options.method == ScoreMethod::kGradient ? LayerProbe::Phase::kGradient : LayerProbe::Phase::kKlDiv;
  }

  // Score: the batches not scored yet go round-robin over the ranks, a round at a time (one
  // round in all without a checkpoint). Each round's scores travel in one SUM whose rows
  // only their scorer fills (so the sum is exact), with a column marking the rows scored and
  // a last row whose cell r marks rank r failing.
  std::vector<int64_t> pending;
  for (int64_t b = 0; b < count; ++b) {
    if (progress.scored.count(b) == 0) pending.push_back(b);
  }
  const int ranks = group.world_size(), rank = group.rank();
  const size_t round_size = options.checkpoint.empty() ? std::max<size_t>(pending.size(), 1) : ranks;
  const size_t stride = std::max(width + 1, static_cast<size_t>(ranks));
  const bool print = options.verbose && rank == 0;
  const bool measures_memory = reset_peak_rss();
  const int64_t resident_at_start = status_bytes("VmRSS");
  const auto start = std::chrono::steady_clock::now();
  int64_t shown_tenth = -1;
  for (size_t first = 0; first < pending.size(); first += round_size) {
    const size_t size = std::min(round_size, pending.size() - first);
    at::Tensor round = at::zeros({static_cast<int64_t>(size) + 1, static_cast<int64_t>(stride)}, at::kDouble);
    double* rows = round.data_ptr<double>();
    std::exception_ptr failure;
    for (size_t i = rank; i < size && !failure; i += ranks) {
      try {
        const std::vector<double> row = score_batch(model, layers, formats.size(), options, pending[first + i]);
        std::copy(row.begin(), row.end(), rows + i * stride);
        rows[i * stride + width] = 1;
        ++out.scored_here;
      } catch (...) {
        failure = std::current_exception();
      }
    }
    double* failed = rows + size * stride;
    if (failure) failed[rank] = 1;
    group.all_reduce(round, ReduceOp::kSum);
    for (size_t i = 0; i < size; ++i) {
      const double* row = rows + i * stride;
      if (row[width] == 1) progress.scored[pending[first + i]] = std::vector<double>(row, row + width);
    }
    keep(options.checkpoint, progress, search);
    const double* first_failed = std::find(failed, failed + ranks, 1.0);
    throw_if_failed(failure, first_failed == failed + ranks ? 0 : first_failed - failed + 1, group, "scoring");
    const int64_t done = static_cast<int64_t>(progress.scored.size());
    if (print && done * 10 / count != shown_tenth) {
      shown_tenth = done * 10 / count;
      std::cout << absl::StrFormat("auto_quantize: scored %d/%d batches (%s, %d from the checkpoint) in %.1f s\n", done,
                                   count, method_name(options.method), out.resumed,
                                   std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count())
                << std::flush;
    }
  }
  if (measures_memory && resident_at_start >= 0) {
    out.peak_extra_bytes = std::max<int64_t>(status_bytes("VmHWM") - resident_at_start, 0);
  }
  at::Tensor peak = at::scalar_tensor(static_cast<double>(out.peak_extra_bytes), at::kDouble).reshape({1});
  group.all_reduce(peak, ReduceOp::kMax);
  out.peak_extra_bytes = static_cast<int64_t>(peak.item<double>());

  // The sums, batch by batch in order: the same bits whatever rank scored which batch.
  out.scores.assign(width, 0.0);
  for (const auto& [batch, row] : progress.scored) {
    for (size_t k = 0; k < width; ++k) out.scores[k] += row[k];
  }
  return out;
}

}  // namespace

std::pair<ModulePtr, AutoQuantizeResult> auto_quantize(ModulePtr model, const AutoQuantizeOptions& options) {
  if (options.formats.empty()) throw ConfigError("auto_quantize: no candidate formats");
  std::vector<Format> formats;
  for (const std::string& name : options.formats) {
    formats.push_back(parse_format(name));
    for (size_t f = 0; f + 1 < formats.size(); ++f) {
      if (quantize_preset(formats[f].name) != quantize_preset(name)) continue;
      throw ConfigError(formats[f].name == name
                            ? absl::StrCat("auto_quantize: the candidate format '", name, "' is listed twice")
                            : absl::StrCat("auto_quantize: the candidate formats '", formats[f].name, "' and '", name,
                                           "' are the same preset"));
    }
  }
  std::stable_sort(formats.begin(), formats.end(), [](const Format& a, const Format& b) { return a.bits < b.bits; });
  if (!(options.effective_bits >= formats.front().bits && options.effective_bits <= kNoneBits)) {
    throw ConfigError(absl::StrCat("auto_quantize: effective_bits ", options.effective_bits, " is outside [",
                                   formats.front().bits, ", 16] (the fewest bits of a candidate, and no quantization)"));
  }
  if (const std::vector<QuantizerSlot> quantized = quantized_slots(*model); !quantized.empty()) {
    throw ApplyModeError(absl::StrCat("auto_quantize: the model is quantized already (layer '",
                                      quantized.front().layer_name, "' has quantizers); auto_quantize searches a "
                                      "float model"));
  }
  options.context.get(kForwardLoop);  // fails early, naming the missing loop
  if (options.score.count <= 0) throw ConfigError("auto_quantize: options.score has no batches to score on");
  if (!(options.method == ScoreMethod::kGradient ? options.score.loss : options.score.logits)) {
    throw ConfigError(absl::StrCat("auto_quantize: method ", method_name(options.method), " needs options.score.",
                                   options.method == ScoreMethod::kGradient ? "loss" : "logits"));
  }
  const std::shared_ptr<Communicator> group = options.context.data_parallel_group();

  AutoQuantizeResult result;
  std::vector<std::unique_ptr<LayerProbe>> layers = searched_layers(*model, formats, &result.excluded);
  if (layers.empty()) throw ApplyModeError("auto_quantize: the model has no linear layer to search");
  Communicator* tp = nullptr;
  for (const auto& probe : layers) tp = tp ? tp : probe->tp;
  std::shared_ptr<Communicator> search = group;
  if (tp != nullptr) {
    const std::shared_ptr<Mesh> mesh = options.context.mesh();
    if (group != mesh->dp()) {
      throw ConfigError("auto_quantize: a model split over tensor-parallel ranks shares its batches over its mesh's "
                        "data-parallel group, not another group");
    }
    search = mesh->world();
  }
  const Measured measured = measure_scores(*model, layers, formats, options, *group, *search, tp);
  const std::vector<double>& scores = measured.scores;
  // A loss or logits that were not finite on some batch leave no score to rank the formats by
  // (the same sums on every rank, so every rank refuses).
  for (size_t k = 0; k < scores.size(); ++k) {
    if (std::isfinite(scores[k])) continue;
    throw ApplyModeError(absl::StrCat("auto_quantize: the ", method_name(options.method), " score of format '",
                                      formats[k % formats.size()].name, "' on layer '",
                                      layers[k / formats.size()]->name, "' is ", scores[k],
                                      " (the loss or the logits were not finite on some batch); nothing was chosen"));
  }
  result.batches_scored_here = measured.scored_here;
  result.batches_resumed = measured.resumed;
  result.peak_extra_bytes = measured.peak_extra_bytes;

  // The knapsack: per layer, the formats from fewest bits up, then none; a format never
  // scores worse than one with fewer bits (Model Optimizer's monotone scores; formats of
  // equal bits keep their own).
  std::vector<std::vector<KnapsackOption>> groups;
  uint64_t params_total = 0;
  for (size_t l = 0; l < layers.size(); ++l) {
    AutoQuantizeLayer& layer = result.layers.emplace_back();
    layer.name = layers[l]->name;
    layer.params = layers[l]->params;
    params_total += static_cast<uint64_t>(layer.params);
    std::vector<KnapsackOption>& options_of_layer = groups.emplace_back();
    double best_fewer_bits = std::numeric_limits<double>::infinity();
    double best_these_bits = std::numeric_limits<double>::infinity();
    for (size_t f = 0; f <= formats.size(); ++f) {
      const int bits = result_bits(formats, f);
      if (f > 0 && bits > result_bits(formats, f - 1)) best_fewer_bits = std::min(best_fewer_bits, best_these_bits);
      const double score =
          std::min(f < formats.size() ? scores[l * formats.size() + f] : 0.0, best_fewer_bits);
      best_these_bits = f > 0 && bits == result_bits(formats, f - 1) ? std::min(best_these_bits, score) : score;
      options_of_layer.push_back({static_cast<uint64_t>(layer.params) * bits, score});
      layer.scores.push_back(score);
    }
  }
  const uint64_t budget = static_cast<uint64_t>(std::floor(static_cast<double>(params_total) * options.effective_bits));
  std::optional<std::vector<int>> chosen = solve_multiple_choice_knapsack(groups, budget);
  if (!chosen) {
    throw ApplyModeError(absl::StrCat("auto_quantize: no choice of formats fits effective_bits ",
                                      options.effective_bits));
  }
  // The ranks hold the same scores and solve alike; rank 0's choice is everyone's all the
  // same, as Model Optimizer broadcasts it, so that the ranks can never quantize apart.
  at::Tensor choice = at::tensor(std::vector<int64_t>(chosen->begin(), chosen->end()), at::kLong);
  search->broadcast(choice, 0);
  chosen->assign(choice.data_ptr<int64_t>(), choice.data_ptr<int64_t>() + choice.numel());
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
  apply_smoothing(*quantized, layers, *chosen);
  return {quantized, std::move(result)};
}

}  // namespace quantization
}  // namespace mto
