// Configs as protobuf messages: defaults, JSON in and out, unknown fields rejected with the
// field named, per-mode value validation, and validation again on restore.
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <google/protobuf/wrappers.pb.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "opt/config.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/registry.h"
#include "opt/state_manager.h"
#include "tests/opt/testing/json_numbers.pb.h"
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

// 2^53: the largest magnitude up to which a double holds every integer.
constexpr int64_t kExact = int64_t{1} << 53;

// A message with a 64-bit integer in every kind of place, each value `v` or close to it.
test::JsonNumbersTestMessage numbers_message(int64_t v) {
  test::JsonNumbersTestMessage m;
  m.set_count(v);
  m.set_size(static_cast<uint64_t>(v));
  m.set_delta(-v);
  m.set_hash(static_cast<uint64_t>(v));
  m.set_offset(-v);
  m.add_shape(v);
  m.add_shape(-v);
  (*m.mutable_widths())["fc1"] = v;
  m.mutable_inner()->set_width(v);
  m.mutable_inner()->add_sizes(static_cast<uint64_t>(v));
  m.add_layers()->set_width(-v);
  (*m.mutable_by_name())["fc2"].add_sizes(static_cast<uint64_t>(v));
  (*m.mutable_names())[v] = "fc3";
  m.mutable_wrapped()->set_value(v);
  test::JsonNumbersInner packed;
  packed.set_width(v);
  m.mutable_packed()->PackFrom(packed);
  return m;
}

TEST(ConfigTest, SixtyFourBitIntegersPrintAsNumbers) {
  test::JsonNumbersTestMessage m = numbers_message(4);
  (*m.mutable_extra()->mutable_fields())["k"].set_number_value(2);
  m.set_label("12");
  m.set_small(3);
  m.set_ratio(0.5);
  EXPECT_EQ(message_to_json(m),
            R"({"count":4,"size":4,"delta":-4,"hash":4,"offset":-4,"shape":[4,-4],"widths":{"fc1":4},)"
            R"("inner":{"width":4,"sizes":[4]},"layers":[{"width":-4,"sizes":[]}],)"
            R"("by_name":{"fc2":{"width":0,"sizes":[4]}},"names":{"4":"fc3"},)"
            R"("packed":{"@type":"type.googleapis.com/mto.test.JsonNumbersInner","width":4,"sizes":[]},)"
            // Protobuf's printer puts the wrapper last; the order is protobuf's.
            R"("extra":{"k":2},"label":"12","small":3,"ratio":0.5,"wrapped":4})");
  // Defaults are printed too, as numbers.
  EXPECT_EQ(message_to_json(test::JsonNumbersInner()), R"({"width":0,"sizes":[]})");
  // pretty indents, with the same numbers.
  test::JsonNumbersInner inner;
  inner.set_width(7);
  EXPECT_EQ(message_to_json(inner, /*pretty=*/true), "{\n  \"width\": 7,\n  \"sizes\": []\n}");
}

// Map entries print in key order (integer keys by value), nested ones and a Struct's too:
// protobuf's own printer follows the map's order, which changes from one process to the next.
TEST(ConfigTest, MapEntriesPrintInKeyOrder) {
  test::JsonNumbersTestMessage m;
  for (const char* key : {"fc9", "fc10", "attn", "zeta", "fc1", "b"}) (*m.mutable_widths())[key] = 1;
  for (int64_t key : {100, -3, 7, 20}) (*m.mutable_names())[key] = "n";
  for (const char* key : {"z", "a", "m"}) (*m.mutable_extra()->mutable_fields())[key].set_number_value(1);
  const nlohmann::ordered_json json = nlohmann::ordered_json::parse(message_to_json(m));
  auto keys = [](const nlohmann::ordered_json& object) {
    std::vector<std::string> out;
    for (const auto& item : object.items()) out.push_back(item.key());
    return out;
  };
  EXPECT_EQ(keys(json["widths"]), (std::vector<std::string>{"attn", "b", "fc1", "fc10", "fc9", "zeta"}));
  EXPECT_EQ(keys(json["names"]), (std::vector<std::string>{"-3", "7", "20", "100"}));
  EXPECT_EQ(keys(json["extra"]), (std::vector<std::string>{"a", "m", "z"}));
  // Fields keep their .proto order.
  EXPECT_EQ(keys(json).front(), "count");
}

TEST(ConfigTest, SixtyFourBitIntegersBeyondTwoToThe53StayStrings) {
  // 2^53 and -2^53 are exact in a double: numbers.
  nlohmann::json json = nlohmann::json::parse(message_to_json(numbers_message(kExact)));
  EXPECT_EQ(json["count"], kExact);
  EXPECT_EQ(json["delta"], -kExact);
  EXPECT_EQ(json["shape"], nlohmann::json({kExact, -kExact}));
  EXPECT_EQ(json["widths"]["fc1"], kExact);
  EXPECT_EQ(json["inner"]["sizes"][0], kExact);
  EXPECT_EQ(json["wrapped"], kExact);
  // 2^53 + 1 is not (a double reads it as 2^53): strings, in every place.
  json = nlohmann::json::parse(message_to_json(numbers_message(kExact + 1)));
  const std::string above = "9007199254740993", below = "-9007199254740993";
  EXPECT_EQ(json["count"], above);
  EXPECT_EQ(json["size"], above);
  EXPECT_EQ(json["delta"], below);
  EXPECT_EQ(json["hash"], above);
  EXPECT_EQ(json["offset"], below);
  EXPECT_EQ(json["shape"], nlohmann::json({above, below}));
  EXPECT_EQ(json["widths"]["fc1"], above);
  EXPECT_EQ(json["inner"]["width"], above);
  EXPECT_EQ(json["inner"]["sizes"][0], above);
  EXPECT_EQ(json["layers"][0]["width"], below);
  EXPECT_EQ(json["by_name"]["fc2"]["sizes"][0], above);
  EXPECT_EQ(json["wrapped"], above);
  EXPECT_EQ(json["packed"]["width"], above);
  test::JsonNumbersTestMessage extremes;
  extremes.set_size(std::numeric_limits<uint64_t>::max());
  extremes.set_count(std::numeric_limits<int64_t>::min());
  json = nlohmann::json::parse(message_to_json(extremes));
  EXPECT_EQ(json["size"], "18446744073709551615");
  EXPECT_EQ(json["count"], "-9223372036854775808");
}

TEST(ConfigTest, SixtyFourBitIntegersParseBackFromEitherForm) {
  for (int64_t v : {int64_t{0}, int64_t{4}, kExact, kExact + 1, std::numeric_limits<int64_t>::max()}) {
    const test::JsonNumbersTestMessage m = numbers_message(v);
    test::JsonNumbersTestMessage again;
    merge_json_into_message(message_to_json(m), &again, "test");
    EXPECT_EQ(again.SerializeAsString(), m.SerializeAsString()) << v;
  }
  // Protobuf's own form (strings) still parses.
  test::JsonNumbersTestMessage m;
  merge_json_into_message(R"({"count": "5", "shape": ["1", 2], "widths": {"a": "3"}, "wrapped": "6"})", &m, "t");
  EXPECT_EQ(m.count(), 5);
  EXPECT_EQ(m.shape(0), 1);
  EXPECT_EQ(m.shape(1), 2);
  EXPECT_EQ(m.widths().at("a"), 3);
  EXPECT_EQ(m.wrapped().value(), 6);
}

TEST(ConfigTest, ConfigToJsonPrintsSixtyFourBitIntegersAsNumbers) {
  auto mode = ModeRegistry::get_from_any("test_nas");
  MessagePtr config = ModeloptStateManager::get_config_class(*mode, R"({"seed": "5"})");
  const std::string json = mode->config_to_json(*config);
  EXPECT_EQ(json, R"({"min_ratio":0.5,"seed":5})");
  MessagePtr again = ModeloptStateManager::get_config_class(*mode, json);
  EXPECT_EQ(again->SerializeAsString(), config->SerializeAsString());
  test::NasTestMetadata metadata;
  (*metadata.mutable_subnet_config())["fc1"] = 16;
  EXPECT_EQ(message_to_json(metadata), R"({"subnet_config":{"fc1":16}})");
}

// The ConfigError of restoring `state` into a fresh test_mlp, or "no error".
std::string restore_error(const ModeloptState& state) {
  try {
    restore_from_modelopt_state(ModelLike("test_mlp").build(), state);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "no error";
}

TEST(ConfigTest, ConfigsAreValidatedAgainOnRestore) {
  ModulePtr model = apply_mode(ModelLike("test_mlp").build(), {{"test_quantize", R"({"num_bits": 4})"}});
  ModeloptState state = modelopt_state(*model);
  QuantizeTestConfig bad;
  bad.set_num_bits(12);
  *state.mutable_modelopt_state_dict(0)->mutable_config() = pack_message(bad);
  EXPECT_EQ(restore_error(state), "config of mode 'test_quantize': num_bits must be in [2, 8], got 12");
  *state.mutable_modelopt_state_dict(0)->mutable_config() = pack_message(SparsityTestConfig());
  EXPECT_EQ(restore_error(state),
            "config of mode 'test_quantize': the state holds a mto.test.SparsityTestConfig "
            "where a mto.test.QuantizeTestConfig is expected");
}

// A field number the state's type does not declare: varint field 99 holding 1.
const std::string kUnknownField("\x98\x06\x01", 3);

TEST(ConfigTest, FieldsTheStateTypeDoesNotDeclareAreRejectedOnRestore) {
  ModulePtr model = apply_mode(ModelLike("test_mlp").build(), {{"test_quantize", R"({"num_bits": 4})"}});
  const ModeloptState state = modelopt_state(*model);
  EXPECT_EQ(restore_error(state), "no error");

  // In the config itself.
  ModeloptState newer = state;
  newer.mutable_modelopt_state_dict(0)->mutable_config()->mutable_value()->append(kUnknownField);
  EXPECT_EQ(restore_error(newer),
            "config of mode 'test_quantize': the state holds field 99 of mto.test.QuantizeTestConfig, which this "
            "version does not know (was it written by a newer one?)");

  // In a message inside the metadata (a map entry's value).
  test::QuantizeTestMetadata metadata;
  ASSERT_TRUE(metadata.ParseFromString(state.modelopt_state_dict(0).metadata().value()));
  ASSERT_FALSE(metadata.quantizer_state().empty());
  test::QuantizeTestMetadata nested;
  for (const auto& [name, shape] : metadata.quantizer_state()) {
    test::QuantizerShape extended;
    ASSERT_TRUE(extended.ParseFromString(shape.SerializeAsString() + kUnknownField));
    (*nested.mutable_quantizer_state())[name] = extended;
  }
  newer = state;
  *newer.mutable_modelopt_state_dict(0)->mutable_metadata() = pack_message(nested);
  EXPECT_EQ(restore_error(newer),
            "metadata of mode 'test_quantize': the state holds field 99 of mto.test.QuantizerShape, which this "
            "version does not know (was it written by a newer one?)");
}

}  // namespace
}  // namespace mto
