#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "serialization/file.h"
#include "serialization/manifest.pb.h"
#include "serialization/tensor_blocks.h"

namespace mto {

// Moving slices of tensors between memory and a safetensors file, block by block, with a
// checksum for every block (see tensor_blocks.h for the geometry). Bytes pass through the
// thread's bounce buffer, or go straight between the file and memory where a block's bytes
// are contiguous on both sides.

// Writes the slice `slice` of a tensor whose data starts at byte `tensor_offset` of `file`
// and whose matrix has `cols` columns, from `local`: the slice's elements, contiguous and
// row-major. The slice is cut into checksum_blocks(slice, element_size, grid) and written by
// pwrite: whole rows a run of rows at a time, the parts of rows of a narrower slice one part
// at a time (a save exchanges such parts into whole rows instead: opt/row_exchange.h).
// Returns the blocks with their XXH3-64 of the bytes as written. Other processes may write
// other slices of the same file at the same time. Throws CheckpointError on an I/O failure
// or a full disk.
std::vector<Block> write_slice(File& file, uint64_t tensor_offset, uint64_t cols,
                               size_t element_size, const Rect& slice, const void* local,
                               uint64_t grid);

// Columns [col_begin, col_end) of a run of consecutive rows, held in memory row-major and
// contiguous at `data`: the part of a row band that one rank sends its row's writer.
struct ColumnPiece {
  uint64_t col_begin = 0;
  uint64_t col_end = 0;
  const void* data = nullptr;
};

// Writes the whole rows `rows` (rows.col_begin 0, rows.col_end `cols`) of a tensor whose
// data starts at byte `tensor_offset` of `file`, assembled from `pieces`: ascending, they
// tile the columns, each holding rows.rows() rows of its columns. The rows are cut into
// checksum_blocks(rows, element_size, grid), copied piece by piece into the thread's bounce
// buffer, hashed there and written by pwrite, half a MiB at a time. Returns the blocks with
// their XXH3-64. Throws CheckpointError on an I/O failure or a full disk.
std::vector<Block> write_rows(File& file, uint64_t tensor_offset, uint64_t cols, size_t element_size,
                              const Rect& rows, const std::vector<ColumnPiece>& pieces, uint64_t grid);

// Reads the blocks `band` of the tensor `record` from `file` (one group of row_bands: the
// same rows, adjacent columns, ascending), checks each block's XXH3-64, and copies the
// elements they share with `dest_rect` into `dest`: the elements of `dest_rect`, contiguous
// and row-major. The band's bytes are read once into the thread's bounce buffer, hashed
// there and copied out: a run of whole rows by pread, the pieces of narrower rows many to a
// system call (read_ranges.h). Not straight into `dest`, nor from a mapping of the file:
// where the kernel's first access to a user page costs a page fault's price (the VMs
// measured in bounce_buffer.h), either made restoring the GPT at tp 4 5x slower
// (tools/bench/gpt_checkpoint_bench.sh). Elements of `dest` outside the band are left alone.
// Throws CheckpointError naming the file, the tensor and the block's rows and columns on a
// checksum mismatch or a short read; `dest` then holds undefined values.
void read_band_into(const File& file, const TensorRecord& record, const std::vector<Block>& band,
                    const Rect& dest_rect, void* dest);

}  // namespace mto
