// The pruning search on real mpirun ranks (run with 4): the ranks split the candidates and
// pick the same subnet as one rank scoring them all; a score that throws on one rank fails
// every rank; chains across families (fastnas -> export_nas -> quantize -> max_calibrate,
// sparse_magnitude -> quantize -> max_calibrate) saved on 4 ranks restore on 3 and 2, bit
// for bit.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <string>

#include "distributed/world.h"
#include "modes/nas/search.h"
#include "modes/nas/trace.h"
#include "modes/quantization/quantize.h"
#include "opt/checkpoint.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "tests/modes/nas/test_models.h"
#include "tests/testing/temp_dir.h"

namespace mto {
namespace nas {
namespace {

at::Tensor images(int64_t n, int seed) {
  at::manual_seed(seed);
  return at::randn({n, 1, 8, 8});
}

ModulePtr searchable(bool batch_norm) {
  const at::Tensor input = images(2, 0);
  RuntimeContext context;
  context.set(kDummyForward, DummyForward([input](torch::nn::Module& m) { return test::run(m, input); }));
  return apply_mode(test::cnn_like(batch_norm).build(), "fastnas", nullptr, std::nullopt, context);
}

SearchOptions options_for(bool batch_norm, std::shared_ptr<Communicator> comm) {
  ModulePtr teacher = test::cnn_like(batch_norm).build();
  teacher->eval();
  const at::Tensor x = images(64, 7);
  const at::Tensor target = test::run(*teacher, x).detach();
  SearchOptions options;
  options.constraint = Constraint::parse("params=0.5");
  options.num_candidates = 16;
  options.seed = 5;
  options.communicator = std::move(comm);
  options.score = [x, target](torch::nn::Module& model) {
    at::NoGradGuard no_grad;
    model.eval();
    return -(test::run(model, x) - target).pow(2).mean().item<double>();
  };
  if (batch_norm) options.calibrate_loop = [](torch::nn::Module& m) { test::run(m, images(32, 20)); };
  return options;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

class SearchMpiTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(comm->world_size(), 4) << "run with 4 ranks"; }
  std::shared_ptr<Communicator> comm = world();
  int rank = comm->rank();
};

TEST_F(SearchMpiTest, FourRanksPickWhatOneRankPicks) {
  for (bool batch_norm : {false, true}) {
    auto start = std::chrono::steady_clock::now();
    ModulePtr alone_model = searchable(batch_norm);
    const SearchResult alone = search(alone_model, options_for(batch_norm, comm->split(rank, 0)));
    const double alone_seconds = seconds_since(start);
    comm->barrier();
    start = std::chrono::steady_clock::now();
    ModulePtr shared_model = searchable(batch_norm);
    const SearchResult shared = search(shared_model, options_for(batch_norm, comm));
    const double shared_seconds = seconds_since(start);

    EXPECT_EQ(alone.scored_here, 16);
    EXPECT_EQ(shared.scored_here, 4) << "rank " << rank;
    EXPECT_EQ(shared.candidates, 16);
    EXPECT_EQ(shared.score, alone.score);
    ASSERT_EQ(shared.subnet.size(), alone.subnet.size());
    for (size_t i = 0; i < alone.subnet.size(); ++i) EXPECT_EQ(shared.subnet[i].width(), alone.subnet[i].width());
    EXPECT_LE(shared.fraction, 0.5);
    // Every rank ends with the same model, batch-norm statistics included.
    for (const auto& item : shared_model->named_buffers()) {
      at::Tensor mine = item.value().clone();
      at::Tensor theirs = mine.clone();
      comm->broadcast(theirs, 0);
      EXPECT_TRUE(at::equal(mine, theirs)) << item.key();
    }
    if (rank == 0) {
      std::cout << "batch_norm " << batch_norm << ": 1 rank scored 16 candidates in " << alone_seconds
                << " s; 4 ranks scored 16 (4 each) in " << shared_seconds << " s\n";
    }
  }
}

TEST_F(SearchMpiTest, AScoreThatFailsOnOneRankFailsEveryRank) {
  SearchOptions options = options_for(false, comm);
  const ScoreFunction score = options.score;
  options.score = [&](torch::nn::Module& m) {
    if (rank == 2) throw ApplyModeError("out of memory while scoring");
    return score(m);
  };
  std::string error;
  try {
    search(searchable(false), options);
  } catch (const std::exception& e) {
    error = e.what();
  }
  EXPECT_EQ(error, rank == 2 ? "out of memory while scoring" : "out of memory while scoring (on rank 2)");
  // The communicator still works: nobody was left behind in a collective.
  comm->barrier();
}

TEST_F(SearchMpiTest, ADamagedCheckpointOfOneRankFailsEveryRank) {
  std::string dir = rank == 0 ? mto::test::make_temp_dir() : "";
  comm->broadcast(dir, 0);
  SearchOptions options = options_for(false, comm);
  options.checkpoint = dir + "/search-rank-" + std::to_string(rank) + ".json";
  search(searchable(false), options);
  // Rank 2's file loses its end, as a full disk or a copy cut short would leave it.
  const std::string damaged = dir + "/search-rank-2.json";
  if (rank == 2) std::filesystem::resize_file(damaged, 20);
  comm->barrier();
  std::string error;
  try {
    search(searchable(false), options);
  } catch (const std::exception& e) {
    error = e.what();
  }
  // Every rank fails at once, naming the file, where the others waited for rank 2 in the
  // search's first collective until its timeout.
  EXPECT_NE(error.find(damaged), std::string::npos) << "rank " << rank << ": " << error;
  if (rank != 2) EXPECT_NE(error.find("(on rank 2)"), std::string::npos) << error;
  comm->barrier();
}

// Saves `model` on the 4 ranks and restores it on the first `ranks`, which must compute
// bit for bit what it does; returns the chain of modes the restored model holds.
std::vector<std::string> save_and_restore_on(ModulePtr model, int ranks, const std::shared_ptr<Communicator>& comm) {
  std::string dir = comm->rank() == 0 ? mto::test::make_temp_dir() : "";
  comm->broadcast(dir, 0);
  dir += "/ckpt";
  save(*model, dir);
  model->eval();
  const at::Tensor x = images(5, 9);
  const at::Tensor expected = test::run(*model, x);
  std::vector<std::string> chain;
  if (auto some = comm->split(comm->rank() < ranks ? 0 : -1, comm->rank())) {
    RestoreOptions options;
    options.communicator = some;
    ModulePtr restored = restore(dir, options);
    restored->eval();
    EXPECT_TRUE(at::equal(test::run(*restored, x), expected)) << "rank " << comm->rank();
    const ModeloptState state = modelopt_state(*restored);
    for (const auto& entry : state.modelopt_state_dict()) chain.push_back(entry.mode());
  }
  comm->barrier();
  return chain;
}

// This rank's share of 8 calibration batches.
quantization::ForwardLoop calibration_slice(const Communicator& comm) {
  return [&comm](torch::nn::Module& m) {
    for (int i = comm.rank(); i < 8; i += comm.world_size()) test::run(m, images(4, 30 + i));
  };
}

TEST_F(SearchMpiTest, PrunedAndQuantizedOnFourRanksRestoresOnThree) {
  ModulePtr model = searchable(true);
  const SearchResult result = search(model, options_for(true, comm));
  model = apply_mode(model, "export_nas");
  int64_t params = 0;
  for (const auto& p : model->parameters()) params += p.numel();
  EXPECT_EQ(params, result.params);
  model = quantization::quantize(model, "int8", calibration_slice(*comm));
  const std::vector<std::string> chain = save_and_restore_on(model, 3, comm);
  if (rank < 3) {
    EXPECT_EQ(chain, (std::vector<std::string>{"fastnas", "export_nas", "quantize", "max_calibrate"}));
  }
}

TEST_F(SearchMpiTest, SparseAndQuantizedOnFourRanksRestoresOnTwo) {
  ModulePtr model = apply_mode(test::cnn_like(true).build(), "sparse_magnitude");
  // Calibrate in eval mode: in train mode each rank's batch norms would learn their own
  // statistics, and save refuses ranks that hold different models.
  model->eval();
  model = quantization::quantize(model, "int8", calibration_slice(*comm));
  const std::vector<std::string> chain = save_and_restore_on(model, 2, comm);
  if (rank < 2) {
    EXPECT_EQ(chain, (std::vector<std::string>{"sparse_magnitude", "quantize", "max_calibrate"}));
  }
}

}  // namespace
}  // namespace nas
}  // namespace mto
