// DataParallel on whatever world the test is launched in (one rank, or mpirun ranks).
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <sstream>

#include "distributed/data_parallel.h"
#include "distributed/world.h"
#include "opt/nn/linear.h"

namespace mto {
namespace {

class Net : public torch::nn::Module {
 public:
  Net() {
    fc = register_module("fc", nn::Linear(3, 2));
    steps = register_buffer("steps", at::zeros({1}));
  }
  nn::Linear fc{nullptr};
  at::Tensor steps;
};

class DataParallelTest : public ::testing::Test {
 protected:
  std::shared_ptr<Communicator> comm = world();
  int rank = comm->rank();
  int n = comm->world_size();
};

TEST_F(DataParallelTest, WrappingGivesEveryRankTheWeightsOfRankZero) {
  at::manual_seed(1000 + rank);
  auto net = std::make_shared<Net>();
  net->steps.fill_(rank + 5);
  DataParallel dp(net, comm);
  at::Tensor flat = at::cat({net->fc->weight.detach().flatten(), net->fc->bias.detach(), net->steps});
  for (const auto& other : comm->all_gather(flat)) EXPECT_TRUE(other.equal(flat));
  EXPECT_EQ(net->steps.item<float>(), 5.0f);
  EXPECT_EQ(dp->named_parameters().keys(), (std::vector<std::string>{"module.fc.weight", "module.fc.bias"}));
  EXPECT_EQ(dp->named_buffers().keys(), std::vector<std::string>{"module.steps"});
}

TEST_F(DataParallelTest, AverageGradientsGivesTheMeanOnEveryRank) {
  auto net = std::make_shared<Net>();
  DataParallel dp(net, comm);
  net->fc->weight.mutable_grad() = at::full({2, 3}, static_cast<double>(2 * rank));
  // fc.bias has no gradient on any rank: it counts as zeros.
  dp->average_gradients();
  EXPECT_TRUE(net->fc->weight.grad().equal(at::full({2, 3}, static_cast<double>(n - 1))));
  EXPECT_TRUE(net->fc->bias.grad().equal(at::zeros({2})));
}

TEST_F(DataParallelTest, UnwrapsAndNamesItself) {
  auto net = std::make_shared<Net>();
  DataParallel dp(net, comm);
  EXPECT_TRUE(is_data_parallel(*dp));
  EXPECT_FALSE(is_data_parallel(*net));
  EXPECT_EQ(unwrap_data_parallel(dp.ptr()), net);
  EXPECT_EQ(unwrap_data_parallel(net), net);
  EXPECT_EQ(dp->module_as<Net>(), net);
  EXPECT_THROW(dp->module_as<nn::LinearImpl>(), std::invalid_argument);
  std::ostringstream printed;
  dp->pretty_print(printed);
  EXPECT_EQ(printed.str(), "mto::DataParallel(world_size=" + std::to_string(n) + ", backend=" +
                               comm->backend_name() + ")");
}

}  // namespace
}  // namespace mto
