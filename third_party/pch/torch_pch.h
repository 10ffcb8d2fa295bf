// The headers that nearly every translation unit of mto reads and that cost the most to
// parse (LibTorch's tensor API and module, nlohmann-json): precompiled once by
// //third_party/pch:torch_pch and force-included by the targets that use LibTorch.
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/nn/module.h>
