#include "opt/config.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/unknown_field_set.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/type_resolver.h>
#include <google/protobuf/util/type_resolver_util.h>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "serialization/deterministic.h"

namespace mto {
namespace {

// protobuf's JSON status texts start with the error code; keep what names the field.
std::string clean_status(const google::protobuf::util::Status& status) {
  std::string text(status.message());
  absl::string_view view(text);
  absl::ConsumePrefix(&view, "INVALID_ARGUMENT:");
  return std::string(absl::StripAsciiWhitespace(view));
}

// The largest magnitude up to which every integer is exact in a double (2^53, JavaScript's
// Number.MAX_SAFE_INTEGER + 1): beyond it, a reader that parses every JSON number as a double
// (JavaScript's JSON.parse, for one) rounds.
constexpr uint64_t kLargestExactInteger = uint64_t{1} << 53;

// Protobuf's JSON mapping writes int64, uint64 (and their sint, fixed and sfixed forms) as
// strings, so that no reader rounds them. The string `json` becomes a number when it is
// exact in a double; beyond 2^53 it stays a string, so that no reader rounds it either.
// Protobuf's JSON parser accepts both forms.
void integer_as_number(bool is_unsigned, nlohmann::ordered_json& json) {
  if (!json.is_string()) return;
  const std::string& text = json.get_ref<const std::string&>();
  if (is_unsigned) {
    uint64_t value = 0;
    if (absl::SimpleAtoi(text, &value) && value <= kLargestExactInteger) json = value;
  } else {
    int64_t value = 0;
    if (absl::SimpleAtoi(text, &value) && value <= int64_t{kLargestExactInteger} &&
        value >= -int64_t{kLargestExactInteger}) {
      json = value;
    }
  }
}

void integers_as_numbers(const google::protobuf::Descriptor& type, nlohmann::ordered_json& json);

// One value of `field` (an element, for a repeated field; the value, for a map's value field).
void field_value_as_number(const google::protobuf::FieldDescriptor& field, nlohmann::ordered_json& json) {
  using google::protobuf::FieldDescriptor;
  switch (field.cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT64:
      integer_as_number(false, json);
      break;
    case FieldDescriptor::CPPTYPE_UINT64:
      integer_as_number(true, json);
      break;
    case FieldDescriptor::CPPTYPE_MESSAGE:
      integers_as_numbers(*field.message_type(), json);
      break;
    default:
      break;
  }
}

// An Any prints as {"@type": URL, ...the fields of the packed message} or, when it packs a
// well-known type, {"@type": URL, "value": its JSON}. Types that protobuf's printer could
// resolve are in the generated pool; others are left as they are.
void any_integers_as_numbers(nlohmann::ordered_json& json) {
  if (!json.is_object()) return;
  const auto type_url = json.find("@type");
  if (type_url == json.end() || !type_url->is_string()) return;
  absl::string_view name = type_url->get_ref<const std::string&>();
  if (size_t slash = name.rfind('/'); slash != absl::string_view::npos) name.remove_prefix(slash + 1);
  const google::protobuf::Descriptor* packed =
      google::protobuf::DescriptorPool::generated_pool()->FindMessageTypeByName(std::string(name));
  if (packed == nullptr) return;
  if (absl::StartsWith(packed->file()->name(), "google/protobuf/")) {
    if (const auto value = json.find("value"); value != json.end()) integers_as_numbers(*packed, *value);
  } else {
    integers_as_numbers(*packed, json);  // "@type" names no field: skipped
  }
}

// Walks `json`, protobuf's JSON form (with .proto field names) of a message of type `type`,
// alongside the descriptor, turning the 64-bit integers into numbers where they are exact:
// singular, repeated, map values (map keys are always strings in JSON), nested messages at
// any depth, and the well-known types that hold them (Int64Value, UInt64Value, Any).
void integers_as_numbers(const google::protobuf::Descriptor& type, nlohmann::ordered_json& json) {
  const std::string& name = type.full_name();
  if (name == "google.protobuf.Int64Value") return integer_as_number(false, json);
  if (name == "google.protobuf.UInt64Value") return integer_as_number(true, json);
  if (name == "google.protobuf.Any") return any_integers_as_numbers(json);
  // The other well-known types have their own JSON forms (Struct and Value are plain JSON,
  // whose numbers are already numbers; Timestamp and Duration are strings by design).
  if (absl::StartsWith(type.file()->name(), "google/protobuf/")) return;
  if (!json.is_object()) return;
  for (auto& [key, value] : json.items()) {
    const google::protobuf::FieldDescriptor* field = type.FindFieldByName(key);
    if (field == nullptr) continue;  // an extension ("[pkg.name]"): none in mto's messages
    if (field->is_map()) {
      if (!value.is_object()) continue;
      const google::protobuf::FieldDescriptor& map_value = *field->message_type()->map_value();
      for (auto& entry : value) field_value_as_number(map_value, entry);
    } else if (field->is_repeated()) {
      if (!value.is_array()) continue;
      for (auto& element : value) field_value_as_number(*field, element);
    } else {
      field_value_as_number(*field, value);
    }
  }
}

}  // namespace

ConfigInput::ConfigInput(const Message& message) : message_(clone_message(message)) {}

MessagePtr clone_message(const Message& message) {
  MessagePtr copy(message.New());
  copy->CopyFrom(message);
  return copy;
}

std::string message_to_json(const Message& message, bool pretty) {
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  // Printed from the deterministic serialization, as protobuf's MessageToJsonString prints
  // from the plain one: the printer follows the bytes, and only the deterministic ones hold
  // map entries in key order (otherwise the order changes from one process to the next).
  constexpr char kUrlPrefix[] = "type.googleapis.com";
  const google::protobuf::DescriptorPool* pool = message.GetDescriptor()->file()->pool();
  using google::protobuf::DescriptorPool;
  using google::protobuf::util::NewTypeResolverForDescriptorPool;
  using google::protobuf::util::TypeResolver;
  static TypeResolver* const generated = NewTypeResolverForDescriptorPool(kUrlPrefix, DescriptorPool::generated_pool());
  std::unique_ptr<TypeResolver> other;
  if (pool != DescriptorPool::generated_pool()) other.reset(NewTypeResolverForDescriptorPool(kUrlPrefix, pool));
  std::string out;
  auto status = google::protobuf::util::BinaryToJsonString(
      other ? other.get() : generated, absl::StrCat(kUrlPrefix, "/", message.GetDescriptor()->full_name()),
      serialize_deterministic(message), &out, options);
  if (!status.ok()) {
    throw ConfigError(absl::StrCat("cannot print a ", message.GetDescriptor()->full_name(),
                                   " as JSON: ", clean_status(status)));
  }
  // Printed again by nlohmann::ordered_json, which keeps protobuf's field order.
  nlohmann::ordered_json json;
  try {
    json = nlohmann::ordered_json::parse(out);
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(absl::StrCat("cannot print a ", message.GetDescriptor()->full_name(),
                                   " as JSON: ", e.what()));
  }
  integers_as_numbers(*message.GetDescriptor(), json);
  return json.dump(pretty ? 2 : -1);
}

void merge_json_into_message(std::string_view json, Message* message, const std::string& what) {
  nlohmann::json user;
  try {
    user = nlohmann::json::parse(json.begin(), json.end());
  } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for 1e999
    throw ConfigError(absl::StrCat(what, ": not valid JSON (", e.what(), ")"));
  }
  if (!user.is_object()) throw ConfigError(absl::StrCat(what, ": expected a JSON object, got ", user.dump()));

  const google::protobuf::Descriptor* descriptor = message->GetDescriptor();
  nlohmann::json merged = nlohmann::json::parse(message_to_json(*message));
  for (const auto& [key, value] : user.items()) {
    const google::protobuf::FieldDescriptor* field = descriptor->FindFieldByName(key);
    for (int i = 0; field == nullptr && i < descriptor->field_count(); ++i) {
      if (descriptor->field(i)->json_name() == key) field = descriptor->field(i);
    }
    if (field == nullptr) {
      std::string known;
      for (int i = 0; i < descriptor->field_count(); ++i) {
        absl::StrAppend(&known, i ? ", " : "", descriptor->field(i)->name());
      }
      throw ConfigError(absl::StrCat(what, ": unknown field '", key, "' (known fields: ", known, ")"));
    }
    merged.erase(field->json_name());
    merged[field->name()] = value;
  }
  MessagePtr parsed(message->New());
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  auto status = google::protobuf::util::JsonStringToMessage(merged.dump(), parsed.get(), options);
  if (!status.ok()) throw ConfigError(absl::StrCat(what, ": ", clean_status(status)));
  message->CopyFrom(*parsed);
}

const Message& message_as_type(const Message& message, const Message& prototype,
                               const std::string& what) {
  if (message.GetDescriptor() != prototype.GetDescriptor()) {
    throw ConfigError(absl::StrCat(what, ": expected a ", prototype.GetDescriptor()->full_name(),
                                   ", got a ", message.GetDescriptor()->full_name()));
  }
  return message;
}

google::protobuf::Any pack_message(const Message& message) {
  google::protobuf::Any any;
  any.set_type_url(absl::StrCat("type.googleapis.com/", message.GetDescriptor()->full_name()));
  any.set_value(serialize_deterministic(message));
  return any;
}

namespace {

// "field N of TYPE" for the first field of `message`, or of a message inside it, that its
// type does not declare; empty if there is none.
std::string unknown_field(const Message& message) {
  const google::protobuf::Reflection* reflection = message.GetReflection();
  const google::protobuf::UnknownFieldSet& unknown = reflection->GetUnknownFields(message);
  if (!unknown.empty()) {
    return absl::StrCat("field ", unknown.field(0).number(), " of ", message.GetDescriptor()->full_name());
  }
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);
  for (const google::protobuf::FieldDescriptor* field : fields) {
    if (field->cpp_type() != google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) continue;
    const int count = field->is_repeated() ? reflection->FieldSize(message, field) : 1;
    for (int i = 0; i < count; ++i) {
      const Message& inner = field->is_repeated() ? reflection->GetRepeatedMessage(message, field, i)
                                                  : reflection->GetMessage(message, field);
      if (std::string found = unknown_field(inner); !found.empty()) return found;
    }
  }
  return "";
}

}  // namespace

MessagePtr unpack_message(const google::protobuf::Any& any, const Message& prototype,
                          const std::string& what) {
  const std::string& expected = prototype.GetDescriptor()->full_name();
  absl::string_view type = any.type_url();
  if (size_t slash = type.rfind('/'); slash != absl::string_view::npos) type.remove_prefix(slash + 1);
  if (type != expected) {
    throw ConfigError(absl::StrCat(what, ": the state holds a ", type, " where a ", expected,
                                   " is expected"));
  }
  MessagePtr message(prototype.New());
  if (!message->ParseFromString(any.value())) {
    throw ConfigError(absl::StrCat(what, ": the ", expected, " in the state does not parse"));
  }
  // Unknown keys are refused on restore as in a config given as JSON: a state written by a
  // newer version would otherwise lose the option without a word.
  if (const std::string field = unknown_field(*message); !field.empty()) {
    throw ConfigError(absl::StrCat(what, ": the state holds ", field,
                                   ", which this version does not know (was it written by a newer one?)"));
  }
  return message;
}

}  // namespace mto
