#include "serialization/manifest_file.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/checksum.h"
#include "serialization/deterministic.h"
#include "serialization/file.h"
#include "serialization/safetensors.h"
#include "serialization/tensor_blocks.h"

namespace mto {
namespace {

constexpr size_t kMagicSize = 8;
constexpr size_t kFrameSize = kMagicSize + 16;

void put_u64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint64_t get_u64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

[[noreturn]] void bad_manifest(const std::string& where, const std::string& what) {
  throw CheckpointError(absl::StrCat("invalid manifest ", where, ": ", what));
}

}  // namespace

void write_manifest(const std::string& dir, const Manifest& manifest) {
  const std::string payload = serialize_deterministic(manifest);
  std::string framed(kManifestMagic, kMagicSize);
  put_u64(framed, payload.size());
  put_u64(framed, xxh3_64(payload.data(), payload.size()));
  framed += payload;
  write_file_synced(path_in(dir, kManifestFileName), framed);
}

FileRecord write_recorded_file(const std::string& dir, const std::string& name, const std::string& contents) {
  write_file_synced(path_in(dir, name), contents);
  FileRecord record;
  record.set_file(name);
  record.set_size(contents.size());
  record.set_xxh3(xxh3_64(contents.data(), contents.size()));
  return record;
}

Manifest read_manifest(const std::string& dir) {
  if (dir.empty()) throw CheckpointError("no checkpoint directory given (the path is empty)");
  const std::string path = path_in(dir, kManifestFileName);
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) {
    throw CheckpointError(io_error_message("cannot open checkpoint directory", dir, errno));
  }
  if (!S_ISDIR(st.st_mode)) throw CheckpointError(absl::StrCat(dir, " is not a checkpoint directory"));
  if (::stat(path.c_str(), &st) != 0 && errno == ENOENT) {
    throw CheckpointError(absl::StrCat(dir, " is not a complete mto checkpoint: ", path,
                                       " is missing"));
  }
  const std::string framed = read_checkpoint_file(path, kMaxMetadataBytes);
  if (framed.size() < kFrameSize || framed.compare(0, kMagicSize, kManifestMagic) != 0) {
    bad_manifest(path, "the file does not start with an mto manifest header");
  }
  const uint64_t length = get_u64(framed.data() + kMagicSize);
  const uint64_t checksum = get_u64(framed.data() + kMagicSize + 8);
  if (length != framed.size() - kFrameSize) {
    bad_manifest(path, absl::StrCat("it announces ", length, " payload bytes but holds ",
                                    framed.size() - kFrameSize, " (truncated?)"));
  }
  const char* payload = framed.data() + kFrameSize;
  if (xxh3_64(payload, length) != checksum) bad_manifest(path, "checksum mismatch (corrupt file)");
  Manifest manifest;
  if (!manifest.ParseFromArray(payload, static_cast<int>(length))) {
    bad_manifest(path, "the payload is not a valid mto.Manifest");
  }
  validate_manifest(manifest, path);
  return manifest;
}

void validate_manifest(const Manifest& manifest, const std::string& where) {
  if (manifest.format_version() < kOldestCheckpointFormatVersion ||
      manifest.format_version() > kCheckpointFormatVersion) {
    bad_manifest(where, absl::StrCat("format version ", manifest.format_version(),
                                     " is not supported (this mto reads versions ",
                                     kOldestCheckpointFormatVersion, " to ",
                                     kCheckpointFormatVersion, ")"));
  }
  const bool blocked = manifest.format_version() >= 2;
  const std::string in = absl::StrCat("manifest ", where);
  check_plain_file_name(manifest.modelopt_state().file(), in);
  check_plain_file_name(manifest.index().file(), in);
  if (manifest.shards_size() == 0 && manifest.tensors_size() > 0) bad_manifest(where, "tensors but no shards");
  absl::flat_hash_set<std::string> files = {manifest.modelopt_state().file(),
                                            manifest.index().file(), kManifestFileName};
  for (const auto& shard : manifest.shards()) {
    check_plain_file_name(shard.file(), in);
    if (!files.insert(shard.file()).second) {
      bad_manifest(where, absl::StrCat("the file ", shard.file(), " is listed twice"));
    }
    if (shard.data_begin() < 8 || shard.data_begin() > shard.size() ||
        shard.data_begin() > kMaxMetadataBytes + 8) {
      bad_manifest(where, absl::StrCat("shard ", shard.file(), " has its data at ",
                                       shard.data_begin(), ", outside its ", shard.size(),
                                       " bytes"));
    }
  }
  for (const auto& extra : manifest.extra_files()) {
    check_extra_file(extra.file(), extra.size(), in);
    if (!files.insert(extra.file()).second) {
      bad_manifest(where, absl::StrCat("the file ", extra.file(), " is listed twice"));
    }
  }
  // Per shard, the tensors' byte ranges in file order.
  std::vector<std::vector<std::pair<uint64_t, const TensorRecord*>>> ranges(manifest.shards_size());
  absl::flat_hash_set<std::string> names;
  for (const auto& t : manifest.tensors()) {
    if (!names.insert(t.name()).second) bad_manifest(where, absl::StrCat("tensor ", t.name(), " is listed twice"));
    const std::string tensor = absl::StrCat("tensor ", t.name());
    if (t.shard() >= static_cast<uint32_t>(manifest.shards_size())) {
      bad_manifest(where, absl::StrCat(tensor, " names shard ", t.shard(), " of ",
                                       manifest.shards_size()));
    }
    c10::ScalarType type = scalar_type_from_safetensors(t.dtype(), absl::StrCat(in, ", ", tensor));
    uint64_t numel = 1;
    for (int64_t d : t.shape()) {
      if (d < 0) bad_manifest(where, absl::StrCat(tensor, " has a negative dimension"));
      const uint64_t ud = static_cast<uint64_t>(d);
      if (ud != 0 && numel > std::numeric_limits<uint64_t>::max() / ud) {
        bad_manifest(where, absl::StrCat(tensor, " has a shape too large to address"));
      }
      numel *= ud;
    }
    const uint64_t itemsize = c10::elementSize(type);
    if (numel > std::numeric_limits<uint64_t>::max() / itemsize || numel * itemsize != t.length()) {
      bad_manifest(where, absl::StrCat(tensor, " is ", t.length(),
                                       " bytes but its dtype and shape need ", numel * itemsize));
    }
    if (blocked) {
      if (t.split_parts() < 1 || t.split_dim() < 0 || t.split_dim() > 1) {
        bad_manifest(where, absl::StrCat(tensor, " has an invalid split (", t.split_parts(),
                                         " parts along dimension ", t.split_dim(), ")"));
      }
      std::vector<Rect> rects;
      for (const auto& b : t.blocks()) rects.push_back(rect_of(b));
      check_tiling(std::move(rects), matrix_shape({t.shape().begin(), t.shape().end()}),
                   absl::StrCat("invalid manifest ", where, ": the checksum blocks of ", tensor));
    } else if (t.blocks_size() > 0) {
      bad_manifest(where, absl::StrCat(tensor, " has checksum blocks, which version 1 does not know"));
    }
    ranges[t.shard()].emplace_back(t.offset(), &t);
  }
  for (int s = 0; s < manifest.shards_size(); ++s) {
    const ShardRecord& shard = manifest.shards(s);
    auto& r = ranges[s];
    std::sort(r.begin(), r.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first < b.first : a.second->length() < b.second->length();
    });
    uint64_t expected = shard.data_begin();
    for (const auto& [offset, t] : r) {
      if (offset != expected || t->length() > shard.size() - offset) {
        bad_manifest(where, absl::StrCat("tensor ", t->name(), " at bytes [", offset, ", +",
                                         t->length(), ") of ", shard.file(),
                                         " does not follow the previous data at ", expected,
                                         " within the ", shard.size(), "-byte file"));
      }
      expected = offset + t->length();
    }
    if (expected != shard.size()) {
      bad_manifest(where, absl::StrCat("the tensors of ", shard.file(), " end at byte ", expected,
                                       " but the file is ", shard.size(), " bytes"));
    }
  }
}

}  // namespace mto
