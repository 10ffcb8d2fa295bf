#include "modes/quantization/awq_layers.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "distributed/tensor_slice.h"
#include "opt/errors.h"
#include "opt/nn/observer.h"

namespace mto {
namespace quantization {
namespace {

constexpr char kObserverName[] = "awq_observer";

void set_enable(TensorQuantizerImpl* quantizer, bool enable) {
  QuantizerAttributes attributes = quantizer->attributes();
  attributes.set_enable(enable);
  quantizer->set_attributes(attributes);
}

}  // namespace

std::vector<AwqTarget> awq_targets(torch::nn::Module& model, const std::string& method) {
  const std::vector<QuantizerSlot> slots = quantized_slots(model);
  std::vector<AwqTarget> out;
  for (const QuantizerSlot& slot : slots) {
    if (slot.slot != nn::Slot::kWeight || !slot.quantizer()->attributes().enable()) continue;
    if (slot.layer_class != "nn.Linear") {
      throw ApplyModeError(absl::StrCat(method, ": layer ", slot.layer_name, " (", slot.layer_class,
                                        ") has an enabled weight quantizer; ", method,
                                        " calibrates nn.Linear layers only, disable it"));
    }
    TensorQuantizerImpl* input = nullptr;
    for (const QuantizerSlot& other : slots) {
      if (other.layer == slot.layer && other.slot == nn::Slot::kInput) input = other.quantizer();
    }
    if (input == nullptr) {
      throw ApplyModeError(absl::StrCat(method, ": layer ", slot.layer_name,
                                        " has no input quantizer to hold its pre_quant_scale"));
    }
    if (input->attributes().enable()) {
      throw ApplyModeError(absl::StrCat(method, ": layer ", slot.layer_name, " has an enabled input quantizer; ",
                                        method, " here calibrates weight-only formats (W4A16), disable it"));
    }
    if (slot.quantizer()->has_pre_quant_scale()) {
      throw ApplyModeError(absl::StrCat(method, ": ", slot.name, " has a pre_quant_scale, which ", method,
                                        " does not take into account"));
    }
    AwqTarget layer;
    layer.name = slot.layer_name;
    layer.weight_slot = slot;
    layer.input_quantizer = input;
    layer.weight_quantizer = slot.quantizer();
    const at::Tensor weight = slot.weight();
    layer.rows = weight.size(0);
    layer.in = weight.size(1);
    if (const SplitModule* split = split_over_ranks(slot.layer)) {
      // The weight's split dimension says which features are split: its columns are the
      // input features (then `input_quantizer._pre_quant_scale` is a slice as well), its
      // rows the output features (then the input is whole on every rank).
      if (const std::optional<TensorSlice> slice = split->slice_of("weight", weight)) {
        layer.split = slice->dim == 1 ? AwqSplit::kInput : AwqSplit::kOutput;
        layer.group = split->split_group().get();
        layer.rows = slice->global_shape[0];
      }
    }
    out.push_back(std::move(layer));
  }
  return out;
}

namespace detail {

std::string join_names(const std::vector<std::string>& names) { return absl::StrJoin(names, ", "); }

void throw_unseen(const std::string& method, const std::vector<std::string>& missing, const std::string& pass) {
  throw ApplyModeError(absl::StrCat(method, ": no rank saw calibration data for ", absl::StrJoin(missing, ", "), pass,
                                    " (does the forward loop run these layers?)"));
}

}  // namespace detail

at::Tensor slice_indices(const std::vector<nn::DynamicLayer*>& groups, at::ScalarType type) {
  at::Tensor out = at::zeros({2 * static_cast<int64_t>(groups.size())}, type);
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto index = static_cast<int64_t>(dynamic_cast<const SplitModule*>(groups[g])->split_group()->rank());
    out[static_cast<int64_t>(2 * g)] = index;
    out[static_cast<int64_t>(2 * g + 1)] = index * index;
  }
  return out;
}

void check_same_slices(const std::string& method, const at::Tensor& summed, int world_size) {
  for (int64_t g = 0; 2 * g < summed.numel(); ++g) {
    const double sum = summed[2 * g].item<double>();
    const double squares = summed[2 * g + 1].item<double>();
    if (world_size * squares != sum * sum) {
      throw ApplyModeError(absl::StrCat(method,
                                        ": the calibration ranks hold different slices of split layers; pass the "
                                        "data-parallel group (mesh->dp()) as the communicator"));
    }
  }
}

std::vector<nn::DynamicLayer*> split_group_layers(torch::nn::Module& model) {
  std::vector<nn::DynamicLayer*> out;
  std::vector<const Communicator*> seen;
  for (const auto& [name, layer] : nn::named_dynamic_layers(model)) {
    const SplitModule* split = split_over_ranks(layer);
    if (split == nullptr) continue;
    const Communicator* group = split->split_group().get();
    if (std::find(seen.begin(), seen.end(), group) != seen.end()) continue;
    seen.push_back(group);
    out.push_back(layer);
  }
  return out;
}

int64_t input_block_size(const AwqTarget& layer) {
  const QuantizerAttributes& attributes = layer.weight_quantizer->attributes();
  if (attributes.block_size() > 0 && (attributes.block_axis() == -1 || attributes.block_axis() == 1)) {
    return attributes.block_size();
  }
  return 0;
}

std::shared_ptr<TensorQuantizerImpl> weight_probe(const AwqTarget& layer) {
  return std::make_shared<TensorQuantizerImpl>(layer.weight_quantizer->quantizer_name(),
                                               layer.weight_quantizer->attributes(), /*keepdim_amax=*/true);
}

bool reported_whole(const AwqTarget& layer, const std::string& key, const at::Tensor& local) {
  if (layer.split == AwqSplit::kNone) return false;
  return !dynamic_cast<const SplitModule*>(layer.weight_slot.layer)->slice_of(key, local).has_value();
}

at::Tensor tokens_of(const AwqTarget& layer, const at::Tensor& x, const std::string& method) {
  if (x.dim() == 0 || x.size(-1) != layer.in) {
    throw ApplyModeError(absl::StrCat(method, ": layer ", layer.name, " got an input of shape [",
                                      absl::StrJoin(x.sizes(), ", "), "], expected [..., ", layer.in, "]"));
  }
  return x.detach().reshape({-1, layer.in});
}

void all_reduce_fused(Communicator* communicator, const std::vector<at::Tensor*>& tensors, ReduceOp op) {
  if (communicator == nullptr) return;
  std::vector<at::Tensor> flat;
  for (const at::Tensor* tensor : tensors) flat.push_back(tensor->reshape({-1}));
  at::Tensor buffer = at::cat(flat);
  communicator->all_reduce(buffer, op);
  int64_t offset = 0;
  for (at::Tensor* tensor : tensors) {
    *tensor = buffer.narrow(0, offset, tensor->numel()).reshape(tensor->sizes()).clone();
    offset += tensor->numel();
  }
}

void InputObservers::install(const std::vector<nn::DynamicLayer*>& layers,
                             const std::vector<std::function<void(const at::Tensor&)>>& observers) {
  try {
    for (size_t i = 0; i < layers.size(); ++i) {
      layers[i]->add_transform(nn::Slot::kInput, kObserverName, std::make_shared<nn::ObserverImpl>(observers[i]));
      installed_.push_back(layers[i]);
    }
  } catch (...) {
    remove();
    throw;
  }
}

void InputObservers::remove() {
  for (nn::DynamicLayer* layer : installed_) layer->remove_transform(kObserverName);
  installed_.clear();
}

UnquantizedWeights::~UnquantizedWeights() {
  for (TensorQuantizerImpl* quantizer : quantizers_) set_enable(quantizer, true);
}

void UnquantizedWeights::disable(TensorQuantizerImpl* quantizer) {
  set_enable(quantizer, false);
  quantizers_.push_back(quantizer);
}

at::Tensor PassFailures::flags(int world_size, int rank, at::ScalarType type) const {
  at::Tensor out = at::zeros({world_size}, type);
  if (own) out[rank] = 1;
  return out;
}

void PassFailures::read_flags(const at::Tensor& summed) {
  for (int64_t r = 0; r < summed.numel(); ++r) {
    if (summed[r].item<double>() > 0) {
      failed_rank = static_cast<int>(r);
      return;
    }
  }
}

std::vector<at::Tensor> PassFailures::add_group_flags(SplitReduction& reduction,
                                                      const std::vector<nn::DynamicLayer*>& groups,
                                                      at::ScalarType type, ReduceOp op) const {
  // Sized first: the reduction keeps pointers to the flags.
  std::vector<at::Tensor> out(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    out[g] = at::full({1}, any() ? 1 : 0, type);
    reduction.add(groups[g], &out[g], op);
  }
  return out;
}

void PassFailures::read_group_flags(const std::vector<at::Tensor>& flags) {
  for (const at::Tensor& flag : flags) elsewhere = elsewhere || flag.item<double>() > 0;
}

void PassFailures::sum_with_flags(Communicator* communicator, std::vector<at::Tensor*> tensors) {
  const int rank = communicator != nullptr ? communicator->rank() : 0;
  const int world_size = communicator != nullptr ? communicator->world_size() : 1;
  at::Tensor rank_flags = flags(world_size, rank, at::kDouble);
  at::Tensor any_elsewhere = at::full({1}, elsewhere ? 1.0 : 0.0, at::kDouble);
  tensors.push_back(&rank_flags);
  tensors.push_back(&any_elsewhere);
  all_reduce_fused(communicator, tensors, ReduceOp::kSum);
  read_flags(rank_flags);
  elsewhere = any_elsewhere.item<double>() > 0;
}

void PassFailures::throw_if_any() const {
  if (own) std::rethrow_exception(own);
  if (failed_rank >= 0) {
    throw ApplyModeError(absl::StrCat(method, " failed on rank ", failed_rank, " (its own error says why)"));
  }
  if (elsewhere) {
    throw ApplyModeError(absl::StrCat(method,
                                      " failed on a rank of another data-parallel replica or of this rank's "
                                      "tensor-parallel group (its own error says why)"));
  }
}

}  // namespace quantization
}  // namespace mto
