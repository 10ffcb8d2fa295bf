#include "opt/nn/column_parallel_linear.h"

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

// Fills in the default group and checks that its size divides out_features.
ColumnParallelLinearOptions& resolve(ColumnParallelLinearOptions& options) {
  if (!options.tp()) options.tp(default_mesh()->tp());
  const int tp = options.tp()->world_size();
  if (options.out_features() % tp != 0) {
    throw DistributedError(absl::StrCat("ColumnParallelLinear: the tensor-parallel size ", tp,
                                        " does not divide out_features ", options.out_features(),
                                        " of a ", options.in_features(), " -> ",
                                        options.out_features(), " layer"));
  }
  return options;
}

torch::nn::LinearOptions local_options(const ColumnParallelLinearOptions& options) {
  return torch::nn::LinearOptions(options.in_features(), options.out_features() / options.tp()->world_size())
      .bias(options.bias());
}

}  // namespace

// The base class is built first: resolve() fills in `options` before the member copies it.
ColumnParallelLinearImpl::ColumnParallelLinearImpl(ColumnParallelLinearOptions options)
    : LinearImpl(local_options(resolve(options))), parallel_options(std::move(options)) {
  reset_parameters();
}

void ColumnParallelLinearImpl::reset() {
  LinearImpl::reset();
  reset_parameters();
}

void ColumnParallelLinearImpl::reset_parameters() {
  if (parameters_uninitialized()) return;
  const int64_t in = parallel_options.in_features();
  const int64_t out = parallel_options.out_features();
  const int64_t offset = parallel_options.tp()->rank() * options.out_features();
  const double bound = 1 / std::sqrt(static_cast<double>(in));
  global_uniform_(weight, TensorSlice{{out, in}, 0, offset}, seed_for(parallel_options.seed(), "weight"),
                  -bound, bound);
  if (bias.defined()) {
    global_uniform_(bias, TensorSlice{{out}, 0, offset}, seed_for(parallel_options.seed(), "bias"), -bound,
                    bound);
  }
}

void ColumnParallelLinearImpl::pretty_print(std::ostream& stream) const {
  stream << std::boolalpha << "mto::nn::ColumnParallelLinear(in_features=" << options.in_features()
         << ", out_features=" << parallel_options.out_features() << " (local " << options.out_features()
         << "), bias=" << options.bias() << ", gather_output=" << parallel_options.gather_output()
         << ", tp=" << parallel_options.tp()->world_size() << ")";
}

at::Tensor ColumnParallelLinearImpl::forward(const at::Tensor& x) {
  Communicator& tp = *parallel_options.tp();
  const at::Tensor input = apply_transforms(Slot::kInput, copy_to_tensor_parallel(x, tp));
  const at::Tensor y = apply_transforms(Slot::kOutput,
                                        at::linear(input, apply_transforms(Slot::kWeight, weight), bias));
  return parallel_options.gather_output() ? gather_from_tensor_parallel(y, tp) : y;
}

std::optional<TensorSlice> ColumnParallelLinearImpl::slice_of(const std::string& key,
                                                              const at::Tensor& local) const {
  // Rows of the weight (whatever its dtype and packing), its per-row transform tensors and
  // the output's per-feature ones; the input is whole on every rank, and so are its
  // transforms.
  if (parallel_options.tp()->world_size() == 1) return std::nullopt;
  const int64_t rows = options.out_features();
  bool split = key == "weight" || key == "bias";
  if (const std::optional<Extent> extent = layer_tensor_extent(key)) {
    split = *extent == Extent::kWeight || *extent == Extent::kOutputFeatures;
  } else if (!split) {
    split = !is_transform_key(Slot::kInput, key) && local.dim() >= 1 && local.size(0) == rows &&
            (rows > 1 || local.sizes().equals(weight.sizes()));
  }
  if (!split) return std::nullopt;
  std::vector<int64_t> global_shape = local.sizes().vec();
  global_shape[0] = local.size(0) * parallel_options.tp()->world_size();
  return TensorSlice{std::move(global_shape), 0, parallel_options.tp()->rank() * local.size(0)};
}

}  // namespace nn
}  // namespace mto
