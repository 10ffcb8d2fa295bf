#include "serialization/block_io.h"

#include <algorithm>
#include <cstring>
#include <functional>

#include "absl/strings/str_cat.h"
#include "serialization/bounce_buffer.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checksum.h"
#include "serialization/safetensors.h"

namespace mto {
namespace {

// A run of a block: elements contiguous in the file, `rows` rows of `width` columns from
// (row, col). A block spanning whole rows is one run; any other block is one run per row.
struct Run {
  uint64_t row;
  uint64_t col;
  uint64_t width;
  uint64_t rows;
};

void for_each_run(const Rect& block, uint64_t cols, const std::function<void(const Run&)>& visit) {
  if (block.area() == 0) return;
  if (block.col_begin == 0 && block.col_end == cols) {
    visit({block.row_begin, 0, cols, block.rows()});
    return;
  }
  for (uint64_t r = block.row_begin; r < block.row_end; ++r) visit({r, block.col_begin, block.cols(), 1});
}

// Byte offset of element (row, col) in the row-major elements of `rect`.
uint64_t offset_in(const Rect& rect, uint64_t row, uint64_t col, size_t element_size) {
  return ((row - rect.row_begin) * rect.cols() + (col - rect.col_begin)) * element_size;
}

// Copies the elements [first, first + count) of `run`, held at `data`, that lie in
// `dest_rect` into `dest`.
void copy_shared(const Run& run, uint64_t first, uint64_t count, const char* data,
                 const Rect& dest_rect, char* dest, size_t element_size) {
  uint64_t e = first;
  const uint64_t end = first + count;
  while (e < end) {
    const uint64_t row = run.row + e / run.width;
    const uint64_t col = run.col + e % run.width;
    const uint64_t row_end_e = std::min(end, (e / run.width + 1) * run.width);
    const uint64_t col_end = col + (row_end_e - e);
    if (row >= dest_rect.row_begin && row < dest_rect.row_end) {
      const uint64_t lo = std::max(col, dest_rect.col_begin);
      const uint64_t hi = std::min(col_end, dest_rect.col_end);
      if (lo < hi) {
        std::memcpy(dest + offset_in(dest_rect, row, lo, element_size),
                    data + (e - first + (lo - col)) * element_size, (hi - lo) * element_size);
      }
    }
    e = row_end_e;
  }
}

}  // namespace

std::vector<Block> write_slice(File& file, uint64_t tensor_offset, uint64_t cols,
                               size_t element_size, const Rect& slice, const void* local) {
  const char* source = static_cast<const char*>(local);
  char* bounce = bounce_buffer();
  std::vector<Block> out;
  for (const Rect& rect : checksum_blocks(slice, element_size)) {
    Xxh3Stream hash;
    for_each_run(rect, cols, [&](const Run& run) {
      const char* from = source + offset_in(slice, run.row, run.col, element_size);
      const uint64_t at = tensor_offset + (run.row * cols + run.col) * element_size;
      const uint64_t size = run.width * run.rows * element_size;
      for (uint64_t done = 0; done < size; done += kBounceBufferBytes) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(kBounceBufferBytes, size - done));
        std::memcpy(bounce, from + done, n);
        hash.update(bounce, n);
        file.write_at(bounce, n, at + done);
      }
    });
    Block& b = out.emplace_back();
    b.set_row_begin(rect.row_begin);
    b.set_row_end(rect.row_end);
    b.set_col_begin(rect.col_begin);
    b.set_col_end(rect.col_end);
    b.set_xxh3(hash.digest());
  }
  return out;
}

void read_block_into(const File& file, const TensorRecord& record, const Block& block,
                     const Rect& dest_rect, void* dest_data) {
  const size_t element_size =
      c10::elementSize(scalar_type_from_safetensors(record.dtype(), record.name()));
  const uint64_t cols = matrix_shape({record.shape().begin(), record.shape().end()}).cols;
  const Rect rect = rect_of(block);
  const bool inside = intersection(rect, dest_rect) == rect;
  char* dest = static_cast<char*>(dest_data);
  char* bounce = bounce_buffer();
  Xxh3Stream hash;
  for_each_run(rect, cols, [&](const Run& run) {
    const uint64_t at = record.offset() + (run.row * cols + run.col) * element_size;
    const uint64_t size = run.width * run.rows * element_size;
    // Straight into the destination when the run is contiguous there too.
    const bool direct = inside && (run.rows == 1 || dest_rect.cols() == run.width);
    char* target = direct ? dest + offset_in(dest_rect, run.row, run.col, element_size) : nullptr;
    for (uint64_t done = 0; done < size; done += kBounceBufferBytes) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(kBounceBufferBytes, size - done));
      char* buffer = direct ? target + done : bounce;
      file.read_at(buffer, n, at + done);
      hash.update(buffer, n);
      if (!direct) copy_shared(run, done / element_size, n / element_size, buffer, dest_rect, dest, element_size);
    }
  });
  if (hash.digest() != block.xxh3()) {
    throw CheckpointError(absl::StrCat(
        "checksum mismatch in ", file.path(), ": tensor ", record.name(), " rows [",
        block.row_begin(), ", ", block.row_end(), ") x columns [", block.col_begin(), ", ",
        block.col_end(), ") from byte ", record.offset() + (block.row_begin() * cols + block.col_begin()) * element_size,
        " does not match the manifest (corrupt file)"));
  }
}

}  // namespace mto
