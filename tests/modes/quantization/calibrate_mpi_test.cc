// Calibration sharded over real mpirun ranks (run with 4): amax on 1 rank over all the
// data equals amax on 2, 3 and 4 ranks over slices, bit for bit; one collective per sync
// whatever the number of quantizers; ranks with no data, quantizers nobody saw, and a
// failing forward loop never hang; quantize + calibrate + save on N ranks, restore on M;
// the reduction over tensor-parallel groups is one collective per group.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <filesystem>

#include "distributed/sharding.h"
#include "distributed/world.h"
#include "modes/quantization/quantize.h"
#include "modes/quantization/split_reduction.h"
#include "opt/checkpoint.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/nn/column_parallel_linear.h"
#include "opt/state_dict.h"
#include "serialization/deterministic.h"
#include "tests/opt/testing/test_modes.h"

namespace mto {
namespace quantization {
namespace {

constexpr int kBatches = 7;

ModelLike mlp_like() { return ModelLike("test_mlp", {{"hidden", 16}, {"seed", 3}}); }

// Batch i of the calibration data, the same on every rank.
at::Tensor batch(int i) {
  at::manual_seed(500 + i);
  return at::randn({3, 8}) * (1 + i % 3);
}

// Runs this rank's share of `count` batches (of `world_size` ranks) through the model.
ForwardLoop slice_loop(int count, int rank, int world_size) {
  return [=](torch::nn::Module& model) {
    const Range range = split_range(count, rank, world_size);
    for (int64_t i = range.begin; i < range.end; ++i) test::test_forward(model.shared_from_this(), batch(i));
  };
}

class CalibrateMpiTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(comm->world_size(), 4) << "run with 4 ranks"; }

  // The ranks below `size` as their own communicator; nullptr on the others.
  std::shared_ptr<Communicator> first(int size) { return comm->split(rank < size ? 0 : -1, rank); }

  // Every tensor of `model`'s state dict, by name.
  static std::map<std::string, at::Tensor> tensors(torch::nn::Module& model) {
    std::map<std::string, at::Tensor> out;
    for (const auto& entry : model_state_dict(model)) out[entry.name] = entry.tensor;
    return out;
  }

  std::shared_ptr<Communicator> comm = world();
  int rank = comm->rank();
};

TEST_F(CalibrateMpiTest, SlicesOnAnyWorldSizeGiveTheAmaxOfAllTheData) {
  // The reference: one rank over all the batches (every rank computes it alone).
  auto alone = comm->split(rank, 0);
  ModulePtr reference = quantize(mlp_like().build(), "int8", slice_loop(kBatches, 0, 1), alone);
  const auto expected = tensors(*reference);
  for (int size = 2; size <= 4; ++size) {
    auto group = first(size);
    if (!group) continue;
    group->reset_stats();
    ModulePtr model = quantize(mlp_like().build(), "int8", slice_loop(kBatches, group->rank(), size), group);
    EXPECT_EQ(group->stats().collectives, 1u) << size << " ranks";
    const auto actual = tensors(*model);
    ASSERT_EQ(actual.size(), expected.size());
    for (const auto& [name, tensor] : expected) {
      EXPECT_TRUE(actual.at(name).equal(tensor)) << name << " on " << size << " ranks";
    }
    EXPECT_EQ(serialize_deterministic(modelopt_state(*model)), serialize_deterministic(modelopt_state(*reference)));
  }
  comm->barrier();
}

TEST_F(CalibrateMpiTest, OneCollectiveWhateverTheNumberOfQuantizers) {
  for (int hidden : {4, 64}) {
    comm->reset_stats();
    // fp8 on a wider model and per-channel weights: more and larger amax, still one sync.
    quantize(ModelLike("test_mlp", {{"hidden", hidden}, {"seed", 1}}).build(), "fp8",
             slice_loop(kBatches, rank, 4), comm);
    EXPECT_EQ(comm->stats().collectives, 1u) << "hidden " << hidden;
  }
}

TEST_F(CalibrateMpiTest, RanksWithoutDataDoNotHang) {
  // 2 batches over 4 ranks: ranks 2 and 3 see nothing, and still end with the amax.
  auto alone = comm->split(rank, 0);
  const auto expected = tensors(*quantize(mlp_like().build(), "int8", slice_loop(2, 0, 1), alone));
  ModulePtr model = quantize(mlp_like().build(), "int8", slice_loop(2, rank, 4), comm);
  for (const auto& [name, tensor] : tensors(*model)) EXPECT_TRUE(tensor.equal(expected.at(name))) << name;
}

TEST_F(CalibrateMpiTest, QuantizersThatNoRankSawFailEverywhere) {
  try {
    quantize(mlp_like().build(), "int8", slice_loop(0, rank, 4), comm);
    ADD_FAILURE() << "expected an error";
  } catch (const ApplyModeError& e) {
    EXPECT_STREQ(e.what(),
                 "max_calibrate: no rank saw calibration data for fc1.input_quantizer, "
                 "fc2.input_quantizer, fc3.input_quantizer (does the forward loop run these layers?)");
  }
}

TEST_F(CalibrateMpiTest, AFailingRankFailsEveryRank) {
  ForwardLoop loop = [this](torch::nn::Module& model) {
    if (rank == 2) throw ApplyModeError("rank 2 lost its data");
    slice_loop(kBatches, rank, 4)(model);
  };
  try {
    quantize(mlp_like().build(), "int8", loop, comm);
    ADD_FAILURE() << "expected an error";
  } catch (const ApplyModeError& e) {
    EXPECT_STREQ(e.what(), rank == 2 ? "rank 2 lost its data"
                                     : "max_calibrate failed on rank 2 (its own error says why)");
  }
}

TEST_F(CalibrateMpiTest, SaveOnNRanksRestoreOnM) {
  const std::string base = std::string(std::getenv("TEST_TMPDIR")) + "/quantized";
  at::manual_seed(9);
  const at::Tensor x = at::randn({5, 8}) * 2;
  // What every restore must compute: one rank calibrated over all the data.
  auto alone = comm->split(rank, 0);
  at::Tensor reference;
  {
    ModulePtr model = quantize(mlp_like().build(), "int8", slice_loop(kBatches, 0, 1), alone);
    torch::NoGradGuard no_grad;
    reference = test::test_forward(model, x);
  }
  for (int n = 1; n <= 4; ++n) {
    const std::string dir = base + std::to_string(n);
    at::Tensor expected;
    if (auto group = first(n)) {
      ModulePtr model = quantize(mlp_like().build(), "int8", slice_loop(kBatches, group->rank(), n), group);
      save(*model, dir, {group});
      torch::NoGradGuard no_grad;
      expected = test::test_forward(model, x);
    }
    comm->barrier();
    for (int m = 1; m <= 4; ++m) {
      auto group = first(m);
      if (!group) continue;
      ModulePtr restored = restore(dir, {group});
      torch::NoGradGuard no_grad;
      const at::Tensor out = test::test_forward(restored, x);
      // Rank 0 saved in every case.
      if (rank == 0) {
        EXPECT_TRUE(out.equal(expected)) << "saved on " << n << ", restored on " << m;
      }
      EXPECT_TRUE(out.equal(reference)) << "saved on " << n << ", restored on " << m;
    }
    comm->barrier();
  }
}

TEST_F(CalibrateMpiTest, ASplitReductionIsOneCollectivePerGroupWhateverItsOps) {
  nn::ColumnParallelLinear layer(nn::ColumnParallelLinearOptions(4, 8).tp(comm));
  const double r = rank;
  // One op: one all-reduce.
  at::Tensor a = at::tensor({r, -r}, at::kFloat);
  at::Tensor b = at::tensor({r + 0.5}, at::kDouble);
  SplitReduction same;
  same.add(layer.get(), &a, ReduceOp::kMax);
  same.add(layer.get(), &b, ReduceOp::kMax);
  comm->reset_stats();
  same.run();
  EXPECT_EQ(comm->stats().collectives, 1u);
  EXPECT_TRUE(at::equal(a, at::tensor({3.0f, 0.0f})));
  EXPECT_TRUE(at::equal(b, at::tensor({3.5}, at::kDouble)));
  // Several ops: one all-gather, each tensor reduced with its own op, in its own dtype.
  at::Tensor maxima = at::tensor({r, -r}, at::kFloat);
  at::Tensor sums = at::tensor({r + 0.25, 1.0}, at::kDouble);
  at::Tensor minima = at::full({2, 1}, 10 - r, at::kFloat);
  SplitReduction mixed;
  mixed.add(layer.get(), &maxima, ReduceOp::kMax);
  mixed.add(layer.get(), &sums, ReduceOp::kSum);
  mixed.add(layer.get(), &minima, ReduceOp::kMin);
  comm->reset_stats();
  mixed.run();
  EXPECT_EQ(comm->stats().collectives, 1u);
  EXPECT_TRUE(at::equal(maxima, at::tensor({3.0f, 0.0f})));
  EXPECT_TRUE(at::equal(sums, at::tensor({7.0, 4.0}, at::kDouble)));
  EXPECT_TRUE(at::equal(minima, at::full({2, 1}, 7.0f)));
  // Integers of a mixed group travel as float64: exact below 2^53.
  at::Tensor counts = at::tensor({(int64_t{1} << 40) + rank}, at::kLong);
  at::Tensor flag = at::tensor({r}, at::kFloat);
  SplitReduction typed;
  typed.add(layer.get(), &counts, ReduceOp::kSum);
  typed.add(layer.get(), &flag, ReduceOp::kMax);
  typed.run();
  EXPECT_EQ(counts.scalar_type(), at::kLong);
  EXPECT_EQ(counts.item<int64_t>(), (int64_t{1} << 42) + 6);
  EXPECT_EQ(flag.scalar_type(), at::kFloat);
  EXPECT_EQ(flag.item<float>(), 3.0f);
  // A layer on one rank reduces nothing.
  nn::ColumnParallelLinear alone(nn::ColumnParallelLinearOptions(4, 8).tp(comm->split(rank, 0)));
  at::Tensor mine = at::tensor({r});
  SplitReduction none;
  none.add(alone.get(), &mine, ReduceOp::kSum);
  none.run();
  EXPECT_EQ(mine.item<float>(), static_cast<float>(r));
}

}  // namespace
}  // namespace quantization
}  // namespace mto
