// Atomic commit of a checkpoint directory.
#include <gtest/gtest.h>

#include <sched.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/file.h"
#include "serialization/manifest_file.h"
#include "serialization/staging_directory.h"
#include "tests/testing/errors.h"
#include "tests/testing/temp_dir.h"

namespace mto {
namespace {

namespace fs = std::filesystem;

void write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// Writes a checkpoint with no tensors into `dir`: its modelopt state and index hold `tag`,
// and its MANIFEST records them.
void write_checkpoint(const std::string& dir, const std::string& tag) {
  fs::create_directories(dir);
  Manifest manifest;
  manifest.set_format_version(kCheckpointFormatVersion);
  manifest.set_world_size(1);
  manifest.set_tensor_parallel_size(1);
  *manifest.mutable_modelopt_state() = write_recorded_file(dir, kStateFileName, tag);
  *manifest.mutable_index() = write_recorded_file(dir, kIndexFileName, tag);
  write_manifest(dir, manifest);
}

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename());
  std::sort(out.begin(), out.end());
  return out;
}

// The error text of `step` run in a child process after `enter` (which gives the child a
// mount namespace or another user); "cannot enter" when `enter` fails, as it does where the
// test lacks the privilege.
std::string error_in_child(const std::function<bool()>& enter, const std::function<void()>& step) {
  int pipe_fds[2];
  if (::pipe(pipe_fds) != 0) return "no pipe";
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(pipe_fds[0]);
    const std::string text = enter() ? test::error_of(step) : "cannot enter";
    const ssize_t written = ::write(pipe_fds[1], text.data(), text.size());
    ::_exit(written == static_cast<ssize_t>(text.size()) ? 0 : 1);
  }
  ::close(pipe_fds[1]);
  std::string text;
  char buffer[512];
  for (ssize_t n; (n = ::read(pipe_fds[0], buffer, sizeof(buffer))) > 0;) text.append(buffer, n);
  ::close(pipe_fds[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  return text;
}

TEST(StagingDirectoryTest, CommitCreatesTheTarget) {
  const std::string parent = test::make_temp_dir();
  {
    StagingDirectory staging(parent + "/a/b/ckpt");  // parents are created
    EXPECT_EQ(fs::path(staging.path()).parent_path(), fs::path(parent + "/a/b"));
    EXPECT_EQ(fs::path(staging.path()).filename().string().rfind(".ckpt.mto-staging-", 0), 0u);
    write_checkpoint(staging.path(), "new");
    staging.commit();
  }
  EXPECT_EQ(read_file(parent + "/a/b/ckpt/" + kStateFileName, 10), "new");
  EXPECT_EQ(entries(parent + "/a/b"), std::vector<std::string>{"ckpt"});
}

// The checkpoint directory follows the umask, as any directory the user creates does (not
// mkdtemp's 0700, which would hide it from the rest of a cluster).
TEST(StagingDirectoryTest, TheCheckpointFollowsTheUmask) {
  const std::string parent = test::make_temp_dir();
  for (const mode_t mask : {mode_t{022}, mode_t{027}, mode_t{077}}) {
    const mode_t previous = ::umask(mask);
    const std::string target = parent + "/ckpt" + std::to_string(mask);
    {
      StagingDirectory staging(target);
      staging.commit();
    }
    ::umask(previous);
    struct stat st {};
    ASSERT_EQ(::stat(target.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0777 & ~mask) << "umask " << std::oct << mask;
  }
}

TEST(StagingDirectoryTest, CommitReplacesAPreviousCheckpoint) {
  const std::string parent = test::make_temp_dir();
  const std::string target = parent + "/ckpt/";  // a trailing slash is fine
  write_checkpoint(target, "old");
  StagingDirectory staging(target);
  write_checkpoint(staging.path(), "new");
  write(staging.path() + "/new-only", "x");
  // Until commit, the previous checkpoint is untouched.
  EXPECT_EQ(read_file(target + kStateFileName, 10), "old");
  staging.commit();
  EXPECT_EQ(entries(parent + "/ckpt"),
            (std::vector<std::string>{kManifestFileName, kIndexFileName, kStateFileName, "new-only"}));
  EXPECT_EQ(read_file(target + kStateFileName, 10), "new");
  EXPECT_EQ(entries(parent), std::vector<std::string>{"ckpt"});
}

// A checkpoint made read-only is replaced by a read-only one, and the old one is deleted.
TEST(StagingDirectoryTest, AReadOnlyCheckpointIsReplacedByAReadOnlyOne) {
  const std::string parent = test::make_temp_dir();
  const std::string target = parent + "/ckpt";
  write_checkpoint(target, "old");
  ASSERT_EQ(::chmod(target.c_str(), 0555), 0);
  {
    StagingDirectory staging(target);
    struct stat st {};
    ASSERT_EQ(::stat(staging.path().c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0700, 0700u);  // the ranks can write into it
    write_checkpoint(staging.path(), "new");
    staging.commit();
  }
  struct stat st {};
  ASSERT_EQ(::stat(target.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0555u);
  EXPECT_EQ(read_file(target + "/" + kStateFileName, 10), "new");
  EXPECT_EQ(entries(parent), std::vector<std::string>{"ckpt"});
  ::chmod(target.c_str(), 0755);
}

// A replaced checkpoint keeps the permissions its directory had (a private one stays
// private whatever the umask); its files follow the umask as any file does (0666 less it).
TEST(StagingDirectoryTest, AReplacedCheckpointKeepsItsDirectorysPermissions) {
  const std::string parent = test::make_temp_dir();
  const std::string target = parent + "/ckpt";
  write_checkpoint(target, "old");
  ASSERT_EQ(::chmod(target.c_str(), 0710), 0);
  const mode_t previous = ::umask(002);
  {
    StagingDirectory staging(target);
    write_checkpoint(staging.path(), "new");
    staging.commit();
  }
  ::umask(previous);
  struct stat st {};
  ASSERT_EQ(::stat(target.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0710u);
  ASSERT_EQ(::stat((target + "/" + kStateFileName).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0664u);
}

TEST(StagingDirectoryTest, UncommittedStagingIsRemoved) {
  const std::string parent = test::make_temp_dir();
  {
    StagingDirectory staging(parent + "/ckpt");
    write(staging.path() + "/partial", "x");
  }
  EXPECT_TRUE(entries(parent).empty());
}

TEST(StagingDirectoryTest, RefusesToReplaceSomethingElse) {
  const std::string parent = test::make_temp_dir();
  write(parent + "/file", "x");
  EXPECT_EQ(test::error_of([&] { StagingDirectory staging(parent + "/file"); }),
            "refusing to replace " + parent + "/file: it exists and is not a directory");
  fs::create_directories(parent + "/empty");
  EXPECT_NO_THROW(StagingDirectory(parent + "/empty"));
  EXPECT_THROW(StagingDirectory(parent + "/.."), CheckpointError);
  EXPECT_EQ(test::error_of([&] { StagingDirectory staging(""); }), "cannot save a checkpoint under an empty path");
  // A directory in which nothing can be created, though access(2) says root may write there:
  // found before any work, leaving nothing behind.
  const std::string error = test::error_of([&] { check_replaceable("/proc/mto-test/ckpt"); });
  EXPECT_EQ(error.rfind("cannot save /proc/mto-test/ckpt: cannot write in /proc: ", 0), 0u) << error;
}

// Nothing that a save would delete is replaced: a directory of other files, one whose
// MANIFEST is no mto manifest, a checkpoint holding files it does not record, a link.
TEST(StagingDirectoryTest, RefusesToReplaceWhatWouldBeLost) {
  const std::string parent = test::make_temp_dir();
  const std::string data = parent + "/data";
  fs::create_directories(data + "/src");
  write(data + "/thesis.tex", "important");
  EXPECT_EQ(test::error_of([&] { check_replaceable(data); }),
            "refusing to replace " + data + ": it exists and is not an mto checkpoint (no MANIFEST)");

  // A MANIFEST of another kind (a Python sdist's), or a directory of that name.
  write(data + "/MANIFEST", "include *.py\n");
  const std::string sdist = test::error_of([&] { StagingDirectory staging(data); });
  EXPECT_EQ(sdist.rfind("refusing to replace " + data + ": it is not a readable mto checkpoint (", 0), 0u) << sdist;
  EXPECT_NE(sdist.find("delete it yourself if it may go"), std::string::npos) << sdist;
  fs::remove(data + "/MANIFEST");
  fs::create_directories(data + "/MANIFEST");
  EXPECT_THROW(check_replaceable(data), CheckpointError);
  EXPECT_EQ(read_file(data + "/thesis.tex", 20), "important");

  // A checkpoint the user added files to.
  const std::string ckpt = parent + "/ckpt";
  write_checkpoint(ckpt, "old");
  EXPECT_NO_THROW(check_replaceable(ckpt));
  write(ckpt + "/README.md", "notes");
  fs::create_directories(ckpt + "/tokenizer");
  EXPECT_EQ(test::error_of([&] { StagingDirectory staging(ckpt); }),
            "refusing to replace " + ckpt + ": it holds what its checkpoint does not record, which would be lost: "
            "README.md, tokenizer/ (move it out first)");
  EXPECT_EQ(read_file(ckpt + "/README.md", 20), "notes");
  EXPECT_EQ(entries(parent), (std::vector<std::string>{"ckpt", "data"}));  // no staging left behind

  // A symbolic link, even to a checkpoint, or dangling.
  fs::remove_all(ckpt + "/tokenizer");
  fs::remove(ckpt + "/README.md");
  fs::create_directory_symlink(ckpt, parent + "/link");
  EXPECT_EQ(test::error_of([&] { check_replaceable(parent + "/link/"); }),
            "refusing to replace " + parent + "/link/: it is a symbolic link (to " + ckpt +
                "); name the directory itself");
  fs::create_directory_symlink(parent + "/nowhere", parent + "/dangling");
  EXPECT_THROW(check_replaceable(parent + "/dangling"), CheckpointError);
}

// A checkpoint named up to NAME_MAX (255 bytes) saves and is replaced: the hidden siblings
// of a long name are a cut of it with its hash, short enough for the file system.
TEST(StagingDirectoryTest, ALongNameIsSavedAndReplaced) {
  const std::string parent = test::make_temp_dir();
  const std::string name(250, 'n');
  for (const std::string tag : {"first", "second"}) {
    StagingDirectory staging(parent + "/" + name);
    EXPECT_LE(fs::path(staging.path()).filename().string().size(), 255u);
    write_checkpoint(staging.path(), tag);
    staging.commit();
  }
  EXPECT_EQ(read_file(parent + "/" + name + "/" + kStateFileName, 10), "second");
  EXPECT_EQ(entries(parent), std::vector<std::string>{name});
  // A staging directory that a killed save left behind is still found and removed.
  std::string abandoned;
  {
    StagingDirectory staging(parent + "/" + name);
    abandoned = staging.path().substr(0, staging.path().size() - 6) + "ZZZZZZ";
  }
  fs::create_directories(abandoned);
  { StagingDirectory staging(parent + "/" + name); }
  EXPECT_EQ(entries(parent), std::vector<std::string>{name});
}

// A bind mount of a directory onto itself is a mount point on the same device: the kernel's
// mount-root attribute tells it, where comparing devices cannot.
TEST(StagingDirectoryTest, RefusesABindMount) {
  const std::string parent = test::make_temp_dir();
  const std::string ckpt = parent + "/ckpt";
  write_checkpoint(ckpt, "old");
  const std::string error = error_in_child(
      [&] {
        return ::unshare(CLONE_NEWNS) == 0 && ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0 &&
               ::mount(ckpt.c_str(), ckpt.c_str(), nullptr, MS_BIND, nullptr) == 0;
      },
      [&] { check_replaceable(ckpt); });
  if (error == "cannot enter") GTEST_SKIP() << "no privilege to create a mount namespace here";
  EXPECT_EQ(error, "refusing to replace " + ckpt + ": it is a mount point, which a save cannot swap for a new "
                   "directory; save into a directory inside it");
  EXPECT_NO_THROW(check_replaceable(ckpt));  // not a mount point out here
}

// In a sticky directory another user's checkpoint cannot be renamed, so it is refused before
// any work rather than at the commit.
TEST(StagingDirectoryTest, RefusesAnotherUsersCheckpointInAStickyDirectory) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root, to own a checkpoint another user then meets";
  char templ[] = "/tmp/mto-sticky-XXXXXX";  // reachable by any user, unlike the test's own tree
  ASSERT_NE(::mkdtemp(templ), nullptr);
  const std::string parent = templ;
  ASSERT_EQ(::chmod(parent.c_str(), 01777), 0);
  const std::string ckpt = parent + "/ckpt";
  write_checkpoint(ckpt, "old");
  const std::string error = error_in_child([] { return ::setgid(65534) == 0 && ::setuid(65534) == 0; },
                                           [&] { check_replaceable(ckpt); });
  EXPECT_EQ(error, "refusing to replace " + ckpt + ": it belongs to another user (uid 0) and " + parent +
                       " is a sticky directory, where only its owner may replace it");
  EXPECT_NO_THROW(check_replaceable(ckpt));  // its owner may
  fs::remove_all(parent);
}

TEST(StagingDirectoryTest, FindsThePreviousCheckpointOfAnInterruptedCommit) {
  const std::string parent = test::make_temp_dir();
  EXPECT_EQ(find_previous_checkpoint(parent + "/ckpt"), "");
  fs::create_directories(parent + "/.ckpt.mto-previous-Q1W2E3");
  EXPECT_EQ(find_previous_checkpoint(parent + "/ckpt"), "");  // no MANIFEST: not a checkpoint
  write_checkpoint(parent + "/.ckpt.mto-previous-Q1W2E3", "m");
  EXPECT_EQ(find_previous_checkpoint(parent + "/ckpt"), parent + "/.ckpt.mto-previous-Q1W2E3");
  // A new save would bury it: refused, naming it.
  EXPECT_EQ(test::error_of([&] { StagingDirectory staging(parent + "/ckpt"); }),
            "refusing to save " + parent + "/ckpt: an interrupted save left its previous checkpoint in " + parent +
                "/.ckpt.mto-previous-Q1W2E3; move it back to " + parent + "/ckpt first");
  fs::create_directories(parent + "/ckpt");
  EXPECT_EQ(find_previous_checkpoint(parent + "/ckpt"), "");  // the target exists
}

}  // namespace
}  // namespace mto
