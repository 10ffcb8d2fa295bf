#pragma once

#include <cstdint>
#include <string>

namespace mto {

// Names of the files in a checkpoint directory:
//
//   modelopt_state.pb                 the ModeloptState protobuf
//   model-00001-of-00004.safetensors  one shard of weights per writing rank
//   model.safetensors.index.json      {"metadata": {"total_size": N}, "weight_map": {...}}
//   MANIFEST                          written last: files, tensors and their checksums
//   hf_quant_config.json, ...         extra files the saver passed (small, plain names), in
//                                     the manifest with their sizes and checksums
//
// MANIFEST is the 8 bytes kManifestMagic, the payload length (8 bytes, little-endian), the
// XXH3-64 of the payload (8 bytes, little-endian) and the payload, a serialized mto.Manifest.
// The framing makes a truncated or altered manifest detectable, which a bare protobuf is not.

inline constexpr char kStateFileName[] = "modelopt_state.pb";
inline constexpr char kIndexFileName[] = "model.safetensors.index.json";
inline constexpr char kManifestFileName[] = "MANIFEST";
inline constexpr char kManifestMagic[] = "MTOMANI1";  // 8 bytes, no terminator on disk
// Version 2 adds checksum blocks and split records to the manifest and writes a tensor's
// slices from several ranks into one file; version 1 checkpoints are still read.
inline constexpr unsigned kCheckpointFormatVersion = 2;
inline constexpr unsigned kOldestCheckpointFormatVersion = 1;

// Largest metadata file (state, manifest, index, extra file, safetensors header) a reader
// accepts.
inline constexpr unsigned long long kMaxMetadataBytes = 256ull << 20;

// "model-00001-of-00004.safetensors" for index 0 of 4.
std::string shard_file_name(int index, int count);

// Throws CheckpointError unless `name` is a plain file name: not empty, no '/', not "." or
// "..", no NUL. `what` says where the name came from, e.g. "manifest in /ckpt".
void check_plain_file_name(const std::string& name, const std::string& what);

// Throws CheckpointError unless a checkpoint may hold an extra file `name` of `size` bytes: a
// plain file name (check_plain_file_name), not hidden (no leading '.'), none of the
// checkpoint's own names (MANIFEST, the modelopt state, the index, any
// "model-XXXXX-of-XXXXX.safetensors") and at most kMaxMetadataBytes. `what` says where the
// name came from, as for check_plain_file_name.
void check_extra_file(const std::string& name, uint64_t size, const std::string& what);

// `dir` + "/" + `name`.
std::string path_in(const std::string& dir, const std::string& name);

}  // namespace mto
