#pragma once

#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "opt/mode.h"

namespace mto {

// A named set of modes ("quantization", "nas", "sparsity", ...). Registries are created on
// first use and live for the whole program. One mode may sit in several registries; a name
// may appear once per registry. All methods are safe to call from several threads.
//
// Register a mode at static-initialization time with one line in its .cc file:
//   MTO_REGISTER_MODE(quantization, QuantizeModeDescriptor);
// (and link its library with alwayslink = True).
class ModeRegistry {
 public:
  // The registry called `name`, created empty on first use.
  static ModeRegistry& get_registry(const std::string& name);

  // Names of all registries, sorted.
  static std::vector<std::string> registry_names();

  const std::string& name() const { return name_; }

  // Adds `mode`. Throws ModeError if this registry already holds a mode of that name.
  void register_mode(std::shared_ptr<const ModeDescriptor> mode);

  // Removes the mode called `mode`; throws ModeError if this registry does not hold it.
  void remove_mode(const std::string& mode);

  // Whether this registry holds a mode called `mode`.
  bool contains(const std::string& mode) const;

  // The mode called `mode` in this registry. Throws ModeError if there is none, or if any
  // registered mode names an unregistered mode in its relation sets (see check_relations).
  std::shared_ptr<const ModeDescriptor> get(const std::string& mode) const;

  // Names of this registry's modes, sorted.
  std::vector<std::string> mode_names() const;

  // The mode called `mode` in whichever registry holds it. Throws ModeError if none does, or
  // if two registries hold different modes of that name (ambiguous: pass a registry).
  static std::shared_ptr<const ModeDescriptor> get_from_any(const std::string& mode);

  // Whether any registry holds a mode called `mode`.
  static bool contains_in_any(const std::string& mode);

  // The modes of `modes` that some registry holds, for relation sets that name modes which
  // may not be linked into the program (e.g. quantize prohibits the sparsity modes).
  static ModeSet registered(std::initializer_list<const char*> modes);

  // Throws ModeError naming the mode and the relation if a registered mode's next_modes,
  // next_prohibited_modes or export_mode names a mode that no registry holds. Lookups run
  // this check once after every change to the registries.
  static void check_relations();

  explicit ModeRegistry(std::string name) : name_(std::move(name)) {}

 private:
  std::string name_;
};

namespace internal {
// Registers the one `Descriptor` of the program in the registry `registry` at
// static-initialization time: registered in several registries, it is one mode, not an
// ambiguous pair.
template <typename Descriptor>
struct ModeRegistration {
  explicit ModeRegistration(const char* registry) {
    static const std::shared_ptr<const Descriptor> instance = std::make_shared<const Descriptor>();
    ModeRegistry::get_registry(registry).register_mode(instance);
  }
};
}  // namespace internal

#define MTO_REGISTRATION_CONCAT_(a, b) a##b
#define MTO_REGISTRATION_NAME_(a, b) MTO_REGISTRATION_CONCAT_(a, b)

// Registers a default-constructed `descriptor_type` in the registry named `registry`.
#define MTO_REGISTER_MODE(registry, descriptor_type)                                   \
  static const ::mto::internal::ModeRegistration<descriptor_type>                       \
      MTO_REGISTRATION_NAME_(mto_mode_registration_, __COUNTER__)(#registry)

}  // namespace mto
