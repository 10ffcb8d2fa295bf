#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "serialization/manifest.pb.h"

namespace mto {

// The geometry of checksum blocks and slices. A tensor of shape [d0, d1, ...] is viewed as a
// row-major matrix of d0 rows and d1 * d2 * ... columns (a 0-d tensor as 1 x 1), so a slice
// along dimension 0 is a band of rows, one along dimension 1 a band of columns, and either is
// a rectangle of that matrix. Row r, column c sits at byte (r * cols + c) * element_size of
// the tensor's data.

// A rectangle [row_begin, row_end) x [col_begin, col_end) of a tensor's matrix.
struct Rect {
  uint64_t row_begin = 0;
  uint64_t row_end = 0;
  uint64_t col_begin = 0;
  uint64_t col_end = 0;

  uint64_t rows() const { return row_end - row_begin; }
  uint64_t cols() const { return col_end - col_begin; }
  uint64_t area() const { return rows() * cols(); }
  bool operator==(const Rect& o) const {
    return row_begin == o.row_begin && row_end == o.row_end && col_begin == o.col_begin &&
           col_end == o.col_end;
  }
};

// Rows and columns of a tensor's matrix.
struct MatrixShape {
  uint64_t rows = 1;
  uint64_t cols = 1;
};

// The matrix of a tensor of `shape` (non-negative dimensions).
MatrixShape matrix_shape(const std::vector<int64_t>& shape);

// The rectangle of the slice [offset, offset + length) along `dim` of a tensor of
// `global_shape`. Throws CheckpointError naming `tensor` if `dim` is not 0 or 1 or the slice
// leaves the tensor.
Rect slice_rect(const std::vector<int64_t>& global_shape, int64_t dim, int64_t offset,
                int64_t length, const std::string& tensor);

// The whole matrix as a rectangle.
Rect whole_rect(const MatrixShape& matrix);

// The rectangle of `block`.
Rect rect_of(const Block& block);

// A block over `rect` with the checksum `xxh3`.
Block block_of(const Rect& rect, uint64_t xxh3);

// Whether `a` and `b` share an element; their intersection.
bool intersects(const Rect& a, const Rect& b);
Rect intersection(const Rect& a, const Rect& b);

// Largest checksum block, in bytes: small enough that a reader whose slice cuts a block reads
// little more than it needs, large enough that a 3 GiB model has a few thousand blocks.
inline constexpr uint64_t kChecksumBlockBytes = uint64_t{1} << 20;

// The least of a row that a column band of checksum blocks holds: every band costs a
// checksum update per row, on every save and every read of the tensor.
inline constexpr uint64_t kMinColumnBandBytes = 4096;

// The width in columns of the column bands that the checksum blocks of a tensor of `shape`
// are cut into: cols / B for the largest power of two B <= 8 that divides shape[1] while
// each band keeps at least kMinColumnBandBytes of a row; all the columns for tensors of
// fewer than two dimensions. A reader holding a slice along dimension 1 into a number of
// parts that divides B then reads exactly its own bytes, and verifies all of them.
uint64_t column_grid(const std::vector<int64_t>& shape, size_t element_size);

// The checksum blocks of a slice that one rank writes: bands of whole rows of the slice of
// at most kChecksumBlockBytes (at least one row), each cut at the multiples of `grid`
// columns; in row-band order, columns ascending within a band.
std::vector<Rect> checksum_blocks(const Rect& slice, size_t element_size, uint64_t grid);

// `blocks` in groups that can be read as one piece: blocks of the same rows whose columns
// follow each other, ascending.
std::vector<std::vector<Block>> row_bands(std::vector<Block> blocks);

// The blocks of `record`: its version-2 blocks, or for version 1 one block over the whole
// tensor with the record's xxh3.
std::vector<Block> blocks_of(const TensorRecord& record);

// Throws CheckpointError (prefixed with `where`) unless `rects` tile `matrix` exactly as
// TensorRecord.blocks must: the distinct column ranges partition the columns, and the
// rectangles of each column range partition the rows.
void check_tiling(std::vector<Rect> rects, const MatrixShape& matrix, const std::string& where);

}  // namespace mto
