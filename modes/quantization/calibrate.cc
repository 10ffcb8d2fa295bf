#include "modes/quantization/calibrate.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <exception>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "distributed/tensor_slice.h"
#include "modes/quantization/quantized_model.h"
#include "opt/errors.h"

namespace mto {
namespace quantization {
namespace {

// Puts quantizers into calibration and always takes them out again.
class CalibrationScope {
 public:
  explicit CalibrationScope(const std::vector<TensorQuantizerImpl*>& quantizers)
      : quantizers_(quantizers) {
    for (TensorQuantizerImpl* quantizer : quantizers_) quantizer->begin_calibration();
  }
  ~CalibrationScope() {
    for (TensorQuantizerImpl* quantizer : quantizers_) {
      if (quantizer->calibrating()) quantizer->end_calibration();
    }
  }
  CalibrationScope(const CalibrationScope&) = delete;
  CalibrationScope& operator=(const CalibrationScope&) = delete;

 private:
  std::vector<TensorQuantizerImpl*> quantizers_;
};

// The shape the amax of `slot` has on this rank, known before any data is seen.
std::vector<int64_t> amax_shape(const QuantizerSlot& slot) {
  if (slot.slot == nn::Slot::kWeight) return slot.quantizer()->amax_shape(slot.weight().sizes());
  if (slot.quantizer()->attributes().has_axis()) return {slot.feature_size()};
  return {};
}

// This rank's amax of every slot (undefined where it saw no data).
std::vector<at::Tensor> local_amax(const std::vector<QuantizerSlot>& slots,
                                   torch::nn::Module& model, const ForwardLoop* forward_loop) {
  std::vector<at::Tensor> amax(slots.size());
  std::vector<TensorQuantizerImpl*> quantizers;
  std::vector<std::string> activation_names;
  for (size_t i = 0; i < slots.size(); ++i) {
    quantizers.push_back(slots[i].quantizer());
    if (slots[i].slot == nn::Slot::kWeight) {
      amax[i] = slots[i].quantizer()->compute_amax(slots[i].weight());
    } else {
      activation_names.push_back(slots[i].name);
    }
  }
  if (activation_names.empty()) return amax;
  if (forward_loop == nullptr || !*forward_loop) {
    throw ApplyModeError(absl::StrCat(
        "max_calibrate needs the mode argument 'forward_loop' to calibrate ",
        absl::StrJoin(activation_names, ", ")));
  }
  {
    // Every quantizer passes its input through while the loop runs; the weights' amax
    // comes from the weights themselves.
    CalibrationScope scope(quantizers);
    torch::NoGradGuard no_grad;
    (*forward_loop)(model);
    for (size_t i = 0; i < slots.size(); ++i) {
      const at::Tensor seen = slots[i].quantizer()->end_calibration();
      if (slots[i].slot != nn::Slot::kWeight) amax[i] = seen;
    }
  }
  for (size_t i = 0; i < slots.size(); ++i) {
    if (!amax[i].defined()) continue;
    const std::vector<int64_t> expected = amax_shape(slots[i]);
    if (amax[i].sizes().vec() != expected) {
      throw ApplyModeError(absl::StrCat(slots[i].name, ": calibration produced an amax of shape [",
                                        absl::StrJoin(amax[i].sizes(), ", "), "], expected [",
                                        absl::StrJoin(expected, ", "), "]"));
    }
    if (!at::isfinite(amax[i]).all().item<bool>()) {
      throw ApplyModeError(absl::StrCat(slots[i].name,
                                        ": the calibration data holds infinities or NaNs"));
    }
  }
  return amax;
}

// A tensor-parallel group that split layers of the model are split over, and the quantizers
// whose amax its ranks must share: those a layer reports whole (a per-tensor amax of a split
// weight or input, a per-channel amax of a row-parallel weight) while each rank saw only its
// slice.
struct SplitGroup {
  Communicator* group;
  std::vector<size_t> shared;
};

// Every group of more than one rank that a quantized layer is split over, in module order.
std::vector<SplitGroup> split_groups(const std::vector<QuantizerSlot>& slots,
                                     const std::vector<std::vector<int64_t>>& shapes) {
  std::vector<SplitGroup> out;
  for (size_t i = 0; i < slots.size(); ++i) {
    const auto* split = dynamic_cast<const SplitModule*>(slots[i].layer);
    if (split == nullptr || split->split_group()->world_size() == 1) continue;
    Communicator* group = split->split_group().get();
    auto it = std::find_if(out.begin(), out.end(), [&](const SplitGroup& g) { return g.group == group; });
    if (it == out.end()) it = out.insert(out.end(), {group, {}});
    if (!split->slice_of(slots[i].transform + "._amax", at::empty(shapes[i]))) it->shared.push_back(i);
  }
  return out;
}

}  // namespace

void calibrate_max(torch::nn::Module& model, const ForwardLoop* forward_loop,
                   Communicator* communicator) {
  std::vector<QuantizerSlot> slots;
  for (QuantizerSlot& slot : quantized_slots(model)) {
    if (slot.quantizer()->attributes().enable()) slots.push_back(std::move(slot));
  }
  std::vector<at::Tensor> amax;
  std::exception_ptr failure;
  try {
    amax = local_amax(slots, model, forward_loop);
  } catch (...) {
    failure = std::current_exception();
    amax.assign(slots.size(), at::Tensor());
  }

  // One buffer for the whole model: every amax (-1 where this rank saw no data; real ones
  // are >= 0, so MAX keeps them); per split group, this rank's index in it and its negation
  // (MAX of both tells whether the communicator mixes slices of different ranks); then
  // rank + 1 if this rank failed, else 0.
  std::vector<std::vector<int64_t>> shapes;
  std::vector<int64_t> offsets = {0};
  for (const QuantizerSlot& slot : slots) {
    shapes.push_back(amax_shape(slot));
    offsets.push_back(offsets.back() + c10::multiply_integers(shapes.back()));
  }
  const std::vector<SplitGroup> groups = split_groups(slots, shapes);
  const int64_t total = offsets.back() + 2 * static_cast<int64_t>(groups.size()) + 1;
  at::Tensor buffer = at::full({total}, -1.0f, at::kFloat);
  for (size_t i = 0; i < slots.size(); ++i) {
    if (amax[i].defined()) buffer.narrow(0, offsets[i], offsets[i + 1] - offsets[i]).copy_(amax[i].reshape({-1}));
  }
  for (size_t g = 0; g < groups.size(); ++g) {
    buffer[offsets.back() + 2 * g] = static_cast<float>(groups[g].group->rank());
    buffer[offsets.back() + 2 * g + 1] = -static_cast<float>(groups[g].group->rank());
  }
  const int rank = communicator != nullptr ? communicator->rank() : 0;
  buffer[total - 1] = failure ? static_cast<float>(rank + 1) : 0.0f;
  if (communicator != nullptr) communicator->all_reduce(buffer, ReduceOp::kMax);
  const int failed_rank = static_cast<int>(buffer[total - 1].item<float>()) - 1;
  for (size_t g = 0; g < groups.size(); ++g) {
    const float highest = buffer[offsets.back() + 2 * g].item<float>();
    const float lowest = -buffer[offsets.back() + 2 * g + 1].item<float>();
    if (highest != lowest) {
      throw ApplyModeError(absl::StrCat(
          "max_calibrate: the calibration ranks hold different slices of split layers (tensor-parallel "
          "ranks ", lowest, " to ", highest, "); pass the data-parallel group (mesh->dp()) as the communicator"));
    }
  }

  // Then, per split group, the amax its ranks must share, in one MAX each, with a flag saying
  // whether a replica failed, so that no rank of the group goes on alone (even with nothing
  // to share).
  bool failed_elsewhere = false;
  for (const SplitGroup& split : groups) {
    std::vector<at::Tensor> parts;
    for (size_t i : split.shared) parts.push_back(buffer.narrow(0, offsets[i], offsets[i + 1] - offsets[i]));
    parts.push_back(at::full({1}, failure || failed_rank >= 0 ? 1.0f : 0.0f, at::kFloat));
    at::Tensor group_buffer = at::cat(parts);
    split.group->all_reduce(group_buffer, ReduceOp::kMax);
    int64_t at = 0;
    for (size_t k = 0; k + 1 < parts.size(); ++k) {
      parts[k].copy_(group_buffer.narrow(0, at, parts[k].numel()));
      at += parts[k].numel();
    }
    failed_elsewhere = failed_elsewhere || group_buffer[at].item<float>() > 0;
  }

  if (failure) std::rethrow_exception(failure);
  if (failed_rank >= 0) {
    throw ApplyModeError(absl::StrCat("max_calibrate failed on rank ", failed_rank,
                                      " (its own error says why)"));
  }
  if (failed_elsewhere) {
    throw ApplyModeError("max_calibrate failed on a rank of another data-parallel replica "
                         "(its own error says why)");
  }
  std::vector<std::string> missing;
  for (size_t i = 0; i < slots.size(); ++i) {
    amax[i] = buffer.narrow(0, offsets[i], offsets[i + 1] - offsets[i]).reshape(shapes[i]);
    if ((amax[i] < 0).any().item<bool>()) missing.push_back(slots[i].name);
  }
  if (!missing.empty()) {
    throw ApplyModeError(absl::StrCat("max_calibrate: no rank saw calibration data for ",
                                      absl::StrJoin(missing, ", "),
                                      " (does the forward loop run these layers?)"));
  }
  for (size_t i = 0; i < slots.size(); ++i) slots[i].quantizer()->set_amax(amax[i]);
}

}  // namespace quantization
}  // namespace mto
