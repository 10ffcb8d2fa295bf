#pragma once

#include <functional>
#include <utility>

#include <ATen/core/Tensor.h>

#include "opt/nn/dynamic_layer.h"

namespace mto {
namespace nn {

// A transform that shows the tensor passing its slot to `observe` and passes it on
// unchanged: for modes that collect statistics from, or trace, a forward pass.
class ObserverImpl : public TransformImpl {
 public:
  explicit ObserverImpl(std::function<void(const at::Tensor&)> observe) : observe_(std::move(observe)) {}
  at::Tensor forward(const at::Tensor& x) override {
    observe_(x);
    return x;
  }

 private:
  std::function<void(const at::Tensor&)> observe_;
};

}  // namespace nn
}  // namespace mto
