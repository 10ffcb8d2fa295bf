// Mode chains end to end: every valid chain survives save -> restore into a fresh model with
// a byte-identical modelopt state and equal outputs; every invalid chain fails with the
// exact message of the Python original.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "opt/checkpoint.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/deterministic.h"
#include "serialization/file.h"
#include "tests/opt/testing/test_modes.h"
#include "tests/testing/temp_dir.h"

namespace mto {
namespace {

struct Chain {
  std::string label;
  std::string model;                  // "test_mlp" or "test_cnn"
  std::vector<std::vector<std::string>> calls;  // one apply_mode call per element
  bool from_model_like = false;       // pass a ModelLike to the first apply_mode call
};

void PrintTo(const Chain& chain, std::ostream* os) { *os << chain.label; }

ModulePtr apply_chain(const Chain& chain) {
  ModulePtr model;
  for (size_t i = 0; i < chain.calls.size(); ++i) {
    std::vector<ModeWithConfig> modes(chain.calls[i].begin(), chain.calls[i].end());
    if (i == 0 && chain.from_model_like) {
      model = apply_mode(ModelLike(chain.model, {{"seed", 7}}), modes);
    } else {
      if (!model) model = ModelLike(chain.model, {{"seed", 7}}).build();
      model = apply_mode(model, modes);
    }
  }
  if (!model) model = ModelLike(chain.model, {{"seed", 7}}).build();
  return model;
}

class ValidChainTest : public ::testing::TestWithParam<Chain> {};

TEST_P(ValidChainTest, SaveRestoreGivesIdenticalStateAndOutputs) {
  const Chain& chain = GetParam();
  ModulePtr model = apply_chain(chain);
  const at::Tensor x = test::test_input(model);
  const at::Tensor expected = test::test_forward(model, x);

  const std::string dir = test::make_temp_dir() + "/ckpt";
  save(*model, dir);
  const std::string saved = read_file(path_in(dir, kStateFileName), 1 << 20);
  EXPECT_EQ(saved, serialize_deterministic(modelopt_state(*model)));

  // Into a model with other weights: a built module, or a model-like where a mode of the
  // chain requires one.
  const ModelLike other(chain.model, {{"seed", 99}});
  ASSERT_FALSE(test::test_forward(other.build(), x).equal(test::test_forward(apply_chain(chain), x)));
  ModulePtr restored = chain.from_model_like ? restore(other, dir) : restore(other.build(), dir);
  EXPECT_TRUE(test::test_forward(restored, x).equal(expected)) << chain.label;
  EXPECT_EQ(serialize_deterministic(modelopt_state(*restored)), saved);

  // From the model-like recorded in the checkpoint, with no model given.
  ModulePtr rebuilt = restore(dir);
  EXPECT_TRUE(test::test_forward(rebuilt, x).equal(expected)) << chain.label;
  EXPECT_EQ(serialize_deterministic(modelopt_state(*rebuilt)), saved);
}

INSTANTIATE_TEST_SUITE_P(
    Chains, ValidChainTest,
    ::testing::Values(
        Chain{"empty", "test_mlp", {}},
        Chain{"quantize", "test_mlp", {{"test_quantize"}}},
        Chain{"quantize_cnn", "test_cnn", {{"test_quantize"}}},
        Chain{"sparse", "test_mlp", {{"test_sparse"}}},
        Chain{"nas", "test_mlp", {{"test_nas"}}},
        Chain{"nas_export", "test_mlp", {{"test_nas", "test_export_nas"}}},
        Chain{"sparse_export_cnn", "test_cnn", {{"test_sparse", "test_export_sparse"}}},
        Chain{"nas_quantize", "test_mlp", {{"test_nas", "test_quantize"}}},
        Chain{"nas_sparse_both_exports", "test_mlp",
              {{"test_nas", "test_sparse", "test_export_sparse", "test_export_nas"}}},
        Chain{"sparse_quantize", "test_mlp", {{"test_sparse", "test_quantize"}}},
        Chain{"sparse_kd_exports", "test_mlp",
              {{"test_sparse", "test_kd", "test_export_student", "test_export_sparse"}}},
        Chain{"nas_kd_exports", "test_mlp",
              {{"test_nas", "test_kd", "test_export_student", "test_export_nas"}}},
        Chain{"kd_export", "test_mlp", {{"test_kd", "test_export_student"}}},
        Chain{"terminal", "test_mlp", {{"test_terminal"}}},
        Chain{"quantize_kd", "test_mlp", {{"test_quantize", "test_kd"}}},
        Chain{"nas_export_quantize", "test_mlp", {{"test_nas", "test_export_nas", "test_quantize"}}},
        Chain{"sparse_export_nas_export", "test_mlp",
              {{"test_sparse", "test_export_sparse", "test_nas", "test_export_nas"}}},
        Chain{"quantize_terminal", "test_mlp", {{"test_quantize", "test_terminal"}}},
        Chain{"hooks_quantize", "test_mlp", {{"test_hooks", "test_quantize"}}},
        Chain{"two_calls", "test_mlp", {{"test_nas"}, {"test_quantize"}}},
        Chain{"three_calls_exports", "test_mlp",
              {{"test_nas"}, {"test_sparse"}, {"test_export_sparse", "test_export_nas"}}},
        Chain{"model_like_first", "test_mlp", {{"test_modellike", "test_quantize"}}, true},
        Chain{"model_like_sparse_cnn", "test_cnn", {{"test_modellike", "test_sparse"}}, true}),
    [](const ::testing::TestParamInfo<Chain>& info) { return info.param.label; });

struct InvalidChain {
  std::string label;
  std::vector<std::string> modes;
  std::string message;
};

void PrintTo(const InvalidChain& chain, std::ostream* os) { *os << chain.label; }

class InvalidChainTest : public ::testing::TestWithParam<InvalidChain> {};

TEST_P(InvalidChainTest, FailsWithTheExactMessage) {
  const InvalidChain& chain = GetParam();
  ModulePtr model = ModelLike("test_mlp").build();
  std::vector<ModeWithConfig> prefix(chain.modes.begin(), chain.modes.end() - 1);
  if (!prefix.empty()) model = apply_mode(model, prefix);
  try {
    apply_mode(model, chain.modes.back());
    FAIL() << "no error for " << chain.label;
  } catch (const StateError& e) {
    EXPECT_EQ(std::string(e.what()), chain.message);
  }
  // The same chain in one call fails the same way.
  try {
    apply_mode(ModelLike("test_mlp").build(), std::vector<ModeWithConfig>(chain.modes.begin(), chain.modes.end()));
    FAIL() << "no error for " << chain.label;
  } catch (const StateError& e) {
    EXPECT_EQ(std::string(e.what()), chain.message);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Chains, InvalidChainTest,
    ::testing::Values(
        InvalidChain{"quantize_then_sparse", {"test_quantize", "test_sparse"},
                     "test_quantize does not allow test_sparse to be its next mode."},
        InvalidChain{"quantize_then_nas", {"test_quantize", "test_nas"},
                     "test_quantize does not allow test_nas to be its next mode."},
        InvalidChain{"prohibited_by_an_earlier_mode", {"test_quantize", "test_kd", "test_sparse"},
                     "test_quantize does not allow test_sparse to be its next mode."},
        InvalidChain{"not_in_next_modes", {"test_nas", "test_terminal"},
                     "Cannot add test_terminal after test_nas! Next modes of test_nas are "
                     "{'test_export_nas', 'test_kd', 'test_quantize', 'test_sparse'}."},
        InvalidChain{"after_terminal", {"test_terminal", "test_quantize"},
                     "Cannot add test_quantize after test_terminal! Next modes of test_terminal "
                     "are set()."},
        InvalidChain{"export_without_mode", {"test_export_nas"},
                     "Cannot add test_export_nas according to the current export stack: []."},
        InvalidChain{"export_out_of_order", {"test_nas", "test_kd", "test_export_nas"},
                     "Cannot add test_export_nas according to the current export stack: "
                     "['test_export_nas', 'test_export_student']."},
        InvalidChain{"export_twice", {"test_sparse", "test_export_sparse", "test_export_sparse"},
                     "Cannot add test_export_sparse according to the current export stack: []."},
        InvalidChain{"incompatible_with_stack_top", {"test_nas", "test_quantize", "test_terminal"},
                     "Cannot add test_terminal after test_nas! Next modes of test_nas are "
                     "{'test_export_nas', 'test_kd', 'test_quantize', 'test_sparse'}."},
        // An export mode meets the export stack first, as in the Python original.
        InvalidChain{"sparse_then_wrong_export", {"test_nas", "test_sparse", "test_export_nas"},
                     "Cannot add test_export_nas according to the current export stack: "
                     "['test_export_nas', 'test_export_sparse']."}),
    [](const ::testing::TestParamInfo<InvalidChain>& info) { return info.param.label; });

}  // namespace
}  // namespace mto
