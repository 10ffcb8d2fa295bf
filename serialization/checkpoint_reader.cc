#include "serialization/checkpoint_reader.h"

#include <algorithm>
#include <map>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "serialization/block_io.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/checksum.h"
#include "serialization/local_cores.h"
#include "serialization/manifest_file.h"
#include "serialization/ordered_work.h"
#include "serialization/staging_directory.h"

namespace mto {

Manifest read_checkpoint_manifest(const std::string& dir) {
  try {
    return read_manifest(dir);
  } catch (const CheckpointError& e) {
    std::string previous = find_previous_checkpoint(dir);
    if (previous.empty()) throw;
    throw CheckpointError(absl::StrCat(e.what(), "; a save into ", dir,
                                       " was interrupted, and the previous checkpoint is at ",
                                       previous));
  }
}

std::string read_checked_file(const std::string& dir, const FileRecord& record) {
  const std::string path = path_in(dir, record.file());
  std::string contents = read_checkpoint_file(path, kMaxMetadataBytes);
  if (contents.size() != record.size()) {
    throw CheckpointError(absl::StrCat("file ", path, " is ", contents.size(),
                                       " bytes but the manifest says ", record.size(),
                                       contents.size() < record.size() ? " (truncated)" : ""));
  }
  if (xxh3_64(contents.data(), contents.size()) != record.xxh3()) {
    throw CheckpointError(absl::StrCat("checksum mismatch in ", path, " (corrupt file)"));
  }
  return contents;
}

void check_extra_files(const std::string& dir, const Manifest& manifest) {
  for (const auto& record : manifest.extra_files()) read_checked_file(dir, record);
}

void check_index(const std::string& dir, const Manifest& manifest, const std::string& contents) {
  const std::string path = path_in(dir, manifest.index().file());
  const nlohmann::json index = nlohmann::json::parse(contents, nullptr, /*allow_exceptions=*/false);
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    throw CheckpointError(absl::StrCat("invalid index ", path, ": no weight_map object"));
  }
  std::unordered_map<std::string, std::string> shard_of;
  for (const auto& t : manifest.tensors()) shard_of[t.name()] = manifest.shards(t.shard()).file();
  for (const auto& [tensor, file] : index["weight_map"].items()) {
    if (!file.is_string()) {
      throw CheckpointError(absl::StrCat("invalid index ", path, ": the file of tensor ", tensor,
                                         " is not a string"));
    }
    check_plain_file_name(file.get<std::string>(), absl::StrCat("index ", path));
    auto it = shard_of.find(tensor);
    if (it == shard_of.end() || it->second != file.get<std::string>()) {
      throw CheckpointError(absl::StrCat("invalid index ", path, ": it puts tensor ", tensor, " in ",
                                         file.get<std::string>(), ", the manifest in ",
                                         it == shard_of.end() ? "no file" : it->second));
    }
  }
}

File open_shard(const std::string& dir, const ShardRecord& shard) {
  File file = File::open_checkpoint_file(path_in(dir, shard.file()));
  const uint64_t size = file.size();
  if (size != shard.size()) {
    throw CheckpointError(absl::StrCat("file ", file.path(), " is ", size,
                                       " bytes but the manifest says ", shard.size(),
                                       size < shard.size() ? " (truncated)" : ""));
  }
  std::string header(shard.data_begin(), '\0');
  file.read_at(header.data(), header.size(), 0);
  if (xxh3_64(header.data(), header.size()) != shard.header_xxh3()) {
    throw CheckpointError(absl::StrCat("checksum mismatch in ", file.path(),
                                       ": the safetensors header does not match the manifest"));
  }
  return file;
}

namespace {

// One band of blocks for read_band_into, and the part it belongs to.
struct BandRead {
  const TensorPart* part;
  std::vector<Block> band;
};

}  // namespace

void read_tensor_parts(const std::vector<TensorPart>& parts, unsigned threads) {
  std::vector<BandRead> reads;
  uint64_t tensor_bytes = 0;
  for (const TensorPart& part : parts) {
    std::vector<Block> overlapping;
    for (const Block& block : blocks_of(*part.record)) {
      if (intersects(rect_of(block), part.rect)) overlapping.push_back(block);
    }
    for (auto& band : row_bands(std::move(overlapping))) reads.push_back({&part, std::move(band)});
    tensor_bytes += part.record->length();
  }
  run_in_order(reads.size(), threads_for_read(tensor_bytes, threads), [&](size_t i) {
    const TensorPart& part = *reads[i].part;
    const Rect dest_rect = part.dest != nullptr ? part.rect : Rect{};
    read_band_into(*part.file, *part.record, reads[i].band, dest_rect, part.dest);
  });
}

void read_tensor_part(const File& file, const TensorRecord& record, const Rect& dest_rect,
                      void* dest) {
  read_tensor_parts({{&file, &record, dest_rect, dest}}, 1);
}

unsigned read_threads() { return std::min(cores_per_local_rank(), kMaxReadThreads); }

unsigned threads_for_read(uint64_t bytes, unsigned threads) {
  return bytes >= kParallelReadBytes ? std::max(1u, threads) : 1;
}

CheckpointContents read_checkpoint_contents(const std::string& dir) {
  CheckpointContents contents;
  contents.manifest = read_checkpoint_manifest(dir);
  const std::string state_bytes = read_checked_file(dir, contents.manifest.modelopt_state());
  if (!contents.state.ParseFromString(state_bytes)) {
    throw CheckpointError(absl::StrCat("file ", path_in(dir, contents.manifest.modelopt_state().file()),
                                       " is not a valid mto.ModeloptState"));
  }
  check_index(dir, contents.manifest, read_checked_file(dir, contents.manifest.index()));
  return contents;
}

void verify_checkpoint(const std::string& dir,
                       const std::function<void(uint64_t done, uint64_t total)>& progress) {
  const Manifest manifest = read_checkpoint_contents(dir).manifest;
  check_extra_files(dir, manifest);
  uint64_t total = 0, done = 0;
  for (const auto& record : manifest.tensors()) total += record.length();
  std::map<uint32_t, File> shards;
  for (const auto& record : manifest.tensors()) {
    auto it = shards.find(record.shard());
    if (it == shards.end()) {
      it = shards.emplace(record.shard(), open_shard(dir, manifest.shards(record.shard()))).first;
    }
    // No destination: every block is read through the bounce buffers and checked.
    const MatrixShape matrix = matrix_shape({record.shape().begin(), record.shape().end()});
    read_tensor_parts({{&it->second, &record, whole_rect(matrix), nullptr}}, read_threads());
    done += record.length();
    if (progress) progress(done, total);
  }
}

}  // namespace mto
