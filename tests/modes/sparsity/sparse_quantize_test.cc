// Sparsity and quantization linked together: sparse_magnitude -> quantize -> max_calibrate
// (-> export_sparse) applies, saves and restores bit-identically; quantize -> sparse_magnitude
// fails with the Python original's text.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "modes/quantization/quantize.h"
#include "modes/sparsity/sparsity.h"
#include "opt/checkpoint.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "serialization/deterministic.h"
#include "tests/modes/sparsity/sparse_testing.h"
#include "tests/opt/testing/test_modes.h"
#include "tests/testing/model_checks.h"
#include "tests/testing/temp_dir.h"

namespace mto {
namespace sparsity {
namespace {

ModelLike mlp_like() { return ModelLike("test_mlp", {{"hidden", 16}, {"seed", 2}}); }
ModelLike cnn_like() { return ModelLike("test_cnn", {{"seed", 2}}); }

quantization::ForwardLoop calibration_loop() {
  return [](torch::nn::Module& model) {
    auto self = model.shared_from_this();
    for (int i = 0; i < 2; ++i) {
      at::manual_seed(700 + i);
      test::test_forward(self, at::randn(test::test_input(self).sizes()));
    }
  };
}

std::vector<std::string> mode_names(torch::nn::Module& model) {
  const ModeloptState state = modelopt_state(model);
  std::vector<std::string> names;
  for (const auto& entry : state.modelopt_state_dict()) names.push_back(entry.mode());
  return names;
}

// Saves `model`, restores it from the checkpoint's model-like and expects the same state,
// bit-identical tensors and outputs.
void expect_round_trip(const ModulePtr& model, const std::string& where) {
  const std::string dir = test::make_temp_dir() + "/ckpt";
  save(*model, dir);
  ModulePtr restored = restore(dir);
  EXPECT_EQ(serialize_deterministic(modelopt_state(*restored)), serialize_deterministic(modelopt_state(*model)))
      << where;
  test::expect_same_state_dict(*restored, *model, where);
  at::manual_seed(11);
  const at::Tensor x = at::randn(test::test_input(model).sizes()) * 2;
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(test::same_bytes(test::test_forward(restored, x), test::test_forward(model, x))) << where;
}

TEST(SparseThenQuantize, AppliesSavesAndRestores) {
  for (ModelLike like : {mlp_like(), cnn_like()}) {
    ModulePtr model = apply_mode(like.build(), "sparse_magnitude");
    torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.05));
    test::train_steps(model, sgd, 2);
    model = quantization::quantize(model, "int8", calibration_loop());
    EXPECT_EQ(mode_names(*model), (std::vector<std::string>{"sparse_magnitude", "quantize", "max_calibrate"}));

    // The mask applies before the weight quantizer, whose amax sees the masked weight.
    const std::string name = sparse_layer_names(*model).front();
    for (const auto& [layer_name, layer] : nn::named_dynamic_layers(*model)) {
      if (layer_name != name) continue;
      EXPECT_EQ(layer->transform_names(nn::Slot::kWeight),
                (std::vector<std::string>{"sparse_weight", "weight_quantizer"}));
    }
    const std::vector<std::string> keys = test::state_dict_keys(*model);
    for (const std::string& key : {name + "._weight_mask", name + ".weight_quantizer._amax"}) {
      EXPECT_EQ(std::count(keys.begin(), keys.end(), key), 1) << key;
    }
    expect_round_trip(model, like.factory + " sparse + int8");

    // Exporting the sparsity keeps the quantized outputs.
    at::manual_seed(12);
    const at::Tensor x = at::randn(test::test_input(model).sizes());
    torch::NoGradGuard no_grad;
    const at::Tensor expected = test::test_forward(model, x);
    model = apply_mode(model, "export_sparse");
    EXPECT_TRUE(test::same_bytes(test::test_forward(model, x), expected)) << like.factory;
    EXPECT_TRUE(sparse_layer_names(*model).empty());
    expect_round_trip(model, like.factory + " sparse + int8, exported");
  }
}

TEST(SparseThenQuantize, RelationsWithQuantizationLinked) {
  try {
    apply_mode(mlp_like().build(), {"quantize", "sparse_magnitude"});
    ADD_FAILURE() << "expected an error";
  } catch (const StateError& e) {
    EXPECT_STREQ(e.what(), "quantize does not allow sparse_magnitude to be its next mode.");
  }
  try {
    apply_mode(mlp_like().build(), {"sparse_magnitude", "sparse_magnitude"});
    ADD_FAILURE() << "expected an error";
  } catch (const StateError& e) {
    EXPECT_STREQ(e.what(),
                 "Cannot add sparse_magnitude after sparse_magnitude! Next modes of sparse_magnitude are "
                 "{'awq_clip_calibrate', 'awq_full_calibrate', 'awq_lite_calibrate', 'export_sparse', 'max_calibrate', "
                 "'quantize', 'smoothquant_calibrate'}.");
  }
}

}  // namespace
}  // namespace sparsity
}  // namespace mto
