// Fuzzes read_manifest with whole MANIFEST files. Each input is read twice: as it is (the
// framing: magic, length, checksum) and, when it starts with the magic, framed again with a
// length and checksum that match, so that mutations reach the protobuf payload and
// validate_manifest instead of all failing the checksum. Every read must give a manifest or
// a CheckpointError naming the file.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/manifest_file.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/manifest_frame.h"

namespace {

void read_once(const std::string& bytes) {
  const std::string path = mto::fuzz::write_input(
      mto::kManifestFileName, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  try {
    mto::read_manifest(mto::fuzz::input_dir());
  } catch (const mto::CheckpointError& e) {
    mto::fuzz::check_names(e, path);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  read_once(bytes);
  if (size >= mto::fuzz::kManifestFrameSize &&
      std::memcmp(data, mto::kManifestMagic, mto::fuzz::kManifestFrameSize - 16) == 0) {
    read_once(mto::fuzz::frame_manifest(bytes.substr(mto::fuzz::kManifestFrameSize)));
  }
  return 0;
}
