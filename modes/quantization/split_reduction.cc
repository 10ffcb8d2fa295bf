#include "modes/quantization/split_reduction.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "distributed/tensor_slice.h"

namespace mto {
namespace quantization {
namespace {

// `a` combined with `b` by `op`.
at::Tensor combine(const at::Tensor& a, const at::Tensor& b, ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return a + b;
    case ReduceOp::kMax:
      return at::maximum(a, b);
    case ReduceOp::kMin:
      return at::minimum(a, b);
  }
  return a;
}

}  // namespace

void SplitReduction::add(nn::DynamicLayer* layer, at::Tensor* tensor, ReduceOp op) {
  const SplitModule* split = split_over_ranks(layer);
  if (split == nullptr) return;
  Communicator* communicator = split->split_group().get();
  auto it = std::find_if(groups_.begin(), groups_.end(),
                         [&](const Group& group) { return group.communicator == communicator; });
  if (it == groups_.end()) it = groups_.insert(groups_.end(), {communicator, {}});
  it->entries.push_back({tensor, op});
}

void SplitReduction::run() {
  for (Group& group : groups_) {
    // One buffer in the group's dtype, or float64 if its tensors differ; each part cast back.
    const at::ScalarType first_type = group.entries.front().tensor->scalar_type();
    const bool one_type = std::all_of(group.entries.begin(), group.entries.end(),
                                      [&](const Entry& entry) { return entry.tensor->scalar_type() == first_type; });
    const bool one_op = std::all_of(group.entries.begin(), group.entries.end(),
                                    [&](const Entry& entry) { return entry.op == group.entries.front().op; });
    std::vector<at::Tensor> flat;
    for (const Entry& entry : group.entries) {
      flat.push_back(entry.tensor->reshape({-1}).to(one_type ? first_type : at::kDouble));
    }
    at::Tensor buffer = at::cat(flat);
    std::vector<at::Tensor> gathered;
    if (one_op) {
      group.communicator->all_reduce(buffer, group.entries.front().op);
    } else {
      gathered = group.communicator->all_gather(buffer);
    }
    int64_t at = 0;
    for (const Entry& entry : group.entries) {
      const int64_t n = entry.tensor->numel();
      at::Tensor reduced;
      if (one_op) {
        reduced = buffer.narrow(0, at, n);
      } else {
        reduced = gathered[0].narrow(0, at, n).to(at::kDouble);
        for (size_t r = 1; r < gathered.size(); ++r) {
          reduced = combine(reduced, gathered[r].narrow(0, at, n).to(at::kDouble), entry.op);
        }
      }
      *entry.tensor = reduced.reshape(entry.tensor->sizes()).to(entry.tensor->scalar_type()).clone();
      at += n;
    }
  }
  groups_.clear();
}

}  // namespace quantization
}  // namespace mto
