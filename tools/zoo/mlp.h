#pragma once

#include <cstdint>
#include <ostream>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "opt/nn/linear.h"

namespace mto {
namespace zoo {

// Options of FashionMlp.
struct FashionMlpOptions {
  // Reads the model-like arguments {"hidden": [h1, h2, ...]}, all optional. Throws
  // mto::ConfigError on an unknown key or a value of the wrong type.
  static FashionMlpOptions from_json(const nlohmann::json& args);

  // Widths of the hidden layers, in order (each positive; may be empty).
  TORCH_ARG(std::vector<int64_t>, hidden) = {256, 128};
};

// A perceptron for 28x28 grey images (Fashion-MNIST) that returns 10 logits:
//   flatten - fc1 - relu - fc2 - relu - ... - fc<k+1>   (k = hidden().size())
// Every layer is an mto::nn::Linear. Registered as the model-like "fashion_mlp". Not safe
// to share between threads that train it.
class FashionMlpImpl : public torch::nn::Module {
 public:
  // Throws mto::ConfigError if a width is not positive.
  explicit FashionMlpImpl(FashionMlpOptions options = {});

  // Maps images [N, 1, 28, 28] (or [N, 784]) to logits [N, 10]; throws
  // std::invalid_argument on another shape.
  at::Tensor forward(const at::Tensor& images);

  void pretty_print(std::ostream& stream) const override;

  FashionMlpOptions options;
  // fc1, fc2, ..., in order.
  std::vector<mto::nn::Linear> layers;
};

TORCH_MODULE(FashionMlp);

}  // namespace zoo
}  // namespace mto
