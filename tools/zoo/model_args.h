#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mto {
namespace zoo {

// Readers for the JSON arguments of a zoo model's factory. Each throws mto::ConfigError
// naming the model and the argument when the JSON has the wrong shape.

// Checks that `args` is a JSON object whose keys are all in `known`.
void check_arg_names(const std::string& model, const nlohmann::json& args,
                     std::initializer_list<const char*> known);

// The integer args[key], or `fallback` when the key is absent.
int64_t int_arg(const std::string& model, const nlohmann::json& args, const char* key,
                int64_t fallback);

// The boolean args[key], or `fallback` when the key is absent.
bool bool_arg(const std::string& model, const nlohmann::json& args, const char* key, bool fallback);

// The array of integers args[key], or `fallback` when the key is absent.
std::vector<int64_t> ints_arg(const std::string& model, const nlohmann::json& args, const char* key,
                              std::vector<int64_t> fallback);

// Checks that `value`, the argument `key` of `model`, is positive.
void check_positive(const std::string& model, const char* key, int64_t value);

}  // namespace zoo
}  // namespace mto
