#include "opt/checkpoint.h"

#include <torch/csrc/autograd/grad_mode.h>

#include <map>
#include <optional>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "opt/state_dict.h"
#include "opt/version.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/checksum.h"
#include "serialization/deterministic.h"
#include "serialization/file.h"
#include "serialization/manifest_file.h"
#include "serialization/safetensors.h"
#include "serialization/staging_directory.h"
#include "serialization/tensor_reader.h"

namespace mto {
namespace {

FileRecord write_metadata_file(const std::string& dir, const std::string& name,
                               const std::string& contents) {
  write_file_synced(path_in(dir, name), contents);
  FileRecord record;
  record.set_file(name);
  record.set_size(contents.size());
  record.set_xxh3(xxh3_64(contents.data(), contents.size()));
  return record;
}

// Reads a whole file of the checkpoint and checks it against its manifest record.
std::string read_checked_file(const std::string& dir, const FileRecord& record) {
  const std::string path = path_in(dir, record.file());
  std::string contents = read_file(path, kMaxMetadataBytes);
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

ModeloptState read_state(const std::string& dir, const Manifest& manifest) {
  const std::string bytes = read_checked_file(dir, manifest.modelopt_state());
  ModeloptState state;
  if (!state.ParseFromString(bytes)) {
    throw CheckpointError(absl::StrCat("file ", path_in(dir, manifest.modelopt_state().file()),
                                       " is not a valid mto.ModeloptState"));
  }
  return state;
}

// Opens a shard and checks its size and header bytes against the manifest.
File open_shard(const std::string& dir, const ShardRecord& shard) {
  File file = File::open(path_in(dir, shard.file()));
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

// Reads every tensor of `manifest` into the matching tensor of `model`.
void load_weights(torch::nn::Module& model, const std::string& dir, const Manifest& manifest) {
  std::unordered_map<std::string, const TensorRecord*> records;
  for (const auto& record : manifest.tensors()) records[record.name()] = &record;
  std::vector<NamedTensor> tensors = model_state_dict(model);
  std::unordered_map<std::string, bool> seen;
  for (const auto& t : tensors) {
    if (!records.count(t.name)) {
      throw CheckpointError(absl::StrCat("checkpoint ", dir, " has no tensor ", t.name,
                                         ", which the model has"));
    }
    check_tensor_matches(*records[t.name], t.tensor.contiguous());
    seen[t.name] = true;
  }
  for (const auto& record : manifest.tensors()) {
    if (!seen.count(record.name())) {
      throw CheckpointError(absl::StrCat("checkpoint ", dir, " holds tensor ", record.name(),
                                         ", which the model does not have"));
    }
  }
  std::map<uint32_t, File> shards;
  torch::NoGradGuard no_grad;
  for (const auto& t : tensors) {
    const TensorRecord& record = *records[t.name];
    auto it = shards.find(record.shard());
    if (it == shards.end()) {
      it = shards.emplace(record.shard(), open_shard(dir, manifest.shards(record.shard()))).first;
    }
    if (t.tensor.is_contiguous()) {
      read_tensor_into(it->second, record, t.tensor);
    } else {
      at::Tensor staging = t.tensor.contiguous();
      read_tensor_into(it->second, record, staging);
      t.tensor.copy_(staging);
    }
  }
}

// restore(), into `model` or, when it is null, the recorded model-like.
ModulePtr restore_checkpoint(const ModelOrModelLike* model, const std::string& dir) {
  const Manifest manifest = read_checkpoint_manifest(dir);
  const ModeloptState state = read_state(dir, manifest);
  read_checked_file(dir, manifest.index());
  ModulePtr restored = model ? restore_from_modelopt_state(*model, state)
                             : restore_from_modelopt_state(state);
  load_weights(*restored, dir, manifest);
  return restored;
}

}  // namespace

void save(torch::nn::Module& model, const std::string& dir) {
  const ModeloptState state = modelopt_state(model);
  const std::vector<NamedTensor> tensors = model_state_dict(model);

  StagingDirectory staging(dir);
  Manifest manifest;
  manifest.set_format_version(kCheckpointFormatVersion);
  manifest.set_mto_version(kModeloptVersion);
  manifest.set_world_size(1);
  *manifest.mutable_modelopt_state() =
      write_metadata_file(staging.path(), kStateFileName, serialize_deterministic(state));

  const std::string shard_name = shard_file_name(0, 1);
  WrittenShard shard = write_shard(staging.path(), shard_name, tensors, /*writer_rank=*/0, 0);
  *manifest.add_shards() = shard.shard;
  std::map<std::string, std::string> weight_map;
  uint64_t total_size = 0;
  for (auto& record : shard.tensors) {
    weight_map[record.name()] = shard_name;
    total_size += record.length();
    *manifest.add_tensors() = std::move(record);
  }
  *manifest.mutable_index() = write_metadata_file(
      staging.path(), kIndexFileName, encode_safetensors_index(weight_map, total_size));
  write_manifest(staging.path(), manifest);
  staging.commit();
}

ModulePtr restore(const ModelOrModelLike& model, const std::string& dir) {
  return restore_checkpoint(&model, dir);
}

ModulePtr restore(const std::string& dir) { return restore_checkpoint(nullptr, dir); }

}  // namespace mto
