#include "serialization/tensor_blocks.h"

#include <algorithm>
#include <limits>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "serialization/checkpoint_error.h"

namespace mto {

MatrixShape matrix_shape(const std::vector<int64_t>& shape) {
  MatrixShape m;
  if (shape.empty()) return m;
  m.rows = static_cast<uint64_t>(shape[0]);
  for (size_t i = 1; i < shape.size(); ++i) m.cols *= static_cast<uint64_t>(shape[i]);
  return m;
}

Rect whole_rect(const MatrixShape& matrix) { return {0, matrix.rows, 0, matrix.cols}; }

Rect slice_rect(const std::vector<int64_t>& global_shape, int64_t dim, int64_t offset,
                int64_t length, const std::string& tensor) {
  const int64_t ndim = static_cast<int64_t>(global_shape.size());
  if (dim < 0 || dim > 1 || dim >= ndim) {
    throw CheckpointError(absl::StrCat("tensor ", tensor, " of shape [",
                                       absl::StrJoin(global_shape, ", "), "] is split along dimension ",
                                       dim, "; checkpoints hold slices along dimension 0 or 1"));
  }
  if (offset < 0 || length < 0 || offset + length > global_shape[dim]) {
    throw CheckpointError(absl::StrCat("tensor ", tensor, ": the slice [", offset, ", ", offset + length,
                                       ") of dimension ", dim, " leaves its shape [",
                                       absl::StrJoin(global_shape, ", "), "]"));
  }
  const MatrixShape m = matrix_shape(global_shape);
  Rect r = whole_rect(m);
  if (dim == 0) {
    r.row_begin = static_cast<uint64_t>(offset);
    r.row_end = static_cast<uint64_t>(offset + length);
  } else {
    const uint64_t inner = global_shape[1] == 0 ? 0 : m.cols / static_cast<uint64_t>(global_shape[1]);
    r.col_begin = static_cast<uint64_t>(offset) * inner;
    r.col_end = static_cast<uint64_t>(offset + length) * inner;
  }
  return r;
}

Rect rect_of(const Block& block) {
  return {block.row_begin(), block.row_end(), block.col_begin(), block.col_end()};
}

Block block_of(const Rect& rect, uint64_t xxh3) {
  Block b;
  b.set_row_begin(rect.row_begin);
  b.set_row_end(rect.row_end);
  b.set_col_begin(rect.col_begin);
  b.set_col_end(rect.col_end);
  b.set_xxh3(xxh3);
  return b;
}

bool intersects(const Rect& a, const Rect& b) {
  return std::max(a.row_begin, b.row_begin) < std::min(a.row_end, b.row_end) &&
         std::max(a.col_begin, b.col_begin) < std::min(a.col_end, b.col_end);
}

Rect intersection(const Rect& a, const Rect& b) {
  return {std::max(a.row_begin, b.row_begin), std::min(a.row_end, b.row_end),
          std::max(a.col_begin, b.col_begin), std::min(a.col_end, b.col_end)};
}

uint64_t column_grid(const std::vector<int64_t>& shape, size_t element_size) {
  const MatrixShape m = matrix_shape(shape);
  if (shape.size() < 2 || shape[1] <= 0) return std::max<uint64_t>(m.cols, 1);
  uint64_t bands = 1;
  while (bands < 8 && shape[1] % static_cast<int64_t>(2 * bands) == 0 &&
         m.cols / (2 * bands) * element_size >= kMinColumnBandBytes) {
    bands *= 2;
  }
  return m.cols / bands;
}

std::vector<Rect> checksum_blocks(const Rect& slice, size_t element_size, uint64_t grid) {
  std::vector<Rect> out;
  const uint64_t row_bytes = slice.cols() * element_size;
  const uint64_t rows_per_block = row_bytes == 0 ? std::max<uint64_t>(slice.rows(), 1)
                                                 : std::max<uint64_t>(1, kChecksumBlockBytes / row_bytes);
  for (uint64_t r = slice.row_begin; r < slice.row_end; r += rows_per_block) {
    const uint64_t r_end = std::min(slice.row_end, r + rows_per_block);
    for (uint64_t c = slice.col_begin; c < slice.col_end;) {
      const uint64_t c_end = std::min(slice.col_end, grid == 0 ? slice.col_end : (c / grid + 1) * grid);
      out.push_back({r, r_end, c, c_end});
      c = c_end;
    }
  }
  if (out.empty()) out.push_back(slice);  // a tensor with no elements still has one (empty) block
  return out;
}

std::vector<std::vector<Block>> row_bands(std::vector<Block> blocks) {
  std::sort(blocks.begin(), blocks.end(), [](const Block& a, const Block& b) {
    return std::make_tuple(a.row_begin(), a.row_end(), a.col_begin()) <
           std::make_tuple(b.row_begin(), b.row_end(), b.col_begin());
  });
  std::vector<std::vector<Block>> out;
  for (Block& b : blocks) {
    if (!out.empty()) {
      const Block& last = out.back().back();
      if (last.row_begin() == b.row_begin() && last.row_end() == b.row_end() && last.col_end() == b.col_begin()) {
        out.back().push_back(std::move(b));
        continue;
      }
    }
    out.push_back({std::move(b)});
  }
  return out;
}

std::vector<Block> blocks_of(const TensorRecord& record) {
  if (record.blocks_size() > 0) return {record.blocks().begin(), record.blocks().end()};
  return {block_of(whole_rect(matrix_shape({record.shape().begin(), record.shape().end()})), record.xxh3())};
}

void check_tiling(std::vector<Rect> rects, const MatrixShape& matrix, const std::string& where) {
  auto describe = [](const Rect& r) {
    return absl::StrCat("rows [", r.row_begin, ", ", r.row_end, ") x columns [", r.col_begin, ", ",
                        r.col_end, ")");
  };
  auto fail = [&](const std::string& what) {
    throw CheckpointError(absl::StrCat(where, ": ", what, " (the tensor is ", matrix.rows, " x ",
                                       matrix.cols, ")"));
  };
  if (rects.empty()) fail("no blocks");
  const bool empty_tensor = matrix.rows == 0 || matrix.cols == 0;
  if (empty_tensor) {
    if (rects.size() != 1 || !(rects[0] == whole_rect(matrix))) fail("an empty tensor must have one block over all of it");
    return;
  }
  std::sort(rects.begin(), rects.end(), [](const Rect& a, const Rect& b) {
    return std::tie(a.col_begin, a.col_end, a.row_begin) < std::tie(b.col_begin, b.col_end, b.row_begin);
  });
  uint64_t col = 0;
  size_t i = 0;
  while (i < rects.size()) {
    const Rect& band = rects[i];
    if (band.col_begin != col || band.col_end <= band.col_begin || band.col_end > matrix.cols) {
      fail(absl::StrCat("the block ", describe(band), " does not continue the columns at ", col));
    }
    uint64_t row = 0;
    for (; i < rects.size() && rects[i].col_begin == band.col_begin; ++i) {
      const Rect& r = rects[i];
      if (r.col_end != band.col_end || r.row_begin != row || r.row_end <= r.row_begin ||
          r.row_end > matrix.rows) {
        fail(absl::StrCat("the block ", describe(r), " does not continue the rows at ", row,
                          " of the columns [", band.col_begin, ", ", band.col_end, ")"));
      }
      row = r.row_end;
    }
    if (row != matrix.rows) {
      fail(absl::StrCat("the columns [", band.col_begin, ", ", band.col_end, ") end at row ", row));
    }
    col = band.col_end;
  }
  if (col != matrix.cols) fail(absl::StrCat("the blocks end at column ", col));
}

}  // namespace mto
