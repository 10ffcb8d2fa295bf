#include "modes/sparsity/sparsity.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/nn/cloneable.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "absl/strings/str_cat.h"
#include "opt/nn/conv2d.h"
#include "opt/nn/linear.h"

namespace mto {
namespace sparsity {
struct BufferEraser;
}  // namespace sparsity
}  // namespace mto

// torch::nn::Module (LibTorch 1.13) cannot unregister a buffer and keeps its buffers
// private, but befriends every Cloneable<T>: this specialization for a type of ours is the
// one place that erases a buffer, so that export leaves no `_weight_mask` key behind.
template <>
class torch::nn::Cloneable<mto::sparsity::BufferEraser> {
 public:
  static void erase(torch::nn::Module& module, const std::string& name) { module.buffers_.erase(name); }
};

namespace mto {
namespace sparsity {
namespace {

// Multiplies the weight by a mask in the weight slot. It holds the layer's `_weight_mask`
// buffer (the same tensor, not a copy), so a restore that loads the buffer in place also
// changes what the transform applies, and registers nothing itself.
class SparseWeightImpl : public nn::TransformImpl {
 public:
  explicit SparseWeightImpl(at::Tensor mask) : mask_(std::move(mask)) {}
  at::Tensor forward(const at::Tensor& weight) override { return weight * mask_; }

 private:
  at::Tensor mask_;
};

// The weight of a mto::nn::Linear or mto::nn::Conv2d layer; undefined for other layers.
at::Tensor layer_weight(nn::DynamicLayer& layer) {
  if (auto* linear = dynamic_cast<nn::LinearImpl*>(&layer)) return linear->weight;
  if (auto* conv = dynamic_cast<nn::Conv2dImpl*>(&layer)) return conv->weight;
  return at::Tensor();
}

}  // namespace

at::Tensor mask_2to4(const at::Tensor& weight) {
  if (weight.dim() < 2 || weight.size(1) % 4 != 0) {
    throw std::invalid_argument(absl::StrCat("2:4 sparsity needs a weight whose dimension 1 is a multiple of 4, ",
                                             "got shape ", c10::str(weight.sizes())));
  }
  torch::NoGradGuard no_grad;
  if (!at::isfinite(weight).all().item<bool>()) {
    throw std::invalid_argument("2:4 sparsity needs finite weights, got NaN or infinite values");
  }
  // Groups of 4 consecutive input entries: move dim 1 last, then rows of 4.
  const at::Tensor moved = weight.movedim(1, -1);
  const at::Tensor magnitude = moved.abs().reshape({-1, 4});
  // rank[g][i] = how many entries of group g come before entry i in the order "larger
  // magnitude first, then lower index": exactly one entry has each rank 0..3.
  const at::Tensor other = magnitude.unsqueeze(1);  // [groups, 1, 4]: entry j
  const at::Tensor self = magnitude.unsqueeze(2);   // [groups, 4, 1]: entry i
  const at::Tensor lower_index = at::ones({4, 4}, magnitude.options().dtype(at::kBool)).tril(-1);  // [i][j]: j < i
  const at::Tensor before = other.gt(self).logical_or(other.eq(self).logical_and(lower_index));
  const at::Tensor keep = before.sum(-1).lt(2);
  return keep.reshape(moved.sizes()).movedim(-1, 1).contiguous();
}

bool is_sparsifiable(nn::DynamicLayer& layer) {
  const at::Tensor weight = layer_weight(layer);
  return weight.defined() && weight.size(1) % 4 == 0;
}

void add_weight_mask(nn::DynamicLayer& layer, const at::Tensor& mask) {
  torch::nn::Module& module = layer.as_module();
  if (weight_mask(layer).defined()) {
    throw std::invalid_argument(absl::StrCat("layer ", module.name(), " is sparse already"));
  }
  const at::Tensor weight = layer_weight(layer);
  if (!weight.defined() || mask.scalar_type() != at::kBool || !mask.sizes().equals(weight.sizes())) {
    throw std::invalid_argument(absl::StrCat("a weight mask must be a bool tensor of the weight's shape, got ",
                                             c10::str(mask.scalar_type(), mask.sizes())));
  }
  module.register_buffer(kWeightMask, mask);
  layer.add_transform(nn::Slot::kWeight, kSparseWeight, std::make_shared<SparseWeightImpl>(mask));
  torch::NoGradGuard no_grad;
  weight.mul_(mask);
}

bool fold_weight_mask(nn::DynamicLayer& layer) {
  const at::Tensor mask = weight_mask(layer);
  if (!mask.defined()) return false;
  {
    torch::NoGradGuard no_grad;
    layer_weight(layer).mul_(mask);
  }
  layer.remove_transform(kSparseWeight);
  torch::nn::Cloneable<BufferEraser>::erase(layer.as_module(), kWeightMask);
  return true;
}

at::Tensor weight_mask(nn::DynamicLayer& layer) {
  if (layer.transform(kSparseWeight) == nullptr) return at::Tensor();
  const auto buffers = layer.as_module().named_buffers(/*recurse=*/false);
  const at::Tensor* buffer = buffers.find(kWeightMask);
  return buffer != nullptr ? *buffer : at::Tensor();
}

std::vector<std::string> sparse_layer_names(torch::nn::Module& model) {
  std::vector<std::string> out;
  for (const auto& [name, layer] : nn::named_dynamic_layers(model)) {
    if (weight_mask(*layer).defined()) out.push_back(name);
  }
  return out;
}

std::vector<LayerSparsity> weight_sparsity(torch::nn::Module& model) {
  torch::NoGradGuard no_grad;
  std::vector<LayerSparsity> out;
  for (const auto& [name, layer] : nn::named_dynamic_layers(model)) {
    at::Tensor weight = layer_weight(*layer);
    if (!weight.defined()) continue;
    const at::Tensor mask = weight_mask(*layer);
    if (mask.defined()) weight = weight * mask;
    out.push_back({name, mask.defined(), weight.eq(0).sum().item<int64_t>(), weight.numel()});
  }
  return out;
}

}  // namespace sparsity
}  // namespace mto
