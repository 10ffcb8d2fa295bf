#include "tools/cli/training_checkpoint.h"

#include <ATen/ATen.h>
#include <c10/util/C++17.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <system_error>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "distributed/data_parallel.h"
#include "opt/checkpoint.h"
#include "opt/collective.h"
#include "opt/errors.h"
#include "opt/state_dict.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/checkpoint_reader.h"
#include "tools/cli/out_option.h"

namespace mto {
namespace cli {
namespace {

constexpr char kPrefix[] = "optimizer.";

// The key under which torch::optim keeps a parameter's state.
std::string state_key(const at::Tensor& parameter) {
  return c10::guts::to_string(parameter.unsafeGetTensorImpl());
}

// Where each of `model`'s state tensors sits in its global tensor, by key.
std::map<std::string, std::optional<TensorSlice>> slices_of(const torch::nn::Module& model) {
  std::map<std::string, std::optional<TensorSlice>> out;
  for (const StateTensor& t : model_state_slices(model)) out[t.name] = t.slice;
  return out;
}

// The extra tensors of one parameter's Adam state.
std::vector<StateTensor> adam_tensors(const std::string& name, const at::Tensor& exp_avg,
                                      const at::Tensor& exp_avg_sq, const at::Tensor& step,
                                      const std::optional<TensorSlice>& slice) {
  const std::string prefix = kPrefix + name;
  return {{prefix + ".exp_avg", exp_avg, slice},
          {prefix + ".exp_avg_sq", exp_avg_sq, slice},
          {prefix + ".step", step, std::nullopt}};
}

// Throws ConfigError naming every option in which `saved` and `job` differ (a changed --seed
// of the GPT changes its model_args too: both are named).
void check_same_job(const std::string& dir, const nlohmann::json& saved, const nlohmann::json& job) {
  nlohmann::json keys = nlohmann::json::object();
  for (const auto& [key, value] : saved.items()) keys[key] = true;
  for (const auto& [key, value] : job.items()) keys[key] = true;
  std::vector<std::string> before_values;
  std::vector<std::string> now_values;
  for (const auto& [key, unused] : keys.items()) {
    const nlohmann::json before = saved.contains(key) ? saved[key] : nlohmann::json();
    const nlohmann::json now = job.contains(key) ? job[key] : nlohmann::json();
    if (before == now) continue;
    before_values.push_back(absl::StrCat(key, " = ", before.dump()));
    now_values.push_back(absl::StrCat(key, " = ", now.dump()));
  }
  if (before_values.empty()) return;
  throw ConfigError(absl::StrCat("--resume: ", dir, " was saved by a job with ", absl::StrJoin(before_values, ", "),
                                 ", but this job has ", absl::StrJoin(now_values, ", "),
                                 "; resume with the options of the job that saved it"));
}

}  // namespace

SaveHandle save_training_checkpoint(torch::nn::Module& model, torch::optim::Adam& optimizer,
                                    TrainingProgress progress, std::pair<double, double> loss,
                                    const nlohmann::json& job, const std::string& dir, Communicator& world) {
  progress.losses.clear();
  for (const at::Tensor& t : world.all_gather(at::tensor({loss.first, loss.second}, at::kDouble))) {
    progress.losses.emplace_back(t[0].item<double>(), t[1].item<double>());
  }
  auto* wrapper = dynamic_cast<DataParallelImpl*>(&model);
  const torch::nn::Module& inner = wrapper ? *wrapper->module() : model;
  const auto slices = slices_of(inner);
  SaveOptions options;
  nlohmann::json names = nlohmann::json::array();
  for (const auto& item : inner.named_parameters()) {
    auto it = optimizer.state().find(state_key(item.value()));
    if (it == optimizer.state().end()) continue;
    const auto& state = static_cast<const torch::optim::AdamParamState&>(*it->second);
    auto slice = slices.find(item.key());
    for (StateTensor& t : adam_tensors(item.key(), state.exp_avg(), state.exp_avg_sq(),
                                       at::tensor({state.step()}, at::kLong),
                                       slice == slices.end() ? std::nullopt : slice->second)) {
      options.extra_tensors.push_back(std::move(t));
    }
    names.push_back(item.key());
  }
  nlohmann::json losses = nlohmann::json::array();
  for (const auto& [sum, examples] : progress.losses) losses.push_back({sum, examples});
  const nlohmann::json state = {{"job", job},         {"step", progress.step}, {"epoch", progress.epoch},
                                {"batches", progress.batches}, {"losses", losses},  {"optimizer", names}};
  options.extra_files = {{kTrainingStateFile, state.dump(2) + "\n"}};
  return save_async(model, dir, options);
}

std::optional<ResumedTraining> resume_training(const std::string& dir, const nlohmann::json& job,
                                               Communicator& world) {
  std::string text;
  run_on_every_rank(world, [&] {
    std::error_code ec;
    if (world.rank() != 0 || !std::filesystem::exists(dir) || std::filesystem::is_empty(dir, ec)) return;
    const Manifest manifest = read_checkpoint_manifest(dir);
    for (const auto& record : manifest.extra_files()) {
      if (record.file() == kTrainingStateFile) text = read_checked_file(dir, record);
    }
    if (text.empty()) {
      throw ConfigError(absl::StrCat("--resume: ", dir, " holds a finished model, not a training checkpoint (it has no ",
                                     kTrainingStateFile, "); to train it further, start from it with --init ", dir));
    }
  });
  world.broadcast(text, 0);
  if (text.empty()) return std::nullopt;

  ResumedTraining out;
  nlohmann::json names;
  run_on_every_rank(world, [&] {
    const std::string where = absl::StrCat("file ", dir, "/", kTrainingStateFile);
    nlohmann::json state;
    try {
      state = nlohmann::json::parse(text);
      check_same_job(dir, state.at("job"), job);
      out.progress.step = state.at("step").get<int64_t>();
      out.progress.epoch = state.at("epoch").get<int>();
      out.progress.batches = state.at("batches").get<int64_t>();
      for (const auto& l : state.at("losses")) out.progress.losses.emplace_back(l.at(0).get<double>(), l.at(1).get<double>());
      names = state.at("optimizer");
    } catch (const nlohmann::json::exception& e) {
      throw CheckpointError(absl::StrCat(where, " is not a valid training state: ", e.what()));
    }
    if (out.progress.losses.size() != static_cast<size_t>(world.world_size())) {
      throw CheckpointError(absl::StrCat(where, " has the losses of ", out.progress.losses.size(), " ranks, not ",
                                         world.world_size()));
    }
  });

  // The moments are read into tensors shaped and split like the restored model's parameters.
  std::vector<std::tuple<std::string, at::Tensor, at::Tensor, at::Tensor>> moments;
  RestoreOptions options;
  options.extra_tensors = [&](torch::nn::Module& model) {
    const auto slices = slices_of(model);
    const auto parameters = model.named_parameters();
    std::vector<StateTensor> extra;
    for (const auto& name : names) {
      const at::Tensor* p = parameters.find(name.get<std::string>());
      if (p == nullptr) {
        throw CheckpointError(absl::StrCat("training checkpoint ", dir, " holds the optimizer state of parameter ",
                                           name.get<std::string>(), ", which the model does not have"));
      }
      auto& [key, exp_avg, exp_avg_sq, step] = moments.emplace_back(
          name.get<std::string>(), at::zeros_like(*p), at::zeros_like(*p), at::zeros({1}, at::kLong));
      auto slice = slices.find(key);
      for (StateTensor& t :
           adam_tensors(key, exp_avg, exp_avg_sq, step, slice == slices.end() ? std::nullopt : slice->second)) {
        extra.push_back(std::move(t));
      }
    }
    return extra;
  };
  out.model = restore(dir, options);
  for (auto& [key, exp_avg, exp_avg_sq, step] : moments) {
    torch::optim::AdamParamState state;
    state.step(step.item<int64_t>()).exp_avg(exp_avg).exp_avg_sq(exp_avg_sq);
    out.optimizer.emplace_back(key, state);
  }
  return out;
}

void load_optimizer_state(const ResumedTraining& resumed, torch::nn::Module& model,
                          torch::optim::Adam& optimizer) {
  const auto parameters = model.named_parameters();
  for (const auto& [name, state] : resumed.optimizer) {
    const at::Tensor* p = parameters.find(name);
    if (p == nullptr) {
      throw StateError(absl::StrCat("load_optimizer_state: the model has no parameter ", name));
    }
    optimizer.state()[state_key(*p)] = std::make_unique<torch::optim::AdamParamState>(state);
  }
}

}  // namespace cli
}  // namespace mto
