#include "tests/fuzz/manifest_frame.h"

#include <cstdint>

#include "serialization/checkpoint_layout.h"
#include "serialization/checksum.h"

namespace mto {
namespace fuzz {
namespace {

void put_u64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

}  // namespace

std::string frame_manifest(const std::string& payload) {
  std::string out(kManifestMagic, kManifestFrameSize - 16);
  put_u64(out, payload.size());
  put_u64(out, xxh3_64(payload.data(), payload.size()));
  return out + payload;
}

}  // namespace fuzz
}  // namespace mto
