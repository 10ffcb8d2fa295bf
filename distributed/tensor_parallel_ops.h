#pragma once

#include <ATen/core/Tensor.h>

#include "distributed/communicator.h"

namespace mto {

// Autograd-aware collectives of Megatron-style tensor parallelism over the tensor-parallel
// group `tp` of a replica (Mesh::tp()). Each is the identity, with no collective, when `tp`
// has one rank. `tp` must outlive the backward pass of every output these return: their
// backward runs a collective on it. Backward collectives run in the thread that calls
// backward(), so every rank of `tp` must call backward() on the same graph.

// Returns `x` unchanged; backward all-reduces (sums) the gradient over `tp`. Marks where a
// tensor that every rank holds whole enters a tensor-parallel region (the input of a
// column-parallel layer). Collective: every rank of `tp` must call it, in the same order.
at::Tensor copy_to_tensor_parallel(const at::Tensor& x, Communicator& tp);

// Returns the sum of `x` over `tp` (a new tensor; `x` is not modified); backward passes the
// gradient unchanged. Combines the partial outputs of a row-parallel layer. Collective: every
// rank of `tp` must call it, in the same order.
at::Tensor reduce_from_tensor_parallel(const at::Tensor& x, Communicator& tp);

// Returns the `x` of every rank of `tp` concatenated along the last dimension, in rank order
// (every rank's `x` must have the same shape); backward returns this rank's chunk of the
// gradient. Collective: every rank of `tp` must call it, in the same order.
at::Tensor gather_from_tensor_parallel(const at::Tensor& x, Communicator& tp);

// Returns this rank's chunk of the last dimension of `x` (which every rank holds whole and
// equal; its last dimension must be divisible by the size of `tp`); backward all-gathers the
// gradient, so `x` gets its whole gradient on every rank. Collective: every rank of `tp` must
// call it, in the same order.
at::Tensor scatter_to_tensor_parallel(const at::Tensor& x, Communicator& tp);

}  // namespace mto
