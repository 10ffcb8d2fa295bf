#include "modes/quantization/split_reduction.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "distributed/tensor_slice.h"

namespace mto {
namespace quantization {

void SplitReduction::add(nn::DynamicLayer* layer, at::Tensor* tensor) {
  const auto* split = dynamic_cast<const SplitModule*>(layer);
  if (split == nullptr || split->split_group()->world_size() == 1) return;
  Communicator* communicator = split->split_group().get();
  auto it = std::find_if(groups_.begin(), groups_.end(),
                         [&](const Group& group) { return group.communicator == communicator; });
  if (it == groups_.end()) it = groups_.insert(groups_.end(), {communicator, {}});
  it->tensors.push_back(tensor);
}

void SplitReduction::run(ReduceOp op) {
  for (Group& group : groups_) {
    std::vector<at::Tensor> flat;
    for (at::Tensor* tensor : group.tensors) flat.push_back(tensor->reshape({-1}));
    at::Tensor buffer = at::cat(flat);
    group.communicator->all_reduce(buffer, op);
    int64_t at = 0;
    for (at::Tensor* tensor : group.tensors) {
      *tensor = buffer.narrow(0, at, tensor->numel()).reshape(tensor->sizes()).clone();
      at += tensor->numel();
    }
  }
  groups_.clear();
}

}  // namespace quantization
}  // namespace mto
