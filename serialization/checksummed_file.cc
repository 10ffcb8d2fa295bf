#include "serialization/checksummed_file.h"

#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checksum.h"
#include "serialization/file.h"

namespace mto {
namespace {

constexpr char kMagic[] = "mto-checksummed-file 1 ";

}  // namespace

void write_checksummed_file(const std::string& path, const std::string& kind, const std::string& payload) {
  const std::string contents = absl::StrCat(kMagic, kind, "\n", payload.size(), " ",
                                            absl::StrFormat("%016x", xxh3_64(payload.data(), payload.size())), "\n",
                                            payload);
  const std::string temporary = path + ".tmp";
  write_file_synced(temporary, contents);
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    const int saved = errno;
    std::remove(temporary.c_str());
    throw CheckpointError(io_error_message(absl::StrCat("cannot rename ", temporary, " to"), path, saved));
  }
  sync_directory(std::filesystem::absolute(path).parent_path().string());
}

std::string read_checksummed_file(const std::string& path, const std::string& kind, uint64_t max_size) {
  const std::string contents = read_file(path, max_size + 256);
  const std::vector<absl::string_view> lines = absl::StrSplit(contents, absl::MaxSplits('\n', 2));
  const std::string header = absl::StrCat(kMagic, kind);
  if (lines.size() < 3 || lines[0] != header) {
    const absl::string_view first = lines.empty() ? absl::string_view() : lines[0].substr(0, 80);
    throw CheckpointError(absl::StrCat(path, " is not a ", kind, " file of mto (its first line is '", first,
                                       "', expected '", header, "')"));
  }
  // The second line must be exactly what the writer writes for this payload, so that no
  // damage hides in an alternative spelling ("+23", "0x..", upper-case hex).
  const absl::string_view payload = lines[2];
  const uint64_t offset = lines[0].size() + lines[1].size() + 2;
  const uint64_t actual = xxh3_64(payload.data(), payload.size());
  const std::string expected_size = absl::StrCat(payload.size());
  const std::string expected_sum = absl::StrFormat("%016x", actual);
  const std::vector<absl::string_view> sums = absl::StrSplit(lines[1], ' ');
  if (sums.size() == 2 && sums[0] == expected_size && sums[1] == expected_sum && payload.size() <= max_size) {
    return std::string(payload);
  }
  if (sums.size() == 2 && sums[0] != expected_size) {
    throw CheckpointError(absl::StrCat(path, " is damaged: its payload at offset ", offset, " has ", payload.size(),
                                       " bytes, its header says '", sums[0].substr(0, 24), "'"));
  }
  if (sums.size() == 2 && sums[1].size() == 16) {
    throw CheckpointError(absl::StrCat(path, " is damaged: the XXH3-64 of its payload (offset ", offset, ", ",
                                       payload.size(), " bytes) is ", expected_sum, ", its header says '", sums[1],
                                       "'"));
  }
  if (payload.size() > max_size) {
    throw CheckpointError(absl::StrCat(path, ": its payload has ", payload.size(), " bytes, more than ", max_size));
  }
  throw CheckpointError(absl::StrCat(path, ": its second line '", lines[1].substr(0, 80),
                                     "' is not '<payload bytes> <XXH3-64 in 16 lower-case hex digits>'"));
}

}  // namespace mto
