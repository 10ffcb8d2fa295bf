#include "modes/quantization/quantize_config.h"

#include <fnmatch.h>
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "opt/config.h"
#include "opt/errors.h"

namespace mto {
namespace quantization {
namespace {

using google::protobuf::Struct;
using google::protobuf::Value;
using nlohmann::ordered_json;

constexpr char kWhat[] = "config of mode 'quantize'";
constexpr char kDefaultRule[] = "default";

[[noreturn]] void fail(const std::string& where, const std::string& problem) {
  throw ConfigError(absl::StrCat(kWhat, ": ", where, problem));
}

std::string rule_name(const std::string& layer_class, const std::string& pattern) {
  return layer_class.empty() ? absl::StrCat("quant_cfg['", pattern, "']")
                             : absl::StrCat("quant_cfg['", layer_class, "']['", pattern, "']");
}

// A rule's attributes as a Struct; throws ConfigError unless `value` is a JSON object.
Struct to_struct(const ordered_json& value, const std::string& where) {
  if (value.is_array()) {
    fail(where, ": lists of attribute sets (sequential quantizers) are not supported");
  }
  if (!value.is_object()) fail(where, absl::StrCat(" must be an object, got ", value.dump()));
  Struct out;
  const auto status = google::protobuf::util::JsonStringToMessage(value.dump(), &out);
  if (!status.ok()) fail(where, absl::StrCat(": ", status.ToString()));
  return out;
}

std::string value_text(const Value& value) {
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(value, &out);
  return out;
}

// The integer in `value`; throws ConfigError naming `where` unless it is a whole number.
int64_t whole_number(const Value& value, const std::string& where) {
  if (value.kind_case() != Value::kNumberValue || std::floor(value.number_value()) != value.number_value() ||
      std::abs(value.number_value()) > 1e15) {
    fail(where, absl::StrCat(" must be an integer, got ", value_text(value)));
  }
  return static_cast<int64_t>(value.number_value());
}

bool boolean(const Value& value, const std::string& where) {
  if (value.kind_case() != Value::kBoolValue) {
    fail(where, absl::StrCat(" must be true or false, got ", value_text(value)));
  }
  return value.bool_value();
}

void set_num_bits(const Value& value, const std::string& where, QuantizerAttributes* out) {
  const std::string expected = " must be an integer in [2, 8] or [4, 3] (FP8 E4M3), got ";
  if (value.kind_case() == Value::kListValue) {
    const auto& list = value.list_value().values();
    if (list.size() == 2 && list[0].number_value() == 4 && list[1].number_value() == 3) {
      out->set_num_bits(0);
      out->set_exponent_bits(4);
      out->set_mantissa_bits(3);
      return;
    }
    fail(where, expected + value_text(value));
  }
  const int64_t bits = whole_number(value, where);
  if (bits < 2 || bits > 8) fail(where, expected + value_text(value));
  out->set_num_bits(static_cast<int32_t>(bits));
  out->set_exponent_bits(0);
  out->set_mantissa_bits(0);
}

void set_axis(const Value& value, const std::string& where, QuantizerAttributes* out) {
  if (value.kind_case() == Value::kNullValue) {
    out->clear_axis();
    return;
  }
  if (value.kind_case() == Value::kListValue) {
    if (value.list_value().values_size() != 1) {
      fail(where, absl::StrCat(": only one axis is supported, got ", value_text(value)));
    }
    out->set_axis(static_cast<int32_t>(whole_number(value.list_value().values(0), where)));
    return;
  }
  out->set_axis(static_cast<int32_t>(whole_number(value, where)));
}

void set_block_sizes(const Value& value, const std::string& where, QuantizerAttributes* out) {
  if (value.kind_case() == Value::kNullValue) {
    out->set_block_size(0);
    out->set_block_axis(0);
    return;
  }
  if (value.kind_case() != Value::kStructValue) {
    fail(where, absl::StrCat(" must be an object like {\"-1\": 128} or null, got ", value_text(value)));
  }
  int blocks = 0;
  // Sorted so that messages do not depend on the map's order.
  std::map<std::string, Value> fields(value.struct_value().fields().begin(),
                                      value.struct_value().fields().end());
  for (const auto& [key, size] : fields) {
    const std::string item = absl::StrCat(where, "['", key, "']");
    if (key == "type") {
      if (size.string_value() != "static") {
        fail(item, absl::StrCat(": only static block quantization is supported, got ", value_text(size)));
      }
      continue;
    }
    int32_t axis = 0;
    if (!absl::SimpleAtoi(key, &axis)) {
      fail(item, ": unknown key (expected an axis such as \"-1\", or \"type\")");
    }
    const int64_t block = whole_number(size, item);
    if (block <= 0) fail(item, absl::StrCat(" must be a positive block size, got ", block));
    out->set_block_axis(axis);
    out->set_block_size(block);
    ++blocks;
  }
  if (blocks != 1) {
    fail(where, absl::StrCat(": exactly one blocked axis is supported, got ", blocks));
  }
}

QuantizerAttributes rule_defaults() {
  QuantizerAttributes attributes;
  attributes.set_enable(true);
  attributes.set_num_bits(8);
  return attributes;
}

bool is_layer_class(const std::string& key) { return key.rfind("nn.", 0) == 0; }

}  // namespace

void apply_rule_attributes(const Struct& rule, const std::string& where,
                           QuantizerAttributes* attributes) {
  static const std::set<std::string> kKnown = {"axis",       "block_sizes", "calibrator", "enable",
                                               "fake_quant", "num_bits",    "unsigned"};
  QuantizerAttributes out = *attributes;
  std::map<std::string, Value> fields(rule.fields().begin(), rule.fields().end());
  for (const auto& [key, value] : fields) {
    const std::string item = absl::StrCat(where, "['", key, "']");
    if (key == "enable") {
      out.set_enable(boolean(value, item));
    } else if (key == "num_bits") {
      set_num_bits(value, item, &out);
    } else if (key == "axis") {
      set_axis(value, item, &out);
    } else if (key == "unsigned") {
      out.set_is_unsigned(boolean(value, item));
    } else if (key == "block_sizes") {
      set_block_sizes(value, item, &out);
    } else if (key == "fake_quant") {
      if (!boolean(value, item)) fail(item, ": only fake quantization (true) is supported");
    } else if (key == "calibrator") {
      if (value.string_value() != "max") {
        fail(item, absl::StrCat(": only the \"max\" calibrator is supported, got ", value_text(value)));
      }
    } else {
      fail(where, absl::StrCat(": unknown attribute '", key, "' (known: ",
                               absl::StrJoin(kKnown, ", "), ")"));
    }
  }
  *attributes = std::move(out);
}

void parse_quantize_config(std::string_view json, QuantizeConfig* config) {
  ordered_json root;
  try {
    root = ordered_json::parse(json.begin(), json.end());
  } catch (const ordered_json::exception& e) {  // parse_error, or out_of_range for 1e999
    throw ConfigError(absl::StrCat(kWhat, ": not valid JSON: ", e.what()));
  }
  if (!root.is_object()) throw ConfigError(absl::StrCat(kWhat, ": must be a JSON object, got ", root.dump()));
  QuantizeConfig out = *config;
  for (const auto& [key, value] : root.items()) {
    if (key == "quant_cfg") {
      if (!value.is_object()) fail("quant_cfg", " must be an object of rules");
      out.clear_quant_cfg();
      for (const auto& [pattern, body] : value.items()) {
        if (is_layer_class(pattern) && body.is_object() && !body.empty() &&
            std::all_of(body.begin(), body.end(), [](const ordered_json& v) { return v.is_object(); })) {
          for (const auto& [sub_pattern, attributes] : body.items()) {
            QuantizeRule* rule = out.add_quant_cfg();
            rule->set_pattern(sub_pattern);
            rule->set_layer_class(pattern);
            *rule->mutable_attributes() = to_struct(attributes, rule_name(pattern, sub_pattern));
          }
          continue;
        }
        QuantizeRule* rule = out.add_quant_cfg();
        rule->set_pattern(pattern);
        *rule->mutable_attributes() = to_struct(body, rule_name("", pattern));
      }
    } else if (key == "algorithm") {
      if (value.is_null()) {
        out.set_algorithm("");
      } else if (value.is_string()) {
        out.set_algorithm(value.get<std::string>());
      } else if (value.is_object() && value.contains("method") && value["method"].is_string()) {
        out.set_algorithm(value["method"].get<std::string>());
        ordered_json options = value;
        options.erase("method");
        if (!options.empty()) *out.mutable_algorithm_options() = to_struct(options, "algorithm");
      } else {
        fail("algorithm", absl::StrCat(" must be a method name (\"max\", \"smoothquant\", \"awq_lite\", ...), "
                                       "{\"method\": NAME, ...options} or null, got ", value.dump()));
      }
    } else {
      throw ConfigError(absl::StrCat(kWhat, ": unknown field '", key, "' (known: algorithm, quant_cfg)"));
    }
  }
  *config = std::move(out);
}

nlohmann::ordered_json algorithm_json(const QuantizeConfig& config) {
  ordered_json out = {{"method", config.algorithm()}};
  if (config.has_algorithm_options()) {
    const ordered_json options = ordered_json::parse(message_to_json(config.algorithm_options()));
    for (const auto& [key, value] : options.items()) out[key] = value;
  }
  return out;
}

nlohmann::ordered_json quantize_config_to_json(const QuantizeConfig& config) {
  ordered_json rules = ordered_json::object();
  for (const QuantizeRule& rule : config.quant_cfg()) {
    ordered_json attributes = ordered_json::parse(message_to_json(rule.attributes()));
    if (rule.layer_class().empty()) {
      rules[rule.pattern()] = std::move(attributes);
    } else {
      rules[rule.layer_class()][rule.pattern()] = std::move(attributes);
    }
  }
  ordered_json out = ordered_json::object();
  out["quant_cfg"] = std::move(rules);
  out["algorithm"] = config.algorithm().empty() ? ordered_json(nullptr) : ordered_json(config.algorithm());
  if (config.has_algorithm_options() && !config.algorithm_options().fields().empty()) {
    out["algorithm"] = algorithm_json(config);
  }
  return out;
}

void validate_quantize_config(const QuantizeConfig& config) {
  for (const QuantizeRule& rule : config.quant_cfg()) {
    const std::string where = rule_name(rule.layer_class(), rule.pattern());
    if (rule.pattern().empty()) fail(where, ": the pattern is empty");
    QuantizerAttributes scratch = rule_defaults();
    apply_rule_attributes(rule.attributes(), where, &scratch);
  }
  const std::string& algorithm = config.algorithm();
  const std::vector<std::string> known = {"max", "smoothquant", "awq_lite", "awq_clip", "awq_full"};
  if (!algorithm.empty() && std::find(known.begin(), known.end(), algorithm) == known.end()) {
    fail("algorithm", absl::StrCat(": unknown calibration algorithm '", algorithm, "' (known: \"",
                                   absl::StrJoin(known, "\", \""), "\", or null for none)"));
  }
}

QuantizerAttributes resolve_attributes(const QuantizeConfig& config, const std::string& name,
                                       const std::string& layer_class,
                                       QuantizerAttributes defaults) {
  QuantizerAttributes out = std::move(defaults);
  auto matches = [&](const QuantizeRule& rule) {
    if (!rule.layer_class().empty() && rule.layer_class() != layer_class) return false;
    return rule.pattern() == kDefaultRule ||
           fnmatch(rule.pattern().c_str(), name.c_str(), /*flags=*/0) == 0;
  };
  for (bool default_rules : {true, false}) {
    for (const QuantizeRule& rule : config.quant_cfg()) {
      if ((rule.pattern() == kDefaultRule) != default_rules || !matches(rule)) continue;
      // As in the Python original, a rule sets every attribute: those it omits take their
      // default values.
      out = rule_defaults();
      apply_rule_attributes(rule.attributes(), rule_name(rule.layer_class(), rule.pattern()), &out);
    }
  }
  return out;
}

nlohmann::ordered_json attributes_to_json(const QuantizerAttributes& attributes) {
  ordered_json out = ordered_json::object();
  out["enable"] = attributes.enable();
  if (attributes.exponent_bits() > 0) {
    out["num_bits"] = {attributes.exponent_bits(), attributes.mantissa_bits()};
  } else {
    out["num_bits"] = attributes.num_bits();
  }
  out["axis"] = attributes.has_axis() ? ordered_json(attributes.axis()) : ordered_json(nullptr);
  out["unsigned"] = attributes.is_unsigned();
  if (attributes.block_size() > 0) {
    out["block_sizes"] = {{std::to_string(attributes.block_axis()), attributes.block_size()}};
  } else {
    out["block_sizes"] = nullptr;
  }
  return out;
}

}  // namespace quantization
}  // namespace mto
