#pragma once

#include <vector>

#include <ATen/core/Tensor.h>

#include "distributed/communicator.h"
#include "opt/nn/dynamic_layer.h"

namespace mto {
namespace quantization {

// Statistics of layers split over tensor-parallel groups that the ranks of each group must
// combine (a maximum over a split dimension, a sum over split rows), gathered so that each
// group needs one collective however many layers and reductions it has.
//
//   SplitReduction reduction;
//   for (...) reduction.add(layer, &w_max, ReduceOp::kMax);  // no-op for a layer on one rank
//   reduction.add(layer, &sums, ReduceOp::kSum);
//   reduction.run();                                        // one collective per group
//
// Every rank of a group must add the same layers in the same order with tensors of the same
// dtype and shapes. Not thread-safe.
class SplitReduction {
 public:
  // Adds `*tensor` to be reduced with `op` over the group of `layer` if it is a SplitModule
  // split over more than one rank; otherwise does nothing. `tensor` must stay valid until
  // run().
  void add(nn::DynamicLayer* layer, at::Tensor* tensor, ReduceOp op);

  // Reduces every added tensor over its group and writes the result back (same dtype and
  // shape), groups in order of their first layer. A group whose tensors share one op gets
  // one all-reduce; one with several ops one all-gather, combined here in rank order, in
  // float64. Tensors of different dtypes travel as float64 (integers exactly below 2^53).
  // Collective over each group.
  void run();

 private:
  struct Entry {
    at::Tensor* tensor;
    ReduceOp op;
  };
  struct Group {
    Communicator* communicator;
    std::vector<Entry> entries;
  };
  std::vector<Group> groups_;
};

}  // namespace quantization
}  // namespace mto
