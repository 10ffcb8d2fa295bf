#pragma once

#include <functional>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "modes/nas/nas.pb.h"
#include "opt/runtime_context.h"

namespace mto {
namespace nas {

// Runs the model once on a small input and returns its output; the trace of the search
// space follows the autograd graph of this one forward pass.
using DummyForward = std::function<at::Tensor(torch::nn::Module& model)>;

// Where fastnas finds its tracing forward pass in the RuntimeContext.
inline constexpr ContextKey<DummyForward> kDummyForward{"dummy_forward"};

// Finds the widths of `model` that can shrink: the output channels of an mto::nn::Conv2d or
// the output features of an mto::nn::Linear whose only readers are other mto::nn layers,
// reached through channel-wise operations (activations, pooling, batch norm, scalar
// arithmetic, and flatten from a Conv2d into a Linear). A width that reaches the model's
// output, meets another layer's output (residual adds, concatenation) or passes through any
// other operation stays fixed. Offers the widths of `config` for each. Runs `forward` once
// with gradients recorded; leaves the model unchanged. Throws ApplyModeError if nothing is
// searchable.
FastNasMetadata trace_search_space(torch::nn::Module& model, const DummyForward& forward,
                                   const FastNasConfig& config);

}  // namespace nas
}  // namespace mto
