// Collective save and restore on real mpirun ranks (run with 4): every save world size
// against every restore world size, the writer of every shard, DataParallel round trips,
// and damaged checkpoints failing the same way on every rank.
#include <gtest/gtest.h>
#include <unistd.h>

#include <ATen/ATen.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include "distributed/data_parallel.h"
#include "distributed/world.h"
#include "opt/checkpoint.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/state_dict.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/deterministic.h"
#include "serialization/file.h"
#include "serialization/manifest_file.h"
#include "serialization/safetensors.h"
#include "tests/opt/testing/test_modes.h"

namespace mto {
namespace {

namespace fs = std::filesystem;

// The model every rank saves: built the same way everywhere.
ModulePtr reference_model() {
  return apply_mode(ModelLike("test_mlp", {{"hidden", 32}, {"seed", 7}}).build(), {"test_sparse", "test_quantize"});
}

// A model-like to restore into whose initial weights differ on every rank.
ModelLike fresh_model_like(int rank) { return ModelLike("test_mlp", {{"hidden", 32}, {"seed", 100 + rank}}); }

class CheckpointMpiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(comm->world_size(), 4) << "run with 4 ranks";
    base = std::string(std::getenv("TEST_TMPDIR")) + "/" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    if (rank == 0) fs::create_directories(base);
    comm->barrier();
  }

  // The ranks below `size` as their own communicator; nullptr on the others.
  std::shared_ptr<Communicator> first(int size) { return comm->split(rank < size ? 0 : -1, rank); }

  // Expects `restored` to equal the reference model: state, every tensor, outputs.
  void expect_reference(const ModulePtr& restored, const std::string& where) {
    ModulePtr reference = reference_model();
    EXPECT_EQ(serialize_deterministic(modelopt_state(*restored)), serialize_deterministic(modelopt_state(*reference)))
        << where;
    auto expected = model_state_dict(*reference);
    auto actual = model_state_dict(*restored);
    ASSERT_EQ(actual.size(), expected.size()) << where;
    for (size_t i = 0; i < actual.size(); ++i) {
      EXPECT_EQ(actual[i].name, expected[i].name) << where;
      EXPECT_TRUE(actual[i].tensor.equal(expected[i].tensor)) << where << " " << actual[i].name;
    }
    at::Tensor x = test::test_input(reference);
    EXPECT_TRUE(test::test_forward(restored, x).equal(test::test_forward(reference, x))) << where;
  }

  // The message of the CheckpointError that restoring `dir` throws on this rank.
  std::string restore_error(const std::string& dir, RestoreStrategy strategy) {
    try {
      restore(fresh_model_like(rank), dir, {comm, strategy});
    } catch (const CheckpointError& e) {
      return e.what();
    }
    return "no error";
  }

  std::shared_ptr<Communicator> comm = world();
  int rank = comm->rank();
  std::string base;
};

TEST_F(CheckpointMpiTest, SaveOnNRanksRestoreOnMRanks) {
  for (int n = 1; n <= 4; ++n) {
    if (auto sub = first(n)) save(*reference_model(), base + "/saved-on-" + std::to_string(n), {sub});
    comm->barrier();
  }
  for (int m = 1; m <= 4; ++m) {
    if (auto sub = first(m)) {
      for (int n = 1; n <= 4; ++n) {
        for (auto strategy : {RestoreStrategy::kReadAll, RestoreStrategy::kReadShareBroadcast}) {
          const std::string dir = base + "/saved-on-" + std::to_string(n);
          ModulePtr restored = restore(fresh_model_like(rank), dir, {sub, strategy});
          expect_reference(restored, "saved on " + std::to_string(n) + ", restored on " + std::to_string(m) +
                                         (strategy == RestoreStrategy::kReadAll ? " reading all" : " sharing"));
        }
      }
    }
    comm->barrier();
  }
}

// The default strategy reads everything on every rank when the ranks share a node, and
// shares the reading (broadcasting the weights) when they span nodes (MTO_NODE_NAME: two
// ranks per "node"); either way the model is the reference.
TEST_F(CheckpointMpiTest, TheDefaultStrategyFollowsTheNodes) {
  const std::string dir = base + "/ckpt";
  save(*reference_model(), dir, {comm});
  auto bytes_of = [&](RestoreStrategy strategy) {
    comm->reset_stats();
    ModulePtr restored = restore(fresh_model_like(rank), dir, {comm, strategy});
    expect_reference(restored, "restored with the default strategy");
    return static_cast<int64_t>(comm->stats().bytes);
  };
  const int64_t all = bytes_of(RestoreStrategy::kReadAll);
  const int64_t shared = bytes_of(RestoreStrategy::kReadShareBroadcast);
  ASSERT_GT(shared - all, 1000) << "sharing broadcasts the weights";
  // The node names travel in one all-gather of a few hundred bytes.
  EXPECT_NEAR(static_cast<double>(bytes_of(RestoreStrategy::kAuto)), static_cast<double>(all), 512);
  ::setenv("MTO_NODE_NAME", ("node-" + std::to_string(rank / 2)).c_str(), 1);
  EXPECT_NEAR(static_cast<double>(bytes_of(RestoreStrategy::kAuto)), static_cast<double>(shared), 512);
  ::setenv("MTO_NODE_NAME", "one-node", 1);
  EXPECT_NEAR(static_cast<double>(bytes_of(RestoreStrategy::kAuto)), static_cast<double>(all), 512);
  ::unsetenv("MTO_NODE_NAME");
}

TEST_F(CheckpointMpiTest, EachShardIsWrittenByItsRank) {
  const std::string dir = base + "/ckpt";
  save(*reference_model(), dir, {comm});
  // Four processes: four different pids.
  std::vector<std::string> pids = comm->all_gather(std::to_string(getpid()));
  EXPECT_EQ(std::set<std::string>(pids.begin(), pids.end()).size(), 4u);

  Manifest manifest = read_manifest(dir);
  EXPECT_EQ(manifest.world_size(), 4);
  ASSERT_EQ(manifest.shards_size(), 4);
  std::vector<uint64_t> bytes(4, 0);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(manifest.shards(i).file(), shard_file_name(i, 4));
    EXPECT_EQ(manifest.shards(i).writer_rank(), i);
    SafetensorsHeader header = read_safetensors_header(dir + "/" + shard_file_name(i, 4));
    EXPECT_EQ(header.metadata.at("writer_rank"), std::to_string(i));
    EXPECT_FALSE(header.entries.empty());
  }
  for (const auto& t : manifest.tensors()) {
    EXPECT_EQ(t.name().rfind("module.", 0), std::string::npos);
    bytes[t.shard()] += t.length();
  }
  // Balanced by bytes: the heaviest shard holds fc2.weight (32 x 32 floats) and its mask.
  EXPECT_EQ(*std::max_element(bytes.begin(), bytes.end()), 4096u);
}

TEST_F(CheckpointMpiTest, DataParallelRoundTrip) {
  at::manual_seed(rank);  // every rank starts from other weights...
  auto model = std::make_shared<test::TestMlpImpl>(32);
  DataParallel dp(model, comm);  // ...and the wrapper makes them rank 0's
  std::vector<std::string> digests = comm->all_gather(serialize_deterministic(modelopt_state(*model)) +
                                                      std::to_string(model->fc2->weight.sum().item<double>()));
  EXPECT_EQ(std::set<std::string>(digests.begin(), digests.end()).size(), 1u);
  EXPECT_EQ(dp->named_parameters().keys()[0], "module.fc1.weight");

  // Two steps of data-parallel training on each rank's own batch.
  for (int step = 0; step < 2; ++step) {
    at::Tensor x = at::randn({4, 8});  // differs per rank
    at::Tensor loss = dp->module_as<test::TestMlpImpl>()->forward(x).pow(2).mean();
    loss.backward();
    dp->average_gradients();
    at::NoGradGuard no_grad;
    for (auto& p : dp->parameters()) {
      p.sub_(p.grad() * 0.1);
      p.mutable_grad().zero_();
    }
  }
  at::Tensor w = model->fc3->weight.detach().clone();
  auto gathered = comm->all_gather(w);
  for (const auto& g : gathered) EXPECT_TRUE(g.equal(w));

  const std::string dir = base + "/dp";
  save(*dp, dir, {comm});
  const Manifest manifest = read_manifest(dir);
  for (const auto& t : manifest.tensors()) EXPECT_EQ(t.name().rfind("module.", 0), std::string::npos);

  try {
    restore(dp, dir, {comm});
    FAIL() << "a wrapped model was restored into";
  } catch (const StateError& e) {
    EXPECT_STREQ(e.what(), "restore: the model is wrapped in mto::DataParallel; restore into the unwrapped "
                           "model, then wrap it again.");
  }

  // On 3 ranks: restore, then wrap again.
  if (auto sub = first(3)) {
    at::manual_seed(50 + rank);
    ModulePtr restored = restore(std::make_shared<test::TestMlpImpl>(32), dir, {sub});
    DataParallel again(restored, sub);
    EXPECT_TRUE(again->module_as<test::TestMlpImpl>()->fc3->weight.equal(w));
    at::Tensor x = at::ones({2, 8});
    EXPECT_TRUE(again->module_as<test::TestMlpImpl>()->forward(x).equal(model->forward(x)));
  }
  comm->barrier();
}

TEST_F(CheckpointMpiTest, DamagedCheckpointsFailTheSameWayOnEveryRank) {
  const std::string dir = base + "/ckpt";
  const std::string shard3 = dir + "/" + shard_file_name(2, 4);
  auto damage = [&](const std::function<void()>& how) {
    save(*reference_model(), dir, {comm});
    if (rank == 0) how();
    comm->barrier();
  };
  for (auto strategy : {RestoreStrategy::kReadAll, RestoreStrategy::kReadShareBroadcast}) {
    damage([&] {
      std::fstream f(shard3, std::ios::in | std::ios::out | std::ios::binary);
      f.seekp(-5, std::ios::end);
      f.put('\x55');
    });
    std::string error = restore_error(dir, strategy);
    EXPECT_NE(error.find("checksum mismatch in " + shard3 + ": tensor "), std::string::npos) << error;

    damage([&] { fs::resize_file(shard3, fs::file_size(shard3) - 8); });
    error = restore_error(dir, strategy);
    EXPECT_NE(error.find("file " + shard3 + " is "), std::string::npos) << error;
    EXPECT_NE(error.find("(truncated)"), std::string::npos) << error;

    damage([&] { fs::remove(shard3); });
    error = restore_error(dir, strategy);
    EXPECT_NE(error.find("cannot open " + shard3 + ": No such file or directory"), std::string::npos) << error;
  }
  damage([&] {
    Manifest manifest = read_manifest(dir);
    manifest.mutable_shards(1)->set_file("../outside.safetensors");
    write_manifest(dir, manifest);
  });
  const std::string error = restore_error(dir, RestoreStrategy::kReadAll);
  EXPECT_NE(error.find("names the file \"../outside.safetensors\", which is not a plain file name inside the "
                       "checkpoint directory"), std::string::npos) << error;
  if (rank != 0) {
    EXPECT_NE(error.find("(on rank 0)"), std::string::npos) << error;
  }
}

TEST_F(CheckpointMpiTest, FailedSaveFailsOnEveryRankAndKeepsTheDirectory) {
  const std::string dir = base + "/not-a-checkpoint";
  if (rank == 0) {
    fs::create_directories(dir);
    std::ofstream(dir + "/notes.txt") << "keep me";
  }
  comm->barrier();
  try {
    save(*reference_model(), dir, {comm});
    FAIL() << "no error";
  } catch (const CheckpointError& e) {
    const std::string expected = "refusing to replace " + dir + ": it exists and is not an mto checkpoint (no MANIFEST)";
    EXPECT_EQ(std::string(e.what()), rank == 0 ? expected : expected + " (on rank 0)");
  }
  EXPECT_EQ(read_file(dir + "/notes.txt", 100), "keep me");
  comm->barrier();
}

TEST_F(CheckpointMpiTest, RanksWithDifferentModelsCannotSave) {
  ModulePtr model = reference_model();
  if (rank == 2) {
    at::NoGradGuard no_grad;
    std::dynamic_pointer_cast<test::TestMlpImpl>(model)->fc2->bias[0] += 1;
  }
  const std::string dir = base + "/diverged";
  try {
    save(*model, dir, {comm});
    FAIL() << "no error";
  } catch (const CheckpointError& e) {
    EXPECT_STREQ(e.what(), "save: tensor fc2.bias differs between rank 0 and rank 2; every rank must hold the "
                           "same model (wrap it in mto::DataParallel, or broadcast rank 0's weights) before saving");
  }
  EXPECT_FALSE(fs::exists(dir));
  comm->barrier();
}

}  // namespace
}  // namespace mto
