#include "opt/config.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/util/json_util.h>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
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
  options.add_whitespace = pretty;
  std::string out;
  auto status = google::protobuf::util::MessageToJsonString(message, &out, options);
  if (!status.ok()) {
    throw ConfigError(absl::StrCat("cannot print a ", message.GetDescriptor()->full_name(),
                                   " as JSON: ", clean_status(status)));
  }
  return out;
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
  return message;
}

}  // namespace mto
