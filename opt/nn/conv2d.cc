#include "opt/nn/conv2d.h"

#include <torch/nn/functional/conv.h>
#include <torch/nn/functional/padding.h>

#include <sstream>
#include <stdexcept>

namespace mto {
namespace nn {
namespace {

torch::nn::functional::PadFuncOptions::mode_t pad_mode(
    const torch::nn::detail::conv_padding_mode_t& mode) {
  if (c10::get_if<torch::enumtype::kReflect>(&mode)) return torch::kReflect;
  if (c10::get_if<torch::enumtype::kReplicate>(&mode)) return torch::kReplicate;
  if (c10::get_if<torch::enumtype::kCircular>(&mode)) return torch::kCircular;
  throw std::invalid_argument("unsupported padding mode");
}

}  // namespace

Conv2dImpl::Conv2dImpl(torch::nn::Conv2dOptions options)
    : ConvNdImpl(torch::nn::detail::ConvNdOptions<2>(options.in_channels(),
                                                    options.out_channels(),
                                                    options.kernel_size())
                     .stride(options.stride())
                     .padding(options.padding())
                     .dilation(options.dilation())
                     .transposed(false)
                     .output_padding(0)
                     .groups(options.groups())
                     .bias(options.bias())
                     .padding_mode(options.padding_mode())) {}

void Conv2dImpl::pretty_print(std::ostream& stream) const {
  std::ostringstream torch_form;
  ConvNdImpl::pretty_print(torch_form);
  // "torch::nn::Conv2d(...)" -> "mto::nn::Conv2d(...)"
  stream << "mto" << torch_form.str().substr(std::string("torch").size());
}

at::Tensor Conv2dImpl::forward(const at::Tensor& input) {
  namespace F = torch::nn::functional;
  at::Tensor x = apply_transforms(Slot::kInput, input);
  const at::Tensor w = apply_transforms(Slot::kWeight, weight);
  at::Tensor y;
  if (c10::get_if<torch::enumtype::kZeros>(&options.padding_mode())) {
    y = F::detail::conv2d(x, w, bias, options.stride(), options.padding(), options.dilation(),
                          options.groups());
  } else {
    x = F::pad(x, F::PadFuncOptions(_reversed_padding_repeated_twice)
                      .mode(pad_mode(options.padding_mode())));
    y = F::detail::conv2d(x, w, bias, options.stride(), /*padding=*/0, options.dilation(),
                          options.groups());
  }
  return apply_transforms(Slot::kOutput, y);
}

}  // namespace nn
}  // namespace mto
