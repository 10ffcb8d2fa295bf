// A sparsified, fine-tuned model saved on 2 mpirun ranks restores bit-identically on 3
// (run with 3 ranks), with either restore strategy.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/optim/sgd.h>

#include <cstdlib>
#include <string>

#include "distributed/world.h"
#include "modes/sparsity/sparsity.h"
#include "opt/checkpoint.h"
#include "opt/conversion.h"
#include "serialization/deterministic.h"
#include "tests/modes/sparsity/sparse_testing.h"
#include "tests/opt/testing/test_modes.h"
#include "tests/testing/model_checks.h"

namespace mto {
namespace sparsity {
namespace {

// The model every rank builds the same way: sparsified, then two steps of fine-tuning.
ModulePtr reference_model() {
  ModulePtr model = apply_mode(ModelLike("test_mlp", {{"hidden", 32}, {"seed", 7}}).build(), "sparse_magnitude");
  torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9));
  test::train_steps(model, sgd, 2);
  return model;
}

TEST(SparseCheckpointMpi, SavedOnTwoRanksRestoresOnThree) {
  std::shared_ptr<Communicator> comm = world();
  ASSERT_EQ(comm->world_size(), 3) << "run with 3 ranks";
  const int rank = comm->rank();
  const std::string dir = std::string(std::getenv("TEST_TMPDIR")) + "/sparse-ckpt";
  ModulePtr reference = reference_model();
  if (auto pair = comm->split(rank < 2 ? 0 : -1, rank)) save(*reference, dir, {pair});
  comm->barrier();

  for (auto strategy : {RestoreStrategy::kReadAll, RestoreStrategy::kReadShareBroadcast}) {
    // Every rank starts from other weights, so only the checkpoint can make them equal.
    ModulePtr restored = restore(ModelLike("test_mlp", {{"hidden", 32}, {"seed", 100 + rank}}), dir, {comm, strategy});
    const std::string where = "rank " + std::to_string(rank);
    EXPECT_EQ(serialize_deterministic(modelopt_state(*restored)), serialize_deterministic(modelopt_state(*reference)))
        << where;
    test::expect_same_state_dict(*restored, *reference, where);
    EXPECT_EQ(sparse_layer_names(*restored), (std::vector<std::string>{"fc1", "fc2", "fc3"})) << where;
    const at::Tensor x = test::test_input(reference);
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(test::same_bytes(test::test_forward(restored, x), test::test_forward(reference, x))) << where;
  }
}

}  // namespace
}  // namespace sparsity
}  // namespace mto
