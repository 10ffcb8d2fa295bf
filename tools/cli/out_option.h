#pragma once

#include <string>

#include "distributed/communicator.h"

namespace mto {
namespace cli {

// The file in which a training checkpoint (`mto train --save-every`) records its job and
// progress, beside the model.
inline constexpr char kTrainingStateFile[] = "training_state.json";

// Whether `dir` holds an unfinished training checkpoint: one with the training state --resume
// continues from (false when it holds no checkpoint at all). Reads its MANIFEST; throws
// CheckpointError as reading it does.
bool holds_training_state(const std::string& dir);

// Checks, before any work, that the save at the end of a command can write `out` (the
// value of its --out) without losing anything, as serialization's check_replaceable does:
// a training or a search must not run for an hour to be refused at its save. An unfinished
// training job's checkpoint is refused too, unless `resuming` (mto train --resume continues
// it). Rank 0 checks; every rank throws its error. Collective over `world`.
void check_out(Communicator& world, const std::string& out, bool resuming = false);

// Whether `inner` is the directory `outer` or lies inside it, once the symbolic links of the
// parts of both paths that exist are resolved.
bool is_within(const std::string& inner, const std::string& outer);

}  // namespace cli
}  // namespace mto
