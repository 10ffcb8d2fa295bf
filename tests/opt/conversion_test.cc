// apply_mode, modelopt_state and restore_from_modelopt_state: the forms of their arguments,
// model-likes, the runtime context, the update hooks, version warnings and restore refusals.
#include <gtest/gtest.h>

#include <c10/util/Exception.h>
#include <google/protobuf/struct.pb.h>

#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/state_manager.h"
#include "opt/version.h"
#include "tests/opt/testing/test_modes.h"
#include "tests/opt/testing/test_modes.pb.h"

namespace mto {
namespace {

std::vector<std::string> mode_names(torch::nn::Module& model) {
  std::vector<std::string> out;
  const ModeloptState state = modelopt_state(model);
  for (const auto& entry : state.modelopt_state_dict()) out.push_back(entry.mode());
  return out;
}

// Collects TORCH_WARN messages while alive.
class WarningCollector : public c10::WarningHandler {
 public:
  WarningCollector() : guard_(this) {}
  void process(const c10::SourceLocation&, const std::string& msg, bool) override {
    messages.push_back(msg);
  }
  std::vector<std::string> messages;

 private:
  c10::Warning::WarningHandlerGuard guard_;
};

TEST(ApplyModeTest, AcceptsOneModeAListAndModeConfigPairs) {
  ModulePtr one = apply_mode(ModelLike("test_mlp").build(), "test_nas");
  EXPECT_EQ(mode_names(*one), std::vector<std::string>{"test_nas"});

  ModulePtr list = apply_mode(ModelLike("test_mlp").build(), {"test_nas", "test_export_nas"});
  EXPECT_EQ(mode_names(*list), (std::vector<std::string>{"test_nas", "test_export_nas"}));

  test::SparsityTestConfig sparsity;
  sparsity.set_sparsity(0.25);
  ModulePtr pairs = apply_mode(ModelLike("test_mlp").build(),
                               {{"test_quantize", R"({"num_bits": 4})"}, {"test_kd"}});
  ModeloptState state = modelopt_state(*pairs);
  test::QuantizeTestConfig quantize;
  ASSERT_TRUE(state.modelopt_state_dict(0).config().UnpackTo(&quantize));
  EXPECT_EQ(quantize.num_bits(), 4);

  ModulePtr with_message = apply_mode(ModelLike("test_mlp").build(), {{"test_sparse", sparsity}});
  test::SparsityTestConfig recorded;
  ASSERT_TRUE(modelopt_state(*with_message).modelopt_state_dict(0).config().UnpackTo(&recorded));
  EXPECT_EQ(recorded.sparsity(), 0.25);
}

TEST(ApplyModeTest, AcceptsModuleHoldersAndTypedPointers) {
  mto::nn::Linear layer(4, 3);
  ModulePtr converted = apply_mode(layer, "test_quantize");
  EXPECT_EQ(converted.get(), layer.ptr().get());
  EXPECT_NE(layer->transform("weight_quantizer"), nullptr);
  auto mlp = std::make_shared<test::TestMlpImpl>();
  EXPECT_EQ(apply_mode(mlp, "test_nas").get(), mlp.get());
}

TEST(ApplyModeTest, ModelLikeIsBuiltLazilyAndRecorded) {
  test::test_events().clear();
  ModulePtr model = apply_mode(ModelLike("test_mlp", {{"hidden", 12}, {"seed", 3}}),
                               {"test_modellike", "test_quantize"});
  ASSERT_NE(std::dynamic_pointer_cast<test::TestMlpImpl>(model), nullptr);
  EXPECT_EQ(test::test_events(), (std::vector<std::string>{"convert:test_modellike", "convert:test_quantize"}));
  ModeloptState state = modelopt_state(*model);
  EXPECT_EQ(state.model_like().factory(), "test_mlp");
  EXPECT_EQ(state.model_like().args_json(), R"({"hidden":12,"seed":3})");
  google::protobuf::Struct metadata;
  ASSERT_TRUE(state.modelopt_state_dict(0).metadata().UnpackTo(&metadata));
  EXPECT_EQ(metadata.fields().at("factory").string_value(), "test_mlp");

  // With no mode needing it, the model-like is built before the first convert.
  ModulePtr built = apply_mode(ModelLike("test_cnn"), "test_sparse");
  EXPECT_NE(std::dynamic_pointer_cast<test::TestCnnImpl>(built), nullptr);
  // With no modes at all it is built too.
  EXPECT_NE(std::dynamic_pointer_cast<test::TestMlpImpl>(apply_mode(ModelLike("test_mlp"), std::vector<ModeWithConfig>{})), nullptr);
}

TEST(ApplyModeTest, NoModeLeavesTheModelUnconverted) {
  // As the Python original's "vanilla case": no state is attached, so the model can still be
  // restored into.
  ModulePtr model = apply_mode(ModelLike("test_mlp").build(), std::vector<ModeWithConfig>{});
  EXPECT_FALSE(ModeloptStateManager::is_converted(*model));
  const ModeloptState state = modelopt_state(*apply_mode(ModelLike("test_mlp").build(), "test_nas"));
  EXPECT_EQ(mode_names(*restore_from_modelopt_state(model, state)), std::vector<std::string>{"test_nas"});
  // A converted model keeps its modes.
  ModulePtr converted = apply_mode(ModelLike("test_mlp").build(), "test_quantize");
  EXPECT_EQ(mode_names(*apply_mode(converted, std::vector<ModeWithConfig>{})), std::vector<std::string>{"test_quantize"});
}

TEST(ApplyModeTest, ModeRequiringModelLikeRefusesABuiltModel) {
  try {
    apply_mode(ModelLike("test_mlp").build(), "test_modellike");
    FAIL() << "no error";
  } catch (const ApplyModeError& e) {
    EXPECT_STREQ(e.what(),
                 "Mode 'test_modellike' requires a model-like (a registered model factory and its "
                 "arguments), but the model is already built.");
  }
}

TEST(ApplyModeTest, UnknownModelFactoryIsReported) {
  try {
    ModelLike("no_such_model").build();
    FAIL() << "no error";
  } catch (const ModeError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("Unknown model 'no_such_model'. Registered models: ", 0), 0u);
  }
}

TEST(ApplyModeTest, InitStateDefaultsToNotConverted) {
  ModulePtr model = apply_mode(ModelLike("test_mlp").build(), "test_nas");
  model = apply_mode(model, "test_quantize");
  EXPECT_EQ(mode_names(*model), (std::vector<std::string>{"test_nas", "test_quantize"}));
  EXPECT_THROW(apply_mode(model, "test_kd", nullptr, /*init_state=*/true), StateError);
  EXPECT_THROW(apply_mode(ModelLike("test_mlp").build(), "test_kd", nullptr, /*init_state=*/false),
               StateError);
}

TEST(ApplyModeTest, RuntimeContextValuesReachConvertAndAreNeverSaved) {
  RuntimeContext context;
  context.set(test::kTestTag, std::string("calibration-loop"));
  ModulePtr model = apply_mode(ModelLike("test_mlp").build(), "test_hooks", nullptr, std::nullopt, context);
  ModeloptState state = modelopt_state(*model);
  google::protobuf::Struct metadata;
  ASSERT_TRUE(state.modelopt_state_dict(0).metadata().UnpackTo(&metadata));
  EXPECT_TRUE(metadata.fields().at("kwarg_seen").bool_value());
  EXPECT_EQ(state.SerializeAsString().find("calibration-loop"), std::string::npos);

  EXPECT_EQ(context.get(test::kTestTag), "calibration-loop");
  // A key names its type: the same name read as another type is no value, never a wrong one.
  constexpr ContextKey<int> tag_as_int{"tag"};
  EXPECT_EQ(context.find(tag_as_int), nullptr);
  try {
    context.get(ContextKey<std::string>{"missing"});
    ADD_FAILURE() << "no error";
  } catch (const ApplyModeError& e) {
    EXPECT_STREQ(e.what(), "missing mode argument 'missing'");
  }
  // Without a mesh of its own, the context has the default mesh and its dp group.
  EXPECT_EQ(context.mesh(), default_mesh());
  EXPECT_EQ(context.data_parallel_group(), default_mesh()->dp());
}

TEST(ApplyModeTest, UpdateHooksRunAtTheRightMoments) {
  test::test_events().clear();
  ModulePtr model = apply_mode(ModelLike("test_mlp").build(), "test_hooks");
  EXPECT_EQ(test::test_events(), std::vector<std::string>{"convert:test_hooks"});

  ModeloptState saved = modelopt_state(*model);
  EXPECT_EQ(test::test_events().back(), "update_for_save");

  test::test_events().clear();
  model = apply_mode(model, {"test_kd", "test_export_student"});
  // Once before the new modes, not between them.
  EXPECT_EQ(test::test_events(), (std::vector<std::string>{"update_for_new_mode", "convert:test_kd",
                                                           "convert:test_export_student"}));
  google::protobuf::Struct metadata;
  ASSERT_TRUE(modelopt_state(*model).modelopt_state_dict(0).metadata().UnpackTo(&metadata));
  EXPECT_EQ(metadata.fields().at("new_mode_updates").number_value(), 1);

  // Restoring calls neither hook.
  test::test_events().clear();
  restore_from_modelopt_state(ModelLike("test_mlp").build(), saved);
  EXPECT_TRUE(test::test_events().empty());
}

TEST(ApplyModeTest, FailedConvertIsCatchableAndKeepsEarlierModes) {
  ModulePtr model = apply_mode(ModelLike("test_mlp").build(), "test_kd");
  try {
    apply_mode(model, {"test_quantize", "test_fail"});
    FAIL() << "no error";
  } catch (const ApplyModeError& e) {
    EXPECT_STREQ(e.what(), "test_fail cannot convert this model");
  }
  EXPECT_EQ(mode_names(*model), (std::vector<std::string>{"test_kd", "test_quantize"}));
}

TEST(ModeloptStateTest, UnconvertedModelHasAnEmptyState) {
  ModeloptState state = modelopt_state(*std::make_shared<test::TestMlpImpl>());
  EXPECT_EQ(state.modelopt_version(), kModeloptVersion);
  EXPECT_FALSE(state.has_model_like());
  EXPECT_EQ(state.modelopt_state_dict_size(), 0);
}

TEST(RestoreFromStateTest, RestoresIntoAModuleOrAModelLike) {
  ModulePtr model = apply_mode(ModelLike("test_mlp", {{"hidden", 10}}).build(), {"test_nas", "test_quantize"});
  ModeloptState state = modelopt_state(*model);
  ModulePtr restored = restore_from_modelopt_state(ModelLike("test_mlp", {{"hidden", 10}}), state);
  EXPECT_EQ(modelopt_state(*restored).SerializeAsString(), state.SerializeAsString());
  auto mlp = std::dynamic_pointer_cast<test::TestMlpImpl>(restored);
  ASSERT_NE(mlp, nullptr);
  EXPECT_NE(mlp->fc1->transform("weight_quantizer"), nullptr);
  EXPECT_NE(mlp->fc1->transform("width_mask"), nullptr);
  EXPECT_EQ(mlp->named_buffers().size(), 3u);
  EXPECT_NE(std::dynamic_pointer_cast<test::TestMlpImpl>(restore_from_modelopt_state(state)), nullptr);
}

TEST(RestoreFromStateTest, RestoringIntoAConvertedModelFails) {
  ModulePtr model = apply_mode(ModelLike("test_mlp").build(), "test_quantize");
  ModeloptState state = modelopt_state(*model);
  try {
    restore_from_modelopt_state(model, state);
    FAIL() << "no error";
  } catch (const StateError& e) {
    EXPECT_STREQ(e.what(), "Model already has modelopt state!");
  }
}

TEST(RestoreFromStateTest, StateWithoutModelLikeNeedsAModel) {
  ModeloptState state = modelopt_state(*apply_mode(std::make_shared<test::TestMlpImpl>(), "test_kd"));
  EXPECT_THROW(restore_from_modelopt_state(state), StateError);
  EXPECT_NO_THROW(restore_from_modelopt_state(std::make_shared<test::TestMlpImpl>(), state));
}

TEST(RestoreFromStateTest, QuantizerNamesMustMatchTheMetadata) {
  ModulePtr model = apply_mode(ModelLike("test_mlp").build(), "test_quantize");
  ModeloptState state = modelopt_state(*model);
  try {
    restore_from_modelopt_state(ModelLike("test_cnn").build(), state);
    FAIL() << "no error";
  } catch (const ApplyModeError& e) {
    EXPECT_STREQ(e.what(), "Unmatched keys: fc1.weight_quantizer, fc2.weight_quantizer, fc3.weight_quantizer");
  }
}

TEST(RestoreFromStateTest, VersionMismatchWarnsOnce) {
  ModeloptState state = modelopt_state(*apply_mode(ModelLike("test_mlp").build(), "test_kd"));
  {
    WarningCollector warnings;
    restore_from_modelopt_state(ModelLike("test_mlp").build(), state);
    EXPECT_TRUE(warnings.messages.empty());
  }
  state.set_modelopt_version("0.0.9");  // major.minor 0.0, not 0.1
  WarningCollector warnings;
  ModulePtr restored = restore_from_modelopt_state(ModelLike("test_mlp").build(), state);
  ASSERT_EQ(warnings.messages.size(), 1u);
  EXPECT_EQ(warnings.messages[0],
            "The checkpoint is stored with version 0.0.9, but current version is " +
                std::string(kModeloptVersion) +
                ". Compatibility of checkpoint with current version is not guaranteed!");
  EXPECT_TRUE(ModeloptStateManager::is_converted(*restored));
}

}  // namespace
}  // namespace mto
