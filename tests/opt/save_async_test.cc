// save_async on one process and on mpirun ranks (the same binary): the files equal a
// synchronous save's, the snapshot is taken before it returns, a save in flight is finished
// first, and a failure in the background reaches every rank's wait() with a synchronous
// save's text and leaves the previous checkpoint; plus the extra tensors of SaveOptions.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <filesystem>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

#include "distributed/world.h"
#include "opt/checkpoint.h"
#include "opt/conversion.h"
#include "opt/save_async.h"
#include "opt/state_dict.h"
#include "serialization/checkpoint_error.h"
#include "serialization/file.h"
#include "serialization/manifest_file.h"
#include "tests/opt/testing/test_modes.h"
#include "tests/testing/errors.h"
#include "tests/testing/temp_dir.h"

namespace mto {
namespace {

namespace fs = std::filesystem;

class SaveAsyncTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string parent = rank == 0 ? test::make_temp_dir() : "";
    comm->broadcast(parent, 0);
    parent_ = parent;
    dir_ = parent_ + "/ckpt";
  }

  void TearDown() override { comm->barrier(); }

  // The same model on every rank.
  static ModulePtr model(int seed) {
    return apply_mode(ModelLike("test_mlp", {{"seed", seed}}).build(), {"test_sparse", "test_quantize"});
  }

  // The output of the checkpoint at dir_, restored on every rank.
  at::Tensor restored_output() {
    ModulePtr restored = restore(ModelLike("test_mlp"), dir_);
    return test::test_forward(restored, test::test_input(restored));
  }

  static at::Tensor output_of(const ModulePtr& m) { return test::test_forward(m, test::test_input(m)); }

  std::vector<std::string> hidden_entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(parent_)) {
      if (e.path().filename().string()[0] == '.') out.push_back(e.path().filename());
    }
    return out;
  }

  std::shared_ptr<Communicator> comm = world();
  int rank = comm->rank();
  int size = comm->world_size();
  std::string parent_;
  std::string dir_;
};

TEST_F(SaveAsyncTest, WritesTheSameFilesAsSave) {
  const ModulePtr m = model(1);
  save(*m, parent_ + "/sync");
  SaveHandle handle = save_async(*m, parent_ + "/async");
  handle.wait();
  EXPECT_TRUE(handle.done());
  EXPECT_GT(handle.blocked_seconds(), 0);
  comm->barrier();
  if (rank != 0) return;
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(parent_ + "/sync")) {
    const std::string name = e.path().filename();
    EXPECT_EQ(read_file(parent_ + "/sync/" + name, 1 << 24), read_file(parent_ + "/async/" + name, 1 << 24))
        << name;
    ++files;
  }
  EXPECT_EQ(files, static_cast<size_t>(size) + 3);
}

TEST_F(SaveAsyncTest, TheSnapshotIsTakenBeforeItReturns) {
  const ModulePtr m = model(1);
  const at::Tensor expected = output_of(m);
  SaveHandle handle = save_async(*m, dir_);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : m->parameters()) p.fill_(42);
  }
  handle.wait();
  EXPECT_TRUE(at::equal(restored_output(), expected));
}

TEST_F(SaveAsyncTest, ASaveInFlightIsFinishedFirst) {
  const ModulePtr first = model(1);
  const ModulePtr second = model(2);
  SaveHandle one = save_async(*first, dir_);
  SaveHandle two = save_async(*second, dir_);
  EXPECT_TRUE(one.done());
  one.wait();
  two.wait();
  EXPECT_TRUE(at::equal(restored_output(), output_of(second)));
  // A synchronous save finishes a background one too.
  SaveHandle three = save_async(*first, dir_);
  save(*second, parent_ + "/other");
  EXPECT_TRUE(three.done());
  three.wait();
  EXPECT_TRUE(at::equal(restored_output(), output_of(first)));
}

TEST_F(SaveAsyncTest, ARestoreFinishesTheSaveInFlightFirst) {
  const ModulePtr previous = model(1);
  save(*previous, dir_);
  const ModulePtr next = model(2);
  SaveHandle handle = save_async(*next, dir_);
  // Never the old manifest with the new shards (a false "corrupt file"), nor the old weights.
  EXPECT_TRUE(at::equal(restored_output(), output_of(next)));
  EXPECT_TRUE(handle.done());
  handle.wait();
}

// Two threads, each saving its own model on its own communicator: the snapshot pool serves
// one save at a time, so neither overwrites the snapshot the other is writing from.
TEST_F(SaveAsyncTest, SavesFromTwoThreadsTakeTurns) {
  const std::vector<std::shared_ptr<Communicator>> comms = {comm->split(0, rank), comm->split(0, rank)};
  const std::vector<nlohmann::json> args = {{{"seed", 1}, {"hidden", 1024}}, {{"seed", 2}, {"hidden", 512}}};
  const std::vector<ModulePtr> models = {ModelLike("test_mlp", args[0]).build(), ModelLike("test_mlp", args[1]).build()};
  constexpr int kSaves = 4;
  std::vector<std::string> errors(2, "no error");
  auto saves = [&](int id) {
    SaveOptions options;
    options.communicator = comms[id];
    errors[id] = test::error_of([&] {
      for (int i = 0; i < kSaves; ++i) {
        save_async(*models[id], absl::StrCat(parent_, "/thread", id, "-", i), options).wait();
      }
    });
  };
  std::thread first(saves, 0), second(saves, 1);
  first.join();
  second.join();
  for (int id = 0; id < 2; ++id) {
    EXPECT_EQ(errors[id], "no error");
    for (int i = 0; i < kSaves; ++i) {
      const ModulePtr restored = restore(ModelLike("test_mlp", args[id]), absl::StrCat(parent_, "/thread", id, "-", i));
      EXPECT_TRUE(at::equal(output_of(restored), output_of(models[id]))) << "thread " << id << ", save " << i;
    }
  }
}

// A failure that nobody waited for is printed at exit, also where std::exit skips the
// handle's destructor.
TEST_F(SaveAsyncTest, AFailureNobodyWaitedForIsPrintedAtExit) {
  if (size > 1) GTEST_SKIP() << "one process: the death test forks";
  // 4 MiB of weights, over a file-size limit that the message (to a file) stays within.
  const ModulePtr m = ModelLike("test_mlp", {{"seed", 1}, {"hidden", 1024}}).build();
  EXPECT_EXIT(
      {
        ::signal(SIGXFSZ, SIG_IGN);
        struct rlimit limit;
        ::getrlimit(RLIMIT_FSIZE, &limit);
        limit.rlim_cur = 1 << 16;
        ::setrlimit(RLIMIT_FSIZE, &limit);
        SaveHandle handle = save_async(*m, dir_);
        std::exit(0);
      },
      ::testing::ExitedWithCode(0), "a background save that nobody waited for failed: .*File too large");
}

// Replaces the random part of staging directory names, which differs from save to save.
std::string without_staging_names(const std::string& text) {
  return std::regex_replace(text, std::regex("mto-staging-[A-Za-z0-9]+"), "mto-staging-X");
}

TEST_F(SaveAsyncTest, ABackgroundFailureReachesEveryRankAndKeepsThePreviousCheckpoint) {
  const ModulePtr previous = model(1);
  save(*previous, dir_);
  const int victim = size - 1;
  // The victim may write no more than 16 bytes to any file: its shard's header fails.
  auto limit_files = [&](bool on) {
    if (rank != victim) return;
    ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit limit;
    ::getrlimit(RLIMIT_FSIZE, &limit);
    limit.rlim_cur = on ? 16 : limit.rlim_max;
    ::setrlimit(RLIMIT_FSIZE, &limit);
  };
  const ModulePtr next = model(2);
  limit_files(true);
  const std::string sync_error = test::error_of<CheckpointError>([&] { save(*next, dir_); });
  SaveHandle handle;
  const std::string planning_error = test::error_of([&] { handle = save_async(*next, dir_); });
  const std::string async_error = test::error_of<CheckpointError>([&] { handle.wait(); });
  limit_files(false);

  EXPECT_EQ(planning_error, "no error");
  EXPECT_NE(sync_error, "no error");
  EXPECT_EQ(without_staging_names(async_error), without_staging_names(sync_error));
  if (rank != victim) {
    EXPECT_NE(async_error.find("(on rank " + std::to_string(victim) + ")"), std::string::npos);
  }
  // wait() again rethrows the same failure.
  EXPECT_EQ(test::error_of<CheckpointError>([&] { handle.wait(); }), async_error);
  EXPECT_TRUE(at::equal(restored_output(), output_of(previous)));
  comm->barrier();
  if (rank == 0) {
    EXPECT_EQ(hidden_entries(), std::vector<std::string>{});
  }
  // The next save goes through.
  save_async(*next, dir_).wait();
  EXPECT_TRUE(at::equal(restored_output(), output_of(next)));
}

// Replicas are compared before save_async returns, the ones this rank writes by the hash of
// their snapshot: a replica that differs on one rank, whichever rank writes it, is refused
// as save refuses it, and nothing is written.
TEST_F(SaveAsyncTest, ReplicasThatDifferAreRefusedAsSaveRefusesThem) {
  if (size < 2) GTEST_SKIP() << "needs mpirun ranks";
  const ModulePtr m = model(1);
  const int victim = size - 1;
  for (const NamedTensor& t : model_state_dict(*m)) {
    if (!t.tensor.is_floating_point()) continue;
    torch::NoGradGuard no_grad;
    const at::Tensor kept = t.tensor.clone();
    if (rank == victim) t.tensor.view(-1)[0] += 1;
    const std::string sync_error = test::error_of<CheckpointError>([&] { save(*m, dir_); });
    const std::string async_error = test::error_of<CheckpointError>([&] { save_async(*m, dir_).wait(); });
    t.tensor.copy_(kept);
    EXPECT_NE(sync_error.find("save: tensor " + t.name + " differs between rank 0 and rank " +
                              std::to_string(victim)),
              std::string::npos)
        << sync_error;
    EXPECT_EQ(async_error, sync_error);
    comm->barrier();
    EXPECT_FALSE(fs::exists(dir_));
    if (rank == 0) {
      EXPECT_EQ(hidden_entries(), std::vector<std::string>{});
    }
  }
  save_async(*m, dir_).wait();
  EXPECT_TRUE(at::equal(restored_output(), output_of(m)));
}

TEST_F(SaveAsyncTest, ExtraTensorsTravelBesideTheModel) {
  const ModulePtr m = model(1);
  const at::Tensor moments = at::arange(12, at::kFloat).reshape({3, 4});
  SaveOptions options;
  options.extra_tensors = {{"optimizer.moments", moments, std::nullopt}};
  save_async(*m, dir_, options).wait();
  if (rank == 0) {
    const Manifest manifest = read_manifest(dir_);
    int extra = 0;
    for (const auto& t : manifest.tensors()) extra += t.extra() ? 1 : 0;
    EXPECT_EQ(extra, 1);
  }
  // A model restores without them, or with them when asked.
  EXPECT_TRUE(at::equal(restored_output(), output_of(m)));
  const at::Tensor filled = at::zeros({3, 4});
  auto asking_for = [](const std::string& name, const at::Tensor& into) {
    RestoreOptions options;
    options.extra_tensors = [=](torch::nn::Module&) { return std::vector<StateTensor>{{name, into, std::nullopt}}; };
    return options;
  };
  restore(ModelLike("test_mlp"), dir_, asking_for("optimizer.moments", filled));
  EXPECT_TRUE(at::equal(filled, moments));

  RestoreOptions asking = asking_for("optimizer.other", at::zeros({3, 4}));
  EXPECT_EQ(test::error_of<CheckpointError>([&] { restore(ModelLike("test_mlp"), dir_, asking); }),
            "checkpoint " + dir_ + " has no extra tensor optimizer.other, which the restore asks for");
  asking = asking_for("optimizer.moments", at::zeros({4, 3}));
  EXPECT_EQ(test::error_of<CheckpointError>([&] { restore(ModelLike("test_mlp"), dir_, asking); }),
            "tensor optimizer.moments: the checkpoint holds F32 [3, 4] but the restore asks for F32 [4, 3]");
  options.extra_tensors = {{"fc1.weight", moments, std::nullopt}};
  EXPECT_EQ(test::error_of<CheckpointError>([&] { save(*m, dir_, options); }),
            "save: options.extra_tensors has tensor fc1.weight, which the model or an earlier extra tensor has "
            "too");
}

}  // namespace
}  // namespace mto
