#include "opt/state_manager.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "opt/registry.h"
#include "opt/state_holder.h"

namespace mto {
namespace {

// The modules of `model` (with their names) that hold an initialized state.
std::vector<std::string> modules_with_state(const torch::nn::Module& model) {
  std::vector<std::string> names;
  if (auto holder = find_state_holder(model); holder && holder->state) names.push_back("");
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    if (auto holder = find_state_holder(*item.value()); holder && holder->state) {
      names.push_back(item.key());
    }
  }
  return names;
}

std::string what_config(const ModeDescriptor& mode) {
  return absl::StrCat("config of mode '", mode.name(), "'");
}

// Python's repr of a list of strings: ['a', 'b'].
std::string format_stack(const std::vector<std::string>& names) {
  std::vector<std::string> quoted;
  for (const auto& n : names) quoted.push_back(absl::StrCat("'", n, "'"));
  return absl::StrCat("[", absl::StrJoin(quoted, ", "), "]");
}

// The modes of `chain` (applied in that order) whose export mode is still pending, oldest
// first: each mode with an export mode pushes itself, each export mode pops one.
std::vector<const ModeDescriptor*> pending_exports(const std::vector<const ModeDescriptor*>& chain) {
  std::vector<const ModeDescriptor*> stack;
  for (const ModeDescriptor* applied : chain) {
    if (applied->is_export_mode()) {
      if (!stack.empty()) stack.pop_back();
    } else if (applied->export_mode()) {
      stack.push_back(applied);
    }
  }
  return stack;
}

std::vector<std::string> export_names(const std::vector<const ModeDescriptor*>& stack) {
  std::vector<std::string> names;
  for (const ModeDescriptor* mode : stack) names.push_back(*mode->export_mode());
  return names;
}

// Throws StateError unless `mode` may follow `chain`, the modes applied so far in order: the
// last one's next_modes, every one's next_prohibited_modes and the export stack they leave.
// The checks run in the Python original's order: an export mode against the export stack
// first, then the last mode, then the modes before it, then the mode on top of the stack.
void check_next_mode(const ModeDescriptor& mode, const std::vector<const ModeDescriptor*>& chain) {
  const std::string name = mode.name();
  const std::vector<const ModeDescriptor*> stack = pending_exports(chain);
  if (mode.is_export_mode() && (stack.empty() || stack.back()->export_mode() != name)) {
    throw StateError(absl::StrCat("Cannot add ", name, " according to the current export stack: ",
                                  format_stack(export_names(stack)), "."));
  }
  if (!chain.empty()) mode.assert_compatibility_as_next_mode_of(*chain.back());
  for (const ModeDescriptor* applied : chain) {
    auto prohibited = applied->next_prohibited_modes();
    if (prohibited && prohibited->count(name)) {
      throw StateError(absl::StrCat(applied->name(), " does not allow ", name, " to be its next mode."));
    }
  }
  if (!stack.empty()) mode.assert_compatibility_as_next_mode_of(*stack.back());
}

}  // namespace

ModeloptStateManager::ModeloptStateManager(std::shared_ptr<torch::nn::Module> model,
                                           bool init_state) {
  if (!model) {
    model = std::make_shared<torch::nn::Module>();
    init_state = true;
  }
  if (init_state) {
    if (is_converted(*model)) throw StateError("Model already has modelopt state!");
    attach_state_holder(*model)->state = std::make_shared<ModeloptStateData>();
  }
  if (!is_converted(*model, /*is_root=*/true)) {
    throw StateError("Model has no modelopt state: apply a mode first, or create the manager "
                     "with init_state.");
  }
  model_ = std::move(model);
  state_ = find_state_holder(*model_)->state;
}

bool ModeloptStateManager::is_converted(const torch::nn::Module& model, bool is_root) {
  std::vector<std::string> names = modules_with_state(model);
  if (names.size() > 1) throw StateError("Model has multiple modelopt states!");
  if (is_root && !names.empty() && !names[0].empty()) {
    throw StateError("Model has modelopt state but not the root!");
  }
  return !names.empty();
}

MessagePtr ModeloptStateManager::get_config_class(const std::string& mode,
                                                  const ConfigInput& config) {
  return get_config_class(*ModeRegistry::get_from_any(mode), config);
}

MessagePtr ModeloptStateManager::get_config_class(const ModeDescriptor& mode,
                                                  const ConfigInput& config) {
  MessagePtr out = mode.config_class();
  if (const std::string* json = config.json()) {
    mode.config_from_json(*json, out.get());
  } else if (const Message* message = config.message()) {
    out->CopyFrom(message_as_type(*message, *out, what_config(mode)));
  }
  mode.validate_config(*out);
  return out;
}

void ModeloptStateManager::transfer_state_dict(torch::nn::Module& model_from,
                                               torch::nn::Module& model_to) {
  auto from = find_state_holder(model_from);
  if (!from || !from->state) throw StateError("Model has no modelopt state to transfer!");
  if (is_converted(model_to)) throw StateError("Model already has modelopt state!");
  auto to = attach_state_holder(model_to);
  to->state = std::move(from->state);
  if (!to->model_like) to->model_like = from->model_like;
  detach_state_holder(model_from);
}

bool ModeloptStateManager::has_state() const { return !state_->records.empty(); }

void ModeloptStateManager::check_mode(const std::string& mode) const {
  check_mode(*ModeRegistry::get_from_any(mode));
}

void ModeloptStateManager::check_mode(const ModeDescriptor& mode) const {
  const std::vector<const ModeDescriptor*> chain = applied_modes();
  check_next_mode(mode, chain);
  // A saved mode is checked again against the chain that restoring replays, which lacks the
  // modes that are never saved (kd_loss): a chain allowed only behind one of them would save
  // a checkpoint that cannot be restored.
  std::vector<const ModeDescriptor*> saved;
  std::vector<std::string> unsaved;
  for (const ModeDescriptor* applied : chain) {
    if (applied->save_mode_in_state()) {
      saved.push_back(applied);
    } else {
      unsaved.push_back(applied->name());
    }
  }
  if (unsaved.empty() || !mode.save_mode_in_state()) return;
  try {
    check_next_mode(mode, saved);
  } catch (const StateError& e) {
    throw StateError(absl::StrCat(e.what(), " (", absl::StrJoin(unsaved, ", "),
                                  " is never saved, so a restore would replay the chain without it)"));
  }
}

void ModeloptStateManager::add_mode(const std::string& mode, const Message& config,
                                    const Message& metadata) {
  add_mode(ModeRegistry::get_from_any(mode), config, metadata);
}

void ModeloptStateManager::add_mode(std::shared_ptr<const ModeDescriptor> mode,
                                    const Message& config, const Message& metadata) {
  check_mode(*mode);
  ModeRecord record;
  record.config = mode->config_class();
  record.config->CopyFrom(message_as_type(config, *record.config, what_config(*mode)));
  mode->validate_config(*record.config);
  record.metadata = mode->metadata_class();
  record.metadata->CopyFrom(message_as_type(
      metadata, *record.metadata, absl::StrCat("metadata of mode '", mode->name(), "'")));
  record.mode = std::move(mode);
  state_->records.push_back(std::move(record));
}

std::shared_ptr<const ModeDescriptor> ModeloptStateManager::last_mode() const {
  return state_->records.empty() ? nullptr : state_->records.back().mode;
}

std::vector<ModeloptStateManager::ModeWithState> ModeloptStateManager::modes_with_states() const {
  std::vector<ModeWithState> out;
  for (auto& record : state_->records) {
    out.push_back(ModeWithState{record.mode, *record.config, *record.metadata});
  }
  return out;
}

ModeloptStateDict ModeloptStateManager::state_dict() const {
  ModeloptStateDict out;
  for (const auto& record : state_->records) {
    if (!record.mode->save_mode_in_state()) continue;
    ModeEntry* entry = out.Add();
    entry->set_mode(record.mode->name());
    *entry->mutable_config() = pack_message(*record.config);
    *entry->mutable_metadata() = pack_message(*record.metadata);
  }
  return out;
}

void ModeloptStateManager::load_state_dict(const ModeloptStateDict& state_dict) {
  if (has_state()) {
    throw StateError("Cannot load a modelopt state into a model that already has one.");
  }
  for (const ModeEntry& entry : state_dict) {
    auto mode = ModeRegistry::get_from_any(entry.mode());
    MessagePtr config = unpack_message(entry.config(), *mode->config_class(), what_config(*mode));
    MessagePtr metadata = unpack_message(entry.metadata(), *mode->metadata_class(),
                                         absl::StrCat("metadata of mode '", mode->name(), "'"));
    add_mode(std::move(mode), *config, *metadata);
  }
}

void ModeloptStateManager::update_last_state_before_new_mode(torch::nn::Module& model) {
  if (state_->records.empty()) return;
  ModeRecord& last = state_->records.back();
  last.mode->update_for_new_mode(model, *last.config, *last.metadata);
}

void ModeloptStateManager::update_last_state_before_save(torch::nn::Module& model) {
  // The last mode the saved state records: a mode left out of it (kd_loss) must not hide
  // the one before it, whose metadata may have changed since (a subnet chosen while
  // distilling).
  for (auto it = state_->records.rbegin(); it != state_->records.rend(); ++it) {
    if (!it->mode->save_mode_in_state()) continue;
    it->mode->update_for_save(model, *it->config, *it->metadata);
    return;
  }
}

std::vector<std::string> ModeloptStateManager::export_stack() const {
  return export_names(pending_exports(applied_modes()));
}

std::vector<const ModeDescriptor*> ModeloptStateManager::applied_modes() const {
  std::vector<const ModeDescriptor*> chain;
  for (const auto& record : state_->records) chain.push_back(record.mode.get());
  return chain;
}

}  // namespace mto
