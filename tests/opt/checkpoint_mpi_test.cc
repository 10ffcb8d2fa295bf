// Extra files of a checkpoint on 2 real mpirun ranks: only rank 0's map is written, and a
// name rank 0 gives that the checkpoint cannot hold fails the save on every rank before any
// file is written.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "distributed/world.h"
#include "opt/checkpoint.h"
#include "opt/conversion.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_reader.h"
#include "serialization/file.h"
#include "serialization/manifest_file.h"
#include "tests/opt/testing/test_modes.h"

namespace mto {
namespace {

namespace fs = std::filesystem;

class CheckpointExtraFilesMpiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(comm->world_size(), 2) << "run with 2 ranks";
    dir = std::string(std::getenv("TEST_TMPDIR")) + "/" +
          ::testing::UnitTest::GetInstance()->current_test_info()->name();
    comm->barrier();
  }

  void TearDown() override { comm->barrier(); }

  ModulePtr model(int seed) { return apply_mode(ModelLike("test_mlp", {{"seed", seed}}).build(), "test_kd"); }

  std::shared_ptr<Communicator> comm = world();
  int rank = comm->rank();
  std::string dir;
};

TEST_F(CheckpointExtraFilesMpiTest, OnlyRankZerosFilesAreWritten) {
  SaveOptions options{comm};
  options.extra_files = rank == 0 ? std::map<std::string, std::string>{{"config.json", "rank 0"}}
                                  : std::map<std::string, std::string>{{"config.json", "rank 1"}, {"other.json", "{}"}};
  save(*model(1), dir, options);
  EXPECT_EQ(read_file(dir + "/config.json", 100), "rank 0");
  EXPECT_FALSE(fs::exists(dir + "/other.json"));
  const Manifest manifest = read_manifest(dir);
  ASSERT_EQ(manifest.extra_files_size(), 1);
  EXPECT_EQ(manifest.extra_files(0).file(), "config.json");
  verify_checkpoint(dir);
  restore(ModelLike("test_mlp", {{"seed", 9}}), dir, {comm});

  // A name that only rank 1 gives is not rank 0's, so it is not looked at.
  options.extra_files = rank == 0 ? std::map<std::string, std::string>{}
                                  : std::map<std::string, std::string>{{"MANIFEST", "rank 1"}};
  save(*model(1), dir, options);
  EXPECT_EQ(read_manifest(dir).extra_files_size(), 0);
}

TEST_F(CheckpointExtraFilesMpiTest, ABadNameFromRankZeroFailsEveryRankAndKeepsThePreviousCheckpoint) {
  save(*model(1), dir, {comm});
  SaveOptions options{comm};
  options.extra_files = rank == 0 ? std::map<std::string, std::string>{{"../config.json", "{}"}}
                                  : std::map<std::string, std::string>{};
  const std::string expected = "save: options.extra_files names the file \"../config.json\", which is not a "
                               "plain file name inside the checkpoint directory";
  try {
    save(*model(2), dir, options);
    ADD_FAILURE() << "no error";
  } catch (const CheckpointError& e) {
    EXPECT_EQ(std::string(e.what()), rank == 0 ? expected : expected + " (on rank 0)");
  }
  comm->barrier();
  EXPECT_FALSE(fs::exists(fs::path(dir).parent_path() / "config.json"));
  for (const auto& e : fs::directory_iterator(fs::path(dir).parent_path())) {
    EXPECT_EQ(e.path().filename().string().find(".mto-staging-"), std::string::npos) << e.path();
  }
  verify_checkpoint(dir);
  ModulePtr restored = restore(ModelLike("test_mlp", {{"seed", 9}}), dir, {comm});
  ModulePtr first = model(1);
  const at::Tensor x = test::test_input(first);
  EXPECT_TRUE(test::test_forward(restored, x).equal(test::test_forward(first, x)));
}

}  // namespace
}  // namespace mto
