// ModeloptStateManager: where the state lives, the assertions of the Python original, the
// export stack, and every method of the spec used directly.
#include <gtest/gtest.h>

#include <google/protobuf/struct.pb.h>

#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/registry.h"
#include "opt/state_manager.h"
#include "tests/opt/testing/test_modes.h"
#include "tests/opt/testing/test_modes.pb.h"

namespace mto {
namespace {

template <typename F>
std::string state_error(F f) {
  try {
    f();
  } catch (const StateError& e) {
    return e.what();
  }
  return "no error";
}

// The serialized bytes of a state dict.
std::string bytes(const ModeloptStateDict& state_dict) {
  ModeloptState state;
  *state.mutable_modelopt_state_dict() = state_dict;
  return state.SerializeAsString();
}

// A valid test_nas config.
test::NasTestConfig nas_config() {
  test::NasTestConfig config;
  config.set_min_ratio(0.5);
  return config;
}

ModulePtr converted_mlp() { return apply_mode(ModelLike("test_mlp").build(), "test_quantize"); }

TEST(StateManagerTest, IsConvertedOnRootAndSubmodules) {
  ModulePtr plain = ModelLike("test_mlp").build();
  EXPECT_FALSE(ModeloptStateManager::is_converted(*plain));
  EXPECT_FALSE(ModeloptStateManager::is_converted(*plain, /*is_root=*/true));

  ModulePtr model = converted_mlp();
  EXPECT_TRUE(ModeloptStateManager::is_converted(*model));
  EXPECT_TRUE(ModeloptStateManager::is_converted(*model, /*is_root=*/true));

  auto parent = std::make_shared<torch::nn::Module>();
  parent->register_module("inner", model);
  EXPECT_TRUE(ModeloptStateManager::is_converted(*parent));
  EXPECT_EQ(state_error([&] { ModeloptStateManager::is_converted(*parent, /*is_root=*/true); }),
            "Model has modelopt state but not the root!");
}

TEST(StateManagerTest, SeveralStatesAreAnError) {
  auto parent = std::make_shared<torch::nn::Module>();
  parent->register_module("a", converted_mlp());
  parent->register_module("b", converted_mlp());
  EXPECT_EQ(state_error([&] { ModeloptStateManager::is_converted(*parent); }),
            "Model has multiple modelopt states!");
  EXPECT_EQ(state_error([&] { apply_mode(parent, "test_kd"); }), "Model has multiple modelopt states!");
}

TEST(StateManagerTest, InitStateOnConvertedModelFails) {
  ModulePtr model = converted_mlp();
  EXPECT_EQ(state_error([&] { ModeloptStateManager(model, /*init_state=*/true); }),
            "Model already has modelopt state!");
  EXPECT_EQ(state_error([&] { apply_mode(model, "test_kd", nullptr, /*init_state=*/true); }),
            "Model already has modelopt state!");
}

TEST(StateManagerTest, ManagerOfUnconvertedModelNeedsInitState) {
  ModulePtr plain = ModelLike("test_mlp").build();
  EXPECT_THROW(ModeloptStateManager manager(plain), StateError);
  ModeloptStateManager manager(plain, /*init_state=*/true);
  EXPECT_FALSE(manager.has_state());
  EXPECT_EQ(manager.last_mode(), nullptr);
  EXPECT_TRUE(ModeloptStateManager::is_converted(*plain));
}

TEST(StateManagerTest, ManagerWithoutModelHasAnEmptyState) {
  ModeloptStateManager manager;
  EXPECT_FALSE(manager.has_state());
  EXPECT_EQ(manager.state_dict().size(), 0);
  manager.add_mode("test_kd", test::KdTestConfig(), google::protobuf::Struct());
  EXPECT_TRUE(manager.has_state());
}

TEST(StateManagerTest, AddModeRecordsModesInOrder) {
  ModeloptStateManager manager;
  test::NasTestConfig nas = nas_config();
  nas.set_min_ratio(0.75);
  manager.add_mode("test_nas", nas, test::NasTestMetadata());
  test::QuantizeTestConfig quantize;
  quantize.set_num_bits(8);
  manager.add_mode("test_quantize", quantize, test::QuantizeTestMetadata());
  EXPECT_EQ(manager.last_mode()->name(), "test_quantize");
  auto modes = manager.modes_with_states();
  ASSERT_EQ(modes.size(), 2u);
  EXPECT_EQ(modes[0].mode->name(), "test_nas");
  EXPECT_EQ(message_as<test::NasTestConfig>(modes[0].config, "t").min_ratio(), 0.75);
  auto state = manager.state_dict();
  ASSERT_EQ(state.size(), 2);
  EXPECT_EQ(state[0].mode(), "test_nas");
  EXPECT_EQ(state[0].config().type_url(), "type.googleapis.com/mto.test.NasTestConfig");
  EXPECT_EQ(state[1].metadata().type_url(), "type.googleapis.com/mto.test.QuantizeTestMetadata");
  EXPECT_EQ(manager.export_stack(), std::vector<std::string>{"test_export_nas"});
}

TEST(StateManagerTest, AddModeChecksTheChainTheTypesAndTheValues) {
  ModeloptStateManager manager;
  EXPECT_THROW(manager.add_mode("test_quantize", test::QuantizeTestConfig(), test::QuantizeTestMetadata()),
               ConfigError);  // num_bits 0
  test::QuantizeTestConfig quantize;
  quantize.set_num_bits(4);
  manager.add_mode("test_quantize", quantize, test::QuantizeTestMetadata());
  EXPECT_EQ(state_error([&] { manager.check_mode("test_sparse"); }),
            "test_quantize does not allow test_sparse to be its next mode.");
  EXPECT_EQ(state_error([&] {
              manager.add_mode("test_sparse", test::SparsityTestConfig(),
                               google::protobuf::Struct());
            }),
            "test_quantize does not allow test_sparse to be its next mode.");
  EXPECT_THROW(manager.add_mode("test_kd", test::SparsityTestConfig(), google::protobuf::Struct()),
               ConfigError);
  EXPECT_THROW(manager.add_mode("test_kd", test::KdTestConfig(), test::NasTestMetadata()), ConfigError);
  EXPECT_EQ(manager.state_dict().size(), 1);
}

TEST(StateManagerTest, ExportStackPushesAndPops) {
  ModeloptStateManager manager;
  manager.add_mode("test_nas", nas_config(), test::NasTestMetadata());
  manager.add_mode("test_sparse", test::SparsityTestConfig(), google::protobuf::Struct());
  EXPECT_EQ(manager.export_stack(), (std::vector<std::string>{"test_export_nas", "test_export_sparse"}));
  manager.add_mode("test_export_sparse", test::EmptyTestConfig(), google::protobuf::Struct());
  EXPECT_EQ(manager.export_stack(), std::vector<std::string>{"test_export_nas"});
  manager.add_mode("test_export_nas", test::EmptyTestConfig(), google::protobuf::Struct());
  EXPECT_TRUE(manager.export_stack().empty());
}

TEST(StateManagerTest, LoadStateDictReplaysTheChain) {
  ModeloptStateManager source;
  source.add_mode("test_nas", nas_config(), test::NasTestMetadata());
  source.add_mode("test_kd", test::KdTestConfig(), google::protobuf::Struct());

  ModeloptStateManager target;
  target.load_state_dict(source.state_dict());
  EXPECT_EQ(bytes(target.state_dict()), bytes(source.state_dict()));
  EXPECT_EQ(target.export_stack(), (std::vector<std::string>{"test_export_nas", "test_export_student"}));
  EXPECT_EQ(state_error([&] { target.load_state_dict(source.state_dict()); }),
            "Cannot load a modelopt state into a model that already has one.");

  // A state whose chain is forbidden fails like add_mode.
  ModeloptStateManager nas_only;
  nas_only.add_mode("test_nas", nas_config(), test::NasTestMetadata());
  ModeloptStateDict forbidden = nas_only.state_dict();
  ModeEntry* entry = forbidden.Add();
  entry->set_mode("test_terminal");
  *entry->mutable_config() = pack_message(test::EmptyTestConfig());
  *entry->mutable_metadata() = pack_message(google::protobuf::Struct());
  ModeloptStateManager other;
  EXPECT_EQ(state_error([&] { other.load_state_dict(forbidden); }),
            "Cannot add test_terminal after test_nas! Next modes of test_nas are "
            "{'test_export_nas', 'test_kd', 'test_quantize', 'test_sparse'}.");
}

TEST(StateManagerTest, TransferStateDictMovesTheSameState) {
  ModulePtr from = converted_mlp();
  ModulePtr to = ModelLike("test_mlp", {{"hidden", 16}}).build();
  const std::string before = bytes(ModeloptStateManager(from).state_dict());
  ModeloptStateManager::transfer_state_dict(*from, *to);
  EXPECT_FALSE(ModeloptStateManager::is_converted(*from));
  EXPECT_TRUE(ModeloptStateManager::is_converted(*to, /*is_root=*/true));
  EXPECT_EQ(bytes(ModeloptStateManager(to).state_dict()), before);
  EXPECT_EQ(state_error([&] { ModeloptStateManager::transfer_state_dict(*from, *to); }),
            "Model has no modelopt state to transfer!");
  ModulePtr third = converted_mlp();
  EXPECT_EQ(state_error([&] { ModeloptStateManager::transfer_state_dict(*third, *to); }),
            "Model already has modelopt state!");
}

TEST(StateManagerTest, UpdateHooksReachTheLastMode) {
  ModulePtr model = apply_mode(ModelLike("test_mlp").build(), "test_hooks");
  ModeloptStateManager manager(model);
  test::test_events().clear();
  manager.update_last_state_before_new_mode(*model);
  manager.update_last_state_before_save(*model);
  EXPECT_EQ(test::test_events(), (std::vector<std::string>{"update_for_new_mode", "update_for_save"}));
  const auto& fields = message_as<google::protobuf::Struct>(manager.modes_with_states()[0].metadata, "t").fields();
  EXPECT_EQ(fields.at("new_mode_updates").number_value(), 1);
  EXPECT_TRUE(fields.at("saved").bool_value());
}

TEST(StateManagerTest, StateNeverEntersTheStateDict) {
  ModulePtr model = converted_mlp();
  for (const auto& item : model->named_buffers()) {
    EXPECT_EQ(item.key().find("_modelopt_state"), std::string::npos) << item.key();
  }
  EXPECT_EQ(model->named_parameters().size(), 6u);
  EXPECT_EQ(model->named_buffers().size(), 3u);  // one _amax per quantized layer
}

}  // namespace
}  // namespace mto
