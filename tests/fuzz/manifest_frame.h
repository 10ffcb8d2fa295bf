// The framing of a checkpoint's MANIFEST file (serialization/checkpoint_layout.h), for fuzz
// targets that write manifests of their own without write_manifest's fsync.
#pragma once

#include <cstddef>
#include <string>

namespace mto {
namespace fuzz {

// Bytes of the magic, the payload length and the payload checksum before the payload.
inline constexpr size_t kManifestFrameSize = 24;

// `payload` framed as a MANIFEST file holds it: magic, length, XXH3-64, payload.
std::string frame_manifest(const std::string& payload);

}  // namespace fuzz
}  // namespace mto
