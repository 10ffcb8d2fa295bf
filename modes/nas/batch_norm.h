#pragma once

#include <functional>
#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/options/batchnorm.h>

namespace mto {
namespace nas {

// The per-channel state of a torch::nn::BatchNorm1d or BatchNorm2d, whatever its
// dimension. Points into the module, which must outlive it.
struct BatchNorm {
  torch::nn::Module* module;
  torch::nn::BatchNormOptions* options;
  at::Tensor* weight;
  at::Tensor* bias;
  at::Tensor* running_mean;
  at::Tensor* running_var;

  // The tensors with one entry per channel (undefined ones included).
  std::vector<at::Tensor*> per_channel() const { return {weight, bias, running_mean, running_var}; }
};

// `module` as a batch norm, or nullopt if it is none.
std::optional<BatchNorm> as_batch_norm(torch::nn::Module& module);

// Recomputes the running statistics of every batch norm of `model` that tracks them, as the
// exact average over the batches that `forward_loop` runs (the other modules keep their
// train/eval mode, gradients are off). Subnets change the activations that later batch
// norms see, so their statistics must be measured again before a subnet is scored. Does
// nothing for a model without batch norms.
void recalibrate_batch_norms(torch::nn::Module& model,
                             const std::function<void(torch::nn::Module&)>& forward_loop);

}  // namespace nas
}  // namespace mto
