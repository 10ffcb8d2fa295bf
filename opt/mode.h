#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include <torch/nn/module.h>

#include "opt/config.h"
#include "opt/runtime_context.h"

namespace mto {

// A model: the root module of a LibTorch module tree.
using ModulePtr = std::shared_ptr<torch::nn::Module>;

// A set of mode names, sorted so that messages print it the same way every time.
using ModeSet = std::set<std::string>;

class Searcher;
// Makes a new searcher for a mode's search_algorithm.
using SearcherFactory = std::function<std::unique_ptr<Searcher>()>;

// What a mode's convert returns: the converted model (usually the same module, modified in
// place) and the metadata its restore needs.
struct ConvertResult {
  ModulePtr model;
  MessagePtr metadata;
};

// Describes a mode: one step of model optimization (prepare for pruning, quantize,
// calibrate, export, ...). A mode is recorded in the model's modelopt state with its config
// and metadata, so the same modifications can be replayed on an unmodified model.
//
// Subclass it, give name, config_class, convert and restore, override the relations that
// apply, and register it with MTO_REGISTER_MODE. Descriptors are immutable after
// registration and safe to share between threads.
class ModeDescriptor {
 public:
  virtual ~ModeDescriptor() = default;

  // The mode's unique name, e.g. "quantize".
  virtual std::string name() const = 0;

  // A new config message of the mode's config type holding the defaults.
  virtual MessagePtr config_class() const = 0;

  // A new, empty metadata message of the type convert returns. Defaults to
  // google.protobuf.Struct, a free-form dictionary like the Python original's metadata.
  virtual MessagePtr metadata_class() const;

  // Checks values that the config type alone cannot (ranges, combinations); throws
  // ConfigError naming the field. Called on every config before convert and on restore.
  virtual void validate_config(const Message& config) const;

  // Overrides `config` (holding the defaults) with the caller's JSON. The default applies
  // merge_json_into_message; modes with ordered or free-form configs parse their own form.
  virtual void config_from_json(std::string_view json, Message* config) const;

  // The config as JSON, in the form config_from_json accepts.
  virtual std::string config_to_json(const Message& config) const;

  // The mode's entrypoint for converting `model`. `config` has the mode's config type and
  // passed validate_config; `context` holds the mesh and the C++ values (forward loops,
  // tracing passes) the mode needs at run time, never saved.
  // Returns the converted model and the metadata restore needs. Throws ApplyModeError when
  // the conversion fails, so that callers can fall back.
  virtual ConvertResult convert(ModulePtr model, const Message& config,
                                const RuntimeContext& context) const = 0;

  // The mode's entrypoint for restoring: modifies the unmodified `model` exactly as convert
  // did, using the recorded `config` and `metadata`, without data or randomness. Returns the
  // restored model. Throws ApplyModeError when the model does not fit the metadata.
  virtual ModulePtr restore(ModulePtr model, const Message& config,
                            const Message& metadata) const = 0;

  // The mode that exports this mode's result (e.g. "export_nas" after "fastnas"); nullopt
  // when there is none.
  virtual std::optional<std::string> export_mode() const { return std::nullopt; }

  // Whether this mode is the export mode of another.
  virtual bool is_export_mode() const { return false; }
  // Whether the saved modelopt state records this mode. Modes whose result is not part of
  // the model (the distillation teacher) are left out: a model saved while one is applied
  // restores without it.
  virtual bool save_mode_in_state() const { return true; }

  // Modes that may immediately follow this one: nullopt means any mode, an empty set means
  // none.
  virtual std::optional<ModeSet> next_modes() const { return std::nullopt; }

  // Modes that must never be applied after this one; nullopt skips the check.
  virtual std::optional<ModeSet> next_prohibited_modes() const { return std::nullopt; }

  // Whether convert must receive the model-like (a ModelLikeModule, not yet built) instead
  // of a built model.
  virtual bool require_model_like() const { return false; }

  // The search algorithm for this mode; empty when the mode has none.
  virtual SearcherFactory search_algorithm() const { return nullptr; }

  // Updates this mode's config and metadata in place before another mode is applied after
  // it. Does nothing by default.
  virtual void update_for_new_mode(torch::nn::Module& model, Message& config,
                                   Message& metadata) const;

  // Updates this mode's config and metadata in place before the state is saved. Does
  // nothing by default.
  virtual void update_for_save(torch::nn::Module& model, Message& config,
                               Message& metadata) const;

  // State-dict keys whose tensors hold the codes of a type LibTorch lacks, with the
  // safetensors dtype checkpoints store them as ("fc1.weight" -> "F8_E4M3" for FP8 E4M3
  // codes in a uint8 tensor). save records that dtype and restore expects it; each key must
  // name a tensor whose type holds the dtype (dtype_holds in serialization/safetensors.h).
  // Empty by default.
  virtual std::map<std::string, std::string> stored_dtypes(const Message& config,
                                                           const Message& metadata) const;

  // Throws StateError unless this mode may follow `other`: it must be in other's
  // next_modes (when set) and not in other's next_prohibited_modes.
  void assert_compatibility_as_next_mode_of(const ModeDescriptor& other) const;
  // As above, with `other` looked up in every registry.
  void assert_compatibility_as_next_mode_of(const std::string& other) const;
};

// "{'a', 'b'}" for a set and "set()" for an empty one, as the Python original prints them.
std::string format_mode_set(const ModeSet& modes);

}  // namespace mto
