#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "distributed/communicator.h"
#include "modes/quantization/calibrate.h"
#include "modes/quantization/quantized_model.h"
#include "modes/quantization/split_reduction.h"
#include "modes/quantization/tensor_quantizer.h"
#include "opt/nn/dynamic_layer.h"

namespace mto {
namespace quantization {

// Which features of a layer its tensor-parallel ranks split.
enum class AwqSplit {
  kNone,    // the layer is whole on this rank
  kInput,   // RowParallelLinear: this rank holds columns of W and gets its slice of x
  kOutput,  // ColumnParallelLinear: this rank holds rows of W and gets the whole x
};

// A layer the AWQ algorithms (awq_lite, awq_clip) calibrate: an nn.Linear with an enabled
// weight quantizer, a disabled input quantizer, and no pre_quant_scale on its weight
// quantizer. The algorithms keep their statistics in types derived from it.
struct AwqTarget {
  std::string name;  // "block.0.fc1"
  QuantizerSlot weight_slot;
  TensorQuantizerImpl* input_quantizer = nullptr;  // disabled; holds any pre_quant_scale
  TensorQuantizerImpl* weight_quantizer = nullptr;
  AwqSplit split = AwqSplit::kNone;
  Communicator* group = nullptr;  // the tensor-parallel group when split
  int64_t rows = 0;               // output rows of the whole layer
  int64_t in = 0;                 // input features on this rank
};

// The layers of `model` that `method` ("awq_lite", "awq_clip") calibrates, in module order.
// Throws ApplyModeError, naming the layer, for an enabled weight quantizer it cannot
// calibrate: on a layer other than nn.Linear, beside an enabled input quantizer (these are
// weight-only algorithms, W4A16) or with a pre_quant_scale of its own.
std::vector<AwqTarget> awq_targets(torch::nn::Module& model, const std::string& method);

// "a, b, c": the names of `layers`, for messages.
template <typename Layer>
std::string layer_names(const std::vector<Layer>& layers);

// One layer of every tensor-parallel group of more than one rank that a layer of `model` is
// split over, in module order: every rank of such a group joins its collectives, so a
// failure flag sent over it reaches them all.
std::vector<nn::DynamicLayer*> split_group_layers(torch::nn::Module& model);

// The weight quantizer's block size along the input features, 0 if it has no blocks there
// (Model Optimizer reads block_sizes[-1] or block_sizes[1]).
int64_t input_block_size(const AwqTarget& layer);

// A quantizer with the layer's weight quantizer's name and attributes (its amax keeping the
// weight's dimensions), to try amaxes on without touching that quantizer.
std::shared_ptr<TensorQuantizerImpl> weight_probe(const AwqTarget& layer);

// Whether the tensor `key` of `layer` is reported whole by a layer split over ranks, while
// each rank computes it from its slice (so the ranks must share it).
bool reported_whole(const AwqTarget& layer, const std::string& key, const at::Tensor& local);

// `x` as [tokens, features]; throws ApplyModeError, naming `method` and the layer, unless
// its last dimension is the layer's input features.
at::Tensor tokens_of(const AwqTarget& layer, const at::Tensor& x, const std::string& method);

// Reduces `tensors` (all of one dtype) over `communicator` in one all-reduce and writes the
// results back; does nothing without a communicator.
void all_reduce_fused(Communicator* communicator, const std::vector<at::Tensor*>& tensors, ReduceOp op);

// Puts an observer as the last input transform of every layer (after the input quantizer,
// so it sees what the layer's weight multiplies, pre_quant_scale applied) and always takes
// them out again. `observe` gets the layer and its input; it must not change the input.
class InputObservers {
 public:
  template <typename Layer, typename Observe>
  InputObservers(std::vector<Layer>& layers, Observe observe) {
    std::vector<std::function<void(const at::Tensor&)>> observers;
    std::vector<nn::DynamicLayer*> targets;
    for (Layer& layer : layers) {
      observers.push_back([&layer, observe](const at::Tensor& x) { observe(layer, x); });
      targets.push_back(layer.weight_slot.layer);
    }
    install(targets, observers);
  }
  ~InputObservers() { remove(); }
  InputObservers(const InputObservers&) = delete;
  InputObservers& operator=(const InputObservers&) = delete;

 private:
  void install(const std::vector<nn::DynamicLayer*>& layers,
               const std::vector<std::function<void(const at::Tensor&)>>& observers);
  void remove();

  std::vector<nn::DynamicLayer*> installed_;
};

// Lets the weights of the layers through unquantized while the forward loop runs (and
// always quantizes them again): as in Model Optimizer, every AWQ pass sees, and passes on,
// each layer's unquantized output.
class UnquantizedWeights {
 public:
  template <typename Layer>
  explicit UnquantizedWeights(const std::vector<Layer>& layers) {
    for (const AwqTarget& layer : layers) disable(layer.weight_quantizer);
  }
  ~UnquantizedWeights();
  UnquantizedWeights(const UnquantizedWeights&) = delete;
  UnquantizedWeights& operator=(const UnquantizedWeights&) = delete;

 private:
  void disable(TensorQuantizerImpl* quantizer);

  std::vector<TensorQuantizerImpl*> quantizers_;
};

// Runs `forward_loop` over `model` with the layers' weights unquantized and `observe(layer, x)`
// seeing each layer's input; returns what the loop threw, or else the first error of an
// observer, null if neither. An observer's error does not stop the loop (the layer passes its
// input on as always): a tensor-parallel peer whose slice of the input was fine then meets
// this rank in every collective of the forward, not in a different one.
template <typename Layer, typename Observe>
std::exception_ptr run_observed_pass(torch::nn::Module& model, const ForwardLoop& forward_loop,
                                     std::vector<Layer>& layers, Observe observe) {
  std::exception_ptr observer_error;
  try {
    UnquantizedWeights unquantized(layers);
    InputObservers observers(layers, [&observer_error, &observe](Layer& layer, const at::Tensor& x) {
      try {
        observe(layer, x);
      } catch (...) {
        if (!observer_error) observer_error = std::current_exception();
      }
    });
    forward_loop(model);
  } catch (...) {
    return std::current_exception();
  }
  return observer_error;
}

// This rank's index in each tensor-parallel group of `groups` and its square, to be summed
// over the data-parallel ranks with whatever else a pass sums there.
at::Tensor slice_indices(const std::vector<nn::DynamicLayer*>& groups, at::ScalarType type);

// Throws ApplyModeError, naming `method`, unless the `summed` slice_indices of the
// `world_size` data-parallel ranks say that they all hold the same slices (n * sum(i^2) ==
// sum(i)^2 for each group): statistics of different slices must never be added up.
void check_same_slices(const std::string& method, const at::Tensor& summed, int world_size);

// How a forward loop of an AWQ pass ended on the ranks, as the collectives report it: the
// failing rank throws its own error, every other rank an ApplyModeError naming it, so no
// rank waits for another that gave up.
struct PassFailures {
  explicit PassFailures(std::string method) : method(std::move(method)) {}

  std::string method;       // "awq_lite", for messages
  std::exception_ptr own;   // this rank's error
  int failed_rank = -1;     // the first rank of the data-parallel communicator that failed
  bool elsewhere = false;   // a rank of another replica or of a tensor-parallel group failed

  bool any() const { return own || failed_rank >= 0 || elsewhere; }

  // Per data-parallel rank, 1 where its loop failed (to be summed over the ranks).
  at::Tensor flags(int world_size, int rank, at::ScalarType type) const;
  // Reads the summed flags.
  void read_flags(const at::Tensor& summed);

  // Per split group of `groups`, a flag saying whether a rank known here failed, added to
  // `reduction` (with `op`, kSum or kMax: the group's other op keeps it one all-reduce) so
  // that it travels over the group with whatever else it holds.
  std::vector<at::Tensor> add_group_flags(SplitReduction& reduction, const std::vector<nn::DynamicLayer*>& groups,
                                          at::ScalarType type, ReduceOp op) const;
  // Sets `elsewhere` if a flag of add_group_flags came back set.
  void read_group_flags(const std::vector<at::Tensor>& flags);

  // Sums `tensors` (float64) over the data-parallel `communicator` (nullptr: this rank
  // alone) in one all-reduce that also carries a flag per rank that failed and whether a
  // rank knew of a failure elsewhere, and reads both back.
  void sum_with_flags(Communicator* communicator, std::vector<at::Tensor*> tensors);

  // Throws if a rank failed: this rank's own error, or ApplyModeError naming the other.
  void throw_if_any() const;
};

// Throws ApplyModeError naming every layer of `layers` that no rank saw calibration data
// for (`seen[i]` false); `pass` ends the message's first part (" in the search pass").
template <typename Layer>
void throw_if_unseen(const std::string& method, const std::vector<Layer>& layers, const std::vector<bool>& seen,
                     const std::string& pass);

// Implementation of the templates.

namespace detail {
// absl::StrJoin(names, ", ").
std::string join_names(const std::vector<std::string>& names);
// Throws the ApplyModeError of throw_if_unseen for the layers `missing`.
void throw_unseen(const std::string& method, const std::vector<std::string>& missing, const std::string& pass);
}  // namespace detail

template <typename Layer>
std::string layer_names(const std::vector<Layer>& layers) {
  std::vector<std::string> names;
  for (const AwqTarget& layer : layers) names.push_back(layer.name);
  return detail::join_names(names);
}

template <typename Layer>
void throw_if_unseen(const std::string& method, const std::vector<Layer>& layers, const std::vector<bool>& seen,
                     const std::string& pass) {
  std::vector<std::string> missing;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (!seen[i]) missing.push_back(layers[i].name);
  }
  if (!missing.empty()) detail::throw_unseen(method, missing, pass);
}

}  // namespace quantization
}  // namespace mto
