#include "serialization/safetensors_set.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "serialization/checkpoint_error.h"

namespace mto {
namespace {

namespace fs = std::filesystem;

constexpr char kIndexName[] = "model.safetensors.index.json";
// An index is a few bytes per tensor name; anything larger is not one.
constexpr uintmax_t kMaxIndexBytes = 64 << 20;

[[noreturn]] void fail(const std::string& what, const std::string& problem) {
  throw CheckpointError(absl::StrCat(what, ": ", problem));
}

// tensor -> file (a name inside `dir`), from the index.
std::map<std::string, std::string> read_index(const std::string& dir) {
  const std::string path = (fs::path(dir) / kIndexName).string();
  std::error_code error;
  const uintmax_t size = fs::file_size(path, error);
  if (error) fail(path, "cannot read: " + error.message());
  if (size > kMaxIndexBytes) fail(path, absl::StrCat("is ", size, " bytes, too large for an index"));
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception& e) {
    fail(path, absl::StrCat("is not valid JSON: ", e.what()));
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    fail(path, "has no \"weight_map\" object");
  }
  std::map<std::string, std::string> out;
  for (const auto& [tensor, file] : index["weight_map"].items()) {
    if (!file.is_string()) fail(path, absl::StrCat("weight_map['", tensor, "'] is not a file name"));
    const std::string name = file.get<std::string>();
    // A file name, not a path: nothing outside the directory is read.
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
      fail(path, absl::StrCat("weight_map['", tensor, "'] names '", name, "', which is not a file of ", dir));
    }
    out[tensor] = name;
  }
  if (out.empty()) fail(path, "has an empty \"weight_map\": it lists no tensor");
  return out;
}

// The safetensors files of `dir` when it has no index: exactly one.
std::string single_file(const std::string& dir) {
  std::vector<std::string> found;
  std::error_code error;
  for (fs::directory_iterator it(dir, error), end; !error && it != end; it.increment(error)) {
    if (it->is_regular_file() && it->path().extension() == ".safetensors") found.push_back(it->path().filename());
  }
  if (error) fail(dir, "cannot list the directory: " + error.message());
  std::sort(found.begin(), found.end());
  if (found.empty()) fail(dir, "holds no .safetensors file");
  if (found.size() > 1) {
    fail(dir, absl::StrCat("holds ", found.size(), " .safetensors files (", absl::StrJoin(found, ", "),
                           ") and no ", kIndexName, " saying which tensor is where"));
  }
  return found[0];
}

}  // namespace

std::map<std::string, SafetensorsLocation> read_safetensors_set(const std::string& dir) {
  if (!fs::exists(dir)) fail(dir, "does not exist");
  if (!fs::is_directory(dir)) fail(dir, "is not a directory");
  const bool indexed = fs::exists(fs::path(dir) / kIndexName);
  std::map<std::string, std::string> weight_map;
  std::set<std::string> files;
  if (indexed) {
    weight_map = read_index(dir);
    for (const auto& [tensor, file] : weight_map) files.insert(file);
  } else {
    files.insert(single_file(dir));
  }
  std::map<std::string, SafetensorsLocation> out;
  for (const std::string& name : files) {
    const std::string path = (fs::path(dir) / name).string();
    if (!fs::is_regular_file(path)) {
      fail((fs::path(dir) / kIndexName).string(), absl::StrCat("lists ", name, ", which does not exist"));
    }
    const SafetensorsHeader header = read_safetensors_header(path);
    for (const SafetensorsEntry& entry : header.entries) {
      auto [it, inserted] = out.emplace(entry.name, SafetensorsLocation{path, entry, header.data_begin});
      if (!inserted) {
        fail(dir, absl::StrCat("tensor ", entry.name, " is in both ", it->second.file, " and ", path));
      }
      if (indexed) {
        auto listed = weight_map.find(entry.name);
        if (listed == weight_map.end()) {
          fail(path, absl::StrCat("holds ", entry.name, ", which ", kIndexName, " does not list"));
        }
        if (listed->second != name) {
          fail(path, absl::StrCat("holds ", entry.name, ", which ", kIndexName, " puts in ", listed->second));
        }
      }
    }
  }
  for (const auto& [tensor, file] : weight_map) {
    if (!out.count(tensor)) {
      fail((fs::path(dir) / file).string(), absl::StrCat("does not hold ", tensor, ", which ", kIndexName,
                                                         " puts there"));
    }
  }
  return out;
}

}  // namespace mto
