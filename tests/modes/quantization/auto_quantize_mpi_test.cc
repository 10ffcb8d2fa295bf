// AutoQuantize on 4 real mpirun ranks: the same GPT on every rank (world mesh (4, 1)), the
// calibration and scoring batches split over the ranks (each rank one row of every batch):
// the input amaxes are the maxima over all ranks and the scores the sums, so every rank
// makes the same choice, and it is the one a single process makes on all of the data.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cmath>
#include <memory>
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
#include "tests/testing/errors.h"
#include "tools/zoo/forward.h"
#include "tools/zoo/gpt.h"

namespace mto {
namespace quantization {
namespace {

constexpr int kRanks = 4;
constexpr int64_t kContext = 16;
constexpr int64_t kVocab = 256;
// Scores summed over ranks differ from one process's by the order of their sums.
constexpr double kTolerance = 1e-4;

std::shared_ptr<zoo::GptImpl> gpt(std::shared_ptr<Mesh> mesh) {
  const nlohmann::json args = {{"width", 128}, {"depth", 1}, {"heads", 4}, {"context", kContext}, {"seed", 7}};
  return std::make_shared<zoo::GptImpl>(zoo::GptOptions::from_json(args).mesh(std::move(mesh)));
}

// Windows of kContext + 1 tokens, kRanks rows, the same on every rank.
at::Tensor windows(int64_t seed) {
  at::Generator generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randint(kVocab, {kRanks, kContext + 1}, generator, at::kLong);
}

const std::vector<int64_t> kCalibrationSeeds = {1, 2};
const std::vector<int64_t> kScoreSeeds = {11, 12, 13};

// `rows` of a batch: [first, first + count).
struct Rows {
  int64_t first, count;
};

ForwardLoop calibration_loop(Rows rows) {
  return [rows](torch::nn::Module& model) {
    for (int64_t seed : kCalibrationSeeds) {
      zoo::forward(model, windows(seed).narrow(0, rows.first, rows.count).narrow(1, 0, kContext));
    }
  };
}

// The language-model cross-entropy of the whole batch, restricted to `rows`: their summed
// token losses over all of the batch's tokens, so that the ranks' gradients are the
// single process's rows and their scores add up to its scores.
LossLoop score_loop(Rows rows) {
  return [rows](torch::nn::Module& model, const std::function<void(const at::Tensor&)>& backward) {
    for (int64_t seed : kScoreSeeds) {
      const at::Tensor w = windows(seed).narrow(0, rows.first, rows.count);
      const at::Tensor logits = zoo::forward(model, w.narrow(1, 0, kContext));
      const at::Tensor sum = at::cross_entropy_loss(logits.reshape({-1, kVocab}), w.narrow(1, 1, kContext).reshape({-1}),
                                                    {}, at::Reduction::Sum);
      backward(sum / static_cast<double>(kRanks * kContext));
    }
  };
}

AutoQuantizeOptions options(Rows rows) {
  AutoQuantizeOptions o;
  o.formats = {"int4_blockwise", "int8", "fp8"};
  o.effective_bits = 6;
  o.score_loop = score_loop(rows);
  o.context.set(kForwardLoop, calibration_loop(rows));
  return o;
}

std::vector<int> choice(const AutoQuantizeResult& result) {
  std::vector<int> out;
  for (const AutoQuantizeLayer& layer : result.layers) out.push_back(layer.chosen);
  return out;
}

TEST(AutoQuantizeMpi, SplitDataGivesTheSingleProcessChoiceOnEveryRank) {
  at::set_num_threads(1);
  ASSERT_EQ(world()->world_size(), kRanks) << "run with 4 ranks";
  const int rank = world()->rank();
  const std::shared_ptr<Mesh> mesh = Mesh::create(world(), 1);
  ASSERT_EQ(mesh->dp()->world_size(), kRanks);
  const std::shared_ptr<Communicator> alone = world()->split(rank, 0);
  const std::shared_ptr<Mesh> solo = Mesh::create(alone, 1);

  AutoQuantizeOptions split = options({rank, 1});
  split.context.set_mesh(mesh);
  const auto [model, result] = auto_quantize(gpt(mesh), split);

  AutoQuantizeOptions whole = options({0, kRanks});
  whole.context.set_mesh(solo).set_data_parallel_group(alone);
  const auto [reference_model, reference] = auto_quantize(gpt(solo), whole);

  // The same choice as one process on all of the data, within the budget.
  EXPECT_EQ(choice(result), choice(reference));
  EXPECT_LE(result.effective_bits, 6);
  EXPECT_EQ(result.effective_bits, reference.effective_bits);
  EXPECT_EQ(result.config, reference.config);
  ASSERT_EQ(result.layers.size(), reference.layers.size());
  for (size_t l = 0; l < result.layers.size(); ++l) {
    for (size_t f = 0; f < result.formats.size(); ++f) {
      const double expected = reference.layers[l].scores[f];
      EXPECT_NEAR(result.layers[l].scores[f], expected, kTolerance * std::abs(expected))
          << result.layers[l].name << " " << result.formats[f];
    }
  }

  // Every rank the same choice (and scores): the maximum and the sum over the ranks.
  std::vector<double> mine;
  for (const AutoQuantizeLayer& layer : result.layers) {
    mine.push_back(layer.chosen);
    for (double s : layer.scores) mine.push_back(s);
  }
  const at::Tensor local = at::tensor(mine, at::kDouble);
  at::Tensor most = local.clone(), sum = local.clone();
  world()->all_reduce(most, ReduceOp::kMax);
  world()->all_reduce(sum, ReduceOp::kSum);
  EXPECT_TRUE(at::equal(most, local));
  EXPECT_TRUE(at::equal(sum, local * kRanks));

  // The calibrated input amaxes are the maxima over all of the data: the same as one process's.
  torch::nn::Module& quantized = *model;
  torch::nn::Module& single = *reference_model;
  for (const QuantizerSlot& slot : quantized_slots(quantized)) {
    TensorQuantizerImpl* q = slot.quantizer();
    if (!q->attributes().enable()) continue;
    bool found = false;
    for (const QuantizerSlot& other : quantized_slots(single)) {
      if (other.name != slot.name) continue;
      found = true;
      ASSERT_TRUE(q->has_amax()) << slot.name;
      EXPECT_TRUE(at::equal(q->amax(), other.quantizer()->amax())) << slot.name;
    }
    EXPECT_TRUE(found) << slot.name;
  }

  // And the quantized models compute the same outputs on every rank.
  torch::NoGradGuard no_grad;
  const at::Tensor input = windows(99).narrow(1, 0, kContext);
  const at::Tensor out = zoo::forward(quantized, input);
  EXPECT_TRUE(at::equal(out, zoo::forward(single, input)));
  world()->barrier();
}

// A rank whose calibration or scoring throws fails every rank, each with a clear message,
// and nobody waits for it.
TEST(AutoQuantizeMpi, ARankThatFailsFailsEveryRankWithoutAHang) {
  at::set_num_threads(1);
  const int rank = world()->rank();
  const std::shared_ptr<Mesh> mesh = Mesh::create(world(), 1);
  for (const std::string phase : {"calibration", "scoring"}) {
    AutoQuantizeOptions failing = options({rank, 1});
    failing.context.set_mesh(mesh);
    if (rank == 2 && phase == "calibration") {
      failing.context.set(kForwardLoop, [](torch::nn::Module&) { throw std::runtime_error("rank 2's data is gone"); });
    }
    if (rank == 2 && phase == "scoring") {
      failing.score_loop = [](torch::nn::Module&, const std::function<void(const at::Tensor&)>&) {
        throw std::runtime_error("rank 2's data is gone");
      };
    }
    const std::string error = test::error_of<std::exception>([&] { auto_quantize(gpt(mesh), failing); });
    EXPECT_EQ(error, rank == 2 ? "rank 2's data is gone"
                               : "auto_quantize: " + phase +
                                     " failed on another rank (its own error says why); no rank went on")
        << phase;
  }
  world()->barrier();
}

}  // namespace
}  // namespace quantization
}  // namespace mto
