#include "opt/checkpoint.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <tuple>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "distributed/bucketing.h"
#include "distributed/data_parallel.h"
#include "distributed/sharding.h"
#include "distributed/mesh.h"
#include "opt/collective.h"
#include "opt/state_dict.h"
#include "opt/state_manager.h"
#include "opt/version.h"
#include "serialization/block_io.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/checkpoint_plan.h"
#include "serialization/checksum.h"
#include "serialization/deterministic.h"
#include "serialization/file.h"
#include "serialization/manifest_file.h"
#include "serialization/safetensors.h"
#include "serialization/staging_directory.h"
#include "serialization/tensor_blocks.h"

namespace mto {
namespace {

// Small tensors travel together in broadcasts of at most this many bytes.
constexpr size_t kBroadcastBucketBytes = size_t{4} << 20;

// The global shape of a state tensor.
std::vector<int64_t> global_shape(const StateTensor& t) {
  return t.slice ? t.slice->global_shape : t.tensor.sizes().vec();
}

// The part of its global tensor's matrix that `t` is.
Rect rect_of_state(const StateTensor& t) {
  const std::vector<int64_t> shape = global_shape(t);
  if (!t.slice) return whole_rect(matrix_shape(shape));
  const int64_t dim = t.slice->dim;
  const int64_t length = dim >= 0 && dim < t.tensor.dim() ? t.tensor.size(dim) : -1;
  const Rect rect = slice_rect(shape, dim, t.slice->offset, length, t.name);
  if (rect.area() != static_cast<uint64_t>(t.tensor.numel())) {
    throw CheckpointError(absl::StrCat("tensor ", t.name, ": its layer says it is a slice of [",
                                       absl::StrJoin(shape, ", "), "] along dimension ", dim,
                                       ", which a tensor of shape [", absl::StrJoin(t.tensor.sizes(), ", "),
                                       "] cannot be"));
  }
  return rect;
}

// The dtypes that the modes recorded on `model` store some of its tensors as
// (ModeDescriptor::stored_dtypes), by state-dict key. Throws CheckpointError naming the key
// and the mode for a key that is none of `tensors`, whose tensor's type cannot hold the
// dtype, or that two modes store as different dtypes.
std::map<std::string, std::string> stored_dtypes_of(torch::nn::Module& model,
                                                    const std::vector<StateTensor>& tensors) {
  std::map<std::string, std::string> dtypes;
  if (!ModeloptStateManager::is_converted(model)) return dtypes;
  std::unordered_map<std::string, c10::ScalarType> types;
  for (const auto& t : tensors) types.emplace(t.name, t.tensor.scalar_type());
  std::map<std::string, std::string> chosen_by;
  const ModeloptStateManager manager(model.shared_from_this());
  for (const auto& m : manager.modes_with_states()) {
    const std::string mode = m.mode->name();
    for (const auto& [key, dtype] : m.mode->stored_dtypes(m.config, m.metadata)) {
      const std::string says = absl::StrCat("mode ", mode, " stores tensor ", key, " as ", dtype);
      auto type = types.find(key);
      if (type == types.end()) {
        throw CheckpointError(absl::StrCat(says, ", but the model has no tensor ", key));
      }
      if (!dtype_holds(dtype, type->second)) {
        throw CheckpointError(absl::StrCat(says, ", which a ", c10::toString(type->second),
                                           " tensor cannot hold"));
      }
      auto [it, inserted] = dtypes.emplace(key, dtype);
      if (!inserted && it->second != dtype) {
        throw CheckpointError(absl::StrCat(says, ", but mode ", chosen_by[key], " stores it as ",
                                           it->second));
      }
      chosen_by.emplace(key, mode);
    }
  }
  return dtypes;
}

// The safetensors dtype a checkpoint stores `t` as: the one its modes chose in `dtypes`
// (stored_dtypes_of), else its own.
std::string stored_dtype(const StateTensor& t, const std::map<std::string, std::string>& dtypes) {
  auto it = dtypes.find(t.name);
  return it != dtypes.end() ? it->second : safetensors_dtype(t.tensor.scalar_type(), t.name);
}

// A tensor of the model, the record of the checkpoint that fills it and the part it is.
struct Destination {
  at::Tensor tensor;
  const TensorRecord* record;
  Rect rect;
};

// Pairs every tensor of `model` with its record, in state-dict order. Throws
// CheckpointError for a tensor missing on either side, of another global shape, or recorded
// as another dtype than its modes store it as (stored_dtypes_of).
std::vector<Destination> match_tensors(torch::nn::Module& model, const Manifest& manifest,
                                       const std::string& dir) {
  std::unordered_map<std::string, const TensorRecord*> records;
  for (const auto& record : manifest.tensors()) records[record.name()] = &record;
  const std::vector<StateTensor> tensors = model_state_slices(model);
  const std::map<std::string, std::string> dtypes = stored_dtypes_of(model, tensors);
  std::vector<Destination> out;
  for (const auto& t : tensors) {
    auto it = records.find(t.name);
    if (it == records.end()) {
      throw CheckpointError(absl::StrCat("checkpoint ", dir, " has no tensor ", t.name,
                                         ", which the model has"));
    }
    const TensorRecord& record = *it->second;
    const std::vector<int64_t> shape = global_shape(t);
    const std::vector<int64_t> stored(record.shape().begin(), record.shape().end());
    const std::string dtype = stored_dtype(t, dtypes);
    if (record.dtype() != dtype || shape != stored) {
      throw CheckpointError(absl::StrCat(
          "tensor ", t.name, ": the checkpoint holds ", record.dtype(), " [", absl::StrJoin(stored, ", "),
          "] but the model has ", dtype, " [", absl::StrJoin(shape, ", "), "]",
          t.slice ? " (global shape of its slices)" : ""));
    }
    if (!t.tensor.device().is_cpu()) {
      throw CheckpointError(absl::StrCat("tensor ", t.name, " is on ", t.tensor.device().str(),
                                         "; restore into a model on the CPU"));
    }
    const Rect rect = rect_of_state(t);
    out.push_back({t.tensor, &record, rect});
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

// Reads the destinations straight into their tensors, checking every block they overlap.
void read_destinations(const std::vector<const Destination*>& destinations,
                       const Manifest& manifest, const std::string& dir) {
  std::map<uint32_t, File> shards;
  torch::NoGradGuard no_grad;
  for (const Destination* d : destinations) {
    const uint32_t shard = d->record->shard();
    auto it = shards.find(shard);
    if (it == shards.end()) it = shards.emplace(shard, open_shard(dir, manifest.shards(shard))).first;
    if (d->tensor.is_contiguous()) {
      read_tensor_part(it->second, *d->record, d->rect, d->tensor.data_ptr());
    } else {
      at::Tensor staging = d->tensor.contiguous();
      read_tensor_part(it->second, *d->record, d->rect, staging.data_ptr());
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

// What this rank holds, for the other ranks to plan with: a Manifest whose modelopt_state
// carries the digest of the rank's modelopt state and whose tensors carry each tensor's
// stored dtype (`dtypes`, see stored_dtype), global shape and the rectangle held (as one
// block).
std::string describe_holdings(const ModeloptState& state, const std::vector<StateTensor>& tensors,
                              const std::map<std::string, std::string>& dtypes) {
  Manifest held;
  const std::string state_bytes = serialize_deterministic(state);
  held.mutable_modelopt_state()->set_xxh3(xxh3_64(state_bytes.data(), state_bytes.size()));
  for (const auto& t : tensors) {
    if (!t.tensor.device().is_cpu()) {
      throw CheckpointError(absl::StrCat("tensor ", t.name, " is on ", t.tensor.device().str(),
                                         "; move the model to the CPU before saving"));
    }
    TensorRecord* record = held.add_tensors();
    record->set_name(t.name);
    record->set_dtype(stored_dtype(t, dtypes));
    for (int64_t d : global_shape(t)) record->add_shape(d);
    *record->add_blocks() = block_of(rect_of_state(t), 0);
  }
  return held.SerializeAsString();
}

// The XXH3-64 of every part this rank holds that other ranks hold too, in plan order, as
// check_replicas takes them (packed as bytes).
std::string replica_digests(const CheckpointPlan& plan, const std::vector<StateTensor>& tensors, int rank) {
  std::vector<uint64_t> digests;
  for (const SlicePlan& part : plan.slices) {
    if (part.holders.size() < 2 || !std::binary_search(part.holders.begin(), part.holders.end(), rank)) continue;
    const at::Tensor c = tensors[part.tensor].tensor.contiguous();
    digests.push_back(xxh3_64(c.data_ptr(), c.nbytes()));
  }
  return std::string(reinterpret_cast<const char*>(digests.data()), digests.size() * sizeof(uint64_t));
}

// Decodes every rank's describe_holdings. Throws CheckpointError if a rank's modelopt state
// differs from rank 0's.
std::vector<std::vector<HeldSlice>> decode_holdings(const std::vector<std::string>& all) {
  std::vector<std::vector<HeldSlice>> out;
  uint64_t state_digest = 0;
  for (size_t r = 0; r < all.size(); ++r) {
    Manifest held;
    if (!held.ParseFromString(all[r])) {
      throw CheckpointError(absl::StrCat("save: what rank ", r, " holds was damaged in transit"));
    }
    if (r == 0) state_digest = held.modelopt_state().xxh3();
    if (held.modelopt_state().xxh3() != state_digest) {
      throw CheckpointError(absl::StrCat(
          "save: the modelopt state differs between rank 0 and rank ", r,
          "; every rank must hold the same model (wrap it in mto::DataParallel, or broadcast "
          "rank 0's weights) before saving"));
    }
    auto& slices = out.emplace_back();
    for (const auto& t : held.tensors()) {
      HeldSlice& s = slices.emplace_back();
      s.name = t.name();
      s.dtype = t.dtype();
      s.global_shape.assign(t.shape().begin(), t.shape().end());
      s.rect = rect_of(t.blocks(0));
    }
  }
  return out;
}

// Writes this rank's share of the plan into the staging directory: the header of its own
// shard, and every part whose writer it is. Returns the checksum blocks written, as a
// Manifest of tensor records that hold only names and blocks.
std::string write_planned_parts(const CheckpointPlan& plan, const std::vector<StateTensor>& tensors,
                                const std::string& staging_path, int rank) {
  std::map<uint32_t, File> files;
  auto file = [&](uint32_t shard) -> File& {
    auto it = files.find(shard);
    if (it == files.end()) {
      it = files.emplace(shard, File::open_shared(path_in(staging_path, plan.shards[shard].file()))).first;
    }
    return it->second;
  };
  if (rank < static_cast<int>(plan.shards.size())) {
    file(static_cast<uint32_t>(rank)).write_at(plan.headers[rank].data(), plan.headers[rank].size(), 0);
  }
  Manifest written;
  for (size_t index : write_order(plan, rank)) {
    const SlicePlan& part = plan.slices[index];
    const TensorRecord& record = plan.tensors[part.tensor];
    const StateTensor& t = tensors[part.tensor];
    const at::Tensor local = t.tensor.contiguous();
    const uint64_t cols = matrix_shape({record.shape().begin(), record.shape().end()}).cols;
    TensorRecord* out = written.add_tensors();
    out->set_name(record.name());
    const std::vector<int64_t> shape(record.shape().begin(), record.shape().end());
    for (Block& b : write_slice(file(record.shard()), record.offset(), cols, local.element_size(), part.rect,
                                local.data_ptr(), column_grid(shape, local.element_size()))) {
      *out->add_blocks() = std::move(b);
    }
  }
  for (auto& [shard, f] : files) {
    f.sync();
    f.close();
  }
  return written.SerializeAsString();
}

// The manifest of a planned checkpoint, with the blocks every rank wrote.
Manifest assemble_manifest(const CheckpointPlan& plan, const std::vector<std::string>& written,
                           int world_size) {
  Manifest manifest;
  manifest.set_format_version(kCheckpointFormatVersion);
  manifest.set_mto_version(kModeloptVersion);
  manifest.set_world_size(world_size);
  manifest.set_tensor_parallel_size(plan.tensor_parallel_size);
  for (const auto& shard : plan.shards) *manifest.add_shards() = shard;
  std::unordered_map<std::string, TensorRecord*> by_name;
  for (const auto& t : plan.tensors) {
    TensorRecord* record = manifest.add_tensors();
    *record = t;
    by_name[t.name()] = record;
  }
  for (size_t r = 0; r < written.size(); ++r) {
    Manifest part;
    if (!part.ParseFromString(written[r])) {
      throw CheckpointError(absl::StrCat("save: the blocks rank ", r, " wrote were damaged in transit"));
    }
    for (const auto& t : part.tensors()) {
      TensorRecord* record = by_name.at(t.name());
      for (const auto& b : t.blocks()) *record->add_blocks() = b;
    }
  }
  for (auto& record : *manifest.mutable_tensors()) {
    std::sort(record.mutable_blocks()->begin(), record.mutable_blocks()->end(), [](const Block& a, const Block& b) {
      return std::make_tuple(a.col_begin(), a.row_begin()) < std::make_tuple(b.col_begin(), b.row_begin());
    });
  }
  return manifest;
}

// restore(), into `model` or, when it is null, the recorded model-like.
ModulePtr restore_checkpoint(const ModelOrModelLike* model, const std::string& dir,
                             const RestoreOptions& options) {
  std::shared_ptr<Communicator> comm = options.communicator ? options.communicator : default_mesh()->world();
  ModulePtr target;
  std::string manifest_bytes;
  std::string state_bytes;
  run_on_every_rank(*comm, [&] {
    target = unwrapped_or_refuse(model);
    if (comm->rank() != 0) return;
    const Manifest manifest = read_checkpoint_manifest(dir);
    state_bytes = read_checked_file(dir, manifest.modelopt_state());
    check_index(dir, manifest, read_checked_file(dir, manifest.index()));
    check_extra_files(dir, manifest);
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

  // Ranks of a split model hold different parts: each reads its own.
  const bool split = std::any_of(destinations.begin(), destinations.end(), [](const Destination& d) {
    const MatrixShape m = matrix_shape({d.record->shape().begin(), d.record->shape().end()});
    return !(d.rect == whole_rect(m));
  });
  if (options.strategy == RestoreStrategy::kReadAll || comm->world_size() == 1 || split) {
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
  std::shared_ptr<Communicator> comm = options.communicator ? options.communicator : default_mesh()->world();
  const int rank = comm->rank();
  const int world_size = comm->world_size();
  auto* wrapper = dynamic_cast<DataParallelImpl*>(&model_in);
  torch::nn::Module& model = wrapper ? *wrapper->module() : model_in;

  ModeloptState state;
  std::vector<StateTensor> tensors;
  std::unique_ptr<StagingDirectory> staging;
  std::string staging_path;
  std::string holdings;
  run_on_every_rank(*comm, [&] {
    state = modelopt_state(model);
    tensors = model_state_slices(model);
    holdings = describe_holdings(state, tensors, stored_dtypes_of(model, tensors));
    if (rank == 0) {
      for (const auto& [name, contents] : options.extra_files) {
        check_extra_file(name, contents.size(), "save: options.extra_files");
      }
      staging = std::make_unique<StagingDirectory>(dir);
      staging_path = staging->path();
    }
  });
  const std::vector<std::string> all_holdings = comm->all_gather(holdings);
  comm->broadcast(staging_path, 0);

  // Holders of the same part compare checksums of their copies: a rank whose copy differs
  // would make a checkpoint that is no rank's model.
  CheckpointPlan plan;
  std::string digests;
  run_on_every_rank(*comm, [&] {
    plan = plan_checkpoint(decode_holdings(all_holdings));
    digests = replica_digests(plan, tensors, rank);
  });
  const bool replicated = std::any_of(plan.slices.begin(), plan.slices.end(),
                                      [](const SlicePlan& part) { return part.holders.size() > 1; });
  if (replicated) {
    const std::vector<std::string> all_digests = comm->all_gather(digests);
    run_on_every_rank(*comm, [&] {
      std::vector<std::vector<uint64_t>> decoded;
      for (const std::string& bytes : all_digests) {
        auto& d = decoded.emplace_back(bytes.size() / sizeof(uint64_t));
        std::memcpy(d.data(), bytes.data(), d.size() * sizeof(uint64_t));
      }
      check_replicas(plan, decoded);
    });
  }

  std::string written;
  run_on_every_rank(*comm, [&] { written = write_planned_parts(plan, tensors, staging_path, rank); });
  const std::vector<std::string> all_written = comm->all_gather(written);

  run_on_every_rank(*comm, [&] {
    if (rank != 0) return;
    Manifest manifest = assemble_manifest(plan, all_written, world_size);
    *manifest.mutable_modelopt_state() =
        write_recorded_file(staging_path, kStateFileName, serialize_deterministic(state));
    std::map<std::string, std::string> weight_map;
    uint64_t total_size = 0;
    for (const auto& record : manifest.tensors()) {
      weight_map[record.name()] = manifest.shards(record.shard()).file();
      total_size += record.length();
    }
    *manifest.mutable_index() = write_recorded_file(
        staging_path, kIndexFileName, encode_safetensors_index(weight_map, total_size));
    for (const auto& [name, contents] : options.extra_files) {
      *manifest.add_extra_files() = write_recorded_file(staging_path, name, contents);
    }
    validate_manifest(manifest, path_in(staging_path, kManifestFileName));
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

}  // namespace mto
