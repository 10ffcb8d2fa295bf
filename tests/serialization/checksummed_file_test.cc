// Checksummed small files (search checkpoints): what is written reads back; a flipped,
// missing or extra byte, another kind of file, or a foreign file is refused with the file's
// name; a rewrite replaces the file whole and leaves no temporary file.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "serialization/checkpoint_error.h"
#include "serialization/checksummed_file.h"
#include "serialization/file.h"
#include "tests/testing/errors.h"
#include "tests/testing/temp_dir.h"

namespace mto {
namespace {

using ::testing::HasSubstr;
using test::error_of;

constexpr uint64_t kMax = 1 << 20;

std::string read_error(const std::string& path, const std::string& kind = "search checkpoint") {
  return error_of<CheckpointError>([&] { read_checksummed_file(path, kind, kMax); });
}

TEST(ChecksummedFileTest, RoundTripsAndReplacesWhole) {
  const std::string path = test::make_temp_dir() + "/search";
  const std::string payload("{\"scores\": [1.5, 2]}\n\0binary\xff", 29);
  write_checksummed_file(path, "search checkpoint", payload);
  EXPECT_EQ(read_checksummed_file(path, "search checkpoint", kMax), payload);
  write_checksummed_file(path, "search checkpoint", "");
  EXPECT_EQ(read_checksummed_file(path, "search checkpoint", kMax), "");
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  EXPECT_EQ(read_file(path, kMax).substr(0, 42), "mto-checksummed-file 1 search checkpoint\n0");
}

TEST(ChecksummedFileTest, EveryDamageIsRefusedNamingTheFile) {
  const std::string path = test::make_temp_dir() + "/search";
  const std::string payload = "{\"scores\": [1.5, 2, 3]}";
  write_checksummed_file(path, "search checkpoint", payload);
  const std::string good = read_file(path, kMax);
  const size_t payload_at = good.size() - payload.size();
  // Every single bit flipped anywhere in the file is caught.
  for (size_t at = 0; at < good.size(); ++at) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string bad = good;
      bad[at] = static_cast<char>(bad[at] ^ (1 << bit));
      write_file_synced(path, bad);
      EXPECT_THAT(read_error(path), HasSubstr(path)) << "byte " << at << " bit " << bit;
    }
  }
  write_file_synced(path, good.substr(0, good.size() - 1));
  EXPECT_THAT(read_error(path), HasSubstr("has 22 bytes, its header says '23'"));
  write_file_synced(path, good + "x");
  EXPECT_THAT(read_error(path), HasSubstr("has 24 bytes, its header says '23'"));
  std::string flipped = good;
  flipped[payload_at + 3] ^= 1;
  write_file_synced(path, flipped);
  EXPECT_THAT(read_error(path), HasSubstr("is damaged: the XXH3-64 of its payload (offset " +
                                          std::to_string(payload_at) + ", 23 bytes)"));
  write_file_synced(path, good);
  EXPECT_THAT(read_error(path, "auto_quantize search"),
              HasSubstr("is not a auto_quantize search file of mto (its first line is 'mto-checksummed-file 1 "
                        "search checkpoint'"));
  write_file_synced(path, payload);
  EXPECT_THAT(read_error(path), HasSubstr("its first line is '{\"scores\": [1.5, 2, 3]}'"));
  EXPECT_THAT(read_error(path + ".missing"), HasSubstr(path + ".missing"));
}

}  // namespace
}  // namespace mto
