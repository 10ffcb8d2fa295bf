#include "distributed/data_parallel.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "distributed/bucketing.h"

namespace mto {
namespace {

// Fused collectives move at most this much at a time.
constexpr size_t kBucketBytes = size_t{32} << 20;

}  // namespace

DataParallelImpl::DataParallelImpl(std::shared_ptr<torch::nn::Module> module,
                                   std::shared_ptr<Communicator> communicator)
    : torch::nn::Module("mto::DataParallel"),
      module_(register_module("module", std::move(module))),
      communicator_(std::move(communicator)) {
  broadcast_state();
}

void DataParallelImpl::broadcast_state() {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> tensors;
  for (const auto& p : module_->parameters()) tensors.push_back(p);
  for (const auto& b : module_->buffers()) {
    if (b.defined()) tensors.push_back(b);
  }
  for_each_bucket(tensors, kBucketBytes, [&](const at::Tensor& flat) { communicator_->broadcast(flat, 0); });
}

void DataParallelImpl::average_gradients() {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> grads;
  for (auto& p : module_->parameters()) {
    if (!p.requires_grad()) continue;
    if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
    grads.push_back(p.grad());
  }
  const double scale = 1.0 / communicator_->world_size();
  for_each_bucket(grads, kBucketBytes, [&](const at::Tensor& flat) {
    communicator_->all_reduce(flat, ReduceOp::kSum);
    flat.mul_(scale);
  });
}

void DataParallelImpl::pretty_print(std::ostream& stream) const {
  stream << "mto::DataParallel(world_size=" << communicator_->world_size()
         << ", backend=" << communicator_->backend_name() << ")";
}

bool is_data_parallel(const torch::nn::Module& module) {
  return dynamic_cast<const DataParallelImpl*>(&module) != nullptr;
}

std::shared_ptr<torch::nn::Module> unwrap_data_parallel(
    const std::shared_ptr<torch::nn::Module>& module) {
  if (auto dp = std::dynamic_pointer_cast<DataParallelImpl>(module)) return dp->module();
  return module;
}

}  // namespace mto
