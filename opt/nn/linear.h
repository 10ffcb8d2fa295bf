#pragma once

#include <ostream>

#include <torch/nn/cloneable.h>
#include <torch/nn/options/linear.h>
#include <torch/nn/pimpl.h>

#include "opt/nn/dynamic_layer.h"

namespace mto {
namespace nn {

// A drop-in replacement for torch::nn::Linear (same options, parameters "weight" and
// "bias", same initialization and output) whose input, weight and output pass through
// transform slots that modes fill. See DynamicLayer.
//
//   mto::nn::Linear fc(mto::nn::LinearOptions(784, 10).bias(false));
class LinearImpl : public torch::nn::Cloneable<LinearImpl>, public DynamicLayer {
 public:
  LinearImpl(int64_t in_features, int64_t out_features)
      : LinearImpl(torch::nn::LinearOptions(in_features, out_features)) {}
  explicit LinearImpl(const torch::nn::LinearOptions& options);

  // Creates the parameters and initializes them as torch::nn::Linear does.
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  // output = output_transforms(linear(input_transforms(x), weight_transforms(weight), bias))
  at::Tensor forward(const at::Tensor& input);

  torch::nn::Module& as_module() override { return *this; }

  torch::nn::LinearOptions options;
  // Shape [out_features, in_features].
  at::Tensor weight;
  // Shape [out_features]; undefined when options.bias() is false.
  at::Tensor bias;
};

TORCH_MODULE(Linear);

using LinearOptions = torch::nn::LinearOptions;

}  // namespace nn
}  // namespace mto
