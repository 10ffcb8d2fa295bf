#pragma once

// Test-only modes that reproduce the relations of the real modes of the Python original:
//
//   registry "test_quantization": test_quantize (prohibits test_sparse and test_nas after it)
//   registry "test_nas":          test_nas (next: test_export_nas, test_kd, test_quantize,
//                                 test_sparse; export: test_export_nas), test_export_nas
//   registry "test_sparsity":     test_sparse (next: test_export_sparse, test_kd,
//                                 test_quantize; export: test_export_sparse),
//                                 test_export_sparse
//   registry "test_misc":         test_kd (export: test_export_student), test_export_student,
//                                 test_terminal (next_modes = empty set), test_modellike
//                                 (requires a model-like), test_hooks (counts its update
//                                 calls in its metadata), test_fail (convert throws
//                                 ApplyModeError)
//
// Each mode really changes the model (quantizer buffers, masks, active widths, shrunk
// weights), so a restore that ignored config or metadata would change the outputs.
// Models: "test_mlp" {"hidden": int, "seed": int} and "test_cnn" {"seed": int}.

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include <memory>
#include <string>
#include <vector>

#include "opt/nn/conv2d.h"
#include "opt/nn/linear.h"
#include "opt/runtime_context.h"

namespace mto {
namespace test {

// Every update_for_new_mode and update_for_save call of test_hooks, as
// "update_for_new_mode" / "update_for_save", and every convert as "convert:<mode>".
std::vector<std::string>& test_events();

// A runtime value that test_hooks looks for: its metadata records "kwarg_seen" when set.
inline constexpr ContextKey<std::string> kTestTag{"tag"};

// Linear(8, hidden) -> relu -> Linear(hidden, hidden) -> relu -> Linear(hidden, 4).
class TestMlpImpl : public torch::nn::Module {
 public:
  explicit TestMlpImpl(int64_t hidden = 16);
  at::Tensor forward(const at::Tensor& x);

  mto::nn::Linear fc1{nullptr}, fc2{nullptr}, fc3{nullptr};
};

// Conv2d(1, 4, 3) -> relu -> flatten -> Linear(4 * 6 * 6, 5), for 1x8x8 inputs.
class TestCnnImpl : public torch::nn::Module {
 public:
  TestCnnImpl();
  at::Tensor forward(const at::Tensor& x);

  mto::nn::Conv2d conv{nullptr};
  mto::nn::Linear fc{nullptr};
};

// Runs the forward of a TestMlp or TestCnn given as a plain module.
at::Tensor test_forward(const std::shared_ptr<torch::nn::Module>& model, const at::Tensor& x);

// An input batch that fits the model: [2, 8] for TestMlp, [2, 1, 8, 8] for TestCnn.
at::Tensor test_input(const std::shared_ptr<torch::nn::Module>& model);

}  // namespace test
}  // namespace mto
