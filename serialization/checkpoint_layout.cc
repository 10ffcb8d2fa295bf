#include "serialization/checkpoint_layout.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "serialization/checkpoint_error.h"

namespace mto {
namespace {

// Whether `name` has the form of shard_file_name's names,
// "model-<digits>-of-<digits>.safetensors", whatever the number of shards.
bool is_shard_file_name(absl::string_view name) {
  if (!absl::ConsumePrefix(&name, "model-") || !absl::ConsumeSuffix(&name, ".safetensors")) return false;
  auto digits = [](absl::string_view s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), absl::ascii_isdigit);
  };
  const size_t of = name.find("-of-");
  return of != absl::string_view::npos && digits(name.substr(0, of)) && digits(name.substr(of + 4));
}

}  // namespace

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

void check_extra_file(const std::string& name, uint64_t size, const std::string& what) {
  check_plain_file_name(name, what);
  if (name[0] == '.') {
    throw CheckpointError(absl::StrCat(what, " names the extra file \"", name,
                                       "\", which would be hidden (its name starts with '.')"));
  }
  if (name == kStateFileName || name == kIndexFileName || name == kManifestFileName ||
      is_shard_file_name(name)) {
    throw CheckpointError(absl::StrCat(what, " names the extra file \"", name,
                                       "\", which is a name of the checkpoint's own files"));
  }
  if (size > kMaxMetadataBytes) {
    throw CheckpointError(absl::StrCat(what, " gives the extra file \"", name, "\" ", size,
                                       " bytes, more than the ", kMaxMetadataBytes,
                                       " a reader accepts"));
  }
}

std::string path_in(const std::string& dir, const std::string& name) {
  return absl::StrCat(dir, "/", name);
}

}  // namespace mto
