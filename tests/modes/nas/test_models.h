// Small models for the pruning tests, registered as model-likes so that checkpoints restore
// with no model code: "nas_test_cnn" ({"batch_norm": bool, "seed": int}) and
// "nas_test_residual" ({"seed": int}).
#pragma once

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>

#include <memory>

#include "opt/model_like.h"
#include "opt/nn/conv2d.h"
#include "opt/nn/linear.h"

namespace mto {
namespace nas {
namespace test {

// conv1 (1->8) [bn1] relu pool - conv2 (8->16) [bn2] relu pool - flatten - fc1 (64->32)
// relu - fc2 (32->10), on images [N, 1, 8, 8].
struct TestCnnImpl : torch::nn::Module {
  explicit TestCnnImpl(bool batch_norm) {
    conv1 = register_module("conv1", mto::nn::Conv2d(mto::nn::Conv2dOptions(1, 8, 3).padding(1)));
    conv2 = register_module("conv2", mto::nn::Conv2d(mto::nn::Conv2dOptions(8, 16, 3).padding(1)));
    if (batch_norm) {
      bn1 = register_module("bn1", torch::nn::BatchNorm2d(8));
      bn2 = register_module("bn2", torch::nn::BatchNorm2d(16));
    }
    fc1 = register_module("fc1", mto::nn::Linear(64, 32));
    fc2 = register_module("fc2", mto::nn::Linear(32, 10));
  }
  at::Tensor forward(const at::Tensor& images) {
    at::Tensor x = conv1->forward(images);
    if (bn1) x = bn1->forward(x);
    x = at::max_pool2d(at::relu(x), 2);
    x = conv2->forward(x);
    if (bn2) x = bn2->forward(x);
    x = at::max_pool2d(at::relu(x), 2);
    x = at::relu(fc1->forward(x.flatten(1)));
    return fc2->forward(x);
  }
  mto::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr};
  mto::nn::Linear fc1{nullptr}, fc2{nullptr};
};

// fc1 (16->32) relu fc2 (32->16), added to the input, relu, fc3 (16->4): only fc1's width
// is free; fc2's output meets the input.
struct TestResidualImpl : torch::nn::Module {
  TestResidualImpl() {
    fc1 = register_module("fc1", mto::nn::Linear(16, 32));
    fc2 = register_module("fc2", mto::nn::Linear(32, 16));
    fc3 = register_module("fc3", mto::nn::Linear(16, 4));
  }
  at::Tensor forward(const at::Tensor& x) {
    return fc3->forward(at::relu(x + fc2->forward(at::relu(fc1->forward(x)))));
  }
  mto::nn::Linear fc1{nullptr}, fc2{nullptr}, fc3{nullptr};
};

// Runs either test model on `input`.
inline at::Tensor run(torch::nn::Module& model, const at::Tensor& input) {
  if (auto* cnn = dynamic_cast<TestCnnImpl*>(&model)) return cnn->forward(input);
  return dynamic_cast<TestResidualImpl&>(model).forward(input);
}

inline ModelLike cnn_like(bool batch_norm, int seed = 1) {
  return ModelLike("nas_test_cnn", {{"batch_norm", batch_norm}, {"seed", seed}});
}

}  // namespace test
}  // namespace nas
}  // namespace mto
