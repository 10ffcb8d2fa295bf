#pragma once

#include <cstdint>
#include <string>

namespace mto {

// A small file of its own kind (a search checkpoint) whose every byte is checked on read:
//   "mto-checksummed-file 1 <kind>\n" "<payload bytes, decimal> <XXH3-64 of the payload, 16 hex>\n"
//   payload
// The two text lines let `head -2` tell what a file is.

// Writes `payload` to `path` atomically and durably: a temporary file beside it, fsynced,
// renamed over `path`, and the directory fsynced; a failed write leaves `path` as it was.
// Throws CheckpointError naming the file.
void write_checksummed_file(const std::string& path, const std::string& kind, const std::string& payload);

// The payload of a file write_checksummed_file wrote with `kind`, at most `max_size` bytes.
// Throws CheckpointError naming the file if it cannot be read, is not such a file, is of
// another kind, is truncated or extended, or its payload does not match its checksum.
std::string read_checksummed_file(const std::string& path, const std::string& kind, uint64_t max_size);

}  // namespace mto
