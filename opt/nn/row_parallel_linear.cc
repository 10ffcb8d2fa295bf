#include "opt/nn/row_parallel_linear.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "distributed/distributed_error.h"
#include "distributed/global_init.h"
#include "distributed/mesh.h"
#include "distributed/tensor_parallel_ops.h"
#include "opt/nn/uninitialized.h"

namespace mto {
namespace nn {
namespace {

// Fills in the default group and checks that its size divides in_features.
RowParallelLinearOptions& resolve(RowParallelLinearOptions& options) {
  if (!options.tp()) options.tp(default_mesh()->tp());
  const int tp = options.tp()->world_size();
  if (options.in_features() % tp != 0) {
    throw DistributedError(absl::StrCat("RowParallelLinear: the tensor-parallel size ", tp,
                                        " does not divide in_features ", options.in_features(),
                                        " of a ", options.in_features(), " -> ",
                                        options.out_features(), " layer"));
  }
  return options;
}

torch::nn::LinearOptions local_options(const RowParallelLinearOptions& options) {
  return torch::nn::LinearOptions(options.in_features() / options.tp()->world_size(), options.out_features())
      .bias(options.bias());
}

}  // namespace

// The base class is built first: resolve() fills in `options` before the member copies it.
RowParallelLinearImpl::RowParallelLinearImpl(RowParallelLinearOptions options)
    : LinearImpl(local_options(resolve(options))), parallel_options(std::move(options)) {
  reset_parameters();
}

void RowParallelLinearImpl::reset() {
  LinearImpl::reset();
  reset_parameters();
}

void RowParallelLinearImpl::reset_parameters() {
  if (parameters_uninitialized()) return;
  const int64_t in = parallel_options.in_features();
  const int64_t out = parallel_options.out_features();
  const double bound = 1 / std::sqrt(static_cast<double>(in));
  global_uniform_(weight, TensorSlice{{out, in}, 1, parallel_options.tp()->rank() * options.in_features()},
                  seed_for(parallel_options.seed(), "weight"), -bound, bound);
  if (bias.defined()) global_uniform_(bias, seed_for(parallel_options.seed(), "bias"), -bound, bound);
}

void RowParallelLinearImpl::pretty_print(std::ostream& stream) const {
  stream << std::boolalpha << "mto::nn::RowParallelLinear(in_features=" << parallel_options.in_features()
         << " (local " << options.in_features() << "), out_features=" << options.out_features()
         << ", bias=" << options.bias() << ", input_is_parallel=" << parallel_options.input_is_parallel()
         << ", tp=" << parallel_options.tp()->world_size() << ")";
}

at::Tensor RowParallelLinearImpl::forward(const at::Tensor& x) {
  Communicator& tp = *parallel_options.tp();
  const at::Tensor chunk = parallel_options.input_is_parallel() ? x : scatter_to_tensor_parallel(x, tp);
  const at::Tensor partial =
      at::linear(apply_transforms(Slot::kInput, chunk), apply_transforms(Slot::kWeight, weight));
  at::Tensor y = reduce_from_tensor_parallel(partial, tp);
  if (bias.defined()) y = y + bias;
  return apply_transforms(Slot::kOutput, y);
}

std::optional<TensorSlice> RowParallelLinearImpl::slice_of(const std::string& key,
                                                           const at::Tensor& local) const {
  const int tp = parallel_options.tp()->world_size();
  if (tp == 1) return std::nullopt;
  const int64_t index = parallel_options.tp()->rank();
  auto split_along = [&](int64_t dim) {
    std::vector<int64_t> global = local.sizes().vec();
    global[dim] *= tp;
    return TensorSlice{std::move(global), dim, index * local.size(dim)};
  };
  if (const std::optional<Extent> extent = layer_tensor_extent(key)) {
    if (*extent == Extent::kWeight) return split_along(1);
    if (*extent == Extent::kInputFeatures) return split_along(0);
    return std::nullopt;
  }
  const bool input = is_transform_key(Slot::kInput, key);
  // The weight (whatever its dtype and packing), and tensors shaped like it along the input
  // features: a mask, a block-wise amax [out, blocks, 1] (always split: its blocks cover
  // this rank's columns).
  if (key == "weight" || (!input && local.dim() >= 2 && local.size(0) == options.out_features() &&
                          (local.dim() >= 3 || local.size(1) > 1 || local.sizes().equals(weight.sizes())))) {
    return split_along(1);
  }
  const int64_t chunk = options.in_features();
  if (input && local.dim() == 1 && local.size(0) == chunk && chunk > 1) return split_along(0);
  return std::nullopt;
}

}  // namespace nn
}  // namespace mto
