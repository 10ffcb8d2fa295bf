#pragma once

#include <memory>
#include <string>
#include <vector>

#include <google/protobuf/repeated_field.h>
#include <torch/nn/module.h>

#include "opt/config.h"
#include "opt/mode.h"
#include "serialization/modelopt_state.pb.h"

namespace mto {

struct ModeloptStateData;

// The modelopt state as a list of entries, oldest first.
using ModeloptStateDict = google::protobuf::RepeatedPtrField<ModeEntry>;

// Records the modes applied to a model, with their configs and metadata, on the model's
// root module, and checks every new mode against the chain so far. Not safe to share
// between threads; the state it manages belongs to the model.
class ModeloptStateManager {
 public:
  // One recorded mode; config and metadata refer into the state and may be modified.
  struct ModeWithState {
    std::shared_ptr<const ModeDescriptor> mode;
    Message& config;
    Message& metadata;
  };

  // Manages the state stored on `model`. With `init_state`, creates an empty state first;
  // this throws StateError "Model already has modelopt state!" if `model` is converted.
  // Without it, `model` must hold a state at its root. With no model, manages a new empty
  // state of its own (what an unconverted model would have).
  explicit ModeloptStateManager(std::shared_ptr<torch::nn::Module> model = nullptr,
                                bool init_state = false);

  // Whether `model` (or, unless `is_root`, any submodule) holds a modelopt state. Throws
  // StateError "Model has multiple modelopt states!" when several modules hold one, and
  // "Model has modelopt state but not the root!" when `is_root` is set and a submodule
  // holds it.
  static bool is_converted(const torch::nn::Module& model, bool is_root = false);

  // The config of `mode` (looked up in every registry) built from `config`: its defaults,
  // overridden by JSON, or a copied message of its type. Validated with the mode's
  // validate_config. Throws ConfigError naming the mode and the field.
  static MessagePtr get_config_class(const std::string& mode, const ConfigInput& config);
  static MessagePtr get_config_class(const ModeDescriptor& mode, const ConfigInput& config);

  // Moves the state (the same instance) of `model_from` onto `model_to`, which must not be
  // converted. Throws StateError if `model_from` has no state.
  static void transfer_state_dict(torch::nn::Module& model_from, torch::nn::Module& model_to);

  // Whether at least one mode is recorded.
  bool has_state() const;

  // Throws StateError unless `mode` may be added now: it must be allowed by the last mode's
  // next_modes, by every earlier mode's next_prohibited_modes, and by the export stack; a
  // mode that is saved also by the chain a restore replays, without the unsaved modes.
  void check_mode(const std::string& mode) const;
  void check_mode(const ModeDescriptor& mode) const;

  // Checks `mode` and appends it with copies of `config` and `metadata`, which must have
  // the mode's config and metadata types and pass its validate_config (else ConfigError).
  // Updates the export stack.
  void add_mode(const std::string& mode, const Message& config, const Message& metadata);
  void add_mode(std::shared_ptr<const ModeDescriptor> mode, const Message& config,
                const Message& metadata);

  // The last recorded mode, or nullptr when there is none.
  std::shared_ptr<const ModeDescriptor> last_mode() const;

  // Every recorded mode with its config and metadata, oldest first.
  std::vector<ModeWithState> modes_with_states() const;

  // The recorded modes that are saved (save_mode_in_state) as protobuf entries (config and
  // metadata packed deterministically).
  ModeloptStateDict state_dict() const;

  // Replays `state_dict` into this empty state: looks up every mode, unpacks and validates
  // its config, and adds it with the same checks as add_mode. Throws StateError if a state
  // is already recorded, ModeError for an unknown mode, ConfigError for a bad config.
  void load_state_dict(const ModeloptStateDict& state_dict);

  // Lets the last mode update its config and metadata before a new mode is added.
  void update_last_state_before_new_mode(torch::nn::Module& model);

  // Lets the last mode that the saved state records (save_mode_in_state) update its config
  // and metadata before the state is saved.
  void update_last_state_before_save(torch::nn::Module& model);

  // Names of the modes whose export mode is pending, oldest first.
  std::vector<std::string> export_stack() const;

 private:
  // The recorded modes, oldest first.
  std::vector<const ModeDescriptor*> applied_modes() const;

  std::shared_ptr<torch::nn::Module> model_;
  std::shared_ptr<ModeloptStateData> state_;
};

}  // namespace mto
