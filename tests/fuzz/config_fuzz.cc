// Fuzzes merge_json_into_message, the JSON -> Protobuf path of every mode's config and of the
// configs and metadata that `mto inspect --json` prints. Each input is merged into two
// message types: mto.quantization.QuantizeMetadata (a map of nested messages, repeated
// 64-bit integers) and mto.quantization.QuantizerAttributes (scalars and an optional field).
// Every merge must succeed, and then print and merge back to the same message, or throw a
// ConfigError that starts with the caller's text and leaves the message unchanged.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "modes/quantization/quantization.pb.h"
#include "opt/config.h"
#include "opt/errors.h"
#include "serialization/deterministic.h"
#include "tests/fuzz/fuzz_input.h"

namespace {

constexpr char kWhat[] = "fuzzed config";

void merge(std::string_view json, mto::Message* message) {
  const std::string before = mto::serialize_deterministic(*message);
  try {
    mto::merge_json_into_message(json, message, kWhat);
  } catch (const mto::ConfigError& e) {
    mto::fuzz::check(std::string_view(e.what()).substr(0, sizeof(kWhat) - 1) == kWhat,
                     std::string("the error does not start with the caller's text: ") + e.what());
    mto::fuzz::check(mto::serialize_deterministic(*message) == before,
                     "a failed merge changed the message");
    return;
  }
  mto::MessagePtr again(message->New());
  try {
    mto::merge_json_into_message(mto::message_to_json(*message), again.get(), kWhat);
  } catch (const mto::ConfigError& e) {
    mto::fuzz::fail("the printed form of a merged message does not merge back", e);
  }
  mto::fuzz::check(mto::serialize_deterministic(*again) == mto::serialize_deterministic(*message),
                   "the printed form of a merged message merges back to another message");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  mto::quantization::QuantizeMetadata metadata;
  merge(json, &metadata);
  mto::quantization::QuantizerAttributes attributes;
  attributes.set_enable(true);
  attributes.set_num_bits(8);
  merge(json, &attributes);
  return 0;
}
