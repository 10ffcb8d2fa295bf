// The checksum of every byte: the same XXH3-64 whichever build computes it, in one piece or
// streamed in pieces of any size.
#include <gtest/gtest.h>

#include <xxhash.h>

#include <iostream>
#include <random>
#include <string>

#include "serialization/checksum.h"
#include "serialization/xxh3_kernels.h"

namespace mto {
namespace {

// Sizes around XXH3's internal boundaries (16, 128, 240 bytes; its 1 KiB stripes block and
// 256-byte streaming buffer) and one of a megabyte.
const size_t kSizes[] = {0, 1, 16, 17, 128, 240, 241, 1000, 1024, 1025, 4096, (1u << 20) + 3};

std::string random_bytes(size_t size, std::mt19937_64& gen) {
  std::string data(size, '\0');
  for (char& c : data) c = static_cast<char>(gen());
  return data;
}

TEST(ChecksumTest, EqualsTheLibraryInOnePieceAndStreamed) {
  std::mt19937_64 gen(7);
  for (size_t size : kSizes) {
    const std::string data = random_bytes(size, gen);
    const uint64_t expected = XXH3_64bits(data.data(), data.size());
    EXPECT_EQ(xxh3_64(data.data(), data.size()), expected) << size;
    Xxh3Stream stream;
    for (size_t at = 0, piece = 1; at < size; at += piece, piece = piece * 3 + 1) {
      stream.update(data.data() + at, std::min(piece, size - at));
    }
    EXPECT_EQ(stream.digest(), expected) << size;
  }
}

// Every build this CPU runs gives the library's digests; checksum.h uses the first.
TEST(ChecksumTest, EveryBuildThisCpuRunsEqualsTheLibrary) {
  const auto& kernels = xxh3_kernels();
  ASSERT_FALSE(kernels.empty());
  EXPECT_STREQ(kernels.back()->name, "library");
  std::string names;
  for (const Xxh3Kernels* k : kernels) names += std::string(" ") + k->name;
  std::cout << "XXH3 builds this CPU runs, fastest first:" << names << "\n";
  std::mt19937_64 gen(11);
  for (const Xxh3Kernels* k : kernels) {
    for (size_t size : kSizes) {
      const std::string data = random_bytes(size, gen);
      const uint64_t expected = XXH3_64bits(data.data(), data.size());
      EXPECT_EQ(k->hash(data.data(), data.size()), expected) << k->name << " " << size;
      void* state = k->create_state();
      ASSERT_NE(state, nullptr);
      for (size_t at = 0, piece = 5; at < size; at += piece, piece = piece * 2 + 3) {
        k->update(state, data.data() + at, std::min(piece, size - at));
      }
      EXPECT_EQ(k->digest(state), expected) << k->name << " " << size;
      k->destroy_state(state);
    }
  }
}

}  // namespace
}  // namespace mto
