// Slices of tensors written to and read from a shared file block by block, the geometry of
// blocks, and the save plan.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <sys/resource.h>

#include <csignal>
#include <string>
#include <utility>
#include <vector>

#include "serialization/block_io.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_plan.h"
#include "serialization/checkpoint_reader.h"
#include "serialization/checksum.h"
#include "serialization/file.h"
#include "serialization/tensor_blocks.h"
#include "tests/testing/errors.h"
#include "tests/testing/temp_dir.h"

namespace mto {
namespace {

// The message of the CheckpointError that `step` throws, "no error" if it throws none.
template <typename F>
std::string error_of(F step) {
  return test::error_of<CheckpointError>(step);
}

// A record of a float tensor of `shape` at byte `offset` with `blocks`.
TensorRecord record_of(const std::vector<int64_t>& shape, uint64_t offset, const std::vector<Block>& blocks) {
  TensorRecord r;
  r.set_name("w");
  r.set_dtype("F32");
  for (int64_t d : shape) r.add_shape(d);
  r.set_offset(offset);
  uint64_t n = 4;
  for (int64_t d : shape) n *= d;
  r.set_length(n);
  for (const auto& b : blocks) *r.add_blocks() = b;
  return r;
}

TEST(TensorBlocksTest, SlicesAreRectanglesOfTheMatrix) {
  EXPECT_EQ(slice_rect({6, 8}, 0, 2, 2, "w"), (Rect{2, 4, 0, 8}));
  EXPECT_EQ(slice_rect({6, 8}, 1, 4, 4, "w"), (Rect{0, 6, 4, 8}));
  // [4, 6, 2]: columns are 12 wide; a slice of dimension 1 takes whole inner rows.
  EXPECT_EQ(slice_rect({4, 6, 2}, 1, 3, 3, "w"), (Rect{0, 4, 6, 12}));
  EXPECT_NE(error_of([] { slice_rect({4, 6, 2}, 2, 0, 1, "w"); }).find("split along dimension 2"), std::string::npos);
  EXPECT_NE(error_of([] { slice_rect({6, 8}, 0, 4, 4, "w"); }).find("leaves its shape [6, 8]"), std::string::npos);
}

TEST(TensorBlocksTest, BlocksAreRowBandsOfAtMostOneMebibyteCutAtTheColumnGrid) {
  // 1024 columns of 4 bytes: 256 rows per block.
  const std::vector<Rect> blocks = checksum_blocks({0, 600, 0, 1024}, 4, 1024);
  ASSERT_EQ(blocks.size(), 3u);
  EXPECT_EQ(blocks[0], (Rect{0, 256, 0, 1024}));
  EXPECT_EQ(blocks[2], (Rect{512, 600, 0, 1024}));
  // A row larger than a block is one block per row.
  EXPECT_EQ(checksum_blocks({0, 3, 0, 1u << 19}, 4, 1u << 19).size(), 3u);
  // The grid cuts each row band; a slice that starts between grid lines starts a block there.
  // (724 columns of 4 bytes: 362 rows per band.)
  const std::vector<Rect> cut = checksum_blocks({0, 600, 300, 1024}, 4, 256);
  ASSERT_EQ(cut.size(), 2u * 3);
  EXPECT_EQ(cut[0], (Rect{0, 362, 300, 512}));
  EXPECT_EQ(cut[1], (Rect{0, 362, 512, 768}));
  EXPECT_EQ(cut[2], (Rect{0, 362, 768, 1024}));
  EXPECT_EQ(cut[5], (Rect{362, 600, 768, 1024}));
}

TEST(TensorBlocksTest, TheColumnGridLetsEverySplitOfUpToEightReadOnlyItsBytes) {
  EXPECT_EQ(column_grid({2048, 8192}, 4), 1024u);  // 8 bands of 4 KiB a row
  EXPECT_EQ(column_grid({2048, 2048}, 4), 1024u);  // bands keep 4 KiB a row: 2 of them
  EXPECT_EQ(column_grid({16, 20}, 4), 20u);        // too narrow to cut
  EXPECT_EQ(column_grid({4096}, 4), 1u);           // a vector has one column
  EXPECT_EQ(column_grid({64, 24, 384}, 4), 3u * 384);  // whole inner rows: 24 = 8 x 3
  // A tensor written whole, read as 2, 4 or 8 slices along dimension 1 or 0: every block a
  // slice overlaps lies inside it, but for the row bands at the ends of a dimension-0 slice.
  const std::vector<int64_t> shape = {2048, 8192};
  const std::vector<Rect> blocks = checksum_blocks(whole_rect(matrix_shape(shape)), 4, column_grid(shape, 4));
  for (int parts : {2, 4, 8}) {
    for (int p = 0; p < parts; ++p) {
      const Rect slice = slice_rect(shape, 1, p * 8192 / parts, 8192 / parts, "w");
      for (const Rect& b : blocks) {
        if (intersects(b, slice)) {
          EXPECT_EQ(intersection(b, slice), b) << parts << " " << p;
        }
      }
    }
  }
}

TEST(TensorBlocksTest, TilingIsChecked) {
  const MatrixShape m{6, 8};
  check_tiling({{0, 6, 0, 4}, {0, 3, 4, 8}, {3, 6, 4, 8}}, m, "t");
  EXPECT_NE(error_of([&] { check_tiling({{0, 6, 0, 4}, {0, 3, 4, 8}}, m, "t"); }).find("end at row 3"), std::string::npos);
  EXPECT_NE(error_of([&] { check_tiling({{0, 6, 0, 4}, {0, 6, 3, 8}}, m, "t"); }).find("does not continue the columns at 4"),
            std::string::npos);
  EXPECT_NE(error_of([&] { check_tiling({{0, 6, 0, 4}, {0, 6, 0, 4}, {0, 6, 4, 8}}, m, "t"); }).find("does not continue the rows"),
            std::string::npos);
  EXPECT_NE(error_of([&] { check_tiling({{0, 6, 0, 4}}, m, "t"); }).find("end at column 4"), std::string::npos);
}

// Writes a [rows, cols] tensor as 4 column or row slices, as ranks would, then reads arbitrary
// rectangles back, each through the blocks it overlaps.
class SliceRoundTrip : public ::testing::TestWithParam<int> {};

TEST_P(SliceRoundTrip, AnySplitReadsBackAnyRectangle) {
  const int dim = GetParam();
  const std::string path = test::make_temp_dir() + "/t.safetensors";
  const at::Tensor whole = at::arange(0, 12 * 20, at::kFloat).reshape({12, 20});
  const uint64_t offset = 16;
  std::vector<Block> blocks;
  {
    File f = File::open_shared(path);
    for (int part = 0; part < 4; ++part) {  // 4 writers, in any order
      const int p = (part * 3) % 4;
      const int64_t size = whole.size(dim) / 4;
      const Rect rect = slice_rect({12, 20}, dim, p * size, size, "w");
      const at::Tensor local = whole.narrow(dim, p * size, size).contiguous();
      for (auto& b : write_slice(f, offset, 20, 4, rect, local.data_ptr(), /*grid=*/5)) {
        blocks.push_back(b);
      }
    }
    f.sync();
  }
  const TensorRecord record = record_of({12, 20}, offset, blocks);
  const File f = File::open(path);
  // The whole tensor, the other split, an uneven slice.
  for (const Rect& want : {Rect{0, 12, 0, 20}, Rect{0, 12, 10, 20}, Rect{4, 8, 0, 20}, Rect{3, 10, 7, 13}}) {
    at::Tensor dest = at::full({int64_t(want.rows()), int64_t(want.cols())}, -1.0f);
    read_tensor_part(f, record, want, dest.data_ptr());
    const at::Tensor expected = whole.slice(0, want.row_begin, want.row_end).slice(1, want.col_begin, want.col_end);
    EXPECT_TRUE(at::equal(dest, expected)) << want.row_begin << " " << want.col_begin;
  }
}

INSTANTIATE_TEST_SUITE_P(Dims, SliceRoundTrip, ::testing::Values(0, 1));

// Rows assembled from the column pieces of several ranks are the bytes and the checksum
// blocks that a writer holding those rows whole writes; also for rows longer than the
// bounce buffer, which a piece crosses.
TEST(BlockIoTest, RowsWrittenFromColumnPiecesAreTheWholeRowsSlice) {
  for (const int64_t cols : {int64_t{20}, int64_t{200000}}) {
    const int64_t rows = 12;
    const at::Tensor whole = at::arange(0, rows * cols, at::kFloat).reshape({rows, cols});
    const uint64_t grid = column_grid({rows, cols}, 4);
    const std::vector<int64_t> cuts = {0, cols / 4, cols / 2 + 1, cols};  // three unequal pieces
    std::vector<std::string> bytes;
    std::vector<std::vector<Block>> blocks(2);
    std::string path;
    for (int way = 0; way < 2; ++way) {
      path = test::make_temp_dir() + "/t.safetensors";
      File f = File::open_shared(path);
      for (const auto& [begin, end] : {std::pair<int64_t, int64_t>{5, rows}, {0, 5}}) {
        const Rect band{uint64_t(begin), uint64_t(end), 0, uint64_t(cols)};
        std::vector<Block> written;
        if (way == 0) {
          const at::Tensor local = whole.slice(0, begin, end).contiguous();
          written = write_slice(f, 8, cols, 4, band, local.data_ptr(), grid);
        } else {
          std::vector<at::Tensor> parts;
          std::vector<ColumnPiece> pieces;
          for (size_t k = 0; k + 1 < cuts.size(); ++k) {
            parts.push_back(whole.slice(0, begin, end).slice(1, cuts[k], cuts[k + 1]).contiguous());
            pieces.push_back({uint64_t(cuts[k]), uint64_t(cuts[k + 1]), parts.back().data_ptr()});
          }
          written = write_rows(f, 8, cols, 4, band, pieces, grid);
        }
        blocks[way].insert(blocks[way].end(), written.begin(), written.end());
      }
      f.sync();
      bytes.push_back(read_file(path, 64 << 20));
    }
    EXPECT_EQ(bytes[0].size(), 8 + rows * cols * 4u) << cols;
    EXPECT_TRUE(bytes[0] == bytes[1]) << cols;
    ASSERT_EQ(blocks[0].size(), blocks[1].size()) << cols;
    for (size_t i = 0; i < blocks[0].size(); ++i) {
      EXPECT_TRUE(rect_of(blocks[0][i]) == rect_of(blocks[1][i])) << cols << " " << i;
      EXPECT_EQ(blocks[0][i].xxh3(), blocks[1][i].xxh3()) << cols << " " << i;
    }
    // Read back through the blocks: a column slice verifies and holds its elements.
    const Rect want{2, 9, uint64_t(cols / 4), uint64_t(cols / 2)};
    at::Tensor dest = at::full({int64_t(want.rows()), int64_t(want.cols())}, -1.0f);
    read_tensor_part(File::open(path), record_of({rows, cols}, 8, blocks[1]), want, dest.data_ptr());
    EXPECT_TRUE(at::equal(dest, whole.slice(0, 2, 9).slice(1, cols / 4, cols / 2))) << cols;
  }
}

TEST(BlockIoTest, ACorruptBlockIsNamed) {
  const std::string path = test::make_temp_dir() + "/t.safetensors";
  const at::Tensor whole = at::arange(0, 8 * 4, at::kFloat).reshape({8, 4});
  std::vector<Block> blocks;
  {
    File f = File::open_shared(path);
    blocks = write_slice(f, 0, 4, 4, {0, 8, 0, 2}, whole.slice(1, 0, 2).contiguous().data_ptr(), 4);
    for (auto& b : write_slice(f, 0, 4, 4, {0, 8, 2, 4}, whole.slice(1, 2, 4).contiguous().data_ptr(), 4)) {
      blocks.push_back(b);
    }
  }
  {
    File f = File::open_shared(path);
    const float bad = 1e9f;
    f.write_at(&bad, 4, (5 * 4 + 3) * 4);  // row 5, column 3: in the second band
  }
  const TensorRecord record = record_of({8, 4}, 0, blocks);
  const File f = File::open(path);
  at::Tensor left = at::empty({8, 2});
  read_tensor_part(f, record, {0, 8, 0, 2}, left.data_ptr());  // the intact band reads
  EXPECT_TRUE(at::equal(left, whole.slice(1, 0, 2)));
  at::Tensor right = at::empty({8, 2});
  EXPECT_EQ(error_of([&] { read_tensor_part(f, record, {0, 8, 2, 4}, right.data_ptr()); }),
            "checksum mismatch in " + path + ": tensor w rows [0, 8) x columns [2, 4) from byte 8 "
            "does not match the manifest (corrupt file)");
}

// read_tensor_parts spreads bands over threads: the bytes are the same as on one thread, and
// of two corrupt blocks the error names the first, whatever thread reached it.
TEST(BlockIoTest, PartsReadOnThreadsGiveTheBytesAndTheFirstErrorOfOneThread) {
  const std::string path = test::make_temp_dir() + "/t.safetensors";
  // 16 MiB: rows of 16 KiB, 64 rows (1 MiB) a block, 16 blocks.
  const at::Tensor whole = at::arange(0, 1024 * 4096, at::kFloat).reshape({1024, 4096});
  std::vector<Block> blocks;
  {
    File f = File::open_shared(path);
    blocks = write_slice(f, 0, 4096, 4, {0, 1024, 0, 4096}, whole.data_ptr(), 4096);
    f.sync();
  }
  ASSERT_EQ(blocks.size(), 16u);
  const TensorRecord record = record_of({1024, 4096}, 0, blocks);
  {
    const File f = File::open(path);
    at::Tensor top = at::full({300, 4096}, -1.0f);
    at::Tensor rest = at::full({724, 4096}, -1.0f);
    read_tensor_parts({{&f, &record, {0, 300, 0, 4096}, top.data_ptr()},
                       {&f, &record, {300, 1024, 0, 4096}, rest.data_ptr()}},
                      4);
    EXPECT_TRUE(at::equal(top, whole.slice(0, 0, 300)));
    EXPECT_TRUE(at::equal(rest, whole.slice(0, 300, 1024)));
  }
  {
    File f = File::open_shared(path);
    const float bad = -1.0f;
    f.write_at(&bad, 4, (200 * 4096 + 7) * 4);  // row 200: block [192, 256)
    f.write_at(&bad, 4, (900 * 4096 + 7) * 4);  // row 900: block [896, 960)
  }
  const File f = File::open(path);
  at::Tensor dest = at::empty({1024, 4096});
  for (int attempt = 0; attempt < 10; ++attempt) {
    EXPECT_EQ(error_of([&] { read_tensor_parts({{&f, &record, {0, 1024, 0, 4096}, dest.data_ptr()}}, 4); }),
              "checksum mismatch in " + path + ": tensor w rows [192, 256) x columns [0, 4096) from byte " +
                  std::to_string(192 * 4096 * 4) + " does not match the manifest (corrupt file)");
  }
  // With no destination the blocks are verified only, with the same error.
  EXPECT_EQ(error_of([&] { read_tensor_parts({{&f, &record, {0, 1024, 0, 4096}, nullptr}}, 4); }),
            error_of([&] { read_tensor_part(f, record, {0, 1024, 0, 4096}, dest.data_ptr()); }));
}

// A column slice whose file may not grow fails at the first row part that does not fit,
// with the offset and the path.
TEST(BlockIoTest, AColumnSliceWithNoRoomFailsAtTheFirstPartPastTheLimit) {
  const std::string path = test::make_temp_dir() + "/t.safetensors";
  const at::Tensor whole = at::arange(0, 64 * 64, at::kFloat).reshape({64, 64});
  const at::Tensor local = whole.slice(1, 32, 64).contiguous();
  File f = File::open_shared(path);
  struct rlimit before;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &before), 0);
  struct rlimit small = before;
  small.rlim_cur = 4096;
  const auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  // Row 16's part, at 16 * 256 + 128, is the first past the limit.
  const std::string error = error_of([&] { write_slice(f, 0, 64, 4, {0, 64, 32, 64}, local.data_ptr(), 64); });
  ::setrlimit(RLIMIT_FSIZE, &before);
  ::signal(SIGXFSZ, old_handler);
  EXPECT_EQ(error, "cannot write at offset 4224 of " + path + ": File too large");
  // With room, the same slice is written and reads back.
  const std::vector<Block> blocks = write_slice(f, 0, 64, 4, {0, 64, 32, 64}, local.data_ptr(), 64);
  f.sync();
  at::Tensor back = at::empty({64, 32});
  read_tensor_part(File::open(path), record_of({64, 64}, 0, blocks), {0, 64, 32, 64}, back.data_ptr());
  EXPECT_TRUE(at::equal(back, local));
}

HeldSlice held(const std::string& name, std::vector<int64_t> shape, Rect rect) {
  return {name, "F32", std::move(shape), rect};
}

TEST(CheckpointPlanTest, EachPartIsWrittenOnceSpreadOverItsHolders) {
  // (dp=2, tp=2): ranks 0 and 2 hold rows [0, 4) of w, ranks 1 and 3 rows [4, 8); b is whole.
  std::vector<std::vector<HeldSlice>> ranks;
  for (int r = 0; r < 4; ++r) {
    const uint64_t half = r % 2;
    ranks.push_back({held("w", {8, 1024}, {4 * half, 4 * half + 4, 0, 1024}), held("b", {8}, {0, 8, 0, 1})});
  }
  const CheckpointPlan plan = plan_checkpoint(ranks);
  ASSERT_EQ(plan.slices.size(), 3u);
  EXPECT_EQ(plan.tensor_parallel_size, 2);
  EXPECT_EQ(plan.tensors[0].split_parts(), 2);
  EXPECT_EQ(plan.tensors[0].split_dim(), 0);
  EXPECT_EQ(plan.tensors[1].split_parts(), 1);
  // The two halves of w go to different replicas' holders; b to a rank with no part of w.
  EXPECT_EQ(plan.slices[0].writer % 2, 0);
  EXPECT_EQ(plan.slices[1].writer % 2, 1);
  EXPECT_NE(plan.slices[2].writer, plan.slices[0].writer);
  EXPECT_NE(plan.slices[2].writer, plan.slices[1].writer);
  EXPECT_EQ(plan.slices[0].holders, (std::vector<int>{0, 2}));
  EXPECT_EQ(plan.shards.size(), 4u);
  EXPECT_EQ(plan.headers[plan.tensors[0].shard()].size(), plan.shards[plan.tensors[0].shard()].data_begin());
  // b, held whole, is in its writer's shard; w in the emptiest shard left.
  EXPECT_EQ(plan.tensors[1].shard(), static_cast<uint32_t>(plan.slices[2].writer));
  EXPECT_NE(plan.tensors[0].shard(), plan.tensors[1].shard());
  // Every rank starts writing in its own shard.
  for (int r = 0; r < 4; ++r) {
    const std::vector<size_t> order = write_order(plan, r);
    for (size_t k = 1; k < order.size(); ++k) {
      const auto shard = [&](size_t s) { return (plan.tensors[plan.slices[s].tensor].shard() + 4 - r) % 4; };
      EXPECT_LE(shard(order[k - 1]), shard(order[k]));
    }
  }
  // Copies are compared part by part: rank 2's copy of w's first half differs from rank 0's.
  check_replicas(plan, {{1, 5}, {2, 5}, {1, 5}, {2, 5}});
  EXPECT_EQ(error_of([&] { check_replicas(plan, {{1, 5}, {2, 5}, {9, 5}, {2, 5}}); }),
            "save: tensor w differs between rank 0 and rank 2; every rank must hold the same model "
            "(wrap it in mto::DataParallel, or broadcast rank 0's weights) before saving");
  EXPECT_NE(error_of([&] { check_replicas(plan, {{1, 5}, {2}, {1, 5}, {2, 5}}); }).find("rank 1 sent too few"),
            std::string::npos);
}

TEST(CheckpointPlanTest, DisagreementsAreNamed) {
  auto two = [](HeldSlice a, HeldSlice b) { return std::vector<std::vector<HeldSlice>>{{a}, {b}}; };
  EXPECT_EQ(error_of([&] { plan_checkpoint(two(held("w", {4}, {0, 4, 0, 1}), held("w", {5}, {0, 5, 0, 1}))); }),
            "save: tensor w is F32 [4] on rank 0 but F32 [5] on rank 1");
  EXPECT_NE(error_of([&] { plan_checkpoint(two(held("w", {4}, {0, 2, 0, 1}), held("w", {4}, {1, 4, 0, 1}))); })
                .find("save: the parts of tensor w that the ranks hold"),
            std::string::npos);
  EXPECT_NE(error_of([&] { plan_checkpoint(two(held("w", {4}, {0, 4, 0, 1}), held("v", {4}, {0, 4, 0, 1}))); })
                .find("the list of tensors differs between rank 0 and rank 1"),
            std::string::npos);
}

}  // namespace
}  // namespace mto
