#pragma once

// Helpers shared by the sparsity tests.

#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/optim/optimizer.h>

#include <cstring>
#include <string>
#include <vector>

#include "opt/mode.h"
#include "opt/state_dict.h"
#include "tests/opt/testing/test_modes.h"

namespace mto {
namespace test {

// Whether `a` and `b` have the same dtype, shape and bytes (so -0.0 differs from 0.0).
inline bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || !a.sizes().equals(b.sizes())) return false;
  const at::Tensor ca = a.contiguous();
  const at::Tensor cb = b.contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) == 0;
}

// Expects the state dicts of `actual` and `expected` to hold the same keys in the same
// order with bit-identical tensors.
inline void expect_same_state_dict(torch::nn::Module& actual, torch::nn::Module& expected,
                                   const std::string& where) {
  const auto a = model_state_dict(actual);
  const auto e = model_state_dict(expected);
  ASSERT_EQ(a.size(), e.size()) << where;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].name, e[i].name) << where;
    EXPECT_TRUE(same_bytes(a[i].tensor, e[i].tensor)) << where << ": " << a[i].name;
  }
}

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
