#include "serialization/staging_directory.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <system_error>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/file.h"

namespace mto {
namespace fs = std::filesystem;
namespace {

constexpr char kStagingInfix[] = ".mto-staging-";
constexpr char kPreviousInfix[] = ".mto-previous-";

// Creates "<parent>/.<name><infix>XXXXXX" and returns its path.
std::string make_hidden_sibling(const std::string& parent, const std::string& name,
                                const char* infix) {
  std::string templ = absl::StrCat(parent, "/.", name, infix, "XXXXXX");
  if (::mkdtemp(templ.data()) == nullptr) {
    throw CheckpointError(io_error_message("cannot create a directory next to", parent + "/" + name, errno));
  }
  return templ;
}

// The process's file mode creation mask, read from /proc/self/status where the kernel
// reports it; otherwise set and restored, which is not atomic but only races with threads
// creating files at the same instant.
mode_t current_umask() {
  FILE* status = ::fopen("/proc/self/status", "re");
  if (status != nullptr) {
    char line[256];
    unsigned int mask = 0;
    bool found = false;
    while (!found && ::fgets(line, sizeof(line), status) != nullptr) {
      found = ::sscanf(line, "Umask: %o", &mask) == 1;
    }
    ::fclose(status);
    if (found) return static_cast<mode_t>(mask);
  }
  const mode_t mask = ::umask(0);
  ::umask(mask);
  return mask;
}

void rename_or_throw(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    throw CheckpointError(io_error_message(absl::StrCat("cannot rename ", from, " to"), to, errno));
  }
}

void remove_tree_quietly(const std::string& path) {
  std::error_code ignored;
  fs::remove_all(path, ignored);
}

// Removes the staging directories "<parent>/.<name>.mto-staging-*" other than `own` that no
// live StagingDirectory locks: a process killed in the middle of a save leaves its own
// behind. One that cannot be locked (in use, or a file system without flock) stays.
void remove_abandoned_staging(const std::string& parent, const std::string& name,
                              const std::string& own) {
  const std::string prefix = absl::StrCat(".", name, kStagingInfix);
  std::vector<std::string> abandoned;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(parent, ec)) {
    const std::string path = entry.path().string();
    if (path != own && absl::StartsWith(entry.path().filename().string(), prefix)) abandoned.push_back(path);
  }
  for (const std::string& path : abandoned) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) continue;
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) remove_tree_quietly(path);
    ::close(fd);
  }
}

}  // namespace

StagingDirectory::StagingDirectory(std::string target) : target_(std::move(target)) {
  while (target_.size() > 1 && target_.back() == '/') target_.pop_back();
  fs::path t = fs::absolute(target_);
  if (t.filename().empty() || t.filename() == "." || t.filename() == "..") {
    throw CheckpointError(absl::StrCat("cannot save a checkpoint as ", target_,
                                       ": name a directory"));
  }
  parent_ = t.parent_path().string();
  std::error_code ec;
  fs::create_directories(parent_, ec);
  if (ec) {
    throw CheckpointError(absl::StrCat("cannot create directory ", parent_, ": ", ec.message()));
  }
  fs::file_status status = fs::symlink_status(t, ec);
  if (fs::exists(status)) {
    if (!fs::is_directory(status)) {
      throw CheckpointError(absl::StrCat("refusing to replace ", target_,
                                         ": it exists and is not a directory"));
    }
    if (!fs::exists(t / kManifestFileName) && !fs::is_empty(t, ec)) {
      throw CheckpointError(absl::StrCat("refusing to replace ", target_,
                                         ": it exists and is not an mto checkpoint (no ",
                                         kManifestFileName, ")"));
    }
  }
  path_ = make_hidden_sibling(parent_, t.filename().string(), kStagingInfix);
  // mkdtemp makes the directory 0700, and the rename keeps that: the checkpoint follows
  // the umask like any directory the user creates, so a shared cluster can read it.
  if (::chmod(path_.c_str(), 0777 & ~current_umask()) != 0) {
    const int error = errno;
    remove_tree_quietly(path_);
    throw CheckpointError(io_error_message("cannot set the permissions of", path_, error));
  }
  lock_fd_ = ::open(path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (lock_fd_ >= 0) ::flock(lock_fd_, LOCK_EX | LOCK_NB);
  remove_abandoned_staging(parent_, t.filename().string(), path_);
}

StagingDirectory::~StagingDirectory() {
  if (!committed_) remove_tree_quietly(path_);
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

void StagingDirectory::commit() {
  sync_directory(path_);
  const std::string name = fs::path(fs::absolute(target_)).filename().string();
  if (::renameat2(AT_FDCWD, path_.c_str(), AT_FDCWD, target_.c_str(), RENAME_EXCHANGE) == 0) {
    // path_ now holds the previous checkpoint.
    committed_ = true;
    sync_directory(parent_);
    remove_tree_quietly(path_);
    return;
  }
  if (errno == ENOENT) {
    // No previous checkpoint.
    rename_or_throw(path_, target_);
    committed_ = true;
    sync_directory(parent_);
    return;
  }
  if (errno != EINVAL && errno != ENOSYS) {
    throw CheckpointError(io_error_message(absl::StrCat("cannot exchange ", path_, " with"), target_, errno));
  }
  // The file system cannot exchange: move the previous checkpoint aside, then rename.
  const std::string previous = make_hidden_sibling(parent_, name, kPreviousInfix);
  rename_or_throw(target_, previous);
  rename_or_throw(path_, target_);
  committed_ = true;
  sync_directory(parent_);
  remove_tree_quietly(previous);
}

std::string find_previous_checkpoint(const std::string& target) {
  std::error_code ec;
  fs::path t = fs::absolute(target);
  if (fs::exists(t, ec)) return "";
  const std::string prefix = absl::StrCat(".", t.filename().string(), kPreviousInfix);
  for (const auto& entry : fs::directory_iterator(t.parent_path(), ec)) {
    if (absl::StartsWith(entry.path().filename().string(), prefix) &&
        fs::exists(entry.path() / kManifestFileName, ec)) {
      return entry.path().string();
    }
  }
  return "";
}

}  // namespace mto
