#pragma once

// Helpers shared by the sparsity tests.

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/optim/optimizer.h>

#include <string>
#include <vector>

#include "opt/mode.h"
#include "opt/state_dict.h"
#include "tests/opt/testing/test_modes.h"

namespace mto {
namespace test {

// The state-dict keys of `model`, in order.
inline std::vector<std::string> state_dict_keys(torch::nn::Module& model) {
  std::vector<std::string> keys;
  for (const auto& entry : model_state_dict(model)) keys.push_back(entry.name);
  return keys;
}

// Runs `steps` optimizer steps of `model` (a TestMlp or TestCnn) on seeded random batches,
// pulling its outputs towards 1.
inline void train_steps(const ModulePtr& model, torch::optim::Optimizer& optimizer, int steps) {
  const std::vector<int64_t> shape = test_input(model).sizes().vec();
  for (int step = 0; step < steps; ++step) {
    at::manual_seed(300 + step);
    optimizer.zero_grad();
    const at::Tensor loss = (test_forward(model, at::randn(shape)) - 1).pow(2).mean();
    loss.backward();
    optimizer.step();
  }
}

}  // namespace test
}  // namespace mto
