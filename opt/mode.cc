#include "opt/mode.h"

#include <google/protobuf/struct.pb.h>

#include "absl/strings/str_cat.h"
#include "opt/registry.h"

namespace mto {

MessagePtr ModeDescriptor::metadata_class() const {
  return std::make_unique<google::protobuf::Struct>();
}

void ModeDescriptor::validate_config(const Message&) const {}

void ModeDescriptor::config_from_json(std::string_view json, Message* config) const {
  merge_json_into_message(json, config, absl::StrCat("config of mode '", name(), "'"));
}

std::string ModeDescriptor::config_to_json(const Message& config) const {
  return message_to_json(config);
}

void ModeDescriptor::update_for_new_mode(torch::nn::Module&, Message&, Message&) const {}

void ModeDescriptor::update_for_save(torch::nn::Module&, Message&, Message&) const {}

std::map<std::string, std::string> ModeDescriptor::stored_dtypes(const Message&, const Message&) const {
  return {};
}

void ModeDescriptor::assert_compatibility_as_next_mode_of(const ModeDescriptor& other) const {
  const std::string self = name();
  const std::string previous = other.name();
  if (auto next = other.next_modes(); next && next->count(self) == 0) {
    throw StateError(absl::StrCat("Cannot add ", self, " after ", previous, "! Next modes of ",
                                  previous, " are ", format_mode_set(*next), "."));
  }
  if (auto prohibited = other.next_prohibited_modes(); prohibited && prohibited->count(self)) {
    throw StateError(absl::StrCat(previous, " does not allow ", self, " to be its next mode."));
  }
}

void ModeDescriptor::assert_compatibility_as_next_mode_of(const std::string& other) const {
  assert_compatibility_as_next_mode_of(*ModeRegistry::get_from_any(other));
}

std::string format_mode_set(const ModeSet& modes) {
  if (modes.empty()) return "set()";
  std::string out = "{";
  for (const auto& m : modes) absl::StrAppend(&out, out.size() > 1 ? ", " : "", "'", m, "'");
  return out + "}";
}

}  // namespace mto
