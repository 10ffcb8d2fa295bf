// Configs as protobuf messages: defaults, JSON in and out, unknown fields rejected with the
// field named, per-mode value validation, and validation again on restore.
#include <gtest/gtest.h>

#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/registry.h"
#include "opt/state_manager.h"
#include "tests/opt/testing/test_modes.h"
#include "tests/opt/testing/test_modes.pb.h"

namespace mto {
namespace {

using test::QuantizeTestConfig;
using test::SparsityTestConfig;

std::string config_error(const std::string& mode, const ConfigInput& config) {
  try {
    ModeloptStateManager::get_config_class(mode, config);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}

const QuantizeTestConfig& as_quantize(const MessagePtr& m) {
  return message_as<QuantizeTestConfig>(*m, "test");
}

TEST(ConfigTest, NoConfigGivesTheDefaults) {
  MessagePtr config = ModeloptStateManager::get_config_class("test_quantize", {});
  EXPECT_EQ(as_quantize(config).num_bits(), 8);
  EXPECT_FALSE(as_quantize(config).per_channel());
}

TEST(ConfigTest, JsonOverridesOnlyTheFieldsItNames) {
  MessagePtr config = ModeloptStateManager::get_config_class("test_quantize", R"({"per_channel": true})");
  EXPECT_EQ(as_quantize(config).num_bits(), 8);
  EXPECT_TRUE(as_quantize(config).per_channel());
  config = ModeloptStateManager::get_config_class("test_quantize", R"({"perChannel": true, "num_bits": 4})");
  EXPECT_EQ(as_quantize(config).num_bits(), 4);
  EXPECT_TRUE(as_quantize(config).per_channel());
}

TEST(ConfigTest, UnknownFieldIsRejectedWithItsName) {
  EXPECT_EQ(config_error("test_quantize", R"({"num_bit": 4})"),
            "config of mode 'test_quantize': unknown field 'num_bit' (known fields: num_bits, "
            "per_channel)");
}

TEST(ConfigTest, WrongTypeNamesTheField) {
  EXPECT_EQ(config_error("test_sparse", R"({"sparsity": "half"})"),
            "config of mode 'test_sparse': (sparsity): invalid value \"half\" for type TYPE_DOUBLE");
  EXPECT_EQ(config_error("test_quantize", R"({"num_bits": 4.5})"),
            "config of mode 'test_quantize': (num_bits): invalid value 4.5 for type TYPE_INT32");
}

TEST(ConfigTest, OutOfRangeValuesAreRejectedByTheMode) {
  EXPECT_EQ(config_error("test_quantize", R"({"num_bits": 9})"),
            "config of mode 'test_quantize': num_bits must be in [2, 8], got 9");
  EXPECT_EQ(config_error("test_sparse", R"({"sparsity": 1.0})"),
            "config of mode 'test_sparse': sparsity must be in [0, 1), got 1");
}

TEST(ConfigTest, InvalidJsonIsRejected) {
  std::string error = config_error("test_quantize", R"({"num_bits": )");
  EXPECT_EQ(error.rfind("config of mode 'test_quantize': not valid JSON", 0), 0u) << error;
  // A number beyond double's range: found by tests/fuzz/config_fuzz.
  error = config_error("test_quantize", R"({"num_bits": 1e999})");
  EXPECT_EQ(error.rfind("config of mode 'test_quantize': not valid JSON", 0), 0u) << error;
  EXPECT_EQ(config_error("test_quantize", "[1, 2]"),
            "config of mode 'test_quantize': expected a JSON object, got [1,2]");
}

TEST(ConfigTest, MessageConfigMustHaveTheModesType) {
  QuantizeTestConfig quantize;
  quantize.set_num_bits(3);
  EXPECT_EQ(as_quantize(ModeloptStateManager::get_config_class("test_quantize", quantize)).num_bits(), 3);
  SparsityTestConfig sparsity;
  EXPECT_EQ(config_error("test_quantize", sparsity),
            "config of mode 'test_quantize': expected a mto.test.QuantizeTestConfig, got a "
            "mto.test.SparsityTestConfig");
  quantize.set_num_bits(1);
  EXPECT_EQ(config_error("test_quantize", quantize),
            "config of mode 'test_quantize': num_bits must be in [2, 8], got 1");
}

TEST(ConfigTest, NullResetsAField) {
  MessagePtr config = ModeloptStateManager::get_config_class("test_nas", R"({"seed": 5, "min_ratio": 0.25})");
  EXPECT_EQ(message_as<test::NasTestConfig>(*config, "t").seed(), 5);
  config = ModeloptStateManager::get_config_class("test_nas", R"({"seed": null})");
  EXPECT_EQ(message_as<test::NasTestConfig>(*config, "t").seed(), 0);
  EXPECT_EQ(message_as<test::NasTestConfig>(*config, "t").min_ratio(), 0.5);
}

TEST(ConfigTest, JsonOutPrintsEveryFieldAndParsesBack) {
  auto mode = ModeRegistry::get_from_any("test_quantize");
  MessagePtr config = ModeloptStateManager::get_config_class(*mode, R"({"num_bits": 4})");
  const std::string json = mode->config_to_json(*config);
  EXPECT_EQ(json, R"({"num_bits":4,"per_channel":false})");
  MessagePtr again = ModeloptStateManager::get_config_class(*mode, json);
  EXPECT_EQ(again->SerializeAsString(), config->SerializeAsString());
}

TEST(ConfigTest, ConfigsAreValidatedAgainOnRestore) {
  ModulePtr model = apply_mode(ModelLike("test_mlp").build(), {{"test_quantize", R"({"num_bits": 4})"}});
  ModeloptState state = modelopt_state(*model);
  QuantizeTestConfig bad;
  bad.set_num_bits(12);
  *state.mutable_modelopt_state_dict(0)->mutable_config() = pack_message(bad);
  try {
    restore_from_modelopt_state(ModelLike("test_mlp").build(), state);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "config of mode 'test_quantize': num_bits must be in [2, 8], got 12");
  }
  *state.mutable_modelopt_state_dict(0)->mutable_config() = pack_message(SparsityTestConfig());
  try {
    restore_from_modelopt_state(ModelLike("test_mlp").build(), state);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(),
                 "config of mode 'test_quantize': the state holds a mto.test.SparsityTestConfig "
                 "where a mto.test.QuantizeTestConfig is expected");
  }
}

}  // namespace
}  // namespace mto
