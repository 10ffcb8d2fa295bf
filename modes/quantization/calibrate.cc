#include "modes/quantization/calibrate.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <exception>
#include <stdexcept>
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

}  // namespace

MaxCalibration::MaxCalibration(torch::nn::Module& model, const ForwardLoop* forward_loop,
                               Communicator* communicator) {
  for (QuantizerSlot& slot : quantized_slots(model)) {
    if (slot.quantizer()->attributes().enable()) slots_.push_back(std::move(slot));
  }
  std::vector<at::Tensor> amax;
  try {
    amax = local_amax(slots_, model, forward_loop);
  } catch (...) {
    own_failure_ = std::current_exception();
    amax.assign(slots_.size(), at::Tensor());
  }

  // One buffer for the whole model: every amax (-1 where this rank saw no data; real ones
  // are >= 0, so MAX keeps them); per split group, this rank's index in it and its negation
  // (MAX of both tells whether the communicator mixes slices of different ranks); then
  // rank + 1 if this rank failed, else 0.
  std::vector<std::vector<int64_t>> shapes;
  std::vector<int64_t> offsets = {0};
  for (const QuantizerSlot& slot : slots_) {
    shapes.push_back(amax_shape(slot));
    offsets.push_back(offsets.back() + c10::multiply_integers(shapes.back()));
  }
  // The tensor-parallel groups, and the amax their ranks share.
  for (size_t i = 0; i < slots_.size(); ++i) {
    const SplitModule* split = split_over_ranks(slots_[i].layer);
    if (split == nullptr) continue;
    Communicator* group = split->split_group().get();
    auto it = std::find_if(groups_.begin(), groups_.end(), [&](const SplitGroup& g) { return g.group == group; });
    if (it == groups_.end()) it = groups_.insert(groups_.end(), {slots_[i].layer, group, {}});
    if (!split->slice_of(slots_[i].transform + "._amax", at::empty(shapes[i]))) it->shared.push_back(i);
  }
  const int64_t total = offsets.back() + 2 * static_cast<int64_t>(groups_.size()) + 1;
  at::Tensor buffer = at::full({total}, -1.0f, at::kFloat);
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (amax[i].defined()) buffer.narrow(0, offsets[i], offsets[i + 1] - offsets[i]).copy_(amax[i].reshape({-1}));
  }
  for (size_t g = 0; g < groups_.size(); ++g) {
    buffer[offsets.back() + 2 * g] = static_cast<float>(groups_[g].group->rank());
    buffer[offsets.back() + 2 * g + 1] = -static_cast<float>(groups_[g].group->rank());
  }
  const int rank = communicator != nullptr ? communicator->rank() : 0;
  buffer[total - 1] = own_failure_ ? static_cast<float>(rank + 1) : 0.0f;
  if (communicator != nullptr) communicator->all_reduce(buffer, ReduceOp::kMax);
  failed_rank_ = static_cast<int>(buffer[total - 1].item<float>()) - 1;
  for (size_t g = 0; g < groups_.size(); ++g) {
    const float highest = buffer[offsets.back() + 2 * g].item<float>();
    const float lowest = -buffer[offsets.back() + 2 * g + 1].item<float>();
    if (highest != lowest) {
      throw ApplyModeError(absl::StrCat(
          "max_calibrate: the calibration ranks hold different slices of split layers (tensor-parallel "
          "ranks ", lowest, " to ", highest, "); pass the data-parallel group (mesh->dp()) as the communicator"));
    }
  }
  for (size_t i = 0; i < slots_.size(); ++i) {
    amax_.push_back(buffer.narrow(0, offsets[i], offsets[i + 1] - offsets[i]).reshape(shapes[i]));
  }
}

at::Tensor MaxCalibration::amax(const TensorQuantizerImpl* quantizer) const {
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (slots_[i].quantizer() == quantizer) return amax_[i].clone();
  }
  throw std::invalid_argument(absl::StrCat("MaxCalibration::amax: ", quantizer->quantizer_name(),
                                           " is not an enabled quantizer of the model"));
}

void MaxCalibration::finish() {
  // Per split group, the amax its ranks must share, with the algorithm's own statistics and
  // a flag saying whether a replica failed, so that no rank of the group goes on alone (even
  // with nothing to share): one MAX per group, or one gather where an algorithm sums.
  std::vector<at::Tensor> flags(groups_.size());
  for (size_t g = 0; g < groups_.size(); ++g) {
    for (size_t i : groups_[g].shared) split_.add(groups_[g].layer, &amax_[i], ReduceOp::kMax);
    flags[g] = at::full({1}, failed() ? 1.0f : 0.0f, at::kFloat);
    split_.add(groups_[g].layer, &flags[g], ReduceOp::kMax);
  }
  split_.run();
  bool failed_elsewhere = false;
  for (const at::Tensor& flag : flags) failed_elsewhere = failed_elsewhere || flag.item<float>() > 0;

  if (own_failure_) std::rethrow_exception(own_failure_);
  if (failed_rank_ >= 0) {
    throw ApplyModeError(absl::StrCat("max_calibrate failed on rank ", failed_rank_,
                                      " (its own error says why)"));
  }
  if (failed_elsewhere) {
    throw ApplyModeError("max_calibrate failed on a rank of another data-parallel replica "
                         "(its own error says why)");
  }
  std::vector<std::string> missing;
  for (size_t i = 0; i < slots_.size(); ++i) {
    if ((amax_[i] < 0).any().item<bool>()) missing.push_back(slots_[i].name);
  }
  if (!missing.empty()) {
    throw ApplyModeError(absl::StrCat("max_calibrate: no rank saw calibration data for ",
                                      absl::StrJoin(missing, ", "),
                                      " (does the forward loop run these layers?)"));
  }
  for (size_t i = 0; i < slots_.size(); ++i) slots_[i].quantizer()->set_amax(amax_[i]);
}

void calibrate_max(torch::nn::Module& model, const ForwardLoop* forward_loop,
                   Communicator* communicator) {
  MaxCalibration(model, forward_loop, communicator).finish();
}

}  // namespace quantization
}  // namespace mto
