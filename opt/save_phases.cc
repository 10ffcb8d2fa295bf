#include "opt/save_phases.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <set>
#include <tuple>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "distributed/data_parallel.h"
#include "opt/collective.h"
#include "opt/row_exchange.h"
#include "opt/state_manager.h"
#include "opt/version.h"
#include "serialization/block_io.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/checksum.h"
#include "serialization/deterministic.h"
#include "serialization/file.h"
#include "serialization/manifest_file.h"
#include "serialization/safetensors.h"
#include "serialization/tensor_blocks.h"

namespace mto {

std::vector<int64_t> global_shape(const StateTensor& t) {
  return t.slice ? t.slice->global_shape : t.tensor.sizes().vec();
}

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

std::string stored_dtype(const StateTensor& t, const std::map<std::string, std::string>& dtypes) {
  auto it = dtypes.find(t.name);
  return it != dtypes.end() ? it->second : safetensors_dtype(t.tensor.scalar_type(), t.name);
}

namespace {

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
// check_replicas takes them (packed as bytes): from `known` (by tensor index) where it has
// them, else hashed here.
std::string replica_digests(const CheckpointPlan& plan, const std::vector<StateTensor>& tensors, int rank,
                            const std::map<size_t, uint64_t>& known) {
  std::vector<uint64_t> digests;
  for (const SlicePlan& part : plan.slices) {
    if (part.holders.size() < 2 || !std::binary_search(part.holders.begin(), part.holders.end(), rank)) continue;
    if (auto it = known.find(part.tensor); it != known.end()) {
      digests.push_back(it->second);
      continue;
    }
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
                                const std::string& staging_path, Communicator& comm) {
  const int rank = comm.rank();
  std::map<uint32_t, File> files;
  auto file = [&](uint32_t shard) -> File& {
    auto it = files.find(shard);
    if (it == files.end()) {
      it = files.emplace(shard, File::open_shared(path_in(staging_path, plan.shards[shard].file()))).first;
    }
    return it->second;
  };
  // A failure before the exchange waits for its end: the peers expect this rank's rows.
  std::exception_ptr failure;
  try {
    if (rank < static_cast<int>(plan.shards.size())) {
      file(static_cast<uint32_t>(rank)).write_at(plan.headers[rank].data(), plan.headers[rank].size(), 0);
    }
  } catch (...) {
    failure = std::current_exception();
  }
  Manifest written;
  // Column parts first, exchanged into whole rows: all ranks start them together.
  const std::vector<RowExchange> exchanges = row_exchanges(plan);
  try {
    write_by_row_exchange(plan, exchanges, tensors, file, comm, &written);
  } catch (...) {
    if (!failure) throw;
  }
  if (failure) std::rethrow_exception(failure);
  std::set<size_t> exchanged;
  for (const RowExchange& e : exchanges) exchanged.insert(e.parts.begin(), e.parts.end());
  for (size_t index : write_order(plan, rank)) {
    if (exchanged.count(index)) continue;
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

// The manifest of a planned checkpoint, with the blocks every rank wrote and its extra
// tensors marked.
Manifest assemble_manifest(const CheckpointPlan& plan, const std::vector<std::string>& written,
                           int world_size, const std::set<std::string>& extra_names) {
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
    if (extra_names.count(t.name())) record->set_extra(true);
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
}  // namespace

PlannedSave plan_save(torch::nn::Module& model_in, const std::string& dir, const SaveOptions& options,
                      Communicator& comm, const BeforeReplicaCheck& before_replica_check) {
  const int rank = comm.rank();
  auto* wrapper = dynamic_cast<DataParallelImpl*>(&model_in);
  torch::nn::Module& model = wrapper ? *wrapper->module() : model_in;

  PlannedSave planned;
  planned.dir = dir;
  planned.extra_files = options.extra_files;
  std::string holdings;
  run_on_every_rank(comm, [&] {
    planned.state = modelopt_state(model);
    planned.tensors = model_state_slices(model);
    const std::map<std::string, std::string> dtypes = stored_dtypes_of(model, planned.tensors);
    std::set<std::string> names;
    for (const auto& t : planned.tensors) names.insert(t.name);
    for (const auto& t : options.extra_tensors) {
      if (!names.insert(t.name).second) {
        throw CheckpointError(absl::StrCat("save: options.extra_tensors has tensor ", t.name,
                                           ", which the model or an earlier extra tensor has too"));
      }
      planned.extra_names.insert(t.name);
      planned.tensors.push_back(t);
    }
    holdings = describe_holdings(planned.state, planned.tensors, dtypes);
    if (rank == 0) {
      for (const auto& [name, contents] : options.extra_files) {
        check_extra_file(name, contents.size(), "save: options.extra_files");
      }
      planned.staging = std::make_unique<StagingDirectory>(dir);
      planned.staging_path = planned.staging->path();
    }
  });
  const std::vector<std::string> all_holdings = comm.all_gather(holdings);
  comm.broadcast(planned.staging_path, 0);

  // Holders of the same part compare checksums of their copies: a rank whose copy differs
  // would make a checkpoint that is no rank's model.
  std::string digests;
  run_on_every_rank(comm, [&] {
    planned.plan = plan_checkpoint(decode_holdings(all_holdings));
    const std::map<size_t, uint64_t> known = before_replica_check ? before_replica_check(planned) : std::map<size_t, uint64_t>{};
    digests = replica_digests(planned.plan, planned.tensors, rank, known);
  });
  if (replicated(planned.plan)) {
    const std::vector<std::string> all_digests = comm.all_gather(digests);
    run_on_every_rank(comm, [&] {
      std::vector<std::vector<uint64_t>> decoded;
      for (const std::string& bytes : all_digests) {
        auto& d = decoded.emplace_back(bytes.size() / sizeof(uint64_t));
        std::memcpy(d.data(), bytes.data(), d.size() * sizeof(uint64_t));
      }
      check_replicas(planned.plan, decoded);
    });
  }
  return planned;
}

bool replicated(const CheckpointPlan& plan) {
  return std::any_of(plan.slices.begin(), plan.slices.end(), [](const SlicePlan& part) { return part.holders.size() > 1; });
}

std::set<size_t> tensors_written_by(const PlannedSave& planned, int rank) {
  std::set<size_t> out;
  for (size_t index : write_order(planned.plan, rank)) out.insert(planned.plan.slices[index].tensor);
  return out;
}

std::string write_planned_save(const PlannedSave& planned, Communicator& comm) {
  return write_planned_parts(planned.plan, planned.tensors, planned.staging_path, comm);
}

void commit_save(PlannedSave& planned, const std::string& written, Communicator& comm) {
  const std::vector<std::string> all_written = comm.all_gather(written);
  run_on_every_rank(comm, [&] {
    if (comm.rank() != 0) return;
    const std::string& staging_path = planned.staging_path;
    Manifest manifest = assemble_manifest(planned.plan, all_written, comm.world_size(), planned.extra_names);
    *manifest.mutable_modelopt_state() =
        write_recorded_file(staging_path, kStateFileName, serialize_deterministic(planned.state));
    std::map<std::string, std::string> weight_map;
    uint64_t total_size = 0;
    for (const auto& record : manifest.tensors()) {
      weight_map[record.name()] = manifest.shards(record.shard()).file();
      total_size += record.length();
    }
    *manifest.mutable_index() = write_recorded_file(
        staging_path, kIndexFileName, encode_safetensors_index(weight_map, total_size));
    for (const auto& [name, contents] : planned.extra_files) {
      *manifest.add_extra_files() = write_recorded_file(staging_path, name, contents);
    }
    validate_manifest(manifest, path_in(staging_path, kManifestFileName));
    write_manifest(staging_path, manifest);
    planned.staging->commit();
  });
}

}  // namespace mto
