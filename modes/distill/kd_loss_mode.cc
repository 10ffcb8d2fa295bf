// The distillation modes. "kd_loss" gives a student a frozen teacher (distillation_model.h)
// and records nothing in the saved state (Model Optimizer 0.40 and later: a checkpoint saved
// while distilling holds the student with its other modes, never the teacher); its export
// mode "export_student" takes the teacher away again. Neither can be restored: neither is
// ever saved.
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "modes/distill/distill.pb.h"
#include "distributed/communicator.h"
#include "modes/distill/distillation_model.h"
#include "opt/checkpoint.h"
#include "opt/errors.h"
#include "opt/model_like.h"
#include "opt/registry.h"

namespace mto {
namespace distill {
namespace {

constexpr char kConfigName[] = "config of mode 'kd_loss'";

// Whether `teacher` names a checkpoint directory, the same on every rank of `world` (one
// collective): a name with a '/' must be one, a plain name is one where it is a directory.
// A directory that some ranks see and others do not fails every rank, naming it.
bool names_checkpoint(const std::string& teacher, Communicator& world) {
  std::error_code error;
  const bool here = std::filesystem::is_directory(teacher, error);
  // Byte 0: some rank sees the directory; byte 1: some rank does not.
  std::string seen = {static_cast<char>(here), static_cast<char>(!here)};
  world.all_reduce(seen, ReduceOp::kMax);
  if (seen[0] && seen[1]) {
    throw ApplyModeError(absl::StrCat("kd_loss: the teacher checkpoint ", teacher, " is a directory on some of the ",
                                      world.world_size(), " ranks but not on all (rank ", world.rank(), ": ",
                                      here ? "present" : "missing", "); every rank must see it"));
  }
  if (!here && teacher.find('/') != std::string::npos) {
    throw ApplyModeError(absl::StrCat("kd_loss: the teacher checkpoint ", teacher, " does not exist"));
  }
  return here;
}

// The teacher the config or the context names, built or restored on this rank.
ModulePtr make_teacher(const KdLossConfig& config, const RuntimeContext& context) {
  if (const ModulePtr* teacher = context.find(kTeacher)) {
    if (!config.teacher().empty()) {
      throw ApplyModeError("kd_loss: the teacher is given twice (in the config and in the context)");
    }
    return *teacher;
  }
  const std::string& teacher = config.teacher();
  if (teacher.empty()) {
    throw ApplyModeError(
        "kd_loss: no teacher; set \"teacher\" to a checkpoint directory or a model-like, or pass "
        "distill::kTeacher in the context");
  }
  if (names_checkpoint(teacher, *context.mesh()->world())) {
    // On the student's ranks (the context's mesh), which may be fewer than the default
    // mesh's: restoring is collective over the ranks it names.
    RestoreOptions options;
    options.communicator = context.mesh()->world();
    try {
      return restore(teacher, options);
    } catch (const std::exception& e) {
      throw ApplyModeError(absl::StrCat("kd_loss: cannot restore the teacher from ", teacher, ": ", e.what()));
    }
  }
  const size_t colon = teacher.find(':');
  nlohmann::json args = nlohmann::json::object();
  if (colon != std::string::npos) {
    args = nlohmann::json::parse(teacher.substr(colon + 1), nullptr, /*allow_exceptions=*/false);
    if (args.is_discarded()) {
      throw ApplyModeError(absl::StrCat("kd_loss: the teacher's model-like arguments are not JSON: ", teacher));
    }
  }
  try {
    return ModelLike(teacher.substr(0, colon), args).build();
  } catch (const std::exception& e) {
    throw ApplyModeError(absl::StrCat("kd_loss: the teacher '", teacher,
                                      "' is neither a checkpoint directory nor a model-like: ", e.what()));
  }
}

class KdLossModeDescriptor : public ModeDescriptor {
 public:
  std::string name() const override { return "kd_loss"; }
  MessagePtr config_class() const override {
    auto config = std::make_unique<KdLossConfig>();
    config->set_temperature(1.0);
    config->set_kd_loss_weight(0.5);
    return config;
  }
  void validate_config(const Message& message) const override {
    const auto& config = message_as<KdLossConfig>(message, kConfigName);
    if (!(config.temperature() > 0)) {
      throw ConfigError(absl::StrCat("kd_loss: temperature must be positive, got ", config.temperature()));
    }
    if (!(config.kd_loss_weight() >= 0 && config.kd_loss_weight() <= 1)) {
      throw ConfigError(absl::StrCat("kd_loss: kd_loss_weight must be in [0, 1], got ", config.kd_loss_weight()));
    }
  }
  std::optional<std::string> export_mode() const override { return "export_student"; }
  bool save_mode_in_state() const override { return false; }

  ConvertResult convert(ModulePtr model, const Message& message, const RuntimeContext& context) const override {
    const auto& config = message_as<KdLossConfig>(message, kConfigName);
    if (find_distillation(*model)) throw ApplyModeError("kd_loss: the model is distilling already");
    const std::string name = config.teacher().empty() ? "of the context" : "'" + config.teacher() + "'";
    attach_distillation(*model, std::make_shared<DistillationHolder>(make_teacher(config, context), name,
                                                                     config.temperature(), config.kd_loss_weight()));
    return {model, metadata_class()};
  }

  ModulePtr restore(ModulePtr, const Message&, const Message&) const override {
    throw ApplyModeError("kd_loss cannot be restored: it is never saved (the checkpoint holds the student alone)");
  }
};

class ExportStudentModeDescriptor : public ModeDescriptor {
 public:
  std::string name() const override { return "export_student"; }
  MessagePtr config_class() const override { return std::make_unique<ExportStudentConfig>(); }
  bool is_export_mode() const override { return true; }
  bool save_mode_in_state() const override { return false; }

  ConvertResult convert(ModulePtr model, const Message&, const RuntimeContext&) const override {
    if (!find_distillation(*model)) {
      throw ApplyModeError("export_student: the model is not distilling (apply the mode 'kd_loss' first)");
    }
    detach_distillation(*model);
    return {model, metadata_class()};
  }

  ModulePtr restore(ModulePtr, const Message&, const Message&) const override {
    throw ApplyModeError("export_student cannot be restored: it is never saved");
  }
};

MTO_REGISTER_MODE(distill, KdLossModeDescriptor);
MTO_REGISTER_MODE(distill, ExportStudentModeDescriptor);

}  // namespace
}  // namespace distill
}  // namespace mto
