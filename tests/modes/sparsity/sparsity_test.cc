// The "sparse_magnitude" and "export_sparse" modes in one process, without quantization
// linked: the exact 2:4 mask and its ties, the layers it takes and leaves dense, the
// `_weight_mask` key, masks kept through training, export, save and restore, the relations,
// and every error with the culprit named.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <array>
#include <functional>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "modes/sparsity/sparsity.h"
#include "modes/sparsity/sparsity.pb.h"
#include "opt/checkpoint.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/nn/conv2d.h"
#include "opt/nn/linear.h"
#include "opt/registry.h"
#include "serialization/deterministic.h"
#include "tests/modes/sparsity/sparse_testing.h"
#include "tests/opt/testing/test_modes.h"
#include "tests/testing/errors.h"
#include "tests/testing/model_checks.h"
#include "tests/testing/temp_dir.h"

namespace mto {
namespace sparsity {
namespace {

using test::error_of;
using test::expect_same_state_dict;
using test::same_bytes;
using test::state_dict_keys;
using test::train_steps;

ModelLike mlp_like(int seed = 1) { return ModelLike("test_mlp", {{"hidden", 16}, {"seed", seed}}); }
ModelLike cnn_like(int seed = 1) { return ModelLike("test_cnn", {{"seed", seed}}); }

// The 2:4 mask computed entry by entry: in every group of 4 along dim 1, the two entries
// that come first when sorted by magnitude, larger first, lower index first among equals.
at::Tensor reference_mask(const at::Tensor& weight) {
  const at::Tensor w = weight.reshape({weight.size(0), weight.size(1), -1}).abs().contiguous();
  at::Tensor mask = at::zeros(w.sizes(), at::kBool);
  auto a = w.accessor<float, 3>();
  auto m = mask.accessor<bool, 3>();
  for (int64_t o = 0; o < w.size(0); ++o) {
    for (int64_t k = 0; k < w.size(2); ++k) {
      for (int64_t g = 0; g < w.size(1); g += 4) {
        std::array<int64_t, 4> order;
        std::iota(order.begin(), order.end(), g);
        std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return a[o][x][k] > a[o][y][k]; });
        m[o][order[0]][k] = true;
        m[o][order[1]][k] = true;
      }
    }
  }
  return mask.reshape(weight.sizes());
}

nn::DynamicLayer& layer_of(const ModulePtr& model, const std::string& name) {
  for (const auto& layer : nn::named_dynamic_layers(*model)) {
    if (layer.name == name) return *layer.layer;
  }
  throw std::runtime_error("no layer " + name);
}

at::Tensor weight_of(const ModulePtr& model, const std::string& name) {
  return layer_of(model, name).as_module().named_parameters(false)["weight"];
}

TEST(Mask2to4, KeepsTheTwoLargestOfEveryFourOnRandomWeights) {
  at::manual_seed(3);
  for (const std::vector<int64_t>& shape :
       {std::vector<int64_t>{16, 32}, {8, 12, 3, 3}, {4, 8, 1, 5}, {3, 4}}) {
    const at::Tensor w = at::randn(shape);
    const at::Tensor mask = mask_2to4(w);
    EXPECT_EQ(mask.scalar_type(), at::kBool);
    EXPECT_TRUE(mask.equal(reference_mask(w))) << w.sizes();
    // Exactly two of every four, and every kept magnitude is at least every dropped one.
    const at::Tensor groups = mask.movedim(1, -1).reshape({-1, 4});
    EXPECT_TRUE(groups.sum(-1).eq(2).all().item<bool>()) << w.sizes();
    const at::Tensor magnitude = w.abs().movedim(1, -1).reshape({-1, 4});
    const at::Tensor kept_min = magnitude.masked_fill(groups.logical_not(), INFINITY).amin(-1);
    const at::Tensor dropped_max = magnitude.masked_fill(groups, -1).amax(-1);
    EXPECT_TRUE(kept_min.ge(dropped_max).all().item<bool>()) << w.sizes();
  }
}

TEST(Mask2to4, TiesGoToTheLowerIndex) {
  const at::Tensor w = at::tensor(std::vector<float>{1, 1, 1, 1,    //
                                                     0, -2, 2, 2,   //
                                                     0, 0, 0, 0,    //
                                                     -3, 1, 3, 1,   //
                                                     1, 2, 2, 1,    //
                                                     0, 0, 5, -0.f})
                           .reshape({6, 4});
  const at::Tensor expected = at::tensor(std::vector<float>{1, 1, 0, 0,  //
                                                            0, 1, 1, 0,  //
                                                            1, 1, 0, 0,  //
                                                            1, 0, 1, 0,  //
                                                            0, 1, 1, 0,  //
                                                            1, 0, 1, 0})
                                  .reshape({6, 4})
                                  .to(at::kBool);
  EXPECT_TRUE(mask_2to4(w).equal(expected)) << mask_2to4(w);
  // Many ties at random, in a convolution weight: the reference breaks them the same way.
  at::manual_seed(4);
  const at::Tensor small = at::randint(-2, 3, {6, 8, 3, 3}).to(at::kFloat);
  EXPECT_TRUE(mask_2to4(small).equal(reference_mask(small)));
}

TEST(Mask2to4, RejectsWeightsItCannotSplit) {
  EXPECT_EQ(error_of<std::invalid_argument>([] { mask_2to4(at::ones({4, 6})); }),
            "2:4 sparsity needs a weight whose dimension 1 is a multiple of 4, got shape [4, 6]");
  EXPECT_EQ(error_of<std::invalid_argument>([] { mask_2to4(at::ones({8})); }),
            "2:4 sparsity needs a weight whose dimension 1 is a multiple of 4, got shape [8]");
  at::Tensor nan = at::ones({2, 4});
  nan[1][2] = NAN;
  EXPECT_EQ(error_of<std::invalid_argument>([&] { mask_2to4(nan); }),
            "2:4 sparsity needs finite weights, got NaN or infinite values");
}

TEST(SparseMagnitude, MasksEveryEligibleLayerAsTheLayersBuffer) {
  ModulePtr dense = mlp_like().build();
  ModulePtr model = apply_mode(mlp_like().build(), "sparse_magnitude");
  EXPECT_EQ(sparse_layer_names(*model), (std::vector<std::string>{"fc1", "fc2", "fc3"}));

  // One new key per layer, on the layer itself: the transform adds none.
  std::vector<std::string> keys = state_dict_keys(*dense);
  for (const char* layer : {"fc1", "fc2", "fc3"}) keys.push_back(std::string(layer) + "._weight_mask");
  EXPECT_EQ(state_dict_keys(*model), keys);

  for (const char* name : {"fc1", "fc2", "fc3"}) {
    const at::Tensor original = weight_of(dense, name);
    const at::Tensor mask = weight_mask(layer_of(model, name));
    EXPECT_TRUE(same_bytes(mask, mask_2to4(original))) << name;
    // The weight parameter itself is zero where the mask is.
    EXPECT_TRUE(weight_of(model, name).equal(original * mask)) << name;
    EXPECT_EQ(layer_of(model, name).transform_names(nn::Slot::kWeight), std::vector<std::string>{"sparse_weight"});
  }
  for (const LayerSparsity& layer : weight_sparsity(*model)) {
    EXPECT_TRUE(layer.masked) << layer.name;
    EXPECT_EQ(layer.zeros * 2, layer.numel) << layer.name;
  }
  // The forward uses weight * mask, even where the parameter is changed behind its back.
  auto fc1 = std::dynamic_pointer_cast<nn::LinearImpl>(model->named_modules()["fc1"]);
  {
    torch::NoGradGuard no_grad;
    fc1->weight.fill_(1);
    fc1->bias.zero_();
    const at::Tensor effective = fc1->forward(at::eye(8)).t();
    EXPECT_TRUE(effective.equal(weight_mask(*fc1).to(at::kFloat)));
  }
}

TEST(SparseMagnitude, LayersWhoseInputIsNotAMultipleOfFourStayDense) {
  ModulePtr dense = cnn_like().build();
  ModulePtr model = apply_mode(cnn_like().build(), "sparse_magnitude");
  // conv has 1 input channel: dense; fc has 144 inputs.
  EXPECT_EQ(sparse_layer_names(*model), std::vector<std::string>{"fc"});
  EXPECT_TRUE(same_bytes(weight_of(model, "conv"), weight_of(dense, "conv")));
  EXPECT_TRUE(layer_of(model, "conv").transform_names(nn::Slot::kWeight).empty());
  const std::vector<std::string> keys = state_dict_keys(*model);
  EXPECT_EQ(std::count(keys.begin(), keys.end(), "conv._weight_mask"), 0);
  EXPECT_EQ(std::count(keys.begin(), keys.end(), "fc._weight_mask"), 1);

  const ModeloptState state = modelopt_state(*model);
  SparseMagnitudeMetadata metadata;
  state.modelopt_state_dict(0).metadata().UnpackTo(&metadata);
  EXPECT_EQ(std::vector<std::string>(metadata.sparse_layers().begin(), metadata.sparse_layers().end()),
            std::vector<std::string>{"fc"});

  // Groups of 4 input channels at every kernel position of a convolution.
  auto conv = std::make_shared<nn::Conv2dImpl>(nn::Conv2dOptions(8, 3, 3));
  const at::Tensor original = conv->weight.detach().clone();
  apply_mode(conv, "sparse_magnitude");
  EXPECT_EQ(sparse_layer_names(*conv), std::vector<std::string>{""});
  EXPECT_TRUE(weight_mask(*conv).equal(reference_mask(original)));
  EXPECT_EQ(state_dict_keys(*conv), (std::vector<std::string>{"weight", "bias", "_weight_mask"}));
}

TEST(SparseMagnitude, TheConfigSelectsLayersByName) {
  auto sparse_layers = [](const std::string& config) {
    return sparse_layer_names(*apply_mode(mlp_like().build(), {{"sparse_magnitude", config}}));
  };
  EXPECT_EQ(sparse_layers(R"({"exclude": ["fc3"]})"), (std::vector<std::string>{"fc1", "fc2"}));
  EXPECT_EQ(sparse_layers(R"({"layers": ["fc2", "fc3"], "exclude": ["*3"]})"), std::vector<std::string>{"fc2"});
  EXPECT_EQ(error_of<ConfigError>([] { apply_mode(mlp_like().build(), {{"sparse_magnitude", R"({"pattern": "*"})"}}); }),
            "config of mode 'sparse_magnitude': unknown field 'pattern' (known fields: layers, exclude)");
}

TEST(SparseMagnitude, AModelWithNothingToSparsifyFails) {
  const std::string expected =
      "sparse_magnitude: the model has no layer to sparsify (2:4 sparsity takes mto::nn::Linear and "
      "mto::nn::Conv2d layers whose input dimension is a multiple of 4 and whose name the config selects)";
  EXPECT_EQ(error_of<ApplyModeError>([] {
              apply_mode(mlp_like().build(), {{"sparse_magnitude", R"({"layers": ["head*"]})"}});
            }),
            expected);
  EXPECT_EQ(error_of<ApplyModeError>([] { apply_mode(std::make_shared<nn::LinearImpl>(6, 4), "sparse_magnitude"); }),
            expected);
  // A layer with a non-finite weight is named, and no layer is changed.
  ModulePtr model = mlp_like().build();
  {
    torch::NoGradGuard no_grad;
    weight_of(model, "fc2")[0][0] = INFINITY;
  }
  EXPECT_EQ(error_of<ApplyModeError>([&] { apply_mode(model, "sparse_magnitude"); }),
            "sparse_magnitude: layer 'fc2': 2:4 sparsity needs finite weights, got NaN or infinite values");
  EXPECT_TRUE(sparse_layer_names(*model).empty());
}

TEST(SparseMagnitude, MasksAreKeptThroughTraining) {
  using OptimizerFactory = std::function<std::unique_ptr<torch::optim::Optimizer>(const ModulePtr&)>;
  const std::map<std::string, OptimizerFactory> optimizers = {
      {"sgd", [](const ModulePtr& m) {
         return std::make_unique<torch::optim::SGD>(
             m->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9).weight_decay(1e-2));
       }},
      {"adam", [](const ModulePtr& m) {
         return std::make_unique<torch::optim::Adam>(m->parameters(),
                                                     torch::optim::AdamOptions(1e-2).weight_decay(1e-2));
       }},
  };
  for (const auto& [optimizer_name, make_optimizer] : optimizers) {
    for (ModelLike like : {mlp_like(), cnn_like()}) {
      ModulePtr model = apply_mode(like.build(), "sparse_magnitude");
      std::map<std::string, at::Tensor> masks, before;
      for (const std::string& name : sparse_layer_names(*model)) {
        masks[name] = weight_mask(layer_of(model, name)).clone();
        before[name] = weight_of(model, name).detach().clone();
      }
      auto optimizer = make_optimizer(model);
      train_steps(model, *optimizer, 5);
      for (const auto& [name, mask] : masks) {
        const std::string where = optimizer_name + " " + like.factory + " " + name;
        const at::Tensor weight = weight_of(model, name);
        EXPECT_TRUE(same_bytes(weight_mask(layer_of(model, name)), mask)) << where;
        EXPECT_TRUE(weight.masked_select(mask.logical_not()).eq(0).all().item<bool>()) << where;
        EXPECT_TRUE(weight.grad().masked_select(mask.logical_not()).eq(0).all().item<bool>()) << where;
        // The kept weights did train.
        EXPECT_FALSE(weight.masked_select(mask).equal(before[name].masked_select(mask))) << where;
      }
    }
  }
}

TEST(ExportSparse, EqualsTheMaskedForwardAndLeavesAPlainModel) {
  for (ModelLike like : {mlp_like(), cnn_like()}) {
    ModulePtr model = apply_mode(like.build(), "sparse_magnitude");
    torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.05));
    train_steps(model, sgd, 3);
    // A masked entry of a parameter changed behind the mask's back is still masked...
    const std::string first = sparse_layer_names(*model).front();
    {
      torch::NoGradGuard no_grad;
      weight_of(model, first).masked_fill_(weight_mask(layer_of(model, first)).logical_not(), 0.5);
    }
    const at::Tensor x = at::randn(test::test_input(model).sizes());
    torch::NoGradGuard no_grad;
    const at::Tensor expected = test::test_forward(model, x);

    ModulePtr exported = apply_mode(model, "export_sparse");
    EXPECT_TRUE(same_bytes(test::test_forward(exported, x), expected)) << like.factory;
    EXPECT_TRUE(sparse_layer_names(*exported).empty());
    EXPECT_EQ(state_dict_keys(*exported), state_dict_keys(*like.build())) << like.factory;
    for (const auto& [name, layer] : nn::named_dynamic_layers(*exported)) {
      EXPECT_TRUE(layer->transform_names(nn::Slot::kWeight).empty()) << name;
    }
    // ...and export folds it to zero: the weights themselves are 2:4 sparse now.
    for (const LayerSparsity& layer : weight_sparsity(*exported)) {
      EXPECT_FALSE(layer.masked);
      if (layer.name != "conv") {
        EXPECT_GE(layer.zeros * 2, layer.numel) << like.factory << " " << layer.name;
      }
    }
  }
}

TEST(SparsityRelations, FollowTheReference) {
  // Without quantization linked, only export_sparse of the next modes is registered.
  EXPECT_EQ(error_of<StateError>([] { apply_mode(mlp_like().build(), {"sparse_magnitude", "sparse_magnitude"}); }),
            "Cannot add sparse_magnitude after sparse_magnitude! Next modes of sparse_magnitude are "
            "{'export_sparse'}.");
  EXPECT_EQ(error_of<StateError>([] { apply_mode(mlp_like().build(), "export_sparse"); }),
            "Cannot add export_sparse according to the current export stack: [].");
  // After the export, the stack is empty again and the model can be sparsified anew.
  ModulePtr model = apply_mode(mlp_like().build(), {"sparse_magnitude", "export_sparse", "sparse_magnitude"});
  EXPECT_EQ(sparse_layer_names(*model), (std::vector<std::string>{"fc1", "fc2", "fc3"}));
  const auto mode = ModeRegistry::get_registry("sparsity").get("sparse_magnitude");
  EXPECT_EQ(mode->export_mode(), "export_sparse");
  EXPECT_TRUE(ModeRegistry::get_registry("sparsity").get("export_sparse")->is_export_mode());
}

// Saves `model`, restores it from the model-like in the checkpoint, and expects the same
// state, bit-identical tensors and the same outputs.
ModulePtr expect_round_trip(const ModulePtr& model, const std::string& where) {
  const std::string dir = test::make_temp_dir() + "/ckpt";
  save(*model, dir);
  ModulePtr restored = restore(dir);
  EXPECT_EQ(serialize_deterministic(modelopt_state(*restored)), serialize_deterministic(modelopt_state(*model)))
      << where;
  expect_same_state_dict(*restored, *model, where);
  EXPECT_EQ(sparse_layer_names(*restored), sparse_layer_names(*model)) << where;
  at::manual_seed(9);
  const at::Tensor x = at::randn(test::test_input(model).sizes());
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(same_bytes(test::test_forward(restored, x), test::test_forward(model, x))) << where;
  EXPECT_EQ(error_of<StateError>([&] { restore(model, dir); }), "Model already has modelopt state!") << where;
  return restored;
}

TEST(SparseSaveRestore, RoundTripsAreBitIdentical) {
  for (ModelLike like : {mlp_like(), cnn_like()}) {
    ModulePtr model = apply_mode(like.build(), "sparse_magnitude");
    torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
    train_steps(model, sgd, 3);
    ModulePtr restored = expect_round_trip(model, like.factory + " sparse");

    // The restored transforms apply the masks loaded from the checkpoint, not the ones
    // they were created with: with every weight set to 1 the forward shows the mask.
    const std::string name = sparse_layer_names(*restored).front();
    auto* linear = dynamic_cast<nn::LinearImpl*>(&layer_of(restored, name));
    ASSERT_NE(linear, nullptr);
    const at::Tensor mask = weight_mask(*linear);
    EXPECT_FALSE(mask.all().item<bool>());
    torch::NoGradGuard no_grad;
    linear->weight.fill_(1);
    linear->bias.zero_();
    const at::Tensor eye = at::eye(linear->options.in_features());
    EXPECT_TRUE(linear->forward(eye).t().equal(mask.to(at::kFloat))) << like.factory;

    expect_round_trip(apply_mode(model, "export_sparse"), like.factory + " exported");
  }
}

// `state` with the sparse_magnitude metadata changed by `edit`.
ModeloptState edit_metadata(ModeloptState state, const std::function<void(SparseMagnitudeMetadata&)>& edit) {
  for (auto& entry : *state.mutable_modelopt_state_dict()) {
    if (entry.mode() != "sparse_magnitude") continue;
    SparseMagnitudeMetadata metadata;
    entry.metadata().UnpackTo(&metadata);
    edit(metadata);
    entry.mutable_metadata()->PackFrom(metadata);
  }
  return state;
}

TEST(SparseSaveRestore, RestoreFailsOnAModelThatDoesNotFit) {
  const ModeloptState state = modelopt_state(*apply_mode(cnn_like().build(), "sparse_magnitude"));
  auto restore_error = [](const ModeloptState& s, const ModulePtr& model) {
    return error_of<ApplyModeError>([&] { restore_from_modelopt_state(model, s); });
  };
  EXPECT_EQ(restore_error(edit_metadata(state, [](auto& m) { m.add_sparse_layers("fc9"); }), cnn_like().build()),
            "sparse_magnitude: the model has no layer 'fc9' to restore the 2:4 mask of");
  EXPECT_EQ(restore_error(edit_metadata(state, [](auto& m) { m.add_sparse_layers("conv"); }), cnn_like().build()),
            "sparse_magnitude: layer 'conv' cannot hold a 2:4 mask (not a mto::nn::Linear or mto::nn::Conv2d "
            "with an input dimension that is a multiple of 4)");
  EXPECT_EQ(restore_error(edit_metadata(state, [](auto& m) { m.add_sparse_layers("fc"); }), cnn_like().build()),
            "sparse_magnitude: layer 'fc' is listed twice in the metadata");
  EXPECT_EQ(restore_error(state, mlp_like().build()),
            "sparse_magnitude: the model has no layer 'fc' to restore the 2:4 mask of");
  // A failed restore leaves no mask behind.
  ModulePtr model = cnn_like().build();
  restore_error(edit_metadata(state, [](auto& m) { m.add_sparse_layers("fc9"); }), model);
  EXPECT_TRUE(sparse_layer_names(*model).empty());
}

}  // namespace
}  // namespace sparsity
}  // namespace mto
