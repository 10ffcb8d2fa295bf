#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>

#include "distributed/tensor_slice.h"

namespace mto {

// Random initialization defined on the global tensor: element i of the global tensor (in
// row-major order) gets a value that depends only on `seed` and i, computed with a
// counter-based hash (splitmix64). A rank initializes its slice with no communication and
// without materializing the global tensor, and gets bit for bit what the same slice of the
// whole tensor initialized with the same seed holds, whatever the split. The values do not
// depend on at::manual_seed and leave LibTorch's generator untouched.
//
//   mto::global_uniform_(weight, {{out, in}, /*dim=*/0, /*offset=*/rank * rows}, seed, -b, b);
//
// `local` must be a float32 or float64 CPU tensor; values are computed in double and rounded
// to its dtype. They are written in place, bypassing autograd (so a parameter that requires a
// gradient can be initialized). Throws std::invalid_argument if `local` does not fit `slice`
// (rank, sizes outside `slice.dim`, rows past the end) or has another dtype.

// Fills `local` with values uniform in [low, high) (rounding to float32 may reach `high`).
void global_uniform_(const at::Tensor& local, const TensorSlice& slice, uint64_t seed, double low,
                     double high);

// Fills `local` with normal values of mean `mean` and standard deviation `std` (Box-Muller
// on two uniforms drawn from differently-keyed streams).
void global_normal_(const at::Tensor& local, const TensorSlice& slice, uint64_t seed, double mean,
                    double std);

// The slice that a whole (unsplit) tensor of this shape is: dim 0, offset 0.
TensorSlice whole_slice(const at::Tensor& tensor);

// global_uniform_ / global_normal_ on a whole tensor.
void global_uniform_(const at::Tensor& whole, uint64_t seed, double low, double high);
void global_normal_(const at::Tensor& whole, uint64_t seed, double mean, double std);

// A seed for the stream `name` derived from `base_seed` (e.g. a layer's seed and "weight"),
// so that the tensors of a model get independent streams from one seed.
uint64_t seed_for(uint64_t base_seed, const std::string& name);

}  // namespace mto
