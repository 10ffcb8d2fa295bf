#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "modes/nas/batch_norm.h"
#include "opt/nn/conv2d.h"
#include "opt/nn/dynamic_layer.h"
#include "opt/nn/linear.h"

namespace mto {
namespace nas {

// The modules of a model by their dotted names, as fastnas looks its layers up.
using ModulesByName = std::map<std::string, torch::nn::Module*>;

// Every module of `model` (itself under "") by name.
ModulesByName modules_by_name(torch::nn::Module& model);

// An mto::nn::Linear or mto::nn::Conv2d of a model, whose width fastnas may trace, mask or
// cut: the same questions asked of either kind. Points into the model.
struct Layer {
  std::string name;
  torch::nn::Module* module = nullptr;
  nn::DynamicLayer* dynamic = nullptr;
  nn::LinearImpl* linear = nullptr;
  nn::Conv2dImpl* conv = nullptr;

  at::Tensor& weight() const { return linear ? linear->weight : conv->weight; }
  at::Tensor& bias() const { return linear ? linear->bias : conv->bias; }
  int64_t in_width() const { return linear ? linear->options.in_features() : conv->options.in_channels(); }
  int64_t out_width() const { return linear ? linear->options.out_features() : conv->options.out_channels(); }
  int64_t groups() const { return linear ? 1 : conv->options.groups(); }
  int64_t kernel_area() const {
    return linear ? 1 : conv->options.kernel_size()->at(0) * conv->options.kernel_size()->at(1);
  }
  void set_in_width(int64_t width) const;
  void set_out_width(int64_t width) const;
  // Parameters of the layer with `out` outputs and `in` inputs.
  int64_t params(int64_t out, int64_t in) const {
    return out * (in / groups()) * kernel_area() + (bias().defined() ? out : 0);
  }
};

// The Linear or Conv2d `name` of `modules`; throws ApplyModeError naming it if there is none.
Layer find_layer(const ModulesByName& modules, const std::string& name);

// The batch norm `name` of `modules`; throws ApplyModeError naming it if there is none.
BatchNorm find_batch_norm(const ModulesByName& modules, const std::string& name);

}  // namespace nas
}  // namespace mto
