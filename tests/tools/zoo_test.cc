// The model zoo: models built by name from JSON arguments, their shapes, state-dict keys,
// argument errors, the generic forward, and a checkpoint that restores with no model code.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "distributed/data_parallel.h"
#include "distributed/world.h"
#include "opt/checkpoint.h"
#include "opt/errors.h"
#include "opt/model_like.h"
#include "opt/nn/dynamic_layer.h"
#include "opt/state_dict.h"
#include "tests/testing/temp_dir.h"
#include "tools/zoo/cnn.h"
#include "tools/zoo/forward.h"
#include "tools/zoo/gpt.h"
#include "tools/zoo/mlp.h"

namespace mto {
namespace {

std::vector<std::string> state_dict_keys(const torch::nn::Module& model) {
  std::vector<std::string> keys;
  for (const auto& entry : model_state_dict(model)) keys.push_back(entry.name);
  return keys;
}

std::vector<std::string> dynamic_layer_names(torch::nn::Module& model) {
  std::vector<std::string> names;
  for (const auto& layer : nn::named_dynamic_layers(model)) names.push_back(layer.name);
  return names;
}

// Builds `factory` with `args` and returns the message of the ConfigError it throws.
std::string config_error(const std::string& factory, const nlohmann::json& args) {
  try {
    ModelLike(factory, args).build();
  } catch (const ConfigError& e) {
    return e.what();
  }
  ADD_FAILURE() << factory << " accepted " << args.dump();
  return "";
}

TEST(ZooTest, ModelsAreRegisteredByName) {
  const std::vector<std::string> names = model_factory_names();
  for (const char* name : {"fashion_cnn", "fashion_mlp", "gpt"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), name), names.end()) << name;
  }
}

TEST(FashionCnnTest, DefaultsBuildTheDemoModel) {
  auto cnn = std::dynamic_pointer_cast<zoo::FashionCnnImpl>(ModelLike("fashion_cnn").build());
  ASSERT_NE(cnn, nullptr);
  EXPECT_EQ(state_dict_keys(*cnn),
            (std::vector<std::string>{"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                                      "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}));
  EXPECT_EQ(cnn->conv1->weight.sizes(), (std::vector<int64_t>{16, 1, 3, 3}));
  EXPECT_EQ(cnn->conv2->weight.sizes(), (std::vector<int64_t>{32, 16, 3, 3}));
  EXPECT_EQ(cnn->fc1->weight.sizes(), (std::vector<int64_t>{128, 32 * 7 * 7}));
  EXPECT_EQ(cnn->fc2->weight.sizes(), (std::vector<int64_t>{10, 128}));
  // Every layer is one that modes can change.
  EXPECT_EQ(dynamic_layer_names(*cnn), (std::vector<std::string>{"conv1", "conv2", "fc1", "fc2"}));
  EXPECT_EQ(cnn->forward(at::randn({5, 1, 28, 28})).sizes(), (std::vector<int64_t>{5, 10}));
}

TEST(FashionCnnTest, ArgumentsSetTheWidths) {
  auto cnn = std::dynamic_pointer_cast<zoo::FashionCnnImpl>(
      ModelLike("fashion_cnn", {{"channels", {4, 8}}, {"hidden", 20}}).build());
  ASSERT_NE(cnn, nullptr);
  EXPECT_EQ(cnn->conv2->weight.sizes(), (std::vector<int64_t>{8, 4, 3, 3}));
  EXPECT_EQ(cnn->fc1->weight.sizes(), (std::vector<int64_t>{20, 8 * 7 * 7}));
  EXPECT_EQ(cnn->forward(at::randn({2, 1, 28, 28})).sizes(), (std::vector<int64_t>{2, 10}));
  std::ostringstream printed;
  printed << *cnn;
  EXPECT_THAT(printed.str(),
              ::testing::StartsWith("mto::zoo::FashionCnn(\n  (conv1): mto::nn::Conv2d(1, 4"));
}

TEST(FashionCnnTest, RejectsBadArguments) {
  EXPECT_EQ(config_error("fashion_cnn", {{"width", 3}}),
            "unknown argument 'width' of model 'fashion_cnn'; known: channels, hidden");
  EXPECT_EQ(config_error("fashion_cnn", {{"hidden", "big"}}),
            "argument 'hidden' of model 'fashion_cnn' must be an integer, got \"big\"");
  EXPECT_EQ(config_error("fashion_cnn", {{"hidden", 1.5}}),
            "argument 'hidden' of model 'fashion_cnn' must be an integer, got 1.5");
  EXPECT_EQ(config_error("fashion_cnn", {{"hidden", 0}}),
            "argument 'hidden' of model 'fashion_cnn' must be positive, got 0");
  EXPECT_EQ(config_error("fashion_cnn", {{"channels", {8, 16, 32}}}),
            "argument 'channels' of model 'fashion_cnn' must hold 2 values, got 3");
  EXPECT_EQ(config_error("fashion_cnn", {{"channels", {8, -1}}}),
            "argument 'channels' of model 'fashion_cnn' must be positive, got -1");
  EXPECT_EQ(config_error("fashion_cnn", {{"channels", 8}}),
            "argument 'channels' of model 'fashion_cnn' must be an array of integers, got 8");
  EXPECT_EQ(config_error("fashion_cnn", nlohmann::json::array({1})),
            "arguments of model 'fashion_cnn' must be a JSON object, got [1]");
}

TEST(FashionCnnTest, RejectsImagesOfAnotherShape) {
  zoo::FashionCnn cnn;
  EXPECT_THROW(cnn->forward(at::randn({2, 3, 28, 28})), std::invalid_argument);
  EXPECT_THROW(cnn->forward(at::randn({1, 28, 28})), std::invalid_argument);
}

TEST(FashionCnnTest, InitializationFollowsTheSeed) {
  at::manual_seed(7);
  auto first = ModelLike("fashion_cnn").build();
  at::manual_seed(7);
  auto second = ModelLike("fashion_cnn").build();
  const auto a = model_state_dict(*first);
  const auto b = model_state_dict(*second);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(a[i].tensor.equal(b[i].tensor)) << a[i].name;
}

TEST(FashionMlpTest, BuildsTheHiddenLayersInOrder) {
  auto mlp = std::dynamic_pointer_cast<zoo::FashionMlpImpl>(ModelLike("fashion_mlp").build());
  ASSERT_NE(mlp, nullptr);
  EXPECT_EQ(state_dict_keys(*mlp),
            (std::vector<std::string>{"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
                                      "fc3.weight", "fc3.bias"}));
  EXPECT_EQ(mlp->layers[0]->weight.sizes(), (std::vector<int64_t>{256, 784}));
  EXPECT_EQ(mlp->layers[2]->weight.sizes(), (std::vector<int64_t>{10, 128}));
  EXPECT_EQ(mlp->forward(at::randn({3, 1, 28, 28})).sizes(), (std::vector<int64_t>{3, 10}));
  EXPECT_EQ(mlp->forward(at::randn({3, 784})).sizes(), (std::vector<int64_t>{3, 10}));
  EXPECT_THROW(mlp->forward(at::randn({3, 100})), std::invalid_argument);

  auto linear = std::dynamic_pointer_cast<zoo::FashionMlpImpl>(
      ModelLike("fashion_mlp", {{"hidden", nlohmann::json::array()}}).build());
  EXPECT_EQ(state_dict_keys(*linear), (std::vector<std::string>{"fc1.weight", "fc1.bias"}));
  EXPECT_EQ(config_error("fashion_mlp", {{"hidden", {64, 0}}}),
            "argument 'hidden' of model 'fashion_mlp' must be positive, got 0");
}

TEST(GptTest, MapsTokensToLogits) {
  const nlohmann::json args = {
      {"vocab", 50}, {"width", 32}, {"depth", 3}, {"heads", 4}, {"context", 16}};
  auto gpt = std::dynamic_pointer_cast<zoo::GptImpl>(ModelLike("gpt", args).build());
  ASSERT_NE(gpt, nullptr);
  const at::Tensor tokens = at::randint(50, {2, 10}, at::kLong);
  EXPECT_EQ(gpt->forward(tokens).sizes(), (std::vector<int64_t>{2, 10, 50}));

  const std::vector<std::string> keys = state_dict_keys(*gpt);
  for (const char* key : {"tok_emb.weight", "pos_emb.weight", "blocks.2.ln1.weight",
                          "blocks.2.attn.qkv.weight", "blocks.2.attn.proj.bias",
                          "blocks.2.fc1.weight", "blocks.2.fc2.bias", "ln_f.bias", "lm_head.weight"}) {
    EXPECT_NE(std::find(keys.begin(), keys.end(), key), keys.end()) << key;
  }
  EXPECT_EQ(std::find(keys.begin(), keys.end(), "lm_head.bias"), keys.end());
  // qkv, proj, fc1 and fc2 of each block and the head are dynamic layers.
  EXPECT_EQ(dynamic_layer_names(*gpt).size(), 3u * 4 + 1);
  EXPECT_EQ(gpt->blocks[0]->as<zoo::GptBlockImpl>()->fc1->weight.sizes(),
            (std::vector<int64_t>{128, 32}));
}

TEST(GptTest, ATiedHeadComputesTheLogitsWithTheTokenEmbedding) {
  const nlohmann::json args = {{"vocab", 40}, {"width", 16}, {"depth", 2}, {"heads", 2}, {"context", 8},
                               {"tie_embeddings", true}};
  auto gpt = std::dynamic_pointer_cast<zoo::GptImpl>(ModelLike("gpt", args).build());
  ASSERT_NE(gpt, nullptr);
  EXPECT_TRUE(gpt->options.tie_embeddings());
  EXPECT_TRUE(gpt->lm_head.is_empty());
  const std::vector<std::string> keys = state_dict_keys(*gpt);
  for (const std::string& key : keys) EXPECT_EQ(key.find("lm_head"), std::string::npos) << key;
  EXPECT_EQ(dynamic_layer_names(*gpt).size(), 2u * 4);

  const at::Tensor tokens = at::randint(40, {2, 8}, at::kLong);
  at::Tensor hidden = gpt->tok_emb->forward(tokens) + gpt->pos_emb->forward(at::arange(8, at::kLong));
  for (const auto& block : *gpt->blocks) hidden = block->as<zoo::GptBlockImpl>()->forward(hidden);
  const at::Tensor logits = gpt->forward(tokens);
  EXPECT_TRUE(logits.equal(at::matmul(gpt->ln_f->forward(hidden), gpt->tok_emb->weight.t())));

  // The embedding's weight learns from both of its uses: the head's logit 7 reaches row 7,
  // the lookup the rows of the input tokens, and nothing else.
  logits.select(2, 7).sum().backward();
  std::set<int64_t> rows{7};
  for (int64_t i = 0; i < tokens.numel(); ++i) rows.insert(tokens.flatten()[i].item<int64_t>());
  const at::Tensor touched = gpt->tok_emb->weight.grad().abs().sum(1).gt(0);
  for (int64_t row = 0; row < 40; ++row) EXPECT_EQ(touched[row].item<bool>(), rows.count(row) == 1) << row;
  EXPECT_EQ(config_error("gpt", {{"tie_embeddings", 1}}),
            "argument 'tie_embeddings' of model 'gpt' must be true or false, got 1");
}

TEST(GptTest, ATiedHeadStartsNearTheUniformLoss) {
  // Both embeddings of a tied GPT start at 1 / sqrt(width), so its first logits are of order
  // one and its first loss near ln(vocab); the untied one keeps torch's N(0, 1) embeddings.
  const nlohmann::json args = {{"width", 128}, {"depth", 2}, {"heads", 4}, {"context", 16}};
  nlohmann::json tied_args = args;
  tied_args["tie_embeddings"] = true;
  auto tied = std::dynamic_pointer_cast<zoo::GptImpl>(ModelLike("gpt", tied_args).build());
  auto untied = std::dynamic_pointer_cast<zoo::GptImpl>(ModelLike("gpt", args).build());
  ASSERT_NE(tied, nullptr);
  ASSERT_NE(untied, nullptr);
  const double root = 1.0 / std::sqrt(128.0);
  EXPECT_NEAR(tied->tok_emb->weight.std().item<double>(), root, 0.1 * root);
  EXPECT_NEAR(tied->pos_emb->weight.std().item<double>(), root, 0.1 * root);
  EXPECT_NEAR(untied->tok_emb->weight.std().item<double>(), 1.0, 0.1);
  // The same seed, the same draws: only the scale differs.
  EXPECT_TRUE(at::allclose(tied->tok_emb->weight / root, untied->tok_emb->weight, 1e-5, 1e-5));

  const at::Tensor tokens = at::arange(2 * 16, at::kLong).mul(37).remainder(256).reshape({2, 16});
  const at::Tensor logits = tied->forward(tokens);
  const double loss = at::cross_entropy_loss(logits.reshape({-1, 256}), tokens.roll(-1, 1).reshape({-1})).item<double>();
  EXPECT_NEAR(loss, std::log(256.0), 1.0);
}

TEST(GptTest, AttentionIsCausal) {
  zoo::Gpt gpt(zoo::GptOptions().vocab(20).width(16).heads(2).context(8));
  at::Tensor tokens = at::randint(20, {1, 8}, at::kLong);
  const at::Tensor before = gpt->forward(tokens);
  tokens[0][5] = (tokens[0][5].item<int64_t>() + 1) % 20;
  const at::Tensor after = gpt->forward(tokens);
  EXPECT_TRUE(after.slice(1, 0, 5).equal(before.slice(1, 0, 5)));
  EXPECT_FALSE(after.slice(1, 5).equal(before.slice(1, 5)));
}

TEST(GptTest, RejectsBadArgumentsAndInputs) {
  EXPECT_EQ(config_error("gpt", {{"width", 30}, {"heads", 4}}),
            "argument 'width' of model 'gpt' (30) must be divisible by 'heads' (4)");
  EXPECT_EQ(config_error("gpt", {{"depth", 0}}),
            "argument 'depth' of model 'gpt' must be positive, got 0");
  EXPECT_EQ(config_error("gpt", {{"layers", 2}}),
            "unknown argument 'layers' of model 'gpt'; known: vocab, width, depth, heads, context, seed, "
            "tie_embeddings");
  zoo::Gpt gpt(zoo::GptOptions().context(8));
  EXPECT_THROW(gpt->forward(at::zeros({1, 9}, at::kLong)), std::invalid_argument);
  EXPECT_THROW(gpt->forward(at::zeros({1, 4}, at::kInt)), std::invalid_argument);
  EXPECT_THROW(gpt->forward(at::zeros({4}, at::kLong)), std::invalid_argument);
}

TEST(ZooForwardTest, DispatchesOnTheModelTypeAndLooksThroughDataParallel) {
  auto cnn = ModelLike("fashion_cnn").build();
  const at::Tensor images = at::randn({2, 1, 28, 28});
  const at::Tensor expected = std::dynamic_pointer_cast<zoo::FashionCnnImpl>(cnn)->forward(images);
  EXPECT_TRUE(zoo::forward(*cnn, images).equal(expected));

  DataParallel wrapped(cnn, world());
  EXPECT_TRUE(zoo::forward(*wrapped, images).equal(expected));

  auto mlp = ModelLike("fashion_mlp").build();
  EXPECT_EQ(zoo::forward(*mlp, images).sizes(), (std::vector<int64_t>{2, 10}));
  auto gpt = ModelLike("gpt").build();
  EXPECT_EQ(zoo::forward(*gpt, at::zeros({1, 4}, at::kLong)).sizes(),
            (std::vector<int64_t>{1, 4, 256}));
}

TEST(ZooForwardTest, RejectsOtherModules) {
  torch::nn::Module other("Other");
  try {
    zoo::forward(other, at::zeros({1}));
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()),
              "mto::zoo::forward: Other is not a zoo model (FashionCnn, FashionMlp or Gpt)");
  }
}

TEST(ZooCheckpointTest, RestoresWithNoModelCode) {
  const std::string dir = test::make_temp_dir() + "/ckpt";
  auto cnn = ModelLike("fashion_cnn", {{"channels", {4, 8}}, {"hidden", 16}}).build();
  const at::Tensor images = at::randn({3, 1, 28, 28});
  const at::Tensor expected = zoo::forward(*cnn, images);
  save(*cnn, dir);
  auto restored = restore(dir);
  ASSERT_NE(std::dynamic_pointer_cast<zoo::FashionCnnImpl>(restored), nullptr);
  EXPECT_TRUE(zoo::forward(*restored, images).equal(expected));
}

}  // namespace
}  // namespace mto
