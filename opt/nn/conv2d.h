#pragma once

#include <ostream>

#include <torch/nn/modules/conv.h>
#include <torch/nn/pimpl.h>

#include "opt/nn/dynamic_layer.h"

namespace mto {
namespace nn {

// A drop-in replacement for torch::nn::Conv2d (same options, parameters "weight" and
// "bias", same initialization, padding modes and output) whose input, weight and output
// pass through transform slots that modes fill. See DynamicLayer.
//
//   mto::nn::Conv2d conv(mto::nn::Conv2dOptions(1, 16, 3).padding(1));
class Conv2dImpl : public torch::nn::ConvNdImpl<2, Conv2dImpl>, public DynamicLayer {
 public:
  Conv2dImpl(int64_t input_channels, int64_t output_channels,
             torch::ExpandingArray<2> kernel_size)
      : Conv2dImpl(torch::nn::Conv2dOptions(input_channels, output_channels, kernel_size)) {}
  explicit Conv2dImpl(torch::nn::Conv2dOptions options);

  void pretty_print(std::ostream& stream) const override;

  // output = output_transforms(conv2d(input_transforms(x), weight_transforms(weight), bias))
  at::Tensor forward(const at::Tensor& input);

  torch::nn::Module& as_module() override { return *this; }
};

TORCH_MODULE(Conv2d);

using Conv2dOptions = torch::nn::Conv2dOptions;

}  // namespace nn
}  // namespace mto
