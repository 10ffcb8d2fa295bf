#include "serialization/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "serialization/checkpoint_error.h"

namespace mto {
namespace {

// Linux moves at most this much per read or write call.
constexpr size_t kMaxIoChunk = size_t{1} << 30;

int open_or_throw(const std::string& path, int flags, const char* what) {
  int fd;
  do {
    fd = ::open(path.c_str(), flags | O_CLOEXEC, 0666);  // less the umask, as any file
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) throw CheckpointError(io_error_message(what, path, errno));
  return fd;
}

}  // namespace

std::string io_error_message(const std::string& what, const std::string& path, int errno_value) {
  return absl::StrCat(what, " ", path, ": ", std::strerror(errno_value));
}

File File::create(const std::string& path) {
  return File(open_or_throw(path, O_WRONLY | O_CREAT | O_TRUNC, "cannot create"), path);
}

File File::open_shared(const std::string& path) {
  return File(open_or_throw(path, O_WRONLY | O_CREAT, "cannot open for writing"), path);
}

File File::open(const std::string& path) {
  return File(open_or_throw(path, O_RDONLY, "cannot open"), path);
}

File File::open_checkpoint_file(const std::string& path) {
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0 && errno == ELOOP) {
    throw CheckpointError(absl::StrCat("refusing to open ", path, ": it is a symbolic link, and the "
                                       "files of a checkpoint must be regular files in its directory"));
  }
  if (fd < 0) throw CheckpointError(io_error_message("cannot open", path, errno));
  File file(fd, path);
  struct stat st;
  if (::fstat(fd, &st) != 0) throw CheckpointError(io_error_message("cannot stat", path, errno));
  if (!S_ISREG(st.st_mode)) {
    throw CheckpointError(absl::StrCat("refusing to open ", path, ": it is not a regular file"));
  }
  return file;
}

File::File(File&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      path_(std::move(other.path_)),
      written_(other.written_) {}

File& File::operator=(File&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    path_ = std::move(other.path_);
    written_ = other.written_;
  }
  return *this;
}

File::~File() {
  if (fd_ >= 0) ::close(fd_);
}

void File::write(const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd_, p, std::min(size, kMaxIoChunk));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw CheckpointError(
          io_error_message(absl::StrCat("cannot write at offset ", written_, " of"), path_, errno));
    }
    p += n;
    size -= static_cast<size_t>(n);
    written_ += static_cast<uint64_t>(n);
  }
}

void File::write_at(const void* data, size_t size, uint64_t offset) {
  const char* p = static_cast<const char*>(data);
  uint64_t at = offset;
  while (size > 0) {
    ssize_t n = ::pwrite(fd_, p, std::min(size, kMaxIoChunk), static_cast<off_t>(at));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw CheckpointError(
          io_error_message(absl::StrCat("cannot write at offset ", at, " of"), path_, errno));
    }
    p += n;
    at += static_cast<uint64_t>(n);
    size -= static_cast<size_t>(n);
  }
}

void File::read_at(void* data, size_t size, uint64_t offset) const {
  char* p = static_cast<char*>(data);
  uint64_t at = offset;
  size_t left = size;
  while (left > 0) {
    ssize_t n = ::pread(fd_, p, std::min(left, kMaxIoChunk), static_cast<off_t>(at));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw CheckpointError(
          io_error_message(absl::StrCat("cannot read at offset ", at, " of"), path_, errno));
    }
    if (n == 0) {
      throw CheckpointError(absl::StrCat("file ", path_, " is truncated: expected ", size,
                                         " bytes at offset ", offset, ", the file ends at ",
                                         at));
    }
    p += n;
    at += static_cast<uint64_t>(n);
    left -= static_cast<size_t>(n);
  }
}

uint64_t File::size() const {
  struct stat st;
  if (::fstat(fd_, &st) != 0) throw CheckpointError(io_error_message("cannot stat", path_, errno));
  return static_cast<uint64_t>(st.st_size);
}

void File::start_writeback(uint64_t offset, uint64_t size) {
  ::sync_file_range(fd_, static_cast<off_t>(offset), static_cast<off_t>(size), SYNC_FILE_RANGE_WRITE);
}

void File::start_writeback_of_windows(uint64_t offset, uint64_t size) {
  constexpr uint64_t kWindow = uint64_t{8} << 20;
  for (uint64_t end = (offset / kWindow + 1) * kWindow; end <= offset + size; end += kWindow) {
    start_writeback(end - kWindow, kWindow);
  }
}

void File::sync() {
  if (::fsync(fd_) != 0) throw CheckpointError(io_error_message("cannot fsync", path_, errno));
}

void File::close() {
  int fd = std::exchange(fd_, -1);
  if (fd >= 0 && ::close(fd) != 0) {
    throw CheckpointError(io_error_message("cannot close", path_, errno));
  }
}

namespace {

std::string read_whole(const File& file, uint64_t max_size) {
  uint64_t size = file.size();
  if (size > max_size) {
    throw CheckpointError(absl::StrCat("file ", file.path(), " is ", size, " bytes, more than the ",
                                       max_size, " bytes it may have"));
  }
  std::string contents(size, '\0');
  file.read_at(contents.data(), contents.size(), 0);
  return contents;
}

}  // namespace

std::string read_file(const std::string& path, uint64_t max_size) {
  return read_whole(File::open(path), max_size);
}

std::string read_checkpoint_file(const std::string& path, uint64_t max_size) {
  return read_whole(File::open_checkpoint_file(path), max_size);
}

void write_file_synced(const std::string& path, const std::string& contents) {
  File file = File::create(path);
  file.write(contents.data(), contents.size());
  file.sync();
  file.close();
}

void sync_directory(const std::string& path) {
  int fd = open_or_throw(path, O_RDONLY | O_DIRECTORY, "cannot open directory");
  int rc = ::fsync(fd);
  int saved = errno;
  ::close(fd);
  if (rc != 0) throw CheckpointError(io_error_message("cannot fsync directory", path, saved));
}

}  // namespace mto
