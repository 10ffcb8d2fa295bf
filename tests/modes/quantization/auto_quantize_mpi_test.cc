// AutoQuantize on 4 real mpirun ranks, the same GPT on every rank: the scoring batches dealt
// out over data-parallel groups of 1, 2, 3 and 4 ranks give the same scores to the bit and
// the same choice; a search interrupted on 4 ranks resumes on 3 and one interrupted on 3
// resumes on 2, each to the uninterrupted result, scoring only what was left; a failing
// rank fails every rank without a hang.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cmath>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distributed/mesh.h"
#include "distributed/world.h"
#include "modes/quantization/auto_quantize.h"
#include "modes/quantization/quantized_model.h"
#include "modes/quantization/tensor_quantizer.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "tests/testing/errors.h"
#include "tests/testing/temp_dir.h"
#include "tools/zoo/forward.h"
#include "tools/zoo/gpt.h"

namespace mto {
namespace quantization {
namespace {

constexpr int kRanks = 4;
constexpr int64_t kContext = 16;
constexpr int64_t kVocab = 256;
constexpr int64_t kCalibrationBatches = 4;
constexpr int64_t kScoreBatches = 9;

std::shared_ptr<zoo::GptImpl> gpt(std::shared_ptr<Mesh> mesh, int64_t width = 128) {
  const nlohmann::json args = {{"width", width}, {"depth", 1}, {"heads", 4}, {"context", kContext}, {"seed", 7}};
  return std::make_shared<zoo::GptImpl>(zoo::GptOptions::from_json(args).mesh(std::move(mesh)));
}

// Batch `seed`: 2 windows of kContext + 1 tokens, the same on every rank.
at::Tensor windows(int64_t seed) {
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randint(kVocab, {2, kContext + 1}, generator, at::kLong);
}

// This rank's share of the calibration batches: every n-th, from its rank in `group`.
ForwardLoop calibration_loop(const std::shared_ptr<Communicator>& group) {
  const int rank = group->rank(), size = group->world_size();
  return [rank, size](torch::nn::Module& model) {
    for (int64_t b = rank; b < kCalibrationBatches; b += size) zoo::forward(model, windows(b).narrow(1, 0, kContext));
  };
}

ScoreBatches score_batches() {
  ScoreBatches batches;
  batches.count = kScoreBatches;
  batches.loss = [](torch::nn::Module& model, int64_t index) {
    const at::Tensor w = windows(100 + index);
    const at::Tensor logits = zoo::forward(model, w.narrow(1, 0, kContext));
    return at::cross_entropy_loss(logits.reshape({-1, kVocab}), w.narrow(1, 1, kContext).reshape({-1}));
  };
  batches.logits = [](torch::nn::Module& model, int64_t index) {
    return zoo::forward(model, windows(100 + index).narrow(1, 0, kContext));
  };
  batches.fingerprint = "windows 0-3, 100-108";
  return batches;
}

// The world's mesh (kRanks, 1), made once by every rank (the first call is collective).
const std::shared_ptr<Mesh>& world_mesh() {
  static const std::shared_ptr<Mesh> mesh = Mesh::create(world(), 1);
  return mesh;
}

// The mesh (2, 2), likewise.
const std::shared_ptr<Mesh>& split_mesh() {
  static const std::shared_ptr<Mesh> mesh = Mesh::create(world(), 2);
  return mesh;
}

// A search over `group` (a sub-group of the world), on the world's mesh.
AutoQuantizeOptions options(const std::shared_ptr<Communicator>& group, ScoreMethod method = ScoreMethod::kGradient) {
  AutoQuantizeOptions o;
  o.formats = {"int4_blockwise", "int8", "fp8"};
  o.effective_bits = 6;
  o.method = method;
  o.score = score_batches();
  o.context.set(kForwardLoop, calibration_loop(group));
  o.context.set_mesh(world_mesh()).set_data_parallel_group(group);
  return o;
}

AutoQuantizeResult search(const AutoQuantizeOptions& o) {
  return auto_quantize(gpt(o.context.mesh()), o).second;
}

std::vector<std::vector<double>> scores(const AutoQuantizeResult& result) {
  std::vector<std::vector<double>> out;
  for (const AutoQuantizeLayer& layer : result.layers) out.push_back(layer.scores);
  return out;
}

std::vector<int> choice(const AutoQuantizeResult& result) {
  std::vector<int> out;
  for (const AutoQuantizeLayer& layer : result.layers) out.push_back(layer.chosen);
  return out;
}

// Ranks [0, size) in one group, the others alone.
std::shared_ptr<Communicator> group_of_first(int size) {
  const int rank = world()->rank();
  return world()->split(rank < size ? 0 : 1 + rank, rank);
}

// A directory every rank names alike.
std::string shared_dir() {
  std::string dir = world()->rank() == 0 ? test::make_temp_dir() : "";
  world()->broadcast(dir, 0);
  return dir;
}

class AutoQuantizeMpi : public ::testing::Test {
 protected:
  void SetUp() override {
    at::set_num_threads(1);
    ASSERT_EQ(world()->world_size(), kRanks) << "run with 4 ranks";
    world_mesh();
    split_mesh();
  }
  void TearDown() override { world()->barrier(); }
};

TEST_F(AutoQuantizeMpi, EveryMeshScoresTheSameBitsAndChoosesAlike) {
  for (const ScoreMethod method : {ScoreMethod::kGradient, ScoreMethod::kKlDiv}) {
    SCOPED_TRACE(method == ScoreMethod::kGradient ? "gradient" : "kl_div");
    const std::shared_ptr<Communicator> alone = world()->split(world()->rank(), 0);
    const AutoQuantizeResult reference = search(options(alone, method));
    EXPECT_EQ(reference.batches_scored_here, kScoreBatches);
    for (const int size : {2, 3, 4}) {
      SCOPED_TRACE(size);
      const std::shared_ptr<Communicator> group = size == 2 ? world()->split(world()->rank() / 2, world()->rank())
                                                            : group_of_first(size);
      const AutoQuantizeResult result = search(options(group, method));
      EXPECT_EQ(scores(result), scores(reference));  // exactly, not nearly
      EXPECT_EQ(choice(result), choice(reference));
      EXPECT_EQ(result.config, reference.config);
      EXPECT_EQ(result.effective_bits, reference.effective_bits);
      // Batches dealt round-robin: rank r of n scores the batches r, r + n, ...
      const int n = group->world_size(), r = group->rank();
      EXPECT_EQ(result.batches_scored_here, (kScoreBatches - r + n - 1) / n);
      EXPECT_GE(result.peak_extra_bytes, 0);
    }
  }
}

// Interrupts a search on `group` at batch `fail_at`: the rank that scores it throws, the
// others fail with the common message.
void interrupt(const std::shared_ptr<Communicator>& group, int64_t fail_at, const std::string& checkpoint) {
  AutoQuantizeOptions failing = options(group);
  failing.checkpoint = checkpoint;
  const auto loss = failing.score.loss;
  failing.score.loss = [loss, fail_at](torch::nn::Module& model, int64_t index) {
    if (index == fail_at) throw std::runtime_error("node lost");
    return loss(model, index);
  };
  const std::string error = test::error_of([&] { search(failing); });
  // Rounds of one batch per rank: batch b is rank (b mod n)'s.
  EXPECT_EQ(error, fail_at % group->world_size() == group->rank()
                       ? "node lost"
                       : "auto_quantize: scoring failed on rank " + std::to_string(fail_at % group->world_size()) +
                             " of " + std::to_string(group->world_size()) +
                             " (its own error says why); no rank went on");
}

// Resumes the search of `checkpoint` on `group`: it gives `uninterrupted`'s result, scores
// only the `left` batches the checkpoint lacks (over all of the group's ranks), and
// calibrates nothing but the final choice.
void resume_and_check(const std::shared_ptr<Communicator>& group, const std::string& checkpoint, int64_t left,
                      const AutoQuantizeResult& uninterrupted) {
  AutoQuantizeOptions resumed = options(group);
  resumed.checkpoint = checkpoint;
  std::set<int64_t> scored;
  const auto loss = resumed.score.loss;
  resumed.score.loss = [&scored, loss](torch::nn::Module& model, int64_t index) {
    scored.insert(index);
    return loss(model, index);
  };
  int calibrations = 0;
  const ForwardLoop calibrate = resumed.context.get(kForwardLoop);
  resumed.context.set(kForwardLoop, ForwardLoop([&calibrations, calibrate](torch::nn::Module& model) {
                        ++calibrations;
                        calibrate(model);
                      }));
  const AutoQuantizeResult result = search(resumed);
  EXPECT_EQ(scores(result), scores(uninterrupted));
  EXPECT_EQ(choice(result), choice(uninterrupted));
  EXPECT_EQ(result.config, uninterrupted.config);
  at::Tensor total = at::scalar_tensor(static_cast<double>(scored.size()), at::kDouble).reshape({1});
  group->all_reduce(total, ReduceOp::kSum);
  EXPECT_EQ(total.item<double>(), left);
  EXPECT_EQ(result.batches_resumed, kScoreBatches - left);
  EXPECT_EQ(calibrations, 1);
}

TEST_F(AutoQuantizeMpi, InterruptedOnFourRanksResumesOnThree) {
  const std::string checkpoint = shared_dir() + "/search";
  const AutoQuantizeResult uninterrupted = search(options(world()->split(world()->rank(), 0)));
  const std::shared_ptr<Communicator> three = group_of_first(3);
  // Rounds 0-3 and 4-7: batch 5 fails, 4, 6 and 7 are kept; 5 and 8 are left.
  interrupt(world(), 5, checkpoint);
  if (world()->rank() < 3) resume_and_check(three, checkpoint, 2, uninterrupted);
}

TEST_F(AutoQuantizeMpi, InterruptedOnThreeRanksResumesOnTwo) {
  const std::string checkpoint = shared_dir() + "/search";
  const AutoQuantizeResult uninterrupted = search(options(world()->split(world()->rank(), 0)));
  const std::shared_ptr<Communicator> three = group_of_first(3);
  const std::shared_ptr<Communicator> two = group_of_first(2);
  // Rounds 0-2 and 3-5: batch 4 fails, 3 and 5 are kept; 4, 6, 7 and 8 are left.
  if (world()->rank() < 3) interrupt(three, 4, checkpoint);
  if (world()->rank() < 2) resume_and_check(two, checkpoint, 4, uninterrupted);
}

// A GPT of width 256 (so that int4's blocks of 128 inputs stay whole on each of 2 ranks).
AutoQuantizeResult search_wide(AutoQuantizeOptions o, const std::shared_ptr<Mesh>& mesh) {
  o.context.set_mesh(mesh).set_data_parallel_group(mesh->dp());
  o.context.set(kForwardLoop, calibration_loop(mesh->dp()));
  return auto_quantize(gpt(mesh, 256), o).second;
}

void expect_close(const AutoQuantizeResult& result, const AutoQuantizeResult& reference) {
  EXPECT_EQ(choice(result), choice(reference));
  ASSERT_EQ(result.layers.size(), reference.layers.size());
  for (size_t l = 0; l < result.layers.size(); ++l) {
    for (size_t f = 0; f < result.formats.size(); ++f) {
      const double expected = reference.layers[l].scores[f];
      EXPECT_NEAR(result.layers[l].scores[f], expected, 1e-3 * std::abs(expected))
          << result.layers[l].name << " " << result.formats[f];
    }
  }
}

// The GPT split over (dp=2, tp=2) scores what the unsplit one scores on (4, 1), up to the
// rounding of the tensor-parallel sums, and chooses alike; every rank holds the same result;
// a search interrupted on (2, 2) resumes on (4, 1) from its checkpoint (the model's
// fingerprint does not depend on the split); a block format whose blocks a split would cut
// is refused by name.
TEST_F(AutoQuantizeMpi, TensorParallelSearchAgreesWithTheUnsplitOne) {
  const AutoQuantizeResult reference = search_wide(options(world()), world_mesh());
  const AutoQuantizeResult split = search_wide(options(world()), split_mesh());
  expect_close(split, reference);
  for (size_t l = 0; l < split.layers.size(); ++l) EXPECT_EQ(split.layers[l].params, reference.layers[l].params);
  EXPECT_EQ(split.effective_bits, reference.effective_bits);
  EXPECT_EQ(split.config, reference.config);
  EXPECT_EQ(split.batches_scored_here, (kScoreBatches - split_mesh()->dp()->rank() + 1) / 2);
  std::vector<double> mine;
  for (const AutoQuantizeLayer& layer : split.layers) mine.insert(mine.end(), layer.scores.begin(), layer.scores.end());
  const at::Tensor local = at::tensor(mine, at::kDouble);
  at::Tensor most = local.clone(), least = local.clone();
  world()->all_reduce(most, ReduceOp::kMax);
  world()->all_reduce(least, ReduceOp::kMin);
  EXPECT_TRUE(at::equal(most, local));
  EXPECT_TRUE(at::equal(least, local));

  const std::string checkpoint = shared_dir() + "/search";
  AutoQuantizeOptions failing = options(world());
  failing.checkpoint = checkpoint;
  const auto loss = failing.score.loss;
  failing.score.loss = [loss](torch::nn::Module& model, int64_t index) {
    if (index == 3) throw std::runtime_error("node lost");
    return loss(model, index);
  };
  EXPECT_NE(test::error_of([&] { search_wide(failing, split_mesh()); }), "no error");
  AutoQuantizeOptions resumed = options(world());
  resumed.checkpoint = checkpoint;
  const AutoQuantizeResult result = search_wide(resumed, world_mesh());
  // Rounds of 2 batches (one per replica): 0-1 and 2-3 (3 failed, 2 kept); 7 are left.
  EXPECT_EQ(result.batches_resumed, 3);
  expect_close(result, reference);

  AutoQuantizeOptions int4 = options(world());
  int4.formats = {"int4_blockwise", "int8"};
  const std::shared_ptr<Mesh> four = Mesh::create(world(), 4);
  int4.context.set_mesh(four).set_data_parallel_group(four->dp());
  EXPECT_EQ(test::error_of<ConfigError>([&] { auto_quantize(gpt(four, 256), int4); }),
            "auto_quantize: format 'int4_blockwise' quantizes blocks of 128 input features, but layer "
            "'blocks.0.attn.proj' has 64 on this rank (split over 4 tensor-parallel ranks); leave the format out or "
            "use a smaller tp");
}

// Formats that smooth (int4_awq, int8_smoothquant) score the same bits on 1, 2 and 4
// data-parallel ranks, and on (2, 2) what the unsplit GPT scores on (4, 1), up to the
// rounding of the tensor-parallel sums, choosing alike.
TEST_F(AutoQuantizeMpi, SmoothingFormatsScoreAlikeOnEveryMesh) {
  auto smoothing = [](const std::shared_ptr<Communicator>& group) {
    AutoQuantizeOptions o = options(group);
    o.formats = {"int4_awq", "int8_smoothquant", "fp8"};
    return o;
  };
  const AutoQuantizeResult reference = search(smoothing(world()->split(world()->rank(), 0)));
  for (const int size : {2, 4}) {
    SCOPED_TRACE(size);
    const std::shared_ptr<Communicator> group =
        size == 2 ? world()->split(world()->rank() / 2, world()->rank()) : world();
    const AutoQuantizeResult result = search(smoothing(group));
    EXPECT_EQ(scores(result), scores(reference));  // exactly, not nearly
    EXPECT_EQ(choice(result), choice(reference));
    EXPECT_EQ(result.config, reference.config);
  }
  const AutoQuantizeResult split = search_wide(smoothing(world()), split_mesh());
  expect_close(split, search_wide(smoothing(world()), world_mesh()));
}

// A rank whose calibration or scoring throws fails every rank, each with a clear message,
// and nobody waits for it.
TEST_F(AutoQuantizeMpi, ARankThatFailsFailsEveryRankWithoutAHang) {
  const int rank = world()->rank();
  for (const std::string phase : {"calibration", "scoring"}) {
    AutoQuantizeOptions failing = options(world());
    if (rank == 2 && phase == "calibration") {
      failing.context.set(kForwardLoop, [](torch::nn::Module&) { throw std::runtime_error("rank 2's data is gone"); });
    }
    if (rank == 2 && phase == "scoring") {
      failing.score.loss = [](torch::nn::Module&, int64_t) -> at::Tensor {
        throw std::runtime_error("rank 2's data is gone");
      };
    }
    const std::string error = test::error_of<std::exception>([&] { search(failing); });
    EXPECT_EQ(error, rank == 2 ? "rank 2's data is gone"
                               : "auto_quantize: " + phase + " failed on rank 2 of " +
                                     std::to_string(world()->world_size()) + " (its own error says why); no rank went on")
        << phase;
  }
}

}  // namespace
}  // namespace quantization
}  // namespace mto
