#pragma once

#include <string>

namespace mto {

// A hidden sibling directory in which a new checkpoint is written, then swapped into place
// with one atomic rename, so that a crash at any moment leaves the previous checkpoint
// intact and the new one complete or absent. Not safe to share between threads.
//
//   StagingDirectory staging("/ckpt/run1");
//   ... write files into staging.path(), fsync each ...
//   staging.commit();  // /ckpt/run1 is now the new checkpoint
class StagingDirectory {
 public:
  // Creates an empty directory "<parent>/.<name>.mto-staging-XXXXXX" next to `target`,
  // creating the parent directories if needed, and holds an exclusive flock on it while this
  // object lives. Removes the staging directories of earlier saves into `target` whose
  // process is gone (their lock is free): what a crash leaves behind. Throws
  // CheckpointError as check_replaceable does. A directory that replaces a checkpoint gets
  // its permissions (and group, where the user may give it); a new one follows the umask.
  explicit StagingDirectory(std::string target);
  // Removes the staging directory and what it holds unless commit() succeeded, and releases
  // the lock.
  ~StagingDirectory();
  StagingDirectory(const StagingDirectory&) = delete;
  StagingDirectory& operator=(const StagingDirectory&) = delete;

  // Where the new checkpoint's files go.
  const std::string& path() const { return path_; }

  // Makes the staged files the checkpoint at `target`: fsyncs the staging directory,
  // exchanges it with `target` in one renameat2(RENAME_EXCHANGE) (a plain rename when there
  // is no `target` yet), fsyncs the parent, and deletes the previous checkpoint. On file
  // systems without RENAME_EXCHANGE the previous checkpoint is first renamed aside to
  // "<parent>/.<name>.mto-previous-XXXXXX", which a crash between the two renames leaves
  // behind (restore then names it). Throws CheckpointError if a rename fails.
  void commit();

 private:
  std::string target_;
  std::string parent_;
  std::string path_;
  int lock_fd_ = -1;
  // The permissions commit() gives the directory.
  unsigned mode_ = 0;
  bool committed_ = false;
};

// Throws CheckpointError naming `target` unless a save could replace it without losing
// anything: it must be missing (with a writable ancestor), an empty directory, or an mto
// checkpoint whose MANIFEST reads and validates and that holds nothing else than the files
// it records; never a symbolic link, a mount point (bind mounts included) or a file; not
// another user's in a sticky directory; its parent writable (a directory can be created
// there); and not missing because an interrupted save left the previous checkpoint aside. Cheap:
// callers may run it before long work whose result goes to `target`.
void check_replaceable(const std::string& target);

// If `target` is missing because a save was interrupted between the two renames of the
// fallback commit, returns the directory that holds the previous checkpoint; else "".
std::string find_previous_checkpoint(const std::string& target);

}  // namespace mto
