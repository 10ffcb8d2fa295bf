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

// Options of a ColumnParallelLinear; sizes are those of the global (unsplit) layer.
struct ColumnParallelLinearOptions {
  ColumnParallelLinearOptions(int64_t in_features, int64_t out_features)
      : in_features_(in_features), out_features_(out_features) {}

  TORCH_ARG(int64_t, in_features);
  // Split over the tensor-parallel group: each rank computes out_features / tp of them.
  TORCH_ARG(int64_t, out_features);
  TORCH_ARG(bool, bias) = true;
  // Whether forward all-gathers the output (to [..., out_features] on every rank) instead of
  // returning this rank's [..., out_features / tp] columns.
  TORCH_ARG(bool, gather_output) = false;
  // Seed of the initialization (see global_init.h): the same seed gives the same global
  // weights at every tensor-parallel size.
  TORCH_ARG(uint64_t, seed) = 0;
  // The tensor-parallel group; nullptr means default_mesh()->tp().
  TORCH_ARG(std::shared_ptr<Communicator>, tp) = nullptr;
};

// A linear layer whose output features are split over a tensor-parallel group (Megatron's
// ColumnParallelLinear): rank t holds rows [t * out / tp, (t + 1) * out / tp) of the global
// weight [out, in] and of the bias. Its input is the whole x on every rank. With a group of
// one rank it computes what mto::nn::Linear computes.
//
// It is a LinearImpl (so modes find it with dynamic_cast<nn::LinearImpl*> and fill its
// transform slots, which act on the local weight and output); LinearImpl::options are the
// local options (in, out / tp). Call forward through this class (or the ColumnParallelLinear
// holder): LinearImpl::forward is not virtual and lacks the collectives. clone() is
// LinearImpl's and returns a plain LinearImpl. Not safe to share between threads.
class ColumnParallelLinearImpl : public LinearImpl, public SplitModule {
 public:
  // Throws DistributedError if the tensor-parallel size does not divide out_features.
  explicit ColumnParallelLinearImpl(ColumnParallelLinearOptions options);

  // Creates the parameters and initializes them with reset_parameters().
  void reset() override;
  // Initializes the global weight and bias uniform in [-1/sqrt(in), 1/sqrt(in)] (the bounds
  // of torch::nn::Linear) from the seeds seed_for(seed, "weight") and seed_for(seed, "bias"),
  // and keeps this rank's rows.
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  // y = output_transforms(linear(input_transforms(x), weight_transforms(weight), bias)),
  // gathered over the group if gather_output. `x` must be the same on every rank of the
  // group; backward sums its gradient over the group. Collective (in forward when
  // gather_output, and in backward): every rank of the group must call it, in the same order.
  at::Tensor forward(const at::Tensor& x);

  // "weight", "bias", and any other tensor under the layer with out / tp rows (e.g.
  // "_weight_mask", a per-channel or block-wise "weight_quantizer._amax", a per-feature
  // "output_quantizer._amax") are rows of the global tensor; the tensors of input-slot
  // transforms (the input is whole on every rank) and all others are whole (std::nullopt).
  std::optional<TensorSlice> slice_of(const std::string& key, const at::Tensor& local) const override;
  const std::shared_ptr<Communicator>& split_group() const override { return parallel_options.tp(); }

  // The options as given, with tp filled in.
  ColumnParallelLinearOptions parallel_options;
};

TORCH_MODULE(ColumnParallelLinear);

}  // namespace nn
}  // namespace mto
