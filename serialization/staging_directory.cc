#include "serialization/staging_directory.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <system_error>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/checksum.h"
#include "serialization/file.h"
#include "serialization/manifest_file.h"

namespace mto {
namespace fs = std::filesystem;
namespace {

constexpr char kStagingInfix[] = ".mto-staging-";
constexpr char kPreviousInfix[] = ".mto-previous-";

// The start of the hidden siblings' names of the checkpoint `name`: ".<name><infix>". A name
// too long to leave room for the infix and mkdtemp's six characters within NAME_MAX (255
// bytes) is cut to 200 bytes and told apart by the XXH3 of the whole name:
// ".<first 200 bytes>~<16 hex digits><infix>".
std::string sibling_prefix(const std::string& name, const char* infix) {
  constexpr size_t kNameMax = 255;
  constexpr size_t kKept = 200;
  if (1 + name.size() + std::strlen(infix) + 6 <= kNameMax) return absl::StrCat(".", name, infix);
  return absl::StrCat(".", name.substr(0, kKept), "~", absl::StrFormat("%016x", xxh3_64(name.data(), name.size())),
                      infix);
}

// Creates "<parent>/<sibling_prefix(name, infix)>XXXXXX" and returns its path.
std::string make_hidden_sibling(const std::string& parent, const std::string& name,
                                const char* infix) {
  std::string templ = absl::StrCat(parent, "/", sibling_prefix(name, infix), "XXXXXX");
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
  // A checkpoint made read-only (its directory's mode survives the exchange) is still ours
  // to delete.
  ::chmod(path.c_str(), S_IRWXU);
  std::error_code ignored;
  fs::remove_all(path, ignored);
}

// Removes the staging directories "<parent>/.<name>.mto-staging-*" other than `own` that no
// live StagingDirectory locks: a process killed in the middle of a save leaves its own
// behind. One that cannot be locked (in use, or a file system without flock) stays.
void remove_abandoned_staging(const std::string& parent, const std::string& name,
                              const std::string& own) {
  const std::string prefix = sibling_prefix(name, kStagingInfix);
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

// Whether the directory `path` is the root of a mount. The kernel says so where it reports
// STATX_ATTR_MOUNT_ROOT (Linux 5.8 on; bind mounts of the same file system included, btrfs
// subvolumes not); elsewhere, whether its device differs from its parent's.
bool is_mount_point(const fs::path& path) {
  struct statx info;
  if (::statx(AT_FDCWD, path.c_str(), AT_SYMLINK_NOFOLLOW, 0, &info) == 0 &&
      (info.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) != 0) {
    return (info.stx_attributes & STATX_ATTR_MOUNT_ROOT) != 0;
  }
  struct stat own, parent;
  return ::stat(path.c_str(), &own) == 0 && ::stat(path.parent_path().c_str(), &parent) == 0 &&
         own.st_dev != parent.st_dev;
}

// Throws CheckpointError starting with `what` unless a directory can be created in `dir`, as
// the save will: by creating one and removing it. access(2) cannot tell, for root passes it
// everywhere, and a read-only or special file system (sysfs, a read-only mount) refuses only
// the creation itself.
void check_writable(const fs::path& dir, const std::string& what) {
  std::string probe = (dir / ".mto-probe-XXXXXX").string();
  if (::mkdtemp(probe.data()) == nullptr) throw CheckpointError(io_error_message(what, dir.string(), errno));
  ::rmdir(probe.c_str());
}

// The absolute path of the checkpoint directory `target` (trailing slashes dropped). Throws
// CheckpointError if it names no directory ("", ".", "..").
fs::path checkpoint_path(std::string target) {
  while (target.size() > 1 && target.back() == '/') target.pop_back();
  if (target.empty()) throw CheckpointError("cannot save a checkpoint under an empty path");
  fs::path t = fs::absolute(target);
  if (t.filename().empty() || t.filename() == "." || t.filename() == "..") {
    throw CheckpointError(absl::StrCat("cannot save a checkpoint as ", target, ": name a directory"));
  }
  return t;
}

// The files of the checkpoint in `dir` that its MANIFEST records, MANIFEST included.
std::set<std::string> recorded_files(const std::string& dir) {
  const Manifest manifest = read_manifest(dir);
  std::set<std::string> files = {kManifestFileName, manifest.modelopt_state().file(), manifest.index().file()};
  for (const auto& shard : manifest.shards()) files.insert(shard.file());
  for (const auto& extra : manifest.extra_files()) files.insert(extra.file());
  return files;
}

}  // namespace

void check_replaceable(const std::string& target) {
  const fs::path t = checkpoint_path(target);
  std::error_code ec;
  const fs::file_status status = fs::symlink_status(t, ec);
  if (fs::is_symlink(status)) {
    throw CheckpointError(absl::StrCat("refusing to replace ", target, ": it is a symbolic link (to ",
                                       fs::read_symlink(t, ec).string(), "); name the directory itself"));
  }
  if (!fs::exists(status)) {
    // A save interrupted between the two renames of the fallback commit left the previous
    // checkpoint aside: a new one must not bury it.
    if (const std::string previous = find_previous_checkpoint(t.string()); !previous.empty()) {
      throw CheckpointError(absl::StrCat("refusing to save ", target, ": an interrupted save left its previous ",
                                         "checkpoint in ", previous, "; move it back to ", target, " first"));
    }
    // The nearest existing ancestor is where the directories get created.
    fs::path existing = t.parent_path();
    while (!fs::exists(existing, ec) && existing.has_relative_path()) existing = existing.parent_path();
    if (!fs::is_directory(existing, ec)) {
      throw CheckpointError(absl::StrCat("cannot save ", target, ": ", existing.string(), " is not a directory"));
    }
    check_writable(existing, absl::StrCat("cannot save ", target, ": cannot write in"));
    return;
  }
  if (!fs::is_directory(status)) {
    throw CheckpointError(absl::StrCat("refusing to replace ", target, ": it exists and is not a directory"));
  }
  if (is_mount_point(t)) {
    throw CheckpointError(absl::StrCat("refusing to replace ", target, ": it is a mount point, which a save cannot ",
                                       "swap for a new directory; save into a directory inside it"));
  }
  check_writable(t.parent_path(), absl::StrCat("cannot replace ", target, ": cannot write in"));
  // In a sticky directory (/tmp, a shared scratch) only the owner of an entry or of the
  // directory may rename it, which the commit does. Root may (CAP_FOWNER).
  struct stat own, parent;
  const uid_t user = ::geteuid();
  if (user != 0 && ::stat(t.c_str(), &own) == 0 && ::stat(t.parent_path().c_str(), &parent) == 0 &&
      (parent.st_mode & S_ISVTX) && own.st_uid != user && parent.st_uid != user) {
    throw CheckpointError(absl::StrCat("refusing to replace ", target, ": it belongs to another user (uid ",
                                       own.st_uid, ") and ", t.parent_path().string(),
                                       " is a sticky directory, where only its owner may replace it"));
  }
  const bool empty = fs::is_empty(t, ec);
  if (ec) throw CheckpointError(absl::StrCat("cannot replace ", target, ": cannot list it: ", ec.message()));
  if (empty) return;
  if (!fs::exists(fs::symlink_status(t / kManifestFileName, ec))) {
    throw CheckpointError(absl::StrCat("refusing to replace ", target, ": it exists and is not an mto checkpoint (no ",
                                       kManifestFileName, ")"));
  }
  std::set<std::string> recorded;
  try {
    recorded = recorded_files(t.string());
  } catch (const CheckpointError& e) {
    throw CheckpointError(absl::StrCat("refusing to replace ", target, ": it is not a readable mto checkpoint (",
                                       e.what(), "); delete it yourself if it may go"));
  }
  std::vector<std::string> foreign;
  for (auto it = fs::directory_iterator(t, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::error_code type;
    if (!recorded.count(name)) foreign.push_back(name + (it->is_directory(type) ? "/" : ""));
  }
  if (ec) throw CheckpointError(absl::StrCat("cannot replace ", target, ": cannot list it: ", ec.message()));
  if (!foreign.empty()) {
    std::sort(foreign.begin(), foreign.end());
    throw CheckpointError(absl::StrCat("refusing to replace ", target,
                                       ": it holds what its checkpoint does not record, which would be lost: ",
                                       absl::StrJoin(foreign, ", "), " (move it out first)"));
  }
}

StagingDirectory::StagingDirectory(std::string target) : target_(std::move(target)) {
  const fs::path t = checkpoint_path(target_);
  while (target_.size() > 1 && target_.back() == '/') target_.pop_back();
  parent_ = t.parent_path().string();
  check_replaceable(target_);
  std::error_code ec;
  fs::create_directories(parent_, ec);
  if (ec) {
    throw CheckpointError(absl::StrCat("cannot create directory ", parent_, ": ", ec.message()));
  }
  path_ = make_hidden_sibling(parent_, t.filename().string(), kStagingInfix);
  // mkdtemp makes the directory 0700, and the rename keeps that: a new checkpoint follows
  // the umask like any directory the user creates, so a shared cluster can read it; one
  // that replaces a checkpoint keeps that directory's permissions and group. The ranks
  // write into it first, so it stays writable by its owner until commit() gives it its
  // mode (a checkpoint made read-only is replaced by one as read-only).
  struct stat previous;
  const bool replaces = ::stat(t.c_str(), &previous) == 0;
  mode_ = replaces ? previous.st_mode & 07777 : 0777 & ~current_umask();
  if (::chmod(path_.c_str(), mode_ | S_IRWXU) != 0) {
    const int error = errno;
    remove_tree_quietly(path_);
    throw CheckpointError(io_error_message("cannot set the permissions of", path_, error));
  }
  // Only a group the user belongs to can be given (or any, as root); otherwise the
  // directory keeps the user's own group.
  if (replaces && ::chown(path_.c_str(), static_cast<uid_t>(-1), previous.st_gid) != 0) errno = 0;
  lock_fd_ = ::open(path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (lock_fd_ >= 0) ::flock(lock_fd_, LOCK_EX | LOCK_NB);
  remove_abandoned_staging(parent_, t.filename().string(), path_);
}

StagingDirectory::~StagingDirectory() {
  if (!committed_) remove_tree_quietly(path_);
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

void StagingDirectory::commit() {
  if ((mode_ & S_IRWXU) != S_IRWXU && ::chmod(path_.c_str(), mode_) != 0) {
    throw CheckpointError(io_error_message("cannot set the permissions of", path_, errno));
  }
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
  if (target.empty()) return "";
  std::error_code ec;
  fs::path t = fs::absolute(target);
  if (fs::exists(t, ec)) return "";
  const std::string prefix = sibling_prefix(t.filename().string(), kPreviousInfix);
  for (const auto& entry : fs::directory_iterator(t.parent_path(), ec)) {
    if (absl::StartsWith(entry.path().filename().string(), prefix) &&
        fs::exists(entry.path() / kManifestFileName, ec)) {
      return entry.path().string();
    }
  }
  return "";
}

}  // namespace mto
