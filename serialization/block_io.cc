#include "serialization/block_io.h"

#include <algorithm>
#include <cstring>
#include <memory>

#include "absl/strings/str_cat.h"
#include "serialization/bounce_buffer.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checksum.h"
#include "serialization/file.h"
#include "serialization/read_ranges.h"
#include "serialization/safetensors.h"
#include "serialization/write_behind.h"

namespace mto {
namespace {

// A run of a rectangle: elements contiguous in the file, `rows` rows of `width` columns from
// (row, col). A rectangle spanning whole rows is one run; any other is one run per row.
struct Run {
  uint64_t row;
  uint64_t col;
  uint64_t width;
  uint64_t rows;
};

template <typename Visit>
void for_each_run(const Rect& rect, uint64_t cols, const Visit& visit) {
  if (rect.area() == 0) return;
  if (rect.col_begin == 0 && rect.col_end == cols) {
    visit({rect.row_begin, 0, cols, rect.rows()});
    return;
  }
  for (uint64_t r = rect.row_begin; r < rect.row_end; ++r) visit({r, rect.col_begin, rect.cols(), 1});
}

// Byte offset of element (row, col) in the row-major elements of `rect`.
uint64_t offset_in(const Rect& rect, uint64_t row, uint64_t col, size_t element_size) {
  return ((row - rect.row_begin) * rect.cols() + (col - rect.col_begin)) * element_size;
}

// Calls `visit(row, col, col_end, data)` for each row segment of the elements
// [first, first + count) of `run`, held at `data`.
template <typename Visit>
void for_each_segment(const Run& run, uint64_t first, uint64_t count, const char* data, size_t element_size,
                      const Visit& visit) {
  uint64_t e = first;
  const uint64_t end = first + count;
  while (e < end) {
    const uint64_t row_end_e = std::min(end, (e / run.width + 1) * run.width);
    const uint64_t col = run.col + e % run.width;
    visit(run.row + e / run.width, col, col + (row_end_e - e), data + (e - first) * element_size);
    e = row_end_e;
  }
}

// The checksums of a band of blocks (same rows, adjacent columns), fed segment by segment.
class BandHash {
 public:
  explicit BandHash(std::vector<Rect> blocks) : blocks_(std::move(blocks)) {
    for (size_t k = 0; k < blocks_.size(); ++k) streams_.push_back(std::make_unique<Xxh3Stream>());
  }

  // Feeds the columns [col, col_end) of one row, held at `data`, to the blocks they fall in.
  void update(uint64_t col, uint64_t col_end, const char* data, size_t element_size) {
    for (size_t k = 0; k < blocks_.size(); ++k) {
      const uint64_t lo = std::max(col, blocks_[k].col_begin);
      const uint64_t hi = std::min(col_end, blocks_[k].col_end);
      if (lo < hi) streams_[k]->update(data + (lo - col) * element_size, (hi - lo) * element_size);
    }
  }

  uint64_t digest(size_t k) const { return streams_[k]->digest(); }

 private:
  std::vector<Rect> blocks_;
  std::vector<std::unique_ptr<Xxh3Stream>> streams_;
};

// The rectangle a band of blocks covers.
Rect span_of(const std::vector<Rect>& band) {
  return {band.front().row_begin, band.front().row_end, band.front().col_begin, band.back().col_end};
}

// Calls `visit(band)` for each band of `blocks` (consecutive blocks of the same rows, as
// checksum_blocks lists them), in order.
template <typename Visit>
void for_each_band(const std::vector<Rect>& blocks, const Visit& visit) {
  for (size_t first = 0; first < blocks.size();) {
    size_t last = first + 1;
    while (last < blocks.size() && blocks[last].row_begin == blocks[first].row_begin) ++last;
    visit(std::vector<Rect>(blocks.begin() + first, blocks.begin() + last));
    first = last;
  }
}

}  // namespace

std::vector<Block> write_slice(File& file, uint64_t tensor_offset, uint64_t cols,
                               size_t element_size, const Rect& slice, const void* local,
                               uint64_t grid) {
  const char* source = static_cast<const char*>(local);
  const std::vector<Rect> blocks = checksum_blocks(slice, element_size, grid);
  std::vector<Block> out;
  // Where a core is to spare, a helper writes each chunk while the next is copied and hashed.
  // It lives for this call only, so that no thread of ours outlives it (a fork() between saves
  // copies none); on an early exit its destructor waits for the write in flight.
  const bool pipelined = slice.area() * element_size > kBounceBufferBytes && WriteBehind::worthwhile();
  std::unique_ptr<WriteBehind> helper = pipelined ? std::make_unique<WriteBehind>() : nullptr;
  int next_buffer = 0;
  for_each_band(blocks, [&](const std::vector<Rect>& band) {
    BandHash hash(band);
    for_each_run(span_of(band), cols, [&](const Run& run) {
      const char* from = source + offset_in(slice, run.row, run.col, element_size);
      const uint64_t at = tensor_offset + (run.row * cols + run.col) * element_size;
      const uint64_t size = run.width * run.rows * element_size;
      for (uint64_t done = 0; done < size; done += kBounceBufferBytes) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(kBounceBufferBytes, size - done));
        char* bounce = bounce_buffer(next_buffer);
        std::memcpy(bounce, from + done, n);
        for_each_segment(run, done / element_size, n / element_size, bounce, element_size,
                         [&](uint64_t, uint64_t col, uint64_t col_end, const char* data) {
                           hash.update(col, col_end, data, element_size);
                         });
        if (pipelined) {
          helper->submit(file, bounce, n, at + done);
          next_buffer = 1 - next_buffer;
        } else {
          file.write_at(bounce, n, at + done);
          file.start_writeback_of_windows(at + done, n);
        }
      }
    });
    for (size_t k = 0; k < band.size(); ++k) out.push_back(block_of(band[k], hash.digest(k)));
  });
  if (pipelined) helper->drain();
  return out;
}

std::vector<Block> write_rows(File& file, uint64_t tensor_offset, uint64_t cols, size_t element_size,
                              const Rect& rows, const std::vector<ColumnPiece>& pieces, uint64_t grid) {
  std::vector<Block> out;
  char* bounce = bounce_buffer();
  size_t filled = 0;
  uint64_t at = tensor_offset + rows.row_begin * cols * element_size;
  auto flush = [&] {
    file.write_at(bounce, filled, at);
    file.start_writeback_of_windows(at, filled);
    at += filled;
    filled = 0;
  };
  for_each_band(checksum_blocks(rows, element_size, grid), [&](const std::vector<Rect>& band) {
    BandHash hash(band);
    const Rect span = span_of(band);
    for (uint64_t r = span.row_begin; r < span.row_end; ++r) {
      for (const ColumnPiece& piece : pieces) {
        const uint64_t width = piece.col_end - piece.col_begin;
        const char* from = static_cast<const char*>(piece.data) + (r - rows.row_begin) * width * element_size;
        // Whole elements at a time: the bounce buffer holds a whole number of them.
        for (uint64_t done = 0; done < width;) {
          const uint64_t n = std::min<uint64_t>(width - done, (kBounceBufferBytes - filled) / element_size);
          std::memcpy(bounce + filled, from + done * element_size, n * element_size);
          hash.update(piece.col_begin + done, piece.col_begin + done + n, bounce + filled, element_size);
          filled += n * element_size;
          done += n;
          if (filled + element_size > kBounceBufferBytes) flush();
        }
      }
    }
    for (size_t k = 0; k < band.size(); ++k) out.push_back(block_of(band[k], hash.digest(k)));
  });
  if (filled > 0) flush();
  return out;
}

void read_band_into(const File& file, const TensorRecord& record, const std::vector<Block>& blocks,
                    const Rect& dest_rect, void* dest_data) {
  const size_t element_size =
      c10::elementSize(scalar_type_from_safetensors(record.dtype(), record.name()));
  const uint64_t cols = matrix_shape({record.shape().begin(), record.shape().end()}).cols;
  std::vector<Rect> band;
  for (const Block& b : blocks) band.push_back(rect_of(b));
  const Rect span = span_of(band);
  const bool inside = intersection(span, dest_rect) == span;
  char* dest = static_cast<char*>(dest_data);
  char* bounce = bounce_buffer();
  BandHash hash(band);
  // The runs' chunks read into the bounce buffer together: chunk i lands at ranges[i].
  struct Chunk {
    Run run;
    uint64_t done;  // bytes of the run before the chunk
  };
  std::vector<Chunk> chunks;
  std::vector<ReadRange> ranges;
  size_t filled = 0;
  const auto drain = [&] {
    read_ranges(file, ranges);
    for (size_t i = 0; i < chunks.size(); ++i) {
      const Run& run = chunks[i].run;
      const uint64_t done = chunks[i].done;
      const char* data = static_cast<const char*>(ranges[i].data);
      const size_t n = ranges[i].size;
      // One copy per chunk when the run is contiguous in the destination too.
      const bool direct = inside && (run.rows == 1 || dest_rect.cols() == run.width);
      if (direct) {
        std::memcpy(dest + offset_in(dest_rect, run.row, run.col, element_size) + done, data, n);
      }
      for_each_segment(run, done / element_size, n / element_size, data, element_size,
                       [&](uint64_t row, uint64_t col, uint64_t col_end, const char* segment) {
                         hash.update(col, col_end, segment, element_size);
                         if (direct || row < dest_rect.row_begin || row >= dest_rect.row_end) return;
                         const uint64_t lo = std::max(col, dest_rect.col_begin);
                         const uint64_t hi = std::min(col_end, dest_rect.col_end);
                         if (lo < hi) {
                           std::memcpy(dest + offset_in(dest_rect, row, lo, element_size),
                                       segment + (lo - col) * element_size, (hi - lo) * element_size);
                         }
                       });
    }
    chunks.clear();
    ranges.clear();
    filled = 0;
  };
  // A narrow band's runs are row pieces, read many to a system call (read_ranges.h).
  for_each_run(span, cols, [&](const Run& run) {
    const uint64_t at = record.offset() + (run.row * cols + run.col) * element_size;
    const uint64_t size = run.width * run.rows * element_size;
    for (uint64_t done = 0; done < size; done += kBounceBufferBytes) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(kBounceBufferBytes, size - done));
      if (filled + n > kBounceBufferBytes) drain();
      chunks.push_back({run, done});
      ranges.push_back({bounce + filled, n, at + done});
      filled += n;
    }
  });
  drain();
  for (size_t k = 0; k < blocks.size(); ++k) {
    if (hash.digest(k) == blocks[k].xxh3()) continue;
    const Block& block = blocks[k];
    throw CheckpointError(absl::StrCat(
        "checksum mismatch in ", file.path(), ": tensor ", record.name(), " rows [", block.row_begin(), ", ",
        block.row_end(), ") x columns [", block.col_begin(), ", ", block.col_end(), ") from byte ",
        record.offset() + (block.row_begin() * cols + block.col_begin()) * element_size,
        " does not match the manifest (corrupt file)"));
  }
}

}  // namespace mto
