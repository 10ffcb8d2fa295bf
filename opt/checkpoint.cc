#include "opt/checkpoint.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <optional>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "distributed/bucketing.h"
#include "distributed/data_parallel.h"
#include "distributed/sharding.h"
#include "distributed/mesh.h"
#include "opt/collective.h"
#include "opt/model_like.h"
#include "opt/nn/uninitialized.h"
#include "opt/save_async.h"
#include "opt/save_phases.h"
#include "opt/state_dict.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/checkpoint_reader.h"
#include "serialization/file.h"
#include "serialization/tensor_blocks.h"

namespace mto {
namespace {

// Small tensors travel together in broadcasts of at most this many bytes.
constexpr size_t kBroadcastBucketBytes = size_t{4} << 20;

// The node this rank runs on: MTO_NODE_NAME where set, else the host name.
std::string node_name() {
  if (const char* name = std::getenv("MTO_NODE_NAME"); name != nullptr && *name != '\0') return name;
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0) return "";
  return host;
}

// The strategy `requested` means for `comm` (see RestoreStrategy::kAuto). Collective when
// `requested` is kAuto.
RestoreStrategy chosen_strategy(RestoreStrategy requested, Communicator& comm) {
  if (requested != RestoreStrategy::kAuto) return requested;
  const std::vector<std::string> nodes = comm.all_gather(node_name());
  const bool one_node = std::all_of(nodes.begin(), nodes.end(), [&](const std::string& n) { return n == nodes[0]; });
  return one_node ? RestoreStrategy::kReadAll : RestoreStrategy::kReadShareBroadcast;
}

// A tensor of the model, the record of the checkpoint that fills it and the part it is.
struct Destination {
  at::Tensor tensor;
  const TensorRecord* record;
  Rect rect;
};

// Pairs every tensor of `model`, then every tensor of `extra` (from RestoreOptions::extra_tensors),
// with its record. The model's tensors are matched with the records not marked extra, the
// extra ones with those marked extra; the extra records that `extra` does not ask for are
// left alone. Throws CheckpointError for a tensor missing on either side, of another global
// shape, or recorded as another dtype than its modes store it as (stored_dtypes_of).
std::vector<Destination> match_tensors(torch::nn::Module& model, const Manifest& manifest,
                                       const std::string& dir, const std::vector<StateTensor>& extra) {
  std::unordered_map<std::string, const TensorRecord*> records;
  std::unordered_map<std::string, const TensorRecord*> extra_records;
  for (const auto& record : manifest.tensors()) {
    (record.extra() ? extra_records : records)[record.name()] = &record;
  }
  const std::vector<StateTensor> tensors = model_state_slices(model);
  const std::map<std::string, std::string> dtypes = stored_dtypes_of(model, tensors);
  std::vector<Destination> out;
  auto match = [&](const StateTensor& t, std::unordered_map<std::string, const TensorRecord*>& from,
                   const char* which) {
    auto it = from.find(t.name);
    if (it == from.end()) {
      throw CheckpointError(absl::StrCat("checkpoint ", dir, " has no ", which, t.name, ", which the ",
                                         &from == &records ? "model has" : "restore asks for"));
    }
    const TensorRecord& record = *it->second;
    const std::vector<int64_t> shape = global_shape(t);
    const std::vector<int64_t> stored(record.shape().begin(), record.shape().end());
    const std::string dtype = stored_dtype(t, dtypes);
    if (record.dtype() != dtype || shape != stored) {
      throw CheckpointError(absl::StrCat(
          "tensor ", t.name, ": the checkpoint holds ", record.dtype(), " [", absl::StrJoin(stored, ", "),
          "] but the ", &from == &records ? "model has " : "restore asks for ", dtype, " [",
          absl::StrJoin(shape, ", "), "]", t.slice ? " (global shape of its slices)" : ""));
    }
    if (!t.tensor.device().is_cpu()) {
      throw CheckpointError(absl::StrCat("tensor ", t.name, " is on ", t.tensor.device().str(),
                                         "; restore into a model on the CPU"));
    }
    out.push_back({t.tensor, &record, rect_of_state(t)});
    from.erase(it);
  };
  for (const auto& t : tensors) match(t, records, "tensor ");
  for (const auto& t : extra) match(t, extra_records, "extra tensor ");
  for (const auto& record : manifest.tensors()) {
    if (records.count(record.name())) {
      throw CheckpointError(absl::StrCat("checkpoint ", dir, " holds tensor ", record.name(),
                                         ", which the model does not have"));
    }
  }
  return out;
}

// Reads the destinations straight into their tensors, checking every block they overlap, on
// the threads this rank's share of the node's cores allows.
void read_destinations(const std::vector<const Destination*>& destinations,
                       const Manifest& manifest, const std::string& dir) {
  std::map<uint32_t, File> shards;
  torch::NoGradGuard no_grad;
  std::vector<TensorPart> parts;
  std::vector<std::pair<at::Tensor, at::Tensor>> staged;  // (tensor, its contiguous staging copy)
  for (const Destination* d : destinations) {
    const uint32_t shard = d->record->shard();
    auto it = shards.find(shard);
    if (it == shards.end()) it = shards.emplace(shard, open_shard(dir, manifest.shards(shard))).first;
    at::Tensor into = d->tensor;
    if (!into.is_contiguous()) {
      staged.emplace_back(d->tensor, d->tensor.contiguous());
      into = staged.back().second;
    }
    parts.push_back({&it->second, d->record, d->rect, into.data_ptr()});
  }
  read_tensor_parts(parts, read_threads());
  for (auto& [tensor, staging] : staged) tensor.copy_(staging);
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


// restore(), into `model` or, when it is null, the recorded model-like.
ModulePtr restore_checkpoint(const ModelOrModelLike* model, const std::string& dir,
                             const RestoreOptions& options) {
  std::shared_ptr<Communicator> comm = options.communicator ? options.communicator : default_mesh()->world();
  finish_save_in_flight();  // which may be writing `dir`
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
    // A model built here from its model-like is filled whole by the checkpoint (match_tensors
    // refuses one that is not): its layers skip their random initialization.
    std::optional<nn::UninitializedParameters> uninitialized;
    if (target == nullptr || std::dynamic_pointer_cast<ModelLikeModule>(target)) uninitialized.emplace();
    restored = target ? restore_from_modelopt_state(target, state) : restore_from_modelopt_state(state);
    uninitialized.reset();
    const std::vector<StateTensor> extra =
        options.extra_tensors ? options.extra_tensors(*restored) : std::vector<StateTensor>{};
    destinations = match_tensors(*restored, manifest, dir, extra);
  });

  // Ranks of a split model hold different parts: each reads its own.
  const bool split = std::any_of(destinations.begin(), destinations.end(), [](const Destination& d) {
    const MatrixShape m = matrix_shape({d.record->shape().begin(), d.record->shape().end()});
    return !(d.rect == whole_rect(m));
  });
  if (comm->world_size() == 1 || split || chosen_strategy(options.strategy, *comm) == RestoreStrategy::kReadAll) {
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

void save(torch::nn::Module& model, const std::string& dir, const SaveOptions& options) {
  std::shared_ptr<Communicator> comm = options.communicator ? options.communicator : default_mesh()->world();
  finish_save_in_flight();
  PlannedSave planned = plan_save(model, dir, options, *comm);
  std::string written;
  run_on_every_rank(*comm, [&] { written = write_planned_save(planned, *comm); });
  commit_save(planned, written, *comm);
}

ModulePtr restore(const ModelOrModelLike& model, const std::string& dir,
                  const RestoreOptions& options) {
  return restore_checkpoint(&model, dir, options);
}

ModulePtr restore(const std::string& dir, const RestoreOptions& options) {
  return restore_checkpoint(nullptr, dir, options);
}

}  // namespace mto
