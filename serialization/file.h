#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace mto {

// An open file descriptor that closes itself. Every failure throws CheckpointError with the
// path, the operation and the offset. Not safe to share between threads while writing;
// concurrent read_at calls are safe.
class File {
 public:
  // Creates (or truncates) `path` for writing, mode 0644.
  static File create(const std::string& path);
  // Opens `path` for writing at given offsets, creating it (mode 0644) if it is missing and
  // keeping what it holds: several processes write their parts of one file this way.
  static File open_shared(const std::string& path);
  // Opens an existing `path` for reading.
  static File open(const std::string& path);
  // Opens `path`, a file named by a checkpoint, for reading. Refuses (CheckpointError) a
  // symbolic link, so that a checkpoint cannot lead its reader to a file outside its
  // directory, and anything but a regular file (a FIFO would block the reader).
  static File open_checkpoint_file(const std::string& path);

  File(File&& other) noexcept;
  File& operator=(File&& other) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File();

  // Appends `size` bytes at the current position.
  void write(const void* data, size_t size);
  // Writes `size` bytes at `offset` (pwrite), leaving the current position alone.
  void write_at(const void* data, size_t size, uint64_t offset);
  // Reads exactly `size` bytes at `offset`; a short file is reported as truncated.
  void read_at(void* data, size_t size, uint64_t offset) const;
  // Size of the file now, from fstat.
  uint64_t size() const;
  // Asks the kernel to start writing bytes [offset, offset + size) to the device now, without
  // waiting (sync_file_range), so that writeback overlaps the writes after them and sync()
  // has little left to do: a 1 GiB write + fsync measured 0.52 s plain, 0.31 s so. Best
  // effort: a failure shows in sync().
  void start_writeback(uint64_t offset, uint64_t size);
  // Starts writeback (as start_writeback) of each whole 8 MiB window, aligned in the file,
  // that the bytes [offset, offset + size) just written complete. Kicking each 512 KiB chunk
  // instead made several ranks writing at once wait on the device queue: a 3 GiB save on 4
  // ranks took 5.3 s against 3.0 s so, and 1 GiB on 2 and 4 ranks 0.50 and 0.58 s against
  // 0.41 and 0.54 s (tools/bench, medians of 3).
  void start_writeback_of_windows(uint64_t offset, uint64_t size);
  // Flushes data and metadata to the device (fsync).
  void sync();
  // Closes the descriptor, reporting a failure of close itself.
  void close();

  const std::string& path() const { return path_; }
  int fd() const { return fd_; }

 private:
  File(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}

  int fd_ = -1;
  std::string path_;
  uint64_t written_ = 0;
};

// Reads the whole of `path`, which must be at most `max_size` bytes.
std::string read_file(const std::string& path, uint64_t max_size);

// As read_file, for a file named by a checkpoint: opened with File::open_checkpoint_file.
std::string read_checkpoint_file(const std::string& path, uint64_t max_size);

// Writes `contents` to `path` (created or truncated) and fsyncs it.
void write_file_synced(const std::string& path, const std::string& contents);

// fsyncs a directory, so that entries created or renamed in it are durable.
void sync_directory(const std::string& path);

// "<what> <path>: <strerror(errno_value)>", the common form of I/O error messages.
std::string io_error_message(const std::string& what, const std::string& path, int errno_value);

}  // namespace mto
