#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "serialization/file.h"
#include "serialization/manifest.pb.h"
#include "serialization/modelopt_state.pb.h"
#include "serialization/tensor_blocks.h"

namespace mto {

// Reading a checkpoint directory on one process, every byte checked: the manifest, the
// metadata files, the index, the shards' headers and tensor data block by block. The rules
// of the format live here; opt/checkpoint.cc only decides which rank reads what.

// Reads and validates `dir`/MANIFEST (read_manifest); if it is missing because a save was
// interrupted mid-commit, the error names where the previous checkpoint is.
Manifest read_checkpoint_manifest(const std::string& dir);

// Reads the whole metadata file `record` of `dir` and checks its size and XXH3-64. Throws
// CheckpointError naming the file (truncated, corrupt).
std::string read_checked_file(const std::string& dir, const FileRecord& record);

// Reads every extra file of `dir` (Manifest.extra_files) and checks its size and XXH3-64.
// Throws CheckpointError naming the first file that is missing, truncated or corrupt.
void check_extra_files(const std::string& dir, const Manifest& manifest);

// Checks the index text `contents` of `dir`, which other tools follow to the shards: a
// weight_map naming only the manifest's shard files, each tensor in the file the manifest
// puts it in. Throws CheckpointError naming the index.
void check_index(const std::string& dir, const Manifest& manifest, const std::string& contents);

// Opens the shard `shard` of `dir` and checks its size and header bytes against the manifest.
File open_shard(const std::string& dir, const ShardRecord& shard);

// Reads the part `dest_rect` of the tensor `record` from its open shard `file` into `dest`
// (the elements of dest_rect, contiguous, row-major), reading every checksum block that
// overlaps it whole and verifying it (adjacent blocks of the same rows in one pass). Throws
// CheckpointError naming the file, the tensor and the block on a mismatch.
void read_tensor_part(const File& file, const TensorRecord& record, const Rect& dest_rect,
                      void* dest);

// One part of a tensor for read_tensor_parts: the elements `rect` of the tensor `record`, in
// its open shard `file`, into `dest` as read_tensor_part reads them; with a null `dest`, the
// blocks overlapping `rect` are read and verified only.
struct TensorPart {
  const File* file;
  const TensorRecord* record;
  Rect rect;
  void* dest;
};

// Reads every part as read_tensor_part does, their bands of blocks spread over up to
// `threads` threads (this one included) where the parts are large enough to gain from it.
// On a mismatch or an I/O failure, throws the CheckpointError of the first failing band in
// the parts' order, as one thread would; `dest`s then hold undefined values.
void read_tensor_parts(const std::vector<TensorPart>& parts, unsigned threads);

// Threads for read_tensor_parts: the cores this rank may use (cores_per_local_rank), at most
// kMaxReadThreads. A 1 GiB restore on one rank of a 2-core machine took 0.13 s on one thread
// (1.35x a raw read into warm memory: the checksums) and 0.08 s on two (0.82x).
unsigned read_threads();
inline constexpr unsigned kMaxReadThreads = 8;

// Reads of fewer bytes in all (counting each part's whole tensor) stay on one thread:
// starting threads would cost more than they save.
inline constexpr uint64_t kParallelReadBytes = uint64_t{8} << 20;

// The threads, of `threads`, that a read of `bytes` in all takes: one below
// kParallelReadBytes, at least one always.
unsigned threads_for_read(uint64_t bytes, unsigned threads);

// What a checkpoint directory says about itself: its manifest and its modelopt state.
struct CheckpointContents {
  Manifest manifest;
  ModeloptState state;
};

// Reads the manifest, the modelopt state and the index of `dir`, checking their framing,
// sizes and checksums (tensor data is not read). Throws CheckpointError naming the file.
CheckpointContents read_checkpoint_contents(const std::string& dir);

// Checks the metadata files of `dir` (read_checkpoint_contents) and its extra files, then
// reads every byte of every shard through small buffers (read_tensor_parts, on
// read_threads()) and checks it against the manifest: sizes, safetensors headers, every
// block's XXH3-64. Calls `progress` with the bytes checked so far and the total after each
// tensor. Throws CheckpointError naming the file, the tensor and the block of the first
// mismatch.
void verify_checkpoint(const std::string& dir,
                       const std::function<void(uint64_t done, uint64_t total)>& progress = nullptr);

}  // namespace mto
