#pragma once

#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <cstring>
#include <map>
#include <string>

#include "opt/state_dict.h"

namespace mto {
namespace test {

// Whether `a` and `b` have the same dtype, shape and bytes (so -0.0 differs from 0.0).
inline bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || !a.sizes().equals(b.sizes())) return false;
  const at::Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

// Expects the state dicts of `actual` and `expected` to hold the same keys in the same
// order with bit-identical tensors.
inline void expect_same_state_dict(const torch::nn::Module& actual, const torch::nn::Module& expected,
                                   const std::string& where) {
  const auto a = model_state_dict(actual);
  const auto e = model_state_dict(expected);
  ASSERT_EQ(a.size(), e.size()) << where;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].name, e[i].name) << where;
    EXPECT_TRUE(same_bytes(a[i].tensor, e[i].tensor)) << where << ": " << a[i].name;
  }
}

// Expects every tensor of `model` to be its slice of the same tensor in `reference` (whole
// or split itself, compared slice by slice): equal if `exact`, else equal up to `tolerance`
// (relative and absolute).
inline void expect_slices_of(const torch::nn::Module& model, const torch::nn::Module& reference,
                             const std::string& where, bool exact = true, double tolerance = 1e-5) {
  std::map<std::string, at::Tensor> whole;
  for (const auto& t : model_state_dict(reference)) whole[t.name] = t.tensor;
  const auto local = model_state_slices(model);
  ASSERT_EQ(local.size(), whole.size()) << where;
  for (const auto& t : local) {
    ASSERT_TRUE(whole.count(t.name)) << where << ": " << t.name;
    at::Tensor expected = whole[t.name];
    if (t.slice) expected = expected.narrow(t.slice->dim, t.slice->offset, t.tensor.size(t.slice->dim));
    ASSERT_EQ(t.tensor.sizes(), expected.sizes()) << where << ": " << t.name;
    if (exact) {
      EXPECT_TRUE(at::equal(t.tensor, expected)) << where << ": " << t.name;
    } else {
      EXPECT_TRUE(at::allclose(t.tensor, expected, tolerance, tolerance)) << where << ": " << t.name;
    }
  }
}

}  // namespace test
}  // namespace mto
