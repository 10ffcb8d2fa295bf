#pragma once

#include <any>
#include <map>
#include <string>
#include <typeinfo>
#include <vector>

#include "opt/errors.h"

namespace mto {

// Extra arguments for a mode's convert that are C++ values, never saved: a calibration
// forward loop, a data loader, a communicator. Copying shares the stored values' copies.
// Not safe to modify from several threads.
//
//   ModeKwargs kwargs;
//   kwargs.set("forward_loop", ForwardLoop([&](torch::nn::Module& m) { ... }));
//   apply_mode(model, {{"quantize", "{}"}}, nullptr, std::nullopt, kwargs);
class ModeKwargs {
 public:
  // Stores `value` under `key`, replacing any earlier value.
  template <typename T>
  ModeKwargs& set(const std::string& key, T value) {
    values_[key] = std::move(value);
    return *this;
  }

  bool contains(const std::string& key) const { return values_.count(key) > 0; }

  // The value under `key`; throws ApplyModeError naming `key` if it is missing or not a `T`.
  template <typename T>
  const T& get(const std::string& key) const {
    auto it = values_.find(key);
    if (it == values_.end()) {
      throw ApplyModeError("missing mode argument '" + key + "'");
    }
    const T* value = std::any_cast<T>(&it->second);
    if (value == nullptr) {
      throw ApplyModeError("mode argument '" + key + "' has the wrong type (expected " +
                           typeid(T).name() + ")");
    }
    return *value;
  }

  // Keys in sorted order.
  std::vector<std::string> keys() const {
    std::vector<std::string> out;
    for (const auto& [key, value] : values_) out.push_back(key);
    return out;
  }

 private:
  std::map<std::string, std::any> values_;
};

}  // namespace mto
