#include "serialization/checkpoint_layout.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "serialization/checkpoint_error.h"

namespace mto {

std::string shard_file_name(int index, int count) {
  return absl::StrFormat("model-%05d-of-%05d.safetensors", index + 1, count);
}

void check_plain_file_name(const std::string& name, const std::string& what) {
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos ||
      name.find('\0') != std::string::npos) {
    throw CheckpointError(absl::StrCat(what, " names the file \"", name,
                                       "\", which is not a plain file name inside the "
                                       "checkpoint directory"));
  }
}

std::string path_in(const std::string& dir, const std::string& name) {
  return absl::StrCat(dir, "/", name);
}

}  // namespace mto
