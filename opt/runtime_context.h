#pragma once

#include <any>
#include <map>
#include <memory>
#include <string>

#include "distributed/mesh.h"
#include "opt/errors.h"

namespace mto {

// The name and the value type of one entry of a RuntimeContext, defined once beside the
// type it holds (quantization::kForwardLoop, nas::kDummyForward), so that a misspelled or
// mistyped entry is a compile error, not a silent default.
template <typename T>
struct ContextKey {
  using Value = T;
  const char* name;
};

// What modes receive at run time beside their saved config, and never save: the mesh the
// model is split over (its data-parallel group shares calibration data) and typed C++ values
// such as a calibration forward loop or a tracing forward pass. apply_mode passes it to every
// convert. Copying shares the stored values' copies. Not safe to modify from several threads.
//
//   mto::RuntimeContext context;
//   context.set(mto::quantization::kForwardLoop, [&](torch::nn::Module& m) { ... });
//   context.set_mesh(mesh);  // else default_mesh()
//   mto::apply_mode(model, {{"quantize", "{}"}}, nullptr, std::nullopt, context);
class RuntimeContext {
 public:
  // Stores `value` (anything convertible to the key's type, e.g. a lambda for a
  // std::function) under `key`, replacing any earlier value.
  template <typename T>
  RuntimeContext& set(const ContextKey<T>& key, typename ContextKey<T>::Value value) {
    values_[key.name] = std::move(value);
    return *this;
  }

  // The value under `key`, or nullptr when none was set.
  template <typename T>
  const T* find(const ContextKey<T>& key) const {
    auto it = values_.find(key.name);
    return it == values_.end() ? nullptr : std::any_cast<T>(&it->second);
  }

  template <typename T>
  bool contains(const ContextKey<T>& key) const {
    return find(key) != nullptr;
  }

  // The value under `key`; throws ApplyModeError naming it when none was set.
  template <typename T>
  const T& get(const ContextKey<T>& key) const {
    const T* value = find(key);
    if (value == nullptr) throw ApplyModeError(std::string("missing mode argument '") + key.name + "'");
    return *value;
  }

  // The mesh of the model: the one set, else default_mesh().
  RuntimeContext& set_mesh(std::shared_ptr<Mesh> mesh) {
    mesh_ = std::move(mesh);
    return *this;
  }
  std::shared_ptr<Mesh> mesh() const { return mesh_ ? mesh_ : default_mesh(); }

  // The ranks that share the calibration data, each with its own part: the one set (e.g. a
  // sub-group of the world for a model that is not split), else the mesh's data-parallel
  // group.
  RuntimeContext& set_data_parallel_group(std::shared_ptr<Communicator> group) {
    data_parallel_group_ = std::move(group);
    return *this;
  }
  std::shared_ptr<Communicator> data_parallel_group() const {
    return data_parallel_group_ ? data_parallel_group_ : mesh()->dp();
  }

 private:
  std::shared_ptr<Mesh> mesh_;
  std::shared_ptr<Communicator> data_parallel_group_;
  std::map<std::string, std::any> values_;
};

}  // namespace mto
