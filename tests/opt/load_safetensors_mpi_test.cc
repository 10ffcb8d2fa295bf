// load_safetensors on 2 real mpirun ranks: a plain safetensors set of whole tensors, written
// by rank 0 with a small writer that knows nothing of mto, loaded at tp = 2 (each rank reads
// only its slices) and at (dp=2, tp=1) (each rank reads everything).
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "distributed/mesh.h"
#include "distributed/world.h"
#include "opt/load_safetensors.h"
#include "opt/state_dict.h"
#include "serialization/checkpoint_error.h"
#include "tests/opt/testing/plain_safetensors.h"
#include "tools/zoo/gpt.h"

namespace mto {
namespace {

namespace fs = std::filesystem;
using namespace test;  // the independent writer

// ---- The model. ----

zoo::GptOptions small_gpt(std::shared_ptr<Mesh> mesh, int64_t seed) {
  return zoo::GptOptions().vocab(32).width(16).depth(2).heads(4).context(8).seed(seed).mesh(std::move(mesh));
}

// A mesh of this rank alone; made once, by every rank together (splitting is collective).
std::shared_ptr<Mesh> solo() {
  static std::shared_ptr<Mesh>* mesh = new std::shared_ptr<Mesh>(Mesh::create(world()->split(world()->rank(), 0), 1));
  return *mesh;
}

std::vector<Named> cast(const std::vector<Named>& tensors, at::ScalarType type) {
  std::vector<Named> out;
  for (const auto& t : tensors) out.push_back({t.name, t.tensor.to(type)});
  return out;
}

uint64_t data_bytes(const std::vector<Named>& tensors) {
  uint64_t total = 0;
  for (const auto& t : tensors) total += static_cast<uint64_t>(t.tensor.numel()) * t.tensor.element_size();
  return total;
}

class LoadSafetensorsMpiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(world()->world_size(), 2) << "run with 2 ranks";
    solo();
    base = std::string(std::getenv("TEST_TMPDIR")) + "/" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    // The seed-3 model whole, on every rank, for reference.
    zoo::Gpt reference(small_gpt(solo(), 3));
    for (const auto& t : model_state_dict(*reference)) whole.push_back({t.name, t.tensor.detach().clone()});
    if (rank == 0) fs::create_directories(base);
    world()->barrier();
  }

  void TearDown() override { world()->barrier(); }

  // Loads `dir` (whose tensors, as F32, are `expected`, stored with `itemsize` bytes per
  // element) into a seed-9 GPT on `mesh`; expects every local tensor to be exactly its slice
  // of the expected whole tensor and this rank to have read exactly the bytes of what it
  // holds.
  void load_and_check(const std::string& dir, const std::vector<Named>& expected, int64_t itemsize,
                      std::shared_ptr<Mesh> mesh, const std::string& where) {
    zoo::Gpt target(small_gpt(mesh, 9));
    const LoadSafetensorsReport report = load_safetensors(*target, dir);
    std::map<std::string, at::Tensor> by_name;
    for (const auto& t : expected) by_name[t.name] = t.tensor.to(at::kFloat);
    const auto local = model_state_slices(*target);
    ASSERT_EQ(local.size(), expected.size()) << where;
    uint64_t held = 0;
    int sliced = 0;
    for (const auto& t : local) {
      ASSERT_TRUE(by_name.count(t.name)) << where << ": " << t.name;
      at::Tensor want = by_name[t.name];
      if (t.slice) {
        ++sliced;
        EXPECT_EQ(t.slice->global_shape, want.sizes().vec()) << where << ": " << t.name;
        want = want.narrow(t.slice->dim, t.slice->offset, t.tensor.size(t.slice->dim));
      }
      ASSERT_EQ(t.tensor.sizes(), want.sizes()) << where << ": " << t.name;
      EXPECT_TRUE(at::equal(t.tensor, want)) << where << ": " << t.name;
      held += static_cast<uint64_t>(t.tensor.numel()) * itemsize;
    }
    EXPECT_EQ(report.loaded, static_cast<int64_t>(expected.size())) << where;
    EXPECT_TRUE(report.missing.empty()) << where;
    const uint64_t total = data_bytes(expected);
    if (mesh->tp_size() > 1) {
      EXPECT_GT(sliced, 0) << where;
      EXPECT_LT(report.bytes_read, total) << where;
    } else {
      EXPECT_EQ(sliced, 0) << where;
      EXPECT_EQ(report.bytes_read, total) << where;
    }
    EXPECT_EQ(report.bytes_read, held) << where << ": read other bytes than the slices held";
  }

  const int rank = world()->rank();
  std::string base;
  std::vector<Named> whole;
};

TEST_F(LoadSafetensorsMpiTest, ShardedSetLoadsAtTp2AndAtDp2) {
  if (rank == 0) write_sharded(base, whole, 3);
  world()->barrier();
  load_and_check(base, whole, 4, Mesh::create(world(), 2), "sharded at (dp=1, tp=2), rank " + std::to_string(rank));
  load_and_check(base, whole, 4, Mesh::create(world(), 1), "sharded at (dp=2, tp=1), rank " + std::to_string(rank));
}

TEST_F(LoadSafetensorsMpiTest, F16FileLoadsAtTp2AndAtDp2) {
  const std::vector<Named> half = cast(whole, at::kHalf);
  if (rank == 0) write_safetensors(base + "/model.safetensors", half);
  world()->barrier();
  load_and_check(base, half, 2, Mesh::create(world(), 2), "F16 at (dp=1, tp=2), rank " + std::to_string(rank));
  load_and_check(base, half, 2, Mesh::create(world(), 1), "F16 at (dp=2, tp=1), rank " + std::to_string(rank));
}

TEST_F(LoadSafetensorsMpiTest, BF16ShardsLoadAtTp2) {
  const std::vector<Named> brain = cast(whole, at::kBFloat16);
  if (rank == 0) write_sharded(base, brain, 2);
  world()->barrier();
  load_and_check(base, brain, 2, Mesh::create(world(), 2), "BF16 at (dp=1, tp=2), rank " + std::to_string(rank));
}

TEST_F(LoadSafetensorsMpiTest, AMissingSlicedTensorFailsOnEveryRankAndChangesNothing) {
  std::vector<Named> some;
  for (const auto& t : whole) {
    if (t.name != "blocks.0.attn.qkv.weight") some.push_back(t);
  }
  if (rank == 0) write_sharded(base, some, 3);
  world()->barrier();
  zoo::Gpt target(small_gpt(Mesh::create(world(), 2), 9));
  std::vector<at::Tensor> before;
  for (const auto& t : model_state_dict(*target)) before.push_back(t.tensor.detach().clone());
  std::string message = "no error";
  try {
    load_safetensors(*target, base);
  } catch (const CheckpointError& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("blocks.0.attn.qkv.weight"), std::string::npos) << "rank " << rank << ": " << message;
  const auto after = model_state_dict(*target);
  ASSERT_EQ(after.size(), before.size());
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_TRUE(at::equal(after[i].tensor, before[i])) << "rank " << rank << ": " << after[i].name;
  }
}

}  // namespace
}  // namespace mto
