#include "tools/zoo/model_args.h"

#include "opt/errors.h"

namespace mto {
namespace zoo {
namespace {

std::string where(const std::string& model, const char* key) {
  return "argument '" + std::string(key) + "' of model '" + model + "'";
}

}  // namespace

void check_arg_names(const std::string& model, const nlohmann::json& args,
                     std::initializer_list<const char*> known) {
  if (!args.is_object()) {
    throw ConfigError("arguments of model '" + model + "' must be a JSON object, got " +
                      args.dump());
  }
  for (const auto& item : args.items()) {
    bool found = false;
    std::string names;
    for (const char* name : known) {
      found = found || item.key() == name;
      names += names.empty() ? name : std::string(", ") + name;
    }
    if (!found) {
      throw ConfigError("unknown argument '" + item.key() + "' of model '" + model +
                        "'; known: " + names);
    }
  }
}

int64_t int_arg(const std::string& model, const nlohmann::json& args, const char* key,
                int64_t fallback) {
  const auto it = args.find(key);
  if (it == args.end()) return fallback;
  if (!it->is_number_integer()) {
    throw ConfigError(where(model, key) + " must be an integer, got " + it->dump());
  }
  return it->get<int64_t>();
}

bool bool_arg(const std::string& model, const nlohmann::json& args, const char* key, bool fallback) {
  const auto it = args.find(key);
  if (it == args.end()) return fallback;
  if (!it->is_boolean()) {
    throw ConfigError(where(model, key) + " must be true or false, got " + it->dump());
  }
  return it->get<bool>();
}

std::vector<int64_t> ints_arg(const std::string& model, const nlohmann::json& args, const char* key,
                              std::vector<int64_t> fallback) {
  const auto it = args.find(key);
  if (it == args.end()) return fallback;
  bool integers = it->is_array();
  for (const auto& value : *it) integers = integers && value.is_number_integer();
  if (!integers) {
    throw ConfigError(where(model, key) + " must be an array of integers, got " + it->dump());
  }
  return it->get<std::vector<int64_t>>();
}

void check_positive(const std::string& model, const char* key, int64_t value) {
  if (value <= 0) {
    throw ConfigError(where(model, key) + " must be positive, got " + std::to_string(value));
  }
}

}  // namespace zoo
}  // namespace mto
