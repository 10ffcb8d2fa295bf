#pragma once

#include <cstdint>
#include <ostream>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "opt/nn/conv2d.h"
#include "opt/nn/linear.h"

namespace mto {
namespace zoo {

// Options of FashionCnn; the defaults are the demo model.
struct FashionCnnOptions {
  // Reads the model-like arguments {"channels": [c1, c2], "hidden": h}, all optional.
  // Throws mto::ConfigError on an unknown key or a value of the wrong type.
  static FashionCnnOptions from_json(const nlohmann::json& args);

  // Output channels of conv1 and conv2 (exactly two, each positive).
  TORCH_ARG(std::vector<int64_t>, channels) = {16, 32};
  // Width of the hidden fully connected layer (positive).
  TORCH_ARG(int64_t, hidden) = 128;
};

// A small CNN for 28x28 grey images (Fashion-MNIST) that returns 10 logits:
//   conv1 (3x3, pad 1) - relu - maxpool 2 - conv2 (3x3, pad 1) - relu - maxpool 2
//   - flatten - fc1 - relu - fc2
// Every layer a mode may change is an mto::nn layer. Registered as the model-like
// "fashion_cnn". Not safe to share between threads that train it.
class FashionCnnImpl : public torch::nn::Module {
 public:
  // Throws mto::ConfigError if an option is out of range.
  explicit FashionCnnImpl(FashionCnnOptions options = {});

  // Maps images [N, 1, 28, 28] to logits [N, 10]; throws std::invalid_argument on
  // another shape.
  at::Tensor forward(const at::Tensor& images);

  void pretty_print(std::ostream& stream) const override;

  FashionCnnOptions options;
  mto::nn::Conv2d conv1{nullptr};
  mto::nn::Conv2d conv2{nullptr};
  mto::nn::Linear fc1{nullptr};
  mto::nn::Linear fc2{nullptr};
};

TORCH_MODULE(FashionCnn);

}  // namespace zoo
}  // namespace mto
