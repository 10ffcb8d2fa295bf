#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "distributed/tensor_slice.h"

namespace mto {

// A tensor of a state dict, under its key.
struct NamedTensor {
  std::string name;
  at::Tensor tensor;
};

// The tensors of `model`'s state dict: every defined parameter, then every buffer, under
// their dotted keys ("fc1.weight", "fc1.weight_quantizer._amax"), in registration order.
// The tensors share storage with the model.
std::vector<NamedTensor> model_state_dict(const torch::nn::Module& model);

// A state-dict tensor and, when it is a slice of a larger tensor split over ranks, where it
// sits in that global tensor.
struct StateTensor {
  std::string name;
  at::Tensor tensor;
  // Set for tensors under a SplitModule (tensor-parallel layers) that are slices; unset for
  // tensors this rank holds whole.
  std::optional<TensorSlice> slice;
};

// model_state_dict with each tensor's slice, as the SplitModules of `model` report them.
std::vector<StateTensor> model_state_slices(const torch::nn::Module& model);

}  // namespace mto
