// A checkpoint must not lead its reader out of its directory (file names in the manifest or
// the index that climb out or are absolute, files that are symbolic links, a FIFO in place
// of a shard), and a save must clear what earlier saves that crashed left next to it while
// never touching the staging directory of a save still running.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "opt/checkpoint.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/checksum.h"
#include "serialization/file.h"
#include "serialization/manifest_file.h"
#include "tests/reliability/reliability_model.h"
#include "tests/testing/temp_dir.h"

namespace mto {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kMegabytes = 4;
constexpr char kShard[] = "model-00001-of-00001.safetensors";

class DirectorySafetyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    parent_ = test::make_temp_dir();
    dir_ = parent_ + "/ckpt";
    model_ = reliability::make_model(3, kMegabytes);
    save(*model_, dir_);
  }

  // The CheckpointError of a restore and of a verify_checkpoint, which must agree.
  std::string read_error() {
    std::string restore_error = "no error", verify_error = "no error";
    try {
      restore(dir_);
    } catch (const CheckpointError& e) {
      restore_error = e.what();
    }
    try {
      verify_checkpoint(dir_);
    } catch (const CheckpointError& e) {
      verify_error = e.what();
    }
    EXPECT_EQ(restore_error, verify_error);
    return restore_error;
  }

  // Moves `file` out of the checkpoint and leaves a symbolic link to it in its place.
  void replace_with_symlink(const std::string& file) {
    const std::string outside = parent_ + "/outside-" + file;
    fs::rename(dir_ + "/" + file, outside);
    fs::create_symlink(outside, dir_ + "/" + file);
  }

  std::set<std::string> entries_of_parent() const {
    std::set<std::string> out;
    for (const auto& e : fs::directory_iterator(parent_)) out.insert(e.path().filename());
    return out;
  }

  std::string parent_;
  std::string dir_;
  ModulePtr model_;
};

TEST_F(DirectorySafetyTest, ShardThatIsASymlinkToAFileOutsideIsRefused) {
  replace_with_symlink(kShard);
  EXPECT_EQ(read_error(), "refusing to open " + dir_ + "/" + kShard +
                              ": it is a symbolic link, and the files of a checkpoint must be regular files in its "
                              "directory");
}

TEST_F(DirectorySafetyTest, MetadataFilesThatAreSymlinksAreRefused) {
  for (const std::string file : {kStateFileName, kIndexFileName, kManifestFileName}) {
    SCOPED_TRACE(file);
    replace_with_symlink(file);
    EXPECT_EQ(read_error().rfind("refusing to open " + dir_ + "/" + file + ": it is a symbolic link", 0), 0u);
    fs::remove(dir_ + "/" + file);
    fs::rename(parent_ + "/outside-" + file, dir_ + "/" + file);
  }
  EXPECT_TRUE(reliability::weight_difference(*restore(dir_), *model_).empty());
}

TEST_F(DirectorySafetyTest, FifoInPlaceOfAShardIsRefusedWithoutBlocking) {
  fs::remove(dir_ + "/" + kShard);
  ASSERT_EQ(::mkfifo((dir_ + "/" + kShard).c_str(), 0644), 0);
  EXPECT_EQ(read_error(), "refusing to open " + dir_ + "/" + kShard + ": it is not a regular file");
}

TEST_F(DirectorySafetyTest, ManifestNamingAbsoluteOrClimbingPathsIsRejected) {
  const Manifest original = read_manifest(dir_);
  for (const std::string& name : std::vector<std::string>{"/etc/passwd", "../ckpt/" + std::string(kShard), "..", "a/../../b"}) {
    for (int field = 0; field < 3; ++field) {
      SCOPED_TRACE(name + " in field " + std::to_string(field));
      Manifest manifest = original;
      if (field == 0) manifest.mutable_shards(0)->set_file(name);
      if (field == 1) manifest.mutable_modelopt_state()->set_file(name);
      if (field == 2) manifest.mutable_index()->set_file(name);
      write_manifest(dir_, manifest);
      EXPECT_EQ(read_error(), "manifest " + dir_ + "/MANIFEST names the file \"" + name +
                                  "\", which is not a plain file name inside the checkpoint directory");
    }
  }
}

// The index is checksummed by the manifest; these write both, as a crafted checkpoint would.
TEST_F(DirectorySafetyTest, IndexNamingAFileOutsideTheDirectoryIsRejected) {
  const std::string index_path = dir_ + "/" + kIndexFileName;
  auto rewrite_index = [&](const std::string& tensor, const std::string& file) {
    nlohmann::json index = nlohmann::json::parse(read_file(index_path, 1 << 20));
    index["weight_map"][tensor] = file;
    const std::string text = index.dump(2);
    write_file_synced(index_path, text);
    Manifest manifest = read_manifest(dir_);
    manifest.mutable_index()->set_size(text.size());
    manifest.mutable_index()->set_xxh3(xxh3_64(text.data(), text.size()));
    write_manifest(dir_, manifest);
  };
  rewrite_index("w0", "../../etc/passwd");
  EXPECT_EQ(read_error(), "index " + index_path +
                              " names the file \"../../etc/passwd\", which is not a plain file name inside the "
                              "checkpoint directory");
  rewrite_index("w0", "/etc/passwd");
  EXPECT_EQ(read_error(), "index " + index_path +
                              " names the file \"/etc/passwd\", which is not a plain file name inside the checkpoint "
                              "directory");
  rewrite_index("w0", "other.safetensors");
  EXPECT_EQ(read_error(), "invalid index " + index_path + ": it puts tensor w0 in other.safetensors, the manifest in " +
                              kShard);
  rewrite_index("w0", kShard);
  EXPECT_TRUE(reliability::weight_difference(*restore(dir_), *model_).empty());
}

TEST_F(DirectorySafetyTest, SaveRemovesAbandonedStagingDirectoriesButNotALiveOne) {
  const std::string abandoned = parent_ + "/.ckpt.mto-staging-AAAAAA";
  const std::string live = parent_ + "/.ckpt.mto-staging-BBBBBB";
  const std::string other = parent_ + "/.other.mto-staging-CCCCCC";
  for (const auto& d : {abandoned, live, other}) {
    fs::create_directories(d);
    std::ofstream(d + "/" + kShard) << "partial";
  }
  std::ofstream(parent_ + "/.ckpt.notes") << "not ours";
  // A save in progress holds the lock of its staging directory.
  const int fd = ::open(live.c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX), 0);

  save(*reliability::make_model(4, kMegabytes), dir_);
  EXPECT_EQ(entries_of_parent(), (std::set<std::string>{"ckpt", ".ckpt.mto-staging-BBBBBB",
                                                         ".other.mto-staging-CCCCCC", ".ckpt.notes"}));
  ::close(fd);
  save(*model_, dir_);
  EXPECT_EQ(entries_of_parent(), (std::set<std::string>{"ckpt", ".other.mto-staging-CCCCCC", ".ckpt.notes"}));
  EXPECT_TRUE(reliability::weight_difference(*restore(dir_), *model_).empty());
}

}  // namespace
}  // namespace mto
