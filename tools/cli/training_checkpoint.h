#pragma once

#include <torch/optim/adam.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distributed/communicator.h"
#include "opt/conversion.h"
#include "opt/save_async.h"

// The training checkpoints of `mto train --save-every`, which `--resume` continues from: the
// model's checkpoint with the Adam state of every parameter beside it (extra tensors
// "optimizer.<parameter>.exp_avg", ".exp_avg_sq" and ".step", split like their parameter)
// and the job's progress in the extra file training_state.json.
namespace mto {
namespace cli {

// Where a training job stands after its last step.
struct TrainingProgress {
  int64_t step = 0;     // optimizer steps taken
  int epoch = 0;        // the epoch of the next batch
  int64_t batches = 0;  // batches of that epoch each replica has taken
  // Per world rank, the loss sum and the examples of that epoch so far (for the epoch's
  // reported loss).
  std::vector<std::pair<double, double>> losses;
};

// Saves `model` (unwrapped from its DataParallel), the state `optimizer` holds for its
// parameters and `progress` at `dir`, in the background (see save_async); `job` records the
// options a resuming job must share. Collective over `world`; `loss` is this rank's
// (loss sum, examples) of the epoch so far.
SaveHandle save_training_checkpoint(torch::nn::Module& model, torch::optim::Adam& optimizer,
                                    TrainingProgress progress, std::pair<double, double> loss,
                                    const nlohmann::json& job, const std::string& dir, Communicator& world);

// A training job read back from its checkpoint.
struct ResumedTraining {
  ModulePtr model;
  TrainingProgress progress;
  // The Adam state of each parameter that had one, by state-dict key.
  std::vector<std::pair<std::string, torch::optim::AdamParamState>> optimizer;
};

// Reads the training checkpoint at `dir` on every rank of `world` (collective), or returns
// nothing when `dir` does not exist yet or is empty. Throws ConfigError when `dir` holds a
// finished model (no training state) or was saved by a job whose options differ from `job`,
// naming every one that differs; CheckpointError as restore does.
std::optional<ResumedTraining> resume_training(const std::string& dir, const nlohmann::json& job,
                                               Communicator& world);

// Gives `optimizer` the state of `resumed` for the parameters of `model` (matched by name).
void load_optimizer_state(const ResumedTraining& resumed, torch::nn::Module& model,
                          torch::optim::Adam& optimizer);

}  // namespace cli
}  // namespace mto
