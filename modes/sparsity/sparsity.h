#pragma once

// 2:4 structured sparsity on mto::nn::Linear and mto::nn::Conv2d layers, as the modes
// "sparse_magnitude" and "export_sparse" apply it:
//
//   ModulePtr sparse = mto::apply_mode(model, "sparse_magnitude");  // mask; fine-tune
//   ModulePtr dense = mto::apply_mode(sparse, "export_sparse");     // fold the mask in
//
// A sparse layer holds its mask as the buffer `_weight_mask` (bool, the weight's shape), so
// the state-dict key is "<layer>._weight_mask" as in the Python original, and a weight-slot
// transform `sparse_weight` (with no parameters or buffers of its own) that computes the
// effective weight `weight * _weight_mask`. The masked entries of the weight parameter are
// zeroed when the mask is added; their gradient through the mask is zero, so training keeps
// the layer 2:4 sparse. The functions here are not safe to call while the model runs.

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "opt/nn/dynamic_layer.h"

namespace mto {
namespace sparsity {

// The name of the mask buffer on a sparse layer.
inline constexpr char kWeightMask[] = "_weight_mask";
// The name of the weight-slot transform of a sparse layer.
inline constexpr char kSparseWeight[] = "sparse_weight";

// The 2:4 magnitude mask of `weight` ([out, in] or [out, in, kh, kw]): for every group of 4
// consecutive entries along the input dimension (dim 1), true for the 2 with the largest
// absolute value. Ties go to the lower index: |w| = (1, 1, 1, 1) keeps entries 0 and 1.
// Returns a bool tensor of the weight's shape with exactly two true entries per group.
// Throws std::invalid_argument if the weight has fewer than 2 dimensions, its size along
// dim 1 is not a multiple of 4, or it holds NaN or infinite values.
at::Tensor mask_2to4(const at::Tensor& weight);

// Whether `layer` can take a 2:4 mask: a mto::nn::Linear or mto::nn::Conv2d whose weight's
// input dimension (in_features, or in_channels / groups) is a multiple of 4.
bool is_sparsifiable(nn::DynamicLayer& layer);

// Makes `layer` sparse with `mask` (a bool tensor of the weight's shape): registers it as
// the buffer `_weight_mask`, adds the `sparse_weight` transform and zeroes the masked
// entries of the weight. The buffer is `mask` itself. Throws std::invalid_argument if the
// layer is sparse already or the mask does not fit its weight.
void add_weight_mask(nn::DynamicLayer& layer, const at::Tensor& mask);

// Makes the sparse `layer` dense again: multiplies its weight by the mask in place (so its
// weight is the effective weight it computed with), then removes the transform and the
// `_weight_mask` buffer. Returns false, changing nothing, if the layer is not sparse.
bool fold_weight_mask(nn::DynamicLayer& layer);

// The mask of the sparse `layer` (the `_weight_mask` buffer itself), or an undefined tensor
// if the layer is not sparse.
at::Tensor weight_mask(nn::DynamicLayer& layer);

// Dotted names of the sparse layers of `model` ("" for the model itself), in module order.
std::vector<std::string> sparse_layer_names(torch::nn::Module& model);

// How sparse one layer's effective weight is.
struct LayerSparsity {
  std::string name;    // the layer's dotted name, e.g. "fc1"
  bool masked;         // whether the layer holds a 2:4 mask
  int64_t zeros;       // zero entries of the effective weight (weight * mask when masked)
  int64_t numel;       // entries of the weight
};

// The sparsity of every mto::nn::Linear and mto::nn::Conv2d layer of `model`, in module
// order, e.g. for a report.
std::vector<LayerSparsity> weight_sparsity(torch::nn::Module& model);

}  // namespace sparsity
}  // namespace mto
