#pragma once

#include <vector>

#include <torch/nn/module.h>

#include "serialization/shard_writer.h"

namespace mto {

// The tensors of `model`'s state dict: every defined parameter, then every buffer, under
// their dotted keys ("fc1.weight", "fc1.weight_quantizer._amax"), in registration order.
// The tensors share storage with the model.
std::vector<NamedTensor> model_state_dict(const torch::nn::Module& model);

}  // namespace mto
