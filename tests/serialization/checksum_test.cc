// The checksum of every byte: the same XXH3-64 whichever build computes it, in one piece or
// streamed in pieces of any size.
#include <gtest/gtest.h>

#include <xxhash.h>

#include <random>
#include <string>

#include "serialization/checksum.h"

namespace mto {
namespace {

TEST(ChecksumTest, EqualsTheLibraryInOnePieceAndStreamed) {
  std::mt19937_64 gen(7);
  for (size_t size : {0u, 1u, 16u, 17u, 128u, 240u, 241u, 1000u, 4096u, (1u << 20) + 3}) {
    std::string data(size, '\0');
    for (char& c : data) c = static_cast<char>(gen());
    const uint64_t expected = XXH3_64bits(data.data(), data.size());
    EXPECT_EQ(xxh3_64(data.data(), data.size()), expected) << size;
    Xxh3Stream stream;
    for (size_t at = 0, piece = 1; at < size; at += piece, piece = piece * 3 + 1) {
      stream.update(data.data() + at, std::min(piece, size - at));
    }
    EXPECT_EQ(stream.digest(), expected) << size;
  }
}

}  // namespace
}  // namespace mto
