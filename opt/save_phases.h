#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "distributed/communicator.h"
#include "opt/checkpoint.h"
#include "opt/state_dict.h"
#include "serialization/checkpoint_plan.h"
#include "serialization/modelopt_state.pb.h"
#include "serialization/staging_directory.h"

// The three phases of a save, shared by save (one after the other) and save_async (the
// first in the caller's thread, the others on a background thread): planning, which reads
// the model and agrees with the other ranks on who writes what; writing, which only touches
// this rank's files; and committing, which gathers what every rank wrote and swaps the new
// checkpoint into place.
namespace mto {

// A save between its planning and its commit.
struct PlannedSave {
  std::string dir;
  CheckpointPlan plan;
  // This rank's tensors, indexed as plan.tensors: the model's, then SaveOptions::extra_tensors.
  std::vector<StateTensor> tensors;
  ModeloptState state;
  // Names of the extra tensors, which the manifest marks as such.
  std::set<std::string> extra_names;
  std::map<std::string, std::string> extra_files;
  // Rank 0's staging directory, which the commit swaps into place; null on the other ranks.
  std::unique_ptr<StagingDirectory> staging;
  std::string staging_path;
};

// Called by plan_save on every rank once the plan is known, before holders of the same part
// compare checksums. It may replace tensors of planned.tensors by copies (save_async's
// snapshot); it returns the XXH3-64 of the tensors it hashed on the way (by index into
// planned.tensors), which the comparison then takes instead of reading them again.
using BeforeReplicaCheck = std::function<std::map<size_t, uint64_t>(PlannedSave& planned)>;

// Reads `model` (a DataParallel wrapper is unwrapped) and plans its checkpoint at `dir` with
// the other ranks of `comm`: every rank lists what it holds, holders of the same part compare
// checksums, and rank 0 creates the staging directory. Collective; on any failure every rank
// throws (see save).
PlannedSave plan_save(torch::nn::Module& model, const std::string& dir, const SaveOptions& options,
                      Communicator& comm, const BeforeReplicaCheck& before_replica_check = {});

// Whether more than one rank holds some part of `plan` (data-parallel replicas).
bool replicated(const CheckpointPlan& plan);

// The parts of planned.plan.tensors that `rank` writes (indices into planned.tensors).
std::set<size_t> tensors_written_by(const PlannedSave& planned, int rank);

// Writes this rank's share of the plan into the staging directory and fsyncs it. Collective
// over `comm` (the writers of a tensor's column parts exchange them, row_exchange.h), but
// ranks meet only there. Returns the checksum blocks written, encoded for commit_save.
std::string write_planned_save(const PlannedSave& planned, Communicator& comm);

// Gathers what every rank wrote and, on rank 0, writes the state, the index, the extra files
// and the manifest, and commits. Collective; on any failure every rank throws and the
// staging directory is removed.
void commit_save(PlannedSave& planned, const std::string& written, Communicator& comm);

// The dtypes that the modes recorded on `model` store some of its tensors as
// (ModeDescriptor::stored_dtypes), by state-dict key. Throws CheckpointError naming the key
// and the mode for a key that is none of `tensors`, whose tensor's type cannot hold the
// dtype, or that two modes store as different dtypes.
std::map<std::string, std::string> stored_dtypes_of(torch::nn::Module& model,
                                                    const std::vector<StateTensor>& tensors);

// The safetensors dtype a checkpoint stores `t` as: the one its modes chose in `dtypes`
// (stored_dtypes_of), else its own.
std::string stored_dtype(const StateTensor& t, const std::map<std::string, std::string>& dtypes);

// The global shape of a state tensor, and the part of its global tensor's matrix that it is.
std::vector<int64_t> global_shape(const StateTensor& t);
Rect rect_of_state(const StateTensor& t);

}  // namespace mto
