// Fuzzes read_safetensors_set, the reader of plain safetensors directories that `mto import`
// and load_safetensors take from other tools, with a directory of an index and one or two
// shards. The input is the index text, then each shard's bytes, separated by kSeparator (an
// empty index part means no index). Every input must give tensors that lie inside their
// files, each in the file the index names, or a CheckpointError naming the directory or file.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "serialization/checkpoint_error.h"
#include "serialization/safetensors_set.h"
#include "tests/fuzz/fuzz_input.h"

namespace {

constexpr std::string_view kSeparator = "\n--shard--\n";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> parts;
  for (size_t begin = 0;;) {
    const size_t end = input.find(kSeparator, begin);
    parts.push_back(input.substr(begin, end == std::string_view::npos ? std::string_view::npos : end - begin));
    if (end == std::string_view::npos || parts.size() == 3) break;
    begin = end + kSeparator.size();
  }
  const std::string& dir = mto::fuzz::input_dir();
  for (const char* stale : {"model.safetensors.index.json", "model-00001-of-00001.safetensors",
                            "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}) {
    std::remove((dir + "/" + stale).c_str());
  }
  const size_t shards = parts.size() - 1;
  if (!parts[0].empty()) {
    mto::fuzz::write_input("model.safetensors.index.json", reinterpret_cast<const uint8_t*>(parts[0].data()),
                           parts[0].size());
  }
  std::vector<std::string> files;
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::string name = "model-0000" + std::to_string(i) + "-of-0000" + std::to_string(shards) + ".safetensors";
    files.push_back(mto::fuzz::write_input(name, reinterpret_cast<const uint8_t*>(parts[i].data()), parts[i].size()));
  }
  std::map<std::string, mto::SafetensorsLocation> set;
  try {
    set = mto::read_safetensors_set(dir);
  } catch (const mto::CheckpointError& e) {
    mto::fuzz::check_names(e, dir);
    return 0;
  }
  for (const auto& [name, location] : set) {
    mto::fuzz::check(name == location.entry.name, "tensor " + name + " is filed under another name");
    const uint64_t file_size = std::filesystem::file_size(location.file);
    mto::fuzz::check(location.entry.begin <= location.entry.end &&
                         location.data_begin + location.entry.end <= file_size,
                     "tensor " + name + " lies outside " + location.file);
  }
  return 0;
}
