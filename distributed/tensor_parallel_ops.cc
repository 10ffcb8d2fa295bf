#include "distributed/tensor_parallel_ops.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdint>
#include <stdexcept>

#include "absl/strings/str_cat.h"

namespace mto {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The communicator travels to backward in ctx->saved_data, which holds IValues only.
void save_communicator(AutogradContext* ctx, Communicator& tp) {
  ctx->saved_data["tp"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(&tp));
}

Communicator& saved_communicator(AutogradContext* ctx) {
  return *reinterpret_cast<Communicator*>(static_cast<intptr_t>(ctx->saved_data["tp"].toInt()));
}

at::Tensor sum_over(const at::Tensor& x, Communicator& tp) {
  at::Tensor sum = x.clone(at::MemoryFormat::Contiguous);
  tp.all_reduce(sum, ReduceOp::kSum);
  return sum;
}

at::Tensor gather_last_dim(const at::Tensor& x, Communicator& tp) {
  return at::cat(tp.all_gather(x), /*dim=*/-1);
}

at::Tensor chunk_of_last_dim(const at::Tensor& x, Communicator& tp) {
  const int64_t chunk = x.size(-1) / tp.world_size();
  return x.narrow(-1, tp.rank() * chunk, chunk).contiguous();
}

struct CopyToTensorParallel : torch::autograd::Function<CopyToTensorParallel> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, Communicator* tp) {
    save_communicator(ctx, *tp);
    return x;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {sum_over(grads[0], saved_communicator(ctx)), at::Tensor()};
  }
};

struct ReduceFromTensorParallel : torch::autograd::Function<ReduceFromTensorParallel> {
  static at::Tensor forward(AutogradContext*, const at::Tensor& x, Communicator* tp) {
    return sum_over(x, *tp);
  }
  static variable_list backward(AutogradContext*, variable_list grads) {
    return {grads[0], at::Tensor()};
  }
};

struct GatherFromTensorParallel : torch::autograd::Function<GatherFromTensorParallel> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, Communicator* tp) {
    save_communicator(ctx, *tp);
    return gather_last_dim(x, *tp);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {chunk_of_last_dim(grads[0], saved_communicator(ctx)), at::Tensor()};
  }
};

struct ScatterToTensorParallel : torch::autograd::Function<ScatterToTensorParallel> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, Communicator* tp) {
    save_communicator(ctx, *tp);
    return chunk_of_last_dim(x, *tp);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {gather_last_dim(grads[0], saved_communicator(ctx)), at::Tensor()};
  }
};

}  // namespace

at::Tensor copy_to_tensor_parallel(const at::Tensor& x, Communicator& tp) {
  if (tp.world_size() == 1) return x;
  return CopyToTensorParallel::apply(x, &tp);
}

at::Tensor reduce_from_tensor_parallel(const at::Tensor& x, Communicator& tp) {
  if (tp.world_size() == 1) return x;
  return ReduceFromTensorParallel::apply(x, &tp);
}

at::Tensor gather_from_tensor_parallel(const at::Tensor& x, Communicator& tp) {
  if (tp.world_size() == 1) return x;
  return GatherFromTensorParallel::apply(x, &tp);
}

at::Tensor scatter_to_tensor_parallel(const at::Tensor& x, Communicator& tp) {
  if (tp.world_size() == 1) return x;
  if (x.dim() == 0 || x.size(-1) % tp.world_size() != 0) {
    throw std::invalid_argument(absl::StrCat("scatter_to_tensor_parallel: the tensor-parallel size ",
                                             tp.world_size(), " does not divide the last dimension of ",
                                             "a tensor of shape ", c10::str(x.sizes())));
  }
  return ScatterToTensorParallel::apply(x, &tp);
}

}  // namespace mto
