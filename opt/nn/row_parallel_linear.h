#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <ostream>
#include <string>

#include <torch/arg.h>

#include "distributed/communicator.h"
#include "distributed/tensor_slice.h"
#include "opt/nn/linear.h"

namespace mto {
namespace nn {

// Options of a RowParallelLinear; sizes are those of the global (unsplit) layer.
struct RowParallelLinearOptions {
  RowParallelLinearOptions(int64_t in_features, int64_t out_features)
      : in_features_(in_features), out_features_(out_features) {}

  // Split over the tensor-parallel group: each rank takes in_features / tp of them.
  TORCH_ARG(int64_t, in_features);
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(bool, bias) = true;
  // Whether forward's input is already this rank's [..., in_features / tp] chunk (the output
  // of a ColumnParallelLinear without gather_output); if false it is the whole
  // [..., in_features] input, the same on every rank, and the layer takes its own chunk.
  TORCH_ARG(bool, input_is_parallel) = true;
  // Seed of the initialization (see global_init.h): the same seed gives the same global
  // weights at every tensor-parallel size.
  TORCH_ARG(uint64_t, seed) = 0;
  // The tensor-parallel group; nullptr means default_mesh()->tp().
  TORCH_ARG(std::shared_ptr<Communicator>, tp) = nullptr;
};

// A linear layer whose input features are split over a tensor-parallel group (Megatron's
// RowParallelLinear): rank t holds columns [t * in / tp, (t + 1) * in / tp) of the global
// weight [out, in], computes a partial output from its chunk of the input, and the partial
// outputs are summed over the group; every rank holds the whole bias and adds it after the
// sum. The output is whole on every rank. With a group of one rank it computes what
// mto::nn::Linear computes.
//
// It is a LinearImpl (so modes find it with dynamic_cast<nn::LinearImpl*> and fill its
// transform slots: input transforms act on the local chunk of the input, weight transforms
// on the local weight, output transforms on the summed output); LinearImpl::options are the
// local options (in / tp, out). Call forward through this class (or the RowParallelLinear
// holder): LinearImpl::forward is not virtual and lacks the collectives. clone() is
// LinearImpl's and returns a plain LinearImpl. Not safe to share between threads.
class RowParallelLinearImpl : public LinearImpl, public SplitModule {
 public:
  // Throws DistributedError if the tensor-parallel size does not divide in_features.
  explicit RowParallelLinearImpl(RowParallelLinearOptions options);

  // Creates the parameters and initializes them with reset_parameters().
  void reset() override;
  // Initializes the global weight and the bias uniform in [-1/sqrt(in), 1/sqrt(in)] (the
  // bounds of torch::nn::Linear, with the global in_features) from the seeds
  // seed_for(seed, "weight") and seed_for(seed, "bias"), and keeps this rank's columns.
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  // y = output_transforms(sum over the group of linear(input_transforms(x_t),
  // weight_transforms(weight)) + bias), where x_t is this rank's chunk of the input.
  // Collective: every rank of the group must call it (and backward, when input_is_parallel
  // is false), in the same order.
  at::Tensor forward(const at::Tensor& x);

  // "weight", and any other two-dimensional tensor under the layer with out_features rows
  // and the weight's shape or more than one column (e.g. "_weight_mask", a block-wise
  // "weight_quantizer._amax"), are column blocks of the global tensor (split on dimension
  // 1); a per-feature tensor of an input-slot transform ("input_quantizer._amax" of shape
  // [in / tp]) is a slice of dimension 0; "bias" and everything else are whole
  // (std::nullopt).
  std::optional<TensorSlice> slice_of(const std::string& key, const at::Tensor& local) const override;
  const std::shared_ptr<Communicator>& split_group() const override { return parallel_options.tp(); }

  // The options as given, with tp filled in.
  RowParallelLinearOptions parallel_options;
};

TORCH_MODULE(RowParallelLinear);

}  // namespace nn
}  // namespace mto
