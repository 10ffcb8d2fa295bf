#pragma once

#include <string>

#include <google/protobuf/message_lite.h>

namespace mto {

// Serializes `message` deterministically (map entries sorted), so that equal messages give
// equal bytes across processes and runs.
std::string serialize_deterministic(const google::protobuf::MessageLite& message);

}  // namespace mto
