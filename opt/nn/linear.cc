#include "opt/nn/linear.h"

#include <ATen/ATen.h>
#include <torch/nn/init.h>

#include <cmath>

#include "opt/nn/uninitialized.h"

namespace mto {
namespace nn {

LinearImpl::LinearImpl(const torch::nn::LinearOptions& options) : options(options) { reset(); }

void LinearImpl::reset() {
  weight = register_parameter("weight", at::empty({options.out_features(), options.in_features()}));
  if (options.bias()) {
    bias = register_parameter("bias", at::empty({options.out_features()}));
  } else {
    bias = register_parameter("bias", at::Tensor(), /*requires_grad=*/false);
  }
  reset_parameters();
}

void LinearImpl::reset_parameters() {
  if (parameters_uninitialized()) return;
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5));
  if (bias.defined()) {
    int64_t fan_in = 0;
    int64_t fan_out = 0;
    std::tie(fan_in, fan_out) = torch::nn::init::_calculate_fan_in_and_fan_out(weight);
    const double bound = 1 / std::sqrt(fan_in);
    torch::nn::init::uniform_(bias, -bound, bound);
  }
}

void LinearImpl::pretty_print(std::ostream& stream) const {
  stream << std::boolalpha << "mto::nn::Linear(in_features=" << options.in_features()
         << ", out_features=" << options.out_features() << ", bias=" << options.bias() << ")";
}

at::Tensor LinearImpl::forward(const at::Tensor& input) {
  at::Tensor y = at::linear(apply_transforms(Slot::kInput, input),
                            apply_transforms(Slot::kWeight, weight), bias);
  return apply_transforms(Slot::kOutput, y);
}

}  // namespace nn
}  // namespace mto
