// The distributed round trip, on as many ranks as mpirun starts: join the world, wrap a
// model of mto::nn layers in mto::DataParallel, train a few steps with each rank on its own
// slice of a random data set, save the wrapped model as one checkpoint (every rank writes a
// shard; save unwraps), restore it into a fresh unwrapped model, wrap that again, and check
// on every rank that the outputs are bit-identical to those before the save.
//
//   mpirun --oversubscribe -np 3 bazel-bin/tools/examples/data_parallel_round_trip [checkpoint_dir]
//
// Without a directory it saves into a new temporary directory and removes it afterwards.
#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/optim/sgd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>

#include "distributed/communicator.h"
#include "distributed/data_parallel.h"
#include "distributed/world.h"
#include "opt/checkpoint.h"
#include "opt/nn/linear.h"

namespace {

// A small regression network.
class NetImpl : public torch::nn::Module {
 public:
  NetImpl() {
    fc1 = register_module("fc1", mto::nn::Linear(16, 64));
    fc2 = register_module("fc2", mto::nn::Linear(64, 64));
    fc3 = register_module("fc3", mto::nn::Linear(64, 4));
  }
  at::Tensor forward(const at::Tensor& x) { return fc3->forward(at::relu(fc2->forward(at::relu(fc1->forward(x))))); }

  mto::nn::Linear fc1{nullptr}, fc2{nullptr}, fc3{nullptr};
};

constexpr int kSteps = 20;
constexpr int64_t kBatchPerRank = 8;

}  // namespace

int main(int argc, char** argv) {
  try {
    at::set_num_threads(1);  // ranks share the machine's cores
    std::shared_ptr<mto::Communicator> comm = mto::init_world();
    const int rank = comm->rank();
    const int ranks = comm->world_size();

    // Every rank must save into the same directory: rank 0 picks it and tells the others.
    std::string scratch;
    std::string dir = argc > 1 ? argv[1] : "";
    if (dir.empty() && rank == 0) {
      std::string pattern = (std::filesystem::temp_directory_path() / "mto-dp-round-trip-XXXXXX").string();
      if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("cannot create a temporary directory");
      scratch = pattern;
      dir = scratch + "/ckpt";  // save wants a new path or an old checkpoint, not an empty directory
    }
    comm->broadcast(dir, 0);

    // Each rank starts from other weights; wrapping gives every rank those of rank 0.
    at::manual_seed(100 + rank);
    auto net = std::make_shared<NetImpl>();
    mto::DataParallel model(net, comm);
    torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1));

    // Every rank draws the same random data set and trains on its own slice of the rows.
    at::manual_seed(0);
    const at::Tensor x = at::randn({kBatchPerRank * ranks, 16});
    const at::Tensor y = x.narrow(1, 0, 4).sin();
    const at::Tensor mine = x.narrow(0, rank * kBatchPerRank, kBatchPerRank);
    const at::Tensor target = y.narrow(0, rank * kBatchPerRank, kBatchPerRank);
    double first_loss = 0, last_loss = 0;
    for (int step = 0; step < kSteps; ++step) {
      optimizer.zero_grad();
      at::Tensor loss = (model->module_as<NetImpl>()->forward(mine) - target).pow(2).mean();
      loss.backward();
      model->average_gradients();
      optimizer.step();
      // The global loss: the mean of the ranks' losses (equal slices).
      at::Tensor global = loss.detach().clone();
      comm->all_reduce(global, mto::ReduceOp::kSum);
      (step == 0 ? first_loss : last_loss) = global.item<double>() / ranks;
    }

    at::manual_seed(1000);
    const at::Tensor probe = at::randn({32, 16});
    at::NoGradGuard no_grad;
    const at::Tensor before = net->forward(probe);

    mto::save(*model, dir);  // collective; the keys are "fc1.weight", ..., without "module."

    // A fresh, unwrapped model with other weights on every rank: restore, then wrap again.
    at::manual_seed(200 + rank);
    auto fresh = std::make_shared<NetImpl>();
    const bool differed = !fresh->forward(probe).equal(before);
    auto restored = std::dynamic_pointer_cast<NetImpl>(mto::restore(fresh, dir));  // collective
    // Checked before wrapping too: wrapping copies rank 0's weights and would hide a bad restore.
    bool identical = restored->forward(probe).equal(before);
    mto::DataParallel again(restored, comm);
    identical = identical && again->module_as<NetImpl>()->forward(probe).equal(before);

    // How many ranks see identical outputs, and how many started from other weights.
    at::Tensor counts = at::tensor({identical ? 1 : 0, differed ? 1 : 0}, at::kInt);
    comm->all_reduce(counts, mto::ReduceOp::kSum);
    const int identical_ranks = counts[0].item<int>();
    const int differed_ranks = counts[1].item<int>();
    if (rank == 0) {
      std::printf("%d rank(s) (%s): trained %d steps (loss %.4f -> %.4f), saved %s, restored into fresh models "
                  "(%d/%d differed before) and re-wrapped: outputs bit-identical on %d/%d ranks\n",
                  ranks, comm->backend_name().c_str(), kSteps, first_loss, last_loss, dir.c_str(), differed_ranks,
                  ranks, identical_ranks, ranks);
    }
    comm->barrier();
    if (!scratch.empty()) std::filesystem::remove_all(scratch);
    return identical_ranks == ranks ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "data_parallel_round_trip: " << e.what() << "\n";
    return 1;
  }
}
