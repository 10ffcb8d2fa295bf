#pragma once

#include <stdexcept>
#include <string>

namespace mto {

// Thrown by a mode's convert or restore when it cannot modify the model. Callers of
// apply_mode may catch it to fall back to another mode.
class ApplyModeError : public std::runtime_error {
 public:
  explicit ApplyModeError(const std::string& message) : std::runtime_error(message) {}
};

// A mode's config is not valid: not JSON, an unknown field, a wrong type, or a value out of
// range. The message names the mode and the field.
class ConfigError : public std::invalid_argument {
 public:
  explicit ConfigError(const std::string& message) : std::invalid_argument(message) {}
};

// A mode registry is used wrongly: an unknown, duplicate or ambiguous mode name, or a
// relation set (next, prohibited, export) naming a mode that no registry holds.
class ModeError : public std::invalid_argument {
 public:
  explicit ModeError(const std::string& message) : std::invalid_argument(message) {}
};

// The modelopt state forbids the operation: a mode chain that the modes' relations forbid,
// a model with several states, or state where none may be. Corresponds to the assertions of
// the Python original, with the same texts.
class StateError : public std::logic_error {
 public:
  explicit StateError(const std::string& message) : std::logic_error(message) {}
};

}  // namespace mto
