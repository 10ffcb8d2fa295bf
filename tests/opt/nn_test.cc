// Dynamic layers: drop-in for torch::nn (same parameters, initialization and outputs) with
// transform slots whose submodules appear in the state dict under the layer's name.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include <sstream>

#include "opt/nn/conv2d.h"
#include "opt/nn/linear.h"
#include "opt/nn/uninitialized.h"

namespace mto {
namespace {

using nn::Slot;

// Multiplies by a constant, registering it as a buffer "_scale".
class ScaleImpl : public nn::TransformImpl {
 public:
  explicit ScaleImpl(double scale) { scale_ = register_buffer("_scale", at::full({}, scale)); }
  at::Tensor forward(const at::Tensor& x) override { return x * scale_; }
  at::Tensor scale_;
};

// Adds a constant.
class ShiftImpl : public nn::TransformImpl {
 public:
  explicit ShiftImpl(double shift) : shift_(shift) {}
  at::Tensor forward(const at::Tensor& x) override { return x + shift_; }

 private:
  double shift_;
};

TEST(LinearTest, MatchesTorchLinear) {
  for (bool bias : {true, false}) {
    at::manual_seed(3);
    torch::nn::Linear reference(torch::nn::LinearOptions(5, 7).bias(bias));
    at::manual_seed(3);
    nn::Linear layer(nn::LinearOptions(5, 7).bias(bias));
    // Same initialization from the same seed, same parameter names.
    ASSERT_EQ(layer->named_parameters().keys(), reference->named_parameters().keys());
    EXPECT_TRUE(layer->weight.equal(reference->weight));
    if (bias) {
      EXPECT_TRUE(layer->bias.equal(reference->bias));
    }
    at::Tensor x = at::randn({3, 5});
    EXPECT_TRUE(layer->forward(x).equal(reference->forward(x)));
  }
}

TEST(LinearTest, UninitializedParametersSkipTheRandomInitialization) {
  // Initialization draws from the global generator: a layer built under the guard draws nothing.
  at::manual_seed(3);
  {
    nn::UninitializedParameters uninitialized;
    EXPECT_TRUE(nn::parameters_uninitialized());
    nn::Linear layer(64, 32);
    EXPECT_EQ(layer->weight.sizes(), (std::vector<int64_t>{32, 64}));
  }
  EXPECT_FALSE(nn::parameters_uninitialized());
  const at::Tensor after_guarded = at::rand({4});
  at::manual_seed(3);
  EXPECT_TRUE(at::equal(after_guarded, at::rand({4})));
  // Without it, the layer draws its weights.
  at::manual_seed(3);
  nn::Linear layer(64, 32);
  EXPECT_FALSE(at::equal(at::rand({4}), after_guarded));
}

TEST(Conv2dTest, MatchesTorchConv2d) {
  std::vector<torch::nn::Conv2dOptions> cases = {
      torch::nn::Conv2dOptions(3, 4, 3),
      torch::nn::Conv2dOptions(4, 6, {3, 2}).stride(2).padding(1).groups(2).bias(false),
      torch::nn::Conv2dOptions(3, 4, 3).padding(torch::kSame).dilation(2),
      torch::nn::Conv2dOptions(3, 4, 3).padding(1).padding_mode(torch::kReflect),
      torch::nn::Conv2dOptions(3, 4, 3).padding(2).padding_mode(torch::kCircular),
  };
  for (const auto& options : cases) {
    at::manual_seed(11);
    torch::nn::Conv2d reference(options);
    at::manual_seed(11);
    nn::Conv2d layer(options);
    ASSERT_EQ(layer->named_parameters().keys(), reference->named_parameters().keys());
    EXPECT_TRUE(layer->weight.equal(reference->weight));
    at::Tensor x = at::randn({2, options.in_channels(), 9, 9});
    EXPECT_TRUE(layer->forward(x).equal(reference->forward(x)));
  }
}

TEST(DynamicLayerTest, TransformsApplyInTheirSlotsInOrder) {
  at::manual_seed(0);
  nn::Linear layer(4, 3);
  at::Tensor x = at::randn({2, 4});
  const at::Tensor w = layer->weight.detach().clone();
  const at::Tensor b = layer->bias.detach().clone();

  layer->add_transform(Slot::kInput, "input_scale", std::make_shared<ScaleImpl>(2.0));
  layer->add_transform(Slot::kWeight, "weight_scale", std::make_shared<ScaleImpl>(0.5));
  layer->add_transform(Slot::kOutput, "output_shift", std::make_shared<ShiftImpl>(1.0));
  layer->add_transform(Slot::kOutput, "output_scale", std::make_shared<ScaleImpl>(3.0));
  at::Tensor expected = (at::linear(x * 2, w * 0.5, b) + 1) * 3;
  EXPECT_TRUE(at::allclose(layer->forward(x), expected));
  EXPECT_EQ(layer->transform_names(Slot::kOutput), (std::vector<std::string>{"output_shift", "output_scale"}));

  layer->remove_transform("output_shift");
  EXPECT_TRUE(at::allclose(layer->forward(x), at::linear(x * 2, w * 0.5, b) * 3));
  EXPECT_EQ(layer->remove_transform("output_shift"), nullptr);
}

TEST(DynamicLayerTest, TransformStateAppearsUnderTheLayer) {
  auto model = std::make_shared<torch::nn::Module>();
  nn::Linear fc1(4, 3);
  model->register_module("fc1", fc1);
  fc1->add_transform(Slot::kWeight, "weight_quantizer", std::make_shared<ScaleImpl>(1.0));
  EXPECT_EQ(model->named_buffers().keys(), std::vector<std::string>{"fc1.weight_quantizer._scale"});
  EXPECT_THROW(fc1->add_transform(Slot::kInput, "weight_quantizer", std::make_shared<ScaleImpl>(1.0)),
               std::invalid_argument);
  EXPECT_NE(fc1->transform("weight_quantizer"), nullptr);
  fc1->remove_transform("weight_quantizer");
  EXPECT_TRUE(model->named_buffers().is_empty());
  EXPECT_EQ(fc1->transform("weight_quantizer"), nullptr);
}

TEST(DynamicLayerTest, NamedDynamicLayersFindsEveryLayer) {
  auto model = std::make_shared<torch::nn::Module>();
  auto block = std::make_shared<torch::nn::Module>();
  model->register_module("conv", nn::Conv2d(1, 2, 3));
  model->register_module("block", block);
  block->register_module("fc", nn::Linear(2, 2));
  block->register_module("plain", torch::nn::Linear(2, 2));
  std::vector<std::string> names;
  for (const auto& layer : nn::named_dynamic_layers(*model)) names.push_back(layer.name);
  EXPECT_EQ(names, (std::vector<std::string>{"conv", "block.fc"}));
  nn::Linear alone(2, 2);
  EXPECT_EQ(nn::named_dynamic_layers(*alone).size(), 1u);
}

TEST(DynamicLayerTest, PrettyPrintNamesTheMtoLayer) {
  std::ostringstream linear, conv;
  linear << *nn::Linear(nn::LinearOptions(3, 2).bias(false));
  conv << *nn::Conv2d(nn::Conv2dOptions(1, 2, 3).stride(2));
  EXPECT_EQ(linear.str(), "mto::nn::Linear(in_features=3, out_features=2, bias=false)");
  EXPECT_EQ(conv.str(), "mto::nn::Conv2d(1, 2, kernel_size=[3, 3], stride=[2, 2])");
}

}  // namespace
}  // namespace mto
