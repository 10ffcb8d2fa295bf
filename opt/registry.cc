#include "opt/registry.h"

#include <cstdint>
#include <map>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"

namespace mto {
namespace {

using ModeMap = std::map<std::string, std::shared_ptr<const ModeDescriptor>>;

// Every registry and its modes, behind one lock. Never destroyed, so that registration and
// lookups during static initialization and destruction stay valid.
struct Registries {
  absl::Mutex mu;
  std::map<std::string, std::unique_ptr<ModeRegistry>> registries ABSL_GUARDED_BY(mu);
  std::map<std::string, ModeMap> modes ABSL_GUARDED_BY(mu);
  // Bumped on every change; relations were last found valid at `checked_generation`.
  uint64_t generation ABSL_GUARDED_BY(mu) = 1;
  uint64_t checked_generation ABSL_GUARDED_BY(mu) = 0;
};

Registries& registries() {
  static Registries* r = new Registries;
  return *r;
}

std::string all_mode_names(const std::map<std::string, ModeMap>& modes) {
  std::set<std::string> names;
  for (const auto& [registry, map] : modes) {
    for (const auto& [name, mode] : map) names.insert(name);
  }
  return names.empty() ? "none" : absl::StrJoin(names, ", ");
}

// Runs check_relations if the registries changed since it last passed.
void ensure_relations_checked() {
  Registries& r = registries();
  uint64_t generation;
  {
    absl::MutexLock lock(&r.mu);
    if (r.checked_generation == r.generation) return;
    generation = r.generation;
  }
  ModeRegistry::check_relations();
  absl::MutexLock lock(&r.mu);
  if (r.generation == generation) r.checked_generation = generation;
}

}  // namespace

ModeRegistry& ModeRegistry::get_registry(const std::string& name) {
  Registries& r = registries();
  absl::MutexLock lock(&r.mu);
  auto& slot = r.registries[name];
  if (!slot) {
    slot = std::make_unique<ModeRegistry>(name);
    r.modes[name];
  }
  return *slot;
}

std::vector<std::string> ModeRegistry::registry_names() {
  Registries& r = registries();
  absl::MutexLock lock(&r.mu);
  std::vector<std::string> out;
  for (const auto& [name, registry] : r.registries) out.push_back(name);
  return out;
}

void ModeRegistry::register_mode(std::shared_ptr<const ModeDescriptor> mode) {
  const std::string mode_name = mode->name();
  Registries& r = registries();
  absl::MutexLock lock(&r.mu);
  auto [it, inserted] = r.modes[name_].emplace(mode_name, std::move(mode));
  if (!inserted) {
    throw ModeError(absl::StrCat("Mode '", mode_name, "' is already registered in registry '",
                                 name_, "'."));
  }
  ++r.generation;
}

void ModeRegistry::remove_mode(const std::string& mode) {
  Registries& r = registries();
  absl::MutexLock lock(&r.mu);
  if (r.modes[name_].erase(mode) == 0) {
    throw ModeError(absl::StrCat("Cannot remove mode '", mode, "': registry '", name_,
                                 "' does not hold it."));
  }
  ++r.generation;
}

bool ModeRegistry::contains(const std::string& mode) const {
  Registries& r = registries();
  absl::MutexLock lock(&r.mu);
  return r.modes[name_].count(mode) > 0;
}

std::shared_ptr<const ModeDescriptor> ModeRegistry::get(const std::string& mode) const {
  ensure_relations_checked();
  Registries& r = registries();
  absl::MutexLock lock(&r.mu);
  const ModeMap& map = r.modes[name_];
  auto it = map.find(mode);
  if (it == map.end()) {
    std::vector<std::string> known;
    for (const auto& [name, m] : map) known.push_back(name);
    throw ModeError(absl::StrCat("Mode '", mode, "' not found in registry '", name_,
                                 "'. Its modes: ",
                                 known.empty() ? "none" : absl::StrJoin(known, ", "), "."));
  }
  return it->second;
}

std::vector<std::string> ModeRegistry::mode_names() const {
  Registries& r = registries();
  absl::MutexLock lock(&r.mu);
  std::vector<std::string> out;
  for (const auto& [name, mode] : r.modes[name_]) out.push_back(name);
  return out;
}

std::shared_ptr<const ModeDescriptor> ModeRegistry::get_from_any(const std::string& mode) {
  ensure_relations_checked();
  Registries& r = registries();
  absl::MutexLock lock(&r.mu);
  std::shared_ptr<const ModeDescriptor> found;
  std::string found_in;
  for (const auto& [registry, map] : r.modes) {
    auto it = map.find(mode);
    if (it == map.end()) continue;
    if (found && found != it->second) {
      throw ModeError(absl::StrCat("Mode '", mode, "' is ambiguous: registries '", found_in,
                                   "' and '", registry,
                                   "' hold different modes of that name; pass a registry."));
    }
    found = it->second;
    found_in = registry;
  }
  if (!found) {
    throw ModeError(absl::StrCat("Mode '", mode, "' not found in any registry. Known modes: ",
                                 all_mode_names(r.modes), "."));
  }
  return found;
}

bool ModeRegistry::contains_in_any(const std::string& mode) {
  Registries& r = registries();
  absl::MutexLock lock(&r.mu);
  for (const auto& [registry, map] : r.modes) {
    if (map.count(mode)) return true;
  }
  return false;
}

ModeSet ModeRegistry::registered(std::initializer_list<const char*> modes) {
  ModeSet out;
  for (const char* mode : modes) {
    if (contains_in_any(mode)) out.insert(mode);
  }
  return out;
}

void ModeRegistry::check_relations() {
  std::set<std::string> names;
  std::vector<std::shared_ptr<const ModeDescriptor>> modes;
  {
    Registries& r = registries();
    absl::MutexLock lock(&r.mu);
    for (const auto& [registry, map] : r.modes) {
      for (const auto& [name, mode] : map) {
        names.insert(name);
        modes.push_back(mode);
      }
    }
  }
  auto check = [&](const ModeDescriptor& mode, const std::string& relation,
                   const std::string& other) {
    if (names.count(other) == 0) {
      throw ModeError(absl::StrCat("Mode '", mode.name(), "' names '", other, "' in its ",
                                   relation, ", but no registry holds a mode of that name."));
    }
  };
  for (const auto& mode : modes) {
    if (auto next = mode->next_modes()) {
      for (const auto& other : *next) check(*mode, "next_modes", other);
    }
    if (auto prohibited = mode->next_prohibited_modes()) {
      for (const auto& other : *prohibited) check(*mode, "next_prohibited_modes", other);
    }
    if (auto exported = mode->export_mode()) check(*mode, "export_mode", *exported);
  }
}

}  // namespace mto
