#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <google/protobuf/any.pb.h>
#include <google/protobuf/message.h>

#include "opt/errors.h"

namespace mto {

using Message = google::protobuf::Message;
// An owned protobuf message: a mode's config or metadata.
using MessagePtr = std::unique_ptr<Message>;

// A mode's config as a caller hands it to apply_mode: nothing (the mode's defaults), JSON
// text whose top-level fields replace the defaults, or a message of the mode's config type
// (copied). Cheap to copy.
class ConfigInput {
 public:
  ConfigInput() = default;
  ConfigInput(const char* json) : json_(std::make_shared<const std::string>(json)) {}
  ConfigInput(std::string json) : json_(std::make_shared<const std::string>(std::move(json))) {}
  ConfigInput(const Message& message);

  // True when no config was given: the mode's defaults apply.
  bool is_default() const { return !json_ && !message_; }
  // The JSON text, or nullptr when the config is not JSON.
  const std::string* json() const { return json_.get(); }
  // The message, or nullptr when the config is not a message.
  const Message* message() const { return message_.get(); }

 private:
  std::shared_ptr<const std::string> json_;
  std::shared_ptr<const Message> message_;
};

// A copy of `message` of the same concrete type.
MessagePtr clone_message(const Message& message);

// `message` as JSON with the .proto field names and every field, defaults included, map
// entries in key order (the same text in every process); indented by two spaces when
// `pretty`. Unlike protobuf's JSON mapping, which writes every 64-bit integer (int64,
// uint64, sint64, fixed64, sfixed64) as a string, integers that are exact in a double
// (|v| <= 2^53) are numbers, wherever they sit: nested messages, repeated fields,
// map values, Int64Value and UInt64Value, messages packed in an Any. Larger ones stay
// strings so that a reader that parses numbers as doubles cannot round them. Protobuf's
// parser, and so merge_json_into_message, accepts both forms. Throws ConfigError if the
// message cannot be printed.
std::string message_to_json(const Message& message, bool pretty = false);

// Overrides fields of `message` with the JSON object `json`: each top-level key replaces the
// whole field it names (by its .proto or JSON name); null resets the field. Unknown keys,
// wrong types and invalid JSON throw ConfigError starting with `what` (e.g. "config of mode
// 'sparse'") and naming the field. `message` is unchanged on error.
void merge_json_into_message(std::string_view json, Message* message, const std::string& what);

// Packs `message` into an Any whose bytes are the deterministic serialization.
google::protobuf::Any pack_message(const Message& message);

// Unpacks `any` into a new message of the type of `prototype`. Throws ConfigError starting
// with `what` if `any` holds another type, does not parse, or holds a field (at any depth)
// that the type does not declare.
MessagePtr unpack_message(const google::protobuf::Any& any, const Message& prototype,
                          const std::string& what);

// `message`, after checking that it has the type of `prototype`; throws ConfigError
// starting with `what` otherwise.
const Message& message_as_type(const Message& message, const Message& prototype,
                               const std::string& what);

// `message` as a `T`; throws ConfigError starting with `what` if it is another type.
template <typename T>
const T& message_as(const Message& message, const std::string& what) {
  return static_cast<const T&>(message_as_type(message, T::default_instance(), what));
}

template <typename T>
T& message_as(Message& message, const std::string& what) {
  return const_cast<T&>(message_as<T>(static_cast<const Message&>(message), what));
}

}  // namespace mto
