#pragma once

#include <vector>

#include <ATen/core/Tensor.h>

#include "distributed/communicator.h"
#include "opt/nn/dynamic_layer.h"

namespace mto {
namespace quantization {

// Statistics of layers split over tensor-parallel groups that the ranks of each group must
// combine (a maximum over a split dimension, a sum over split rows), gathered so that each
// group needs one fused all-reduce however many layers it has.
//
//   SplitReduction reduction;
//   for (...) reduction.add(layer, &w_max);    // no-op for a layer on one rank
//   reduction.run(ReduceOp::kMax);             // collective over each group
//
// Every rank of a group must add the same layers in the same order with tensors of the same
// dtype and shapes. Not thread-safe.
class SplitReduction {
 public:
  // Adds `*tensor` to be reduced over the group of `layer` if it is a SplitModule split over
  // more than one rank; otherwise does nothing. `tensor` must stay valid until run().
  void add(nn::DynamicLayer* layer, at::Tensor* tensor);

  // Reduces every added tensor over its group with `op` and writes the result back, one
  // all-reduce per group, groups in order of their first layer. Collective over each group.
  void run(ReduceOp op);

 private:
  struct Group {
    Communicator* communicator;
    std::vector<at::Tensor*> tensors;
  };
  std::vector<Group> groups_;
};

}  // namespace quantization
}  // namespace mto
