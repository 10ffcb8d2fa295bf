// The headers that nearly every translation unit of mto reads and that cost the most to
// parse (LibTorch's tensor API and module, nlohmann-json): precompiled once by
// //third_party/pch:torch_pch and force-included by the targets that use LibTorch (once per
// translation unit, so it needs no include guard; GCC warns about #pragma once in a header it
// precompiles).

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/nn/module.h>
