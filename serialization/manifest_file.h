#pragma once

#include <string>

#include "serialization/manifest.pb.h"

namespace mto {

// Writes `manifest` as `dir`/MANIFEST (framed with its length and checksum, see
// checkpoint_layout.h) and fsyncs it. Throws CheckpointError on I/O failure.
void write_manifest(const std::string& dir, const Manifest& manifest);

// Writes the metadata file `name` (the modelopt state, the index, an extra file) of the
// checkpoint in `dir` with `contents`, fsyncs it, and returns its manifest record (size,
// XXH3-64). Throws CheckpointError on I/O failure.
FileRecord write_recorded_file(const std::string& dir, const std::string& name, const std::string& contents);

// Reads `dir`/MANIFEST, checks its framing and checksum, parses it and validates it with
// validate_manifest. Throws CheckpointError naming the file: missing (the directory is not
// a complete checkpoint), truncated, corrupt, or inconsistent.
Manifest read_manifest(const std::string& dir);

// Checks that `manifest` (read from `where`) describes a well-formed checkpoint: a known
// format version, plain file names listed once, extra files that check_extra_file accepts,
// unique tensor names, known dtypes, lengths that match dtype and shape, and tensors that
// tile each shard's data section exactly (no overlap, no hole, nothing past the end). Does
// not touch the shard files.
void validate_manifest(const Manifest& manifest, const std::string& where);

}  // namespace mto
