// Atomic commit of a checkpoint directory.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "serialization/checkpoint_error.h"
#include "serialization/file.h"
#include "serialization/staging_directory.h"
#include "tests/testing/temp_dir.h"

namespace mto {
namespace {

namespace fs = std::filesystem;

void write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename());
  std::sort(out.begin(), out.end());
  return out;
}

TEST(StagingDirectoryTest, CommitCreatesTheTarget) {
  const std::string parent = test::make_temp_dir();
  {
    StagingDirectory staging(parent + "/a/b/ckpt");  // parents are created
    EXPECT_EQ(fs::path(staging.path()).parent_path(), fs::path(parent + "/a/b"));
    EXPECT_EQ(fs::path(staging.path()).filename().string().rfind(".ckpt.mto-staging-", 0), 0u);
    write(staging.path() + "/MANIFEST", "new");
    staging.commit();
  }
  EXPECT_EQ(read_file(parent + "/a/b/ckpt/MANIFEST", 10), "new");
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
  fs::create_directories(target);
  write(target + "MANIFEST", "old");
  write(target + "old-only", "x");
  StagingDirectory staging(target);
  write(staging.path() + "/MANIFEST", "new");
  // Until commit, the previous checkpoint is untouched.
  EXPECT_EQ(read_file(target + "MANIFEST", 10), "old");
  staging.commit();
  EXPECT_EQ(entries(parent + "/ckpt"), std::vector<std::string>{"MANIFEST"});
  EXPECT_EQ(read_file(target + "MANIFEST", 10), "new");
  EXPECT_EQ(entries(parent), std::vector<std::string>{"ckpt"});
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
  EXPECT_THROW(StagingDirectory(parent + "/file"), CheckpointError);
  fs::create_directories(parent + "/empty");
  EXPECT_NO_THROW(StagingDirectory(parent + "/empty"));
  EXPECT_THROW(StagingDirectory(parent + "/.."), CheckpointError);
}

TEST(StagingDirectoryTest, FindsThePreviousCheckpointOfAnInterruptedCommit) {
  const std::string parent = test::make_temp_dir();
  EXPECT_EQ(find_previous_checkpoint(parent + "/ckpt"), "");
  fs::create_directories(parent + "/.ckpt.mto-previous-Q1W2E3");
  EXPECT_EQ(find_previous_checkpoint(parent + "/ckpt"), "");  // no MANIFEST: not a checkpoint
  write(parent + "/.ckpt.mto-previous-Q1W2E3/MANIFEST", "m");
  EXPECT_EQ(find_previous_checkpoint(parent + "/ckpt"), parent + "/.ckpt.mto-previous-Q1W2E3");
  fs::create_directories(parent + "/ckpt");
  EXPECT_EQ(find_previous_checkpoint(parent + "/ckpt"), "");  // the target exists
}

}  // namespace
}  // namespace mto
