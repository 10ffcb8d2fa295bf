// Writing a shard straight from tensor memory and reading it back into existing tensors,
// with the checksum verified on the way.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>

#include "serialization/checkpoint_error.h"
#include "serialization/checksum.h"
#include "serialization/file.h"
#include "serialization/safetensors.h"
#include "serialization/shard_writer.h"
#include "serialization/tensor_reader.h"
#include "tests/testing/temp_dir.h"

namespace mto {
namespace {

TEST(ChecksumTest, StreamEqualsOneShot) {
  std::string data(100000, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 31 + 7);
  Xxh3Stream stream;
  stream.update(data.data(), 10);
  stream.update(data.data() + 10, 60000);
  stream.update(data.data() + 60010, data.size() - 60010);
  EXPECT_EQ(stream.digest(), xxh3_64(data.data(), data.size()));
  EXPECT_NE(xxh3_64(data.data(), data.size() - 1), xxh3_64(data.data(), data.size()));
}

TEST(ShardIoTest, WritesAndReadsEveryKindOfTensor) {
  const std::string dir = test::make_temp_dir();
  at::manual_seed(0);
  std::vector<NamedTensor> tensors = {
      {"weight", at::randn({3, 5})},
      {"transposed", at::randn({4, 6}).t()},  // not contiguous
      {"scalar", at::full({}, 7, at::kLong)},
      {"empty", at::zeros({0, 3}, at::kBFloat16)},
      {"mask", at::rand({9}) > 0.5},
      {"half", at::randn({2, 2}).to(at::kHalf)},
  };
  WrittenShard shard = write_shard(dir, "s.safetensors", tensors, /*writer_rank=*/2, /*shard_index=*/4);
  EXPECT_EQ(shard.shard.writer_rank(), 2);
  EXPECT_EQ(shard.shard.size(), std::filesystem::file_size(dir + "/s.safetensors"));
  ASSERT_EQ(shard.tensors.size(), tensors.size());
  EXPECT_EQ(shard.tensors[0].shard(), 4u);

  SafetensorsHeader header = read_safetensors_header(dir + "/s.safetensors");
  EXPECT_EQ(header.metadata.at("writer_rank"), "2");
  EXPECT_EQ(header.data_begin, shard.shard.data_begin());
  ASSERT_EQ(header.entries.size(), tensors.size());

  File file = File::open(dir + "/s.safetensors");
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorRecord& record = shard.tensors[i];
    EXPECT_EQ(record.name(), tensors[i].name);
    EXPECT_EQ(record.offset(), header.data_begin + header.entries[i].begin);
    at::Tensor dest = at::empty(tensors[i].tensor.sizes(), tensors[i].tensor.options());
    read_tensor_into(file, record, dest);
    EXPECT_TRUE(dest.equal(tensors[i].tensor)) << record.name();
  }
}

TEST(ShardIoTest, ReadingChecksTypeShapeAndChecksum) {
  const std::string dir = test::make_temp_dir();
  at::Tensor w = at::arange(12, at::kFloat).reshape({3, 4});
  WrittenShard shard = write_shard(dir, "s.safetensors", {{"w", w}}, 0, 0);
  File file = File::open(dir + "/s.safetensors");
  const TensorRecord& record = shard.tensors[0];
  at::Tensor wrong_shape = at::empty({4, 3});
  try {
    read_tensor_into(file, record, wrong_shape);
    FAIL() << "no error";
  } catch (const CheckpointError& e) {
    EXPECT_STREQ(e.what(), "tensor w: the checkpoint holds F32 [3, 4] but the model has F32 [4, 3]");
  }
  EXPECT_THROW(read_tensor_into(file, record, at::empty({3, 4}, at::kDouble)), CheckpointError);

  {
    std::fstream f(dir + "/s.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(record.offset() + 5));
    f.put('\x7f');
  }
  at::Tensor dest = at::empty({3, 4});
  try {
    read_tensor_into(file, record, dest);
    FAIL() << "no error";
  } catch (const CheckpointError& e) {
    EXPECT_EQ(std::string(e.what()), "checksum mismatch in " + dir + "/s.safetensors: tensor w at bytes [" +
                                         std::to_string(record.offset()) + ", " +
                                         std::to_string(record.offset() + 48) +
                                         ") does not match the manifest (corrupt file)");
  }
  std::filesystem::resize_file(dir + "/s.safetensors", record.offset() + 10);
  try {
    read_tensor_into(file, record, dest);
    FAIL() << "no error";
  } catch (const CheckpointError& e) {
    EXPECT_EQ(std::string(e.what()), "file " + dir + "/s.safetensors is truncated: expected 48 bytes at offset " +
                                         std::to_string(record.offset()) + ", the file ends at " +
                                         std::to_string(record.offset() + 10));
  }
}

TEST(ShardIoTest, WriteFailureNamesTheFile) {
  try {
    write_shard("/nonexistent-dir", "s.safetensors", {{"w", at::zeros({2})}}, 0, 0);
    FAIL() << "no error";
  } catch (const CheckpointError& e) {
    EXPECT_STREQ(e.what(), "cannot create /nonexistent-dir/s.safetensors: No such file or directory");
  }
}

}  // namespace
}  // namespace mto
