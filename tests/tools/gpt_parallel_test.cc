// The zoo GPT split over a data x tensor parallel mesh, on 4 real mpirun ranks: the same
// global weights and outputs at every tp, one training step at (dp=2, tp=2) equal to the
// single-process step, and checkpoints saved on one mesh restored on another.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/optim/sgd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "distributed/data_parallel.h"
#include "distributed/distributed_error.h"
#include "distributed/mesh.h"
#include "distributed/world.h"
#include "opt/checkpoint.h"
#include "opt/conversion.h"
#include "modes/nas/trace.h"
#include "modes/quantization/awq_clip.h"
#include "modes/quantization/awq_lite.h"
#include "modes/quantization/quantized_model.h"
#include "modes/quantization/quantize.h"
#include "modes/quantization/smoothquant.h"
#include "serialization/deterministic.h"
#include "opt/errors.h"
#include "opt/state_dict.h"
#include "serialization/checksum.h"
#include "serialization/file.h"
#include "serialization/manifest_file.h"
#include "tests/testing/model_checks.h"
#include "tools/zoo/gpt.h"

namespace mto {
namespace {

namespace fs = std::filesystem;
using test::expect_slices_of;

// Outputs of different tp sizes differ by the order of their sums only.
constexpr double kTolerance = 1e-5;

zoo::GptOptions small_gpt(std::shared_ptr<Mesh> mesh, int64_t seed = 3) {
  return zoo::GptOptions().vocab(32).width(16).depth(2).heads(4).context(8).seed(seed).mesh(std::move(mesh));
}

// A mesh of this rank alone, for the single-process reference; made once, by every rank
// together (splitting is collective).
std::shared_ptr<Mesh> solo() {
  static std::shared_ptr<Mesh>* mesh = new std::shared_ptr<Mesh>(Mesh::create(world()->split(world()->rank(), 0), 1));
  return *mesh;
}

// Tokens every rank agrees on.
at::Tensor tokens(int64_t batch) {
  return at::arange(batch * 8, at::kLong).reshape({batch, 8}).mul(7).remainder(32);
}

class GptParallelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(world()->world_size(), 4) << "run with 4 ranks";
    solo();
    base = std::string(std::getenv("TEST_TMPDIR")) + "/" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    if (rank == 0) fs::create_directories(base);
    world()->barrier();
  }

  // The first `size` ranks as their own communicator; nullptr on the others.
  std::shared_ptr<Communicator> first(int size) { return world()->split(rank < size ? 0 : -1, rank); }

  const int rank = world()->rank();
  std::string base;
};

TEST_F(GptParallelTest, EveryTpHoldsSlicesOfTheSameGlobalModelAndComputesTheSame) {
  for (bool tied : {false, true}) {
    zoo::Gpt reference(small_gpt(solo()).tie_embeddings(tied));
    const at::Tensor expected = reference->forward(tokens(2));
    for (int tp : {1, 2, 4}) {
      const std::string where = "tp=" + std::to_string(tp) + (tied ? ", tied" : "");
      zoo::Gpt gpt(small_gpt(Mesh::create(world(), tp)).tie_embeddings(tied));
      expect_slices_of(*gpt, *reference, where);
      EXPECT_TRUE(at::allclose(gpt->forward(tokens(2)), expected, kTolerance, kTolerance)) << where;
    }
  }
}

TEST_F(GptParallelTest, OneTrainingStepAtTwoByTwoEqualsTheSingleProcessStep) {
  auto step = [](zoo::GptImpl& gpt, torch::nn::Module& trained, const at::Tensor& input, DataParallelImpl* dp) {
    torch::optim::SGD optimizer(trained.parameters(), torch::optim::SGDOptions(0.5));
    optimizer.zero_grad();
    const at::Tensor logits = gpt.forward(input);
    const at::Tensor loss = at::cross_entropy_loss(logits.reshape({-1, 32}), input.roll(-1, 1).reshape({-1}));
    loss.backward();
    if (dp) dp->average_gradients();
    optimizer.step();
  };
  // The tied head's weight gets the gradients of the embedding and of the logits, each
  // rank those of its own vocabulary rows.
  for (bool tied : {false, true}) {
    zoo::Gpt reference(small_gpt(solo()).tie_embeddings(tied));
    step(*reference, *reference, tokens(4), nullptr);

    const auto mesh = Mesh::create(world(), 2);
    zoo::Gpt gpt(small_gpt(mesh).tie_embeddings(tied));
    DataParallel dp(gpt.ptr(), mesh->dp());
    // Each replica takes half the batch; the averaged gradient is the full batch's.
    step(*gpt, *dp, tokens(4).narrow(0, 2 * mesh->dp_index(), 2), dp.get());
    expect_slices_of(*gpt, *reference, tied ? "after one step at (2, 2), tied" : "after one step at (2, 2)",
                     /*exact=*/false);
  }
}

// Saves a GPT (seed 3) on `from` and restores it on `to` into a GPT of other weights (seed
// 9), both with a tied head if `tied`; every rank of `to` must then hold exactly its slices
// of the seed-3 model.
void round_trip(const std::string& dir, std::shared_ptr<Mesh> from, std::shared_ptr<Mesh> to, bool tied = false) {
  const std::string where = dir + ": " + (from ? from->describe() : "-") + " -> " + (to ? to->describe() : "-");
  if (from) {
    zoo::Gpt saved(small_gpt(from).tie_embeddings(tied));
    save(*saved, dir, {from->world()});
  }
  world()->barrier();
  if (to) {
    zoo::Gpt target(small_gpt(to, /*seed=*/9).tie_embeddings(tied));
    RestoreOptions options;
    options.communicator = to->world();
    ModulePtr restored = restore(target, dir, options);
    zoo::Gpt reference(small_gpt(solo()).tie_embeddings(tied));
    expect_slices_of(*restored, *reference, where);
    EXPECT_TRUE(at::allclose(std::dynamic_pointer_cast<zoo::GptImpl>(restored)->forward(tokens(2)),
                             reference->forward(tokens(2)), kTolerance, kTolerance))
        << where;
  }
  world()->barrier();
}

TEST_F(GptParallelTest, CheckpointsRestoreOnAnyMesh) {
  auto sub = [&](int ranks, int tp) -> std::shared_ptr<Mesh> {
    auto comm = first(ranks);
    return comm ? Mesh::create(comm, tp) : nullptr;
  };
  round_trip(base + "/a", Mesh::create(world(), 4), sub(1, 1));  // (1,4) -> (1,1)
  round_trip(base + "/b", sub(1, 1), Mesh::create(world(), 4));  // (1,1) -> (1,4)
  round_trip(base + "/c", Mesh::create(world(), 2), sub(2, 2));  // (2,2) -> (1,2)
  round_trip(base + "/d", Mesh::create(world(), 2), sub(3, 1));  // (2,2) -> (3,1)
  round_trip(base + "/e", sub(2, 2), Mesh::create(world(), 2));  // (1,2) -> (2,2)
  round_trip(base + "/f", Mesh::create(world(), 2), Mesh::create(world(), 4));  // (2,2) -> (1,4)
  round_trip(base + "/g", Mesh::create(world(), 2), sub(1, 1), /*tied=*/true);  // (2,2) -> (1,1)
  round_trip(base + "/h", sub(1, 1), Mesh::create(world(), 4), /*tied=*/true);  // (1,1) -> (1,4)
}

TEST_F(GptParallelTest, ASparseGptSavedAtTwoByTwoRestoresOnOneRankAndOnTp4) {
  // 2:4 masks of split layers are the slices of the unsplit model's masks.
  zoo::Gpt reference_model(small_gpt(solo()));
  ModulePtr reference = apply_mode(reference_model, "sparse_magnitude");
  zoo::Gpt split(small_gpt(Mesh::create(world(), 2)));
  ModulePtr sparse = apply_mode(split, "sparse_magnitude");
  expect_slices_of(*sparse, *reference, "sparse at (2, 2)");
  save(*sparse, base + "/sparse");
  for (int tp : {1, 4}) {
    zoo::Gpt target(small_gpt(Mesh::create(world(), tp), /*seed=*/9));
    ModulePtr restored = restore(target, base + "/sparse");
    expect_slices_of(*restored, *reference, "sparse restored at tp=" + std::to_string(tp));
  }
}

// The amax of every quantizer of `model`, by name.
std::map<std::string, at::Tensor> amax_of(torch::nn::Module& model) {
  std::map<std::string, at::Tensor> out;
  for (const auto& t : model_state_dict(model)) {
    if (t.name.find("._amax") != std::string::npos) out[t.name] = t.tensor;
  }
  return out;
}

// Expects every amax of `model` to be its slice of the same amax in `reference`: weight
// quantizers exactly, activation quantizers up to the forward's summation order.
void expect_amax_slices_of(torch::nn::Module& model, torch::nn::Module& reference, const std::string& where) {
  const auto expected = amax_of(reference);
  ASSERT_GE(expected.size(), 2u * 4);  // the linears of every block
  size_t seen = 0;
  for (const auto& t : model_state_slices(model)) {
    if (t.name.find("._amax") == std::string::npos) continue;
    ++seen;
    at::Tensor want = expected.at(t.name);
    if (t.slice) want = want.narrow(t.slice->dim, t.slice->offset, t.tensor.size(t.slice->dim));
    if (t.name.find("weight_quantizer") != std::string::npos) {
      EXPECT_TRUE(at::equal(t.tensor, want)) << where << ": " << t.name;
    } else {
      EXPECT_TRUE(at::allclose(t.tensor, want, kTolerance, kTolerance)) << where << ": " << t.name;
    }
  }
  EXPECT_EQ(seen, expected.size()) << where;
}

// Quantizes with `preset`, calibrating at (2, 2) on half the data per replica and on one
// process on all of it; the two must agree, and the (2, 2) checkpoint must restore at tp 1
// and 4 to the same quantizers.
void expect_calibration_invariant(const std::string& preset, const zoo::GptOptions& options, const std::string& dir) {
  auto loop = [](int64_t first, int64_t count) {
    return quantization::ForwardLoop([first, count](torch::nn::Module& m) {
      for (int64_t b = first; b < first + count; ++b) {
        dynamic_cast<zoo::GptImpl&>(m).forward(tokens(2).add(b).remainder(32));
      }
    });
  };
  zoo::Gpt reference_model(zoo::GptOptions(options).mesh(solo()));
  ModulePtr reference = quantization::quantize(reference_model.ptr(), preset, loop(0, 4), solo()->dp());
  const auto mesh = Mesh::create(world(), 2);
  zoo::Gpt split_model(zoo::GptOptions(options).mesh(mesh));
  ModulePtr split = quantization::quantize(split_model.ptr(), preset, loop(2 * mesh->dp_index(), 2), mesh->dp());
  expect_amax_slices_of(*split, *reference, preset + " at (2, 2)");
  // The modes' metadata (global amax shapes) does not depend on the split.
  EXPECT_EQ(serialize_deterministic(modelopt_state(*split)), serialize_deterministic(modelopt_state(*reference)));
  EXPECT_TRUE(at::allclose(std::dynamic_pointer_cast<zoo::GptImpl>(split)->forward(tokens(2)),
                           std::dynamic_pointer_cast<zoo::GptImpl>(reference)->forward(tokens(2)), kTolerance,
                           kTolerance));

  save(*split, dir);
  for (int tp : {1, 4}) {
    zoo::Gpt target(zoo::GptOptions(options).seed(9).mesh(Mesh::create(world(), tp)));
    ModulePtr restored = restore(target, dir);
    const std::string where = preset + " restored at tp=" + std::to_string(tp);
    EXPECT_EQ(serialize_deterministic(modelopt_state(*restored)), serialize_deterministic(modelopt_state(*split)))
        << where;
    expect_amax_slices_of(*restored, *reference, where);
    EXPECT_TRUE(at::allclose(std::dynamic_pointer_cast<zoo::GptImpl>(restored)->forward(tokens(2)),
                             std::dynamic_pointer_cast<zoo::GptImpl>(split)->forward(tokens(2)), kTolerance,
                             kTolerance))
        << where;
  }
}

TEST_F(GptParallelTest, Int8CalibratedAtTwoByTwoEqualsOneProcessAndRestoresOnAnyMesh) {
  expect_calibration_invariant("int8", small_gpt(nullptr), base + "/int8");
}

TEST_F(GptParallelTest, Int4BlockwiseCalibratedAtTwoByTwoEqualsOneProcessAndRestoresOnAnyMesh) {
  // Blocks of 128 along the input features: row-parallel layers split them, so the width is
  // such that every rank's columns hold whole blocks at tp 2 and 4.
  expect_calibration_invariant("int4_blockwise", small_gpt(nullptr).width(512), base + "/int4");
}

// A calibration run on one mesh: the quantized model and, for AWQ, the alpha of each layer
// and the clip ratios of its blocks (this rank's rows and blocks).
struct Calibrated {
  ModulePtr model;
  std::vector<std::pair<std::string, double>> alphas;
  std::vector<std::pair<std::string, at::Tensor>> ratios;
};

// Quantizes a fresh GPT on `mesh` with the weight and input rules of `config` (no
// calibration mode) and calibrates it with `algorithm` ("smoothquant", "awq_lite" or
// "awq_full", AWQ-lite then clip), every replica running its contiguous share of 4 batches.
Calibrated calibrate_on(const std::shared_ptr<Mesh>& mesh, const zoo::GptOptions& options, const std::string& config,
                        const std::string& algorithm) {
  zoo::Gpt gpt(zoo::GptOptions(options).mesh(mesh));
  const int64_t per_replica = 4 / mesh->dp_size();
  const int64_t first = mesh->dp_index() * per_replica;
  quantization::ForwardLoop loop = [first, per_replica](torch::nn::Module& m) {
    for (int64_t b = first; b < first + per_replica; ++b) {
      dynamic_cast<zoo::GptImpl&>(m).forward(tokens(2).add(b * 5).remainder(32));
    }
  };
  // The forward passes' own tensor-parallel collectives, to tell the calibration's apart.
  Communicator& tp = *mesh->tp();
  Communicator& dp = *mesh->dp();
  tp.reset_stats();
  loop(*gpt);
  const uint64_t per_loop = tp.stats().collectives;
  ModulePtr model = quantization::quantize(gpt.ptr(), config, nullptr, mesh->dp());
  tp.reset_stats();
  dp.reset_stats();

  Calibrated out{model, {}, {}};
  if (algorithm == "smoothquant") {
    quantization::calibrate_smoothquant(*model, &loop, mesh->dp().get(), 0.5);
  } else {
    out.alphas = quantization::calibrate_awq_lite(*model, &loop, mesh->dp().get(), 0.1).alphas;
  }
  if (algorithm == "awq_full") {
    out.ratios = quantization::calibrate_awq_clip(*model, &loop, mesh->dp().get(), {}).ratios;
  }
  // One collective per mesh axis per pass over the data. AWQ-lite's search pass also sums
  // the candidate outputs of each row-parallel layer (attn.proj, fc2) once per forward call,
  // as that layer's own forward sums its output.
  const uint64_t passes = algorithm == "smoothquant" ? 1 : algorithm == "awq_lite" ? 2 : 3;
  const uint64_t search = algorithm == "smoothquant" ? 0 : static_cast<uint64_t>(per_replica * 2 * options.depth());
  const std::string where = algorithm + " at " + mesh->describe();
  EXPECT_EQ(dp.stats().collectives, passes) << where;
  EXPECT_EQ(tp.stats().collectives, passes * per_loop + (mesh->tp_size() > 1 ? passes + search : 0)) << where;
  // SmoothQuant and AWQ-lite leave every weight amax that of the smoothed weight, exactly,
  // over the whole layer where the layer reports it whole (a column-parallel layer's one
  // per tensor comes from its column maxima).
  if (algorithm != "awq_full") {
    for (const auto& slot : quantization::quantized_slots(*model)) {
      if (slot.slot != nn::Slot::kWeight || !slot.quantizer()->attributes().enable()) continue;
      at::Tensor expected = slot.quantizer()->compute_amax(slot.weight().detach());
      const auto* split = dynamic_cast<const SplitModule*>(slot.layer);
      if (mesh->tp_size() > 1 && !split->slice_of("weight_quantizer._amax", expected)) {
        tp.all_reduce(expected, ReduceOp::kMax);
      }
      EXPECT_TRUE(at::equal(slot.quantizer()->amax(), expected)) << where << ": " << slot.name;
    }
  }
  return out;
}

// The same choices as the reference's: the same alphas, and clip ratios that are this
// rank's slice of the reference's (its rows or blocks, as the weight amax is sliced).
void expect_same_choices(const Calibrated& calibrated, const Calibrated& reference, const std::string& where) {
  EXPECT_EQ(calibrated.alphas, reference.alphas) << where;
  ASSERT_EQ(calibrated.ratios.size(), reference.ratios.size()) << where;
  std::map<std::string, quantization::QuantizerSlot> weights;
  for (const auto& slot : quantization::quantized_slots(*calibrated.model)) {
    if (slot.slot == nn::Slot::kWeight) weights[slot.layer_name] = slot;
  }
  for (size_t i = 0; i < calibrated.ratios.size(); ++i) {
    const auto& [name, ratios] = calibrated.ratios[i];
    ASSERT_EQ(name, reference.ratios[i].first) << where;
    at::Tensor expected = reference.ratios[i].second;
    const quantization::QuantizerSlot& slot = weights.at(name);
    if (const auto* split = dynamic_cast<const SplitModule*>(slot.layer)) {
      if (const auto slice = split->slice_of("weight_quantizer._amax", slot.quantizer()->amax())) {
        expected = expected.narrow(slice->dim, slice->offset, ratios.size(slice->dim));
      }
    }
    EXPECT_TRUE(at::equal(ratios, expected)) << where << ": " << name;
  }
}

// SmoothQuant and AWQ on (1,1), (2,1), (4,1), (1,2), (1,4) and (2,2): any data-parallel
// split of the same tp gives bit-identical state; across tp sizes the state (scales computed
// from activations downstream of row-parallel sums) agrees within the forward's rounding,
// AWQ picks the same alphas and clip ratios, and a checkpoint calibrated at (2,2) restores
// at tp 1 and 4.
void expect_algorithm_invariant(const std::string& algorithm, const std::string& config,
                                const zoo::GptOptions& options, const std::string& dir) {
  const int rank = world()->rank();
  const Calibrated reference = calibrate_on(solo(), options, config, algorithm);  // (1, 1)
  for (const auto& [name, ratios] : reference.ratios) {
    EXPECT_TRUE((ratios < 1).any().item<bool>()) << name << ": no block clipped, the comparison proves little";
  }
  // Two halves of the world, each its own job: (2,1) and (1,2).
  const auto half = world()->split(rank / 2, rank);
  for (int tp : {1, 2}) {
    const Calibrated on_half = calibrate_on(Mesh::create(half, tp), options, config, algorithm);
    const std::string where = algorithm + (tp == 1 ? " at (2,1)" : " at (1,2)");
    expect_slices_of(*on_half.model, *reference.model, where, /*exact=*/tp == 1);
    expect_same_choices(on_half, reference, where);
  }
  const Calibrated one_two = calibrate_on(Mesh::create(half, 2), options, config, algorithm);
  for (int tp : {1, 2, 4}) {
    const auto mesh = Mesh::create(world(), tp);
    const Calibrated calibrated = calibrate_on(mesh, options, config, algorithm);
    const std::string where = algorithm + " at " + mesh->describe();
    expect_slices_of(*calibrated.model, *reference.model, where, /*exact=*/tp == 1);
    expect_same_choices(calibrated, reference, where);
    // At the same tp, another data-parallel split is bit-identical: (2,2) against (1,2), whose
    // rank r holds the same slices (tp index r % 2).
    if (tp == 2) {
      std::map<std::string, at::Tensor> mine;
      for (const auto& t : model_state_dict(*one_two.model)) mine[t.name] = t.tensor;
      for (const auto& t : model_state_dict(*calibrated.model)) {
        EXPECT_TRUE(mine.count(t.name) && at::equal(t.tensor, mine.at(t.name))) << where << " against (1,2): " << t.name;
      }
    }
    if (tp != 2) continue;
    save(*calibrated.model, dir);
    for (int restore_tp : {1, 4}) {
      zoo::Gpt target(zoo::GptOptions(options).seed(9).mesh(Mesh::create(world(), restore_tp)));
      ModulePtr restored = restore(target, dir);
      expect_slices_of(*restored, *reference.model, where + " restored at tp " + std::to_string(restore_tp),
                       /*exact=*/false);
      EXPECT_TRUE(at::allclose(std::dynamic_pointer_cast<zoo::GptImpl>(restored)->forward(tokens(2)),
                               std::dynamic_pointer_cast<zoo::GptImpl>(calibrated.model)->forward(tokens(2)),
                               kTolerance, kTolerance))
          << where;
    }
  }
}

TEST_F(GptParallelTest, SmoothQuantIsInvariantToTheMesh) {
  const std::string config = R"({"quant_cfg": {"*weight_quantizer": {"num_bits": 8, "axis": 0},
      "*input_quantizer": {"num_bits": 8, "axis": null}, "*lm_head*": {"enable": false}, "default": {"enable": false}},
      "algorithm": null})";
  expect_algorithm_invariant("smoothquant", config, small_gpt(nullptr), base + "/smoothquant");
  // One weight amax per tensor: a column-parallel layer's spans its group.
  const std::string per_tensor = R"({"quant_cfg": {"*weight_quantizer": {"num_bits": 8, "axis": null},
      "*input_quantizer": {"num_bits": 8, "axis": null}, "*lm_head*": {"enable": false}, "default": {"enable": false}},
      "algorithm": null})";
  expect_algorithm_invariant("smoothquant", per_tensor, small_gpt(nullptr), base + "/smoothquant_per_tensor");
}

TEST_F(GptParallelTest, AwqLiteIsInvariantToTheMesh) {
  // Blocks of 8 input features: at tp 4 every rank holds whole blocks of proj (32 / 4).
  const std::string config = R"({"quant_cfg": {"*weight_quantizer": {"num_bits": 4, "block_sizes": {"-1": 8}},
      "*input_quantizer": {"enable": false}, "*lm_head*": {"enable": false}, "default": {"enable": false}},
      "algorithm": null})";
  expect_algorithm_invariant("awq_lite", config, small_gpt(nullptr).width(32), base + "/awq");
}

TEST_F(GptParallelTest, AwqFullIsInvariantToTheMesh) {
  const std::string config = R"({"quant_cfg": {"*weight_quantizer": {"num_bits": 4, "block_sizes": {"-1": 8}},
      "*input_quantizer": {"enable": false}, "*lm_head*": {"enable": false}, "default": {"enable": false}},
      "algorithm": null})";
  expect_algorithm_invariant("awq_full", config, small_gpt(nullptr).width(32), base + "/awq_full");
}

// A replica whose loop throws fails every rank with a message; a replica with no data
// finishes with the others; nobody hangs.
TEST_F(GptParallelTest, SmoothQuantAndAwqNeverHangOnAFailingOrAnEmptyReplica) {
  const auto mesh = Mesh::create(world(), 2);
  const std::string int8 = R"({"quant_cfg": {"*weight_quantizer": {"num_bits": 8, "axis": 0},
      "*input_quantizer": {"num_bits": 8, "axis": null}, "*lm_head*": {"enable": false}, "default": {"enable": false}},
      "algorithm": null})";
  const std::string int4 = R"({"quant_cfg": {"*weight_quantizer": {"num_bits": 4, "block_sizes": {"-1": 8}},
      "*input_quantizer": {"enable": false}, "*lm_head*": {"enable": false}, "default": {"enable": false}},
      "algorithm": null})";
  for (const std::string algorithm : {"smoothquant", "awq_lite", "awq_clip"}) {
    const std::string& config = algorithm == "smoothquant" ? int8 : int4;
    auto calibrate = [&](const quantization::ForwardLoop& loop) {
      zoo::Gpt gpt(small_gpt(mesh).width(32));
      ModulePtr model = quantization::quantize(gpt.ptr(), config, nullptr, mesh->dp());
      if (algorithm == "smoothquant") {
        quantization::calibrate_smoothquant(*model, &loop, mesh->dp().get(), 0.5);
      } else if (algorithm == "awq_lite") {
        quantization::calibrate_awq_lite(*model, &loop, mesh->dp().get(), 0.1);
      } else {
        quantization::calibrate_awq_clip(*model, &loop, mesh->dp().get(), {});
      }
    };
    try {
      calibrate([&](torch::nn::Module& m) {
        if (mesh->dp_index() == 0) throw std::runtime_error("no calibration data here");
        dynamic_cast<zoo::GptImpl&>(m).forward(tokens(2));
      });
      ADD_FAILURE() << algorithm << ": no error on rank " << rank;
    } catch (const std::exception& e) {
      const std::string message = e.what();
      const std::string expected = mesh->dp_index() == 0 ? "no calibration data here" : "failed on rank 0";
      EXPECT_NE(message.find(expected), std::string::npos) << algorithm << ": " << message;
    }
    world()->barrier();
    // The first replica has an empty slice of the data: the second one's statistics serve all.
    EXPECT_NO_THROW(calibrate([&](torch::nn::Module& m) {
      if (mesh->dp_index() == 1) dynamic_cast<zoo::GptImpl&>(m).forward(tokens(2));
    })) << algorithm;
    world()->barrier();
  }
}

TEST_F(GptParallelTest, BlocksStraddlingTwoRanksAndMixedSlicesAreRefused) {
  const auto mesh = Mesh::create(world(), 4);
  zoo::Gpt gpt(small_gpt(mesh).width(256));  // proj holds 64 input features per rank
  try {
    quantization::quantize(gpt.ptr(), "int4_blockwise");
    ADD_FAILURE() << "no error";
  } catch (const ApplyModeError& e) {
    EXPECT_STREQ(e.what(), "blocks.0.attn.proj.weight_quantizer: blocks of 128 do not divide the 64 weight "
                           "columns this rank holds of a layer split over 4 tensor-parallel ranks");
  }
  // Calibrating over ranks that hold different slices would mix them.
  zoo::Gpt other(small_gpt(Mesh::create(world(), 2)));
  try {
    quantization::quantize(other.ptr(), "int8", [](torch::nn::Module& m) {
      dynamic_cast<zoo::GptImpl&>(m).forward(tokens(2));
    }, world());
    ADD_FAILURE() << "no error";
  } catch (const ApplyModeError& e) {
    EXPECT_NE(std::string(e.what()).find("the calibration ranks hold different slices of split layers"),
              std::string::npos)
        << e.what();
  }
  // So would AWQ's sums.
  const std::string int4 = R"({"quant_cfg": {"*weight_quantizer": {"num_bits": 4, "block_sizes": {"-1": 8}},
      "*input_quantizer": {"enable": false}, "*lm_head*": {"enable": false}, "default": {"enable": false}},
      "algorithm": null})";
  for (const std::string algorithm : {"awq_lite", "awq_clip"}) {
    zoo::Gpt split(small_gpt(Mesh::create(world(), 2)).width(32));
    ModulePtr model = quantization::quantize(split.ptr(), int4, nullptr, world());
    const quantization::ForwardLoop loop = [](torch::nn::Module& m) {
      dynamic_cast<zoo::GptImpl&>(m).forward(tokens(2));
    };
    try {
      if (algorithm == "awq_lite") {
        quantization::calibrate_awq_lite(*model, &loop, world().get(), 0.1);
      } else {
        quantization::calibrate_awq_clip(*model, &loop, world().get(), {});
      }
      ADD_FAILURE() << algorithm << ": no error";
    } catch (const ApplyModeError& e) {
      EXPECT_STREQ(e.what(), (algorithm + ": the calibration ranks hold different slices of split layers; pass the "
                                          "data-parallel group (mesh->dp()) as the communicator")
                                 .c_str());
    }
  }
}

TEST_F(GptParallelTest, ACalibrationLoopFailingOnOneReplicaFailsEveryRankOfTheMesh) {
  // The tp ranks of a replica see the same data, so a data error stops the whole replica
  // (ranks 0 and 1 of (2, 2)) before its forward collectives.
  const auto mesh = Mesh::create(world(), 2);
  zoo::Gpt gpt(small_gpt(mesh));
  quantization::ForwardLoop loop = [&](torch::nn::Module& m) {
    if (mesh->dp_index() == 0) throw std::runtime_error("no calibration data here");
    dynamic_cast<zoo::GptImpl&>(m).forward(tokens(2));
  };
  try {
    quantization::quantize(gpt.ptr(), "int8", loop, mesh->dp());
    ADD_FAILURE() << "no error on rank " << rank;
  } catch (const std::exception& e) {
    const std::string message = e.what();
    const std::string expected = mesh->dp_index() == 0 ? "no calibration data here" : "max_calibrate failed on rank 0";
    EXPECT_NE(message.find(expected), std::string::npos) << message;
  }
  world()->barrier();  // nobody hangs
}

TEST_F(GptParallelTest, FastnasRefusesALayerSplitOverRanks) {
  zoo::Gpt gpt(small_gpt(Mesh::create(world(), 2)));
  RuntimeContext context;
  context.set(nas::kDummyForward, nas::DummyForward([](torch::nn::Module& m) {
               return dynamic_cast<zoo::GptImpl&>(m).forward(tokens(1));
             }));
  try {
    apply_mode(gpt, "fastnas", nullptr, std::nullopt, context);
    ADD_FAILURE() << "no error";
  } catch (const ApplyModeError& e) {
    EXPECT_STREQ(e.what(), "fastnas: layer blocks.0.attn.qkv is split over 2 tensor-parallel ranks; fastnas "
                           "searches whole layers only (apply it at tp = 1)");
  }
}

TEST_F(GptParallelTest, TheManifestRecordsTheMeshAndEachSplit) {
  const auto mesh = Mesh::create(world(), 2);
  zoo::Gpt gpt(small_gpt(mesh));
  save(*gpt, base + "/ckpt");
  const Manifest manifest = read_manifest(base + "/ckpt");
  EXPECT_EQ(manifest.world_size(), 4);
  EXPECT_EQ(manifest.tensor_parallel_size(), 2);
  std::map<std::string, std::pair<int, int>> split;  // name -> (parts, dim)
  for (const auto& t : manifest.tensors()) split[t.name()] = {t.split_parts(), t.split_dim()};
  EXPECT_EQ(split["blocks.0.attn.qkv.weight"], std::make_pair(2, 0));
  EXPECT_EQ(split["blocks.0.attn.qkv.bias"], std::make_pair(2, 0));
  EXPECT_EQ(split["blocks.0.attn.proj.weight"], std::make_pair(2, 1));
  EXPECT_EQ(split["blocks.0.attn.proj.bias"], std::make_pair(1, 0));
  EXPECT_EQ(split["blocks.1.fc2.weight"], std::make_pair(2, 1));
  EXPECT_EQ(split["tok_emb.weight"], std::make_pair(2, 0));
  EXPECT_EQ(split["lm_head.weight"], std::make_pair(2, 0));
  EXPECT_EQ(split["ln_f.weight"], std::make_pair(1, 0));
  // The writers of a tensor split along dim 1 exchanged their parts and wrote whole rows: each
  // block lies in one half of the rows, every block in the half its writer took.
  for (const auto& t : manifest.tensors()) {
    if (t.split_dim() != 1 || t.split_parts() != 2) continue;
    const uint64_t rows = t.shape(0);
    std::set<std::pair<uint64_t, uint64_t>> halves;
    for (const auto& b : t.blocks()) {
      EXPECT_TRUE(b.row_end() <= rows / 2 || b.row_begin() >= rows / 2)
          << t.name() << " rows [" << b.row_begin() << ", " << b.row_end() << ")";
      halves.insert({b.row_begin() < rows / 2 ? 0 : rows / 2, b.row_begin() < rows / 2 ? rows / 2 : rows});
    }
    EXPECT_EQ(halves.size(), 2u) << t.name();
  }
}

// A reader of safetensors files that knows nothing of mto: the 8-byte length, the JSON
// header, the raw little-endian bytes.
std::map<std::string, at::Tensor> read_plain_safetensors_set(const std::string& dir) {
  std::map<std::string, at::Tensor> out;
  const nlohmann::json index = nlohmann::json::parse(read_file(dir + "/model.safetensors.index.json", 1 << 20));
  std::set<std::string> files;
  for (const auto& [name, file] : index["weight_map"].items()) files.insert(file.get<std::string>());
  for (const std::string& file : files) {
    const std::string bytes = read_file(dir + "/" + file, 1 << 30);
    uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    const nlohmann::json header = nlohmann::json::parse(bytes.substr(8, n));
    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") continue;
      EXPECT_EQ(entry["dtype"], "F32") << name;
      const std::vector<int64_t> shape = entry["shape"].get<std::vector<int64_t>>();
      const uint64_t begin = entry["data_offsets"][0], end = entry["data_offsets"][1];
      at::Tensor t = at::empty(shape, at::kFloat);
      EXPECT_EQ(end - begin, t.nbytes()) << name;
      std::memcpy(t.data_ptr(), bytes.data() + 8 + n + begin, t.nbytes());
      out[name] = t;
    }
  }
  return out;
}

TEST_F(GptParallelTest, AStockReaderGetsTheWholeModelFromATp4Checkpoint) {
  zoo::Gpt gpt(small_gpt(Mesh::create(world(), 4)));
  save(*gpt, base + "/ckpt");
  if (rank == 0) {
    zoo::Gpt reference(small_gpt(solo()));
    const auto read = read_plain_safetensors_set(base + "/ckpt");
    const auto expected = model_state_dict(*reference);
    EXPECT_EQ(read.size(), expected.size());
    for (const auto& t : expected) {
      ASSERT_TRUE(read.count(t.name)) << t.name;
      EXPECT_TRUE(at::equal(read.at(t.name), t.tensor)) << t.name;
    }
  }
  world()->barrier();
}

// Rewrites a single-process version-2 checkpoint as version 1 wrote it (the same files; a
// manifest with one checksum per tensor and no blocks).
void downgrade_to_version_1(const std::string& dir) {
  Manifest manifest = read_manifest(dir);
  manifest.set_format_version(1);
  manifest.clear_tensor_parallel_size();
  for (auto& t : *manifest.mutable_tensors()) {
    const File file = File::open(dir + "/" + manifest.shards(t.shard()).file());
    std::string bytes(t.length(), '\0');
    file.read_at(bytes.data(), bytes.size(), t.offset());
    t.set_xxh3(xxh3_64(bytes.data(), bytes.size()));
    t.clear_blocks();
    t.clear_split_dim();
    t.clear_split_parts();
  }
  write_manifest(dir, manifest);
}

TEST_F(GptParallelTest, AVersion1CheckpointRestoresIntoTp2) {
  const std::string dir = base + "/v1";
  if (rank == 0) {
    zoo::Gpt saved(small_gpt(solo()));
    save(*saved, dir, {solo()->world()});
    downgrade_to_version_1(dir);
  }
  world()->barrier();
  round_trip(dir, nullptr, Mesh::create(world(), 2));
}

TEST_F(GptParallelTest, ATpThatDividesNothingFailsBeforeAnyWork) {
  try {
    Mesh::create(world(), 3);
    ADD_FAILURE() << "no error";
  } catch (const DistributedError& e) {
    EXPECT_STREQ(e.what(), "the tensor-parallel size 3 does not divide the world size 4 (ranks = dp x tp)");
  }
  try {
    zoo::Gpt gpt(small_gpt(Mesh::create(world(), 4)).heads(2));
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "the tensor-parallel size 4 does not divide the 2 heads of model 'gpt'");
  }
}

}  // namespace
}  // namespace mto
