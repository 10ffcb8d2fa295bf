#include "opt/checkpoint.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "distributed/bucketing.h"
#include "distributed/data_parallel.h"
#include "distributed/sharding.h"
#include "distributed/world.h"
#include "opt/collective.h"
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

// Small tensors travel together in broadcasts of at most this many bytes.
constexpr size_t kBroadcastBucketBytes = size_t{4} << 20;

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

// Checks the index, which other tools follow to the shards: it must name only shard files
// of the manifest, each tensor in the shard the manifest puts it in.
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

// Opens a shard and checks its size and header bytes against the manifest.
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

// A tensor of the model and the record of the checkpoint that fills it.
struct Destination {
  at::Tensor tensor;
  const TensorRecord* record;
};

// Pairs every tensor of `model` with its record, in state-dict order. Throws
// CheckpointError for a tensor missing on either side or of another dtype or shape.
std::vector<Destination> match_tensors(torch::nn::Module& model, const Manifest& manifest,
                                       const std::string& dir) {
  std::unordered_map<std::string, const TensorRecord*> records;
  for (const auto& record : manifest.tensors()) records[record.name()] = &record;
  std::vector<Destination> out;
  for (const auto& t : model_state_dict(model)) {
    auto it = records.find(t.name);
    if (it == records.end()) {
      throw CheckpointError(absl::StrCat("checkpoint ", dir, " has no tensor ", t.name,
                                         ", which the model has"));
    }
    check_tensor_matches(*it->second, t.tensor.contiguous());
    out.push_back({t.tensor, it->second});
    records.erase(it);
  }
  for (const auto& record : manifest.tensors()) {
    if (records.count(record.name())) {
      throw CheckpointError(absl::StrCat("checkpoint ", dir, " holds tensor ", record.name(),
                                         ", which the model does not have"));
    }
  }
  return out;
}

// Reads the destinations straight into their tensors, checking every checksum.
void read_destinations(const std::vector<const Destination*>& destinations,
                       const Manifest& manifest, const std::string& dir) {
  std::map<uint32_t, File> shards;
  torch::NoGradGuard no_grad;
  for (const Destination* d : destinations) {
    const uint32_t shard = d->record->shard();
    auto it = shards.find(shard);
    if (it == shards.end()) it = shards.emplace(shard, open_shard(dir, manifest.shards(shard))).first;
    if (d->tensor.is_contiguous()) {
      read_tensor_into(it->second, *d->record, d->tensor);
    } else {
      at::Tensor staging = d->tensor.contiguous();
      read_tensor_into(it->second, *d->record, staging);
      d->tensor.copy_(staging);
    }
  }
}

// The model the caller passed; refuses a DataParallel wrapper.
ModulePtr unwrapped_or_refuse(const ModelOrModelLike* model) {
  if (model == nullptr) return nullptr;
  ModulePtr module = model->to_module();
  if (is_data_parallel(*module)) {
    throw StateError("restore: the model is wrapped in mto::DataParallel; restore into the "
                     "unwrapped model, then wrap it again.");
  }
  return module;
}

// What each rank's copy of the model is: the XXH3-64 of its modelopt state, then of every
// tensor, as bytes.
std::string replica_digests(const ModeloptState& state, const std::vector<NamedTensor>& tensors) {
  std::vector<uint64_t> digests;
  const std::string state_bytes = serialize_deterministic(state);
  digests.push_back(xxh3_64(state_bytes.data(), state_bytes.size()));
  for (const auto& t : tensors) {
    const at::Tensor c = t.tensor.contiguous();
    digests.push_back(xxh3_64(c.data_ptr(), c.nbytes()));
  }
  return std::string(reinterpret_cast<const char*>(digests.data()), digests.size() * sizeof(uint64_t));
}

// Each rank writes only its shard of its own copy: a rank whose model differs would make a
// checkpoint that is no rank's model. Throws CheckpointError on every rank, naming the
// first difference. Collective.
void check_replicas(Communicator& comm, const std::string& digests,
                    const std::vector<NamedTensor>& tensors) {
  const std::vector<std::string> all = comm.all_gather(digests);
  auto decode = [](const std::string& bytes) {
    std::vector<uint64_t> out(bytes.size() / sizeof(uint64_t));
    std::memcpy(out.data(), bytes.data(), out.size() * sizeof(uint64_t));
    return out;
  };
  const std::vector<uint64_t> reference = decode(all[0]);
  for (size_t r = 1; r < all.size(); ++r) {
    const std::vector<uint64_t> other = decode(all[r]);
    if (other == reference) continue;
    std::string what = "the list of tensors";
    if (other.size() == reference.size()) {
      const size_t i = std::mismatch(other.begin(), other.end(), reference.begin()).first - other.begin();
      what = i == 0 ? "the modelopt state" : absl::StrCat("tensor ", tensors[i - 1].name);
    }
    throw CheckpointError(absl::StrCat(
        "save: ", what, " differs between rank 0 and rank ", r,
        "; every rank must hold the same model (wrap it in mto::DataParallel, or broadcast "
        "rank 0's weights) before saving"));
  }
}

// restore(), into `model` or, when it is null, the recorded model-like.
ModulePtr restore_checkpoint(const ModelOrModelLike* model, const std::string& dir,
                             const RestoreOptions& options) {
  std::shared_ptr<Communicator> comm = options.communicator ? options.communicator : world();
  ModulePtr target;
  std::string manifest_bytes;
  std::string state_bytes;
  run_on_every_rank(*comm, [&] {
    target = unwrapped_or_refuse(model);
    if (comm->rank() != 0) return;
    const Manifest manifest = read_checkpoint_manifest(dir);
    state_bytes = read_checked_file(dir, manifest.modelopt_state());
    check_index(dir, manifest, read_checked_file(dir, manifest.index()));
    manifest_bytes = manifest.SerializeAsString();
  });
  comm->broadcast(manifest_bytes, 0);
  comm->broadcast(state_bytes, 0);

  Manifest manifest;
  ModulePtr restored;
  std::vector<Destination> destinations;
  run_on_every_rank(*comm, [&] {
    if (!manifest.ParseFromString(manifest_bytes)) {
      throw CheckpointError(absl::StrCat("the manifest of ", dir, " was damaged in transit"));
    }
    ModeloptState state;
    if (!state.ParseFromString(state_bytes)) {
      throw CheckpointError(absl::StrCat("file ", path_in(dir, manifest.modelopt_state().file()),
                                         " is not a valid mto.ModeloptState"));
    }
    restored = target ? restore_from_modelopt_state(target, state) : restore_from_modelopt_state(state);
    destinations = match_tensors(*restored, manifest, dir);
  });

  if (options.strategy == RestoreStrategy::kReadAll || comm->world_size() == 1) {
    std::vector<const Destination*> all;
    for (const auto& d : destinations) all.push_back(&d);
    run_on_every_rank(*comm, [&] { read_destinations(all, manifest, dir); });
    return restored;
  }

  std::vector<uint64_t> sizes;
  for (const auto& d : destinations) sizes.push_back(d.record->length());
  const std::vector<int> reader = split_by_weight(sizes, comm->world_size());
  std::vector<const Destination*> mine;
  for (size_t i = 0; i < destinations.size(); ++i) {
    if (reader[i] == comm->rank()) mine.push_back(&destinations[i]);
  }
  run_on_every_rank(*comm, [&] { read_destinations(mine, manifest, dir); });
  torch::NoGradGuard no_grad;
  for (int r = 0; r < comm->world_size(); ++r) {
    std::vector<at::Tensor> share;
    for (size_t i = 0; i < destinations.size(); ++i) {
      if (reader[i] == r) share.push_back(destinations[i].tensor);
    }
    for_each_bucket(share, kBroadcastBucketBytes, [&](const at::Tensor& flat) { comm->broadcast(flat, r); });
  }
  return restored;
}

}  // namespace

void save(torch::nn::Module& model_in, const std::string& dir, const SaveOptions& options) {
  std::shared_ptr<Communicator> comm = options.communicator ? options.communicator : world();
  const int rank = comm->rank();
  const int world_size = comm->world_size();
  auto* wrapper = dynamic_cast<DataParallelImpl*>(&model_in);
  torch::nn::Module& model = wrapper ? *wrapper->module() : model_in;

  ModeloptState state;
  std::vector<NamedTensor> tensors;
  std::unique_ptr<StagingDirectory> staging;
  std::string staging_path;
  std::string digests;
  run_on_every_rank(*comm, [&] {
    state = modelopt_state(model);
    tensors = model_state_dict(model);
    if (world_size > 1) digests = replica_digests(state, tensors);
    if (rank == 0) {
      staging = std::make_unique<StagingDirectory>(dir);
      staging_path = staging->path();
    }
  });
  if (world_size > 1) check_replicas(*comm, digests, tensors);
  comm->broadcast(staging_path, 0);

  // Each rank writes the tensors the plan gives it, in state-dict order.
  std::vector<uint64_t> sizes;
  for (const auto& t : tensors) sizes.push_back(static_cast<uint64_t>(t.tensor.nbytes()));
  const std::vector<int> writer = split_by_weight(sizes, world_size);
  std::vector<NamedTensor> mine;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (writer[i] == rank) mine.push_back(tensors[i]);
  }
  std::string written_bytes;
  run_on_every_rank(*comm, [&] {
    WrittenShard written = write_shard(staging_path, shard_file_name(rank, world_size), mine,
                                       rank, static_cast<uint32_t>(rank));
    Manifest part;
    *part.add_shards() = written.shard;
    for (auto& record : written.tensors) *part.add_tensors() = std::move(record);
    written_bytes = part.SerializeAsString();
  });
  const std::vector<std::string> parts = comm->all_gather(written_bytes);

  run_on_every_rank(*comm, [&] {
    if (rank != 0) return;
    Manifest manifest;
    manifest.set_format_version(kCheckpointFormatVersion);
    manifest.set_mto_version(kModeloptVersion);
    manifest.set_world_size(world_size);
    *manifest.mutable_modelopt_state() =
        write_metadata_file(staging_path, kStateFileName, serialize_deterministic(state));
    std::unordered_map<std::string, TensorRecord> records;
    for (const std::string& bytes : parts) {
      Manifest part;
      part.ParseFromString(bytes);
      *manifest.add_shards() = part.shards(0);
      for (const auto& record : part.tensors()) records[record.name()] = record;
    }
    std::map<std::string, std::string> weight_map;
    uint64_t total_size = 0;
    for (const auto& t : tensors) {
      TensorRecord& record = records.at(t.name);
      weight_map[record.name()] = manifest.shards(record.shard()).file();
      total_size += record.length();
      *manifest.add_tensors() = std::move(record);
    }
    *manifest.mutable_index() = write_metadata_file(
        staging_path, kIndexFileName, encode_safetensors_index(weight_map, total_size));
    write_manifest(staging_path, manifest);
    staging->commit();
  });
}

ModulePtr restore(const ModelOrModelLike& model, const std::string& dir,
                  const RestoreOptions& options) {
  return restore_checkpoint(&model, dir, options);
}

ModulePtr restore(const std::string& dir, const RestoreOptions& options) {
  return restore_checkpoint(nullptr, dir, options);
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
  uint64_t total = 0, done = 0;
  for (const auto& record : manifest.tensors()) total += record.length();
  std::map<uint32_t, File> shards;
  for (const auto& record : manifest.tensors()) {
    auto it = shards.find(record.shard());
    if (it == shards.end()) {
      it = shards.emplace(record.shard(), open_shard(dir, manifest.shards(record.shard()))).first;
    }
    std::vector<int64_t> shape(record.shape().begin(), record.shape().end());
    const at::Tensor scratch =
        at::empty(shape, at::TensorOptions().dtype(scalar_type_from_safetensors(record.dtype(), record.name())));
    read_tensor_into(it->second, record, scratch);
    done += record.length();
    if (progress) progress(done, total);
  }
}

}  // namespace mto
