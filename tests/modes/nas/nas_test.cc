// The pruning modes in one process: the traced search space (groups, batch norms, what
// stays fixed), masked subnets equal exported ones, importance sorting keeps the function,
// the search (constraint, resume, errors), batch-norm recalibration, and chains saved and
// restored bit for bit.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/nn/modules/batchnorm.h>

#include <filesystem>

#include "modes/nas/batch_norm.h"
#include "modes/nas/search.h"
#include "modes/nas/search_space.h"
#include "modes/nas/trace.h"
#include "modes/quantization/presets.h"
#include "modes/quantization/quantize.h"
#include "opt/checkpoint.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/registry.h"
#include "serialization/checkpoint_error.h"
#include "serialization/deterministic.h"
#include "tests/modes/nas/test_models.h"
#include "tests/testing/errors.h"
#include "tests/testing/temp_dir.h"

namespace mto {
namespace nas {
namespace {

using test::cnn_like;
using test::run;
using mto::test::error_of;  // not nas::test

at::Tensor images(int64_t n, int seed) {
  at::manual_seed(seed);
  return at::randn({n, 1, 8, 8});
}

RuntimeContext trace_context(const at::Tensor& input) {
  RuntimeContext context;
  context.set(kDummyForward, [input](torch::nn::Module& m) { return run(m, input); });
  return context;
}

ModulePtr fastnas(ModulePtr model, const at::Tensor& input) {
  return apply_mode(model, "fastnas", nullptr, std::nullopt, trace_context(input));
}

// Scores a subnet by how close its outputs stay to `teacher`'s on fixed images.
ScoreFunction fidelity(ModulePtr teacher) {
  const at::Tensor x = images(64, 7);
  const at::Tensor target = run(*teacher, x).detach();
  return [x, target](torch::nn::Module& model) {
    at::NoGradGuard no_grad;
    return -(run(model, x) - target).pow(2).mean().item<double>();
  };
}

std::string groups_text(const FastNasMetadata& metadata) {
  std::string out;
  for (const WidthGroup& group : metadata.groups()) {
    out += group.producer() + "[" + std::to_string(group.max_width()) + ":";
    for (int64_t c : group.choices()) out += " " + std::to_string(c);
    out += "] ->";
    for (const Consumer& consumer : group.consumers()) {
      out += " " + consumer.layer() + "x" + std::to_string(consumer.factor());
    }
    for (const std::string& norm : group.batch_norms()) out += " bn:" + norm;
    out += "; ";
  }
  return out;
}

FastNasConfig default_config() {
  auto config = ModeRegistry::get_from_any("fastnas")->config_class();
  return static_cast<FastNasConfig&>(*config);
}

TEST(SearchSpaceTest, TraceFindsProducersConsumersAndFlatten) {
  ModulePtr model = cnn_like(false).build();
  const FastNasMetadata metadata =
      trace_search_space(*model, [](torch::nn::Module& m) { return run(m, images(2, 0)); }, default_config());
  EXPECT_EQ(groups_text(metadata),
            "conv1[8: 4 8] -> conv2x1; conv2[16: 4 8 12 16] -> fc1x4; "
            "fc1[32: 4 8 12 16 20 24 28 32] -> fc2x1; ");
  ASSERT_EQ(metadata.positions_size(), 4);
  EXPECT_EQ(metadata.positions(0).positions(), 64);  // conv1: 8x8
  EXPECT_EQ(metadata.positions(1).positions(), 16);  // conv2: 4x4
  EXPECT_EQ(metadata.positions(3).positions(), 1);   // fc2
  // Probes are gone and the weights unchanged: the model computes what it did.
  ModulePtr fresh = cnn_like(false).build();
  EXPECT_TRUE(at::equal(run(*model, images(3, 1)), run(*fresh, images(3, 1))));
}

TEST(SearchSpaceTest, BatchNormsJoinTheirGroupAndResidualsStayFixed) {
  ModulePtr cnn = cnn_like(true).build();
  const FastNasMetadata with_norms =
      trace_search_space(*cnn, [](torch::nn::Module& m) { return run(m, images(2, 0)); }, default_config());
  EXPECT_EQ(groups_text(with_norms),
            "conv1[8: 4 8] -> conv2x1 bn:bn1; conv2[16: 4 8 12 16] -> fc1x4 bn:bn2; "
            "fc1[32: 4 8 12 16 20 24 28 32] -> fc2x1; ");
  ModulePtr residual = std::make_shared<test::TestResidualImpl>();
  const FastNasMetadata only_fc1 = trace_search_space(
      *residual, [](torch::nn::Module& m) { return run(m, at::randn({2, 16})); }, default_config());
  EXPECT_EQ(groups_text(only_fc1), "fc1[32: 4 8 12 16 20 24 28 32] -> fc2x1; ");
}

TEST(SearchSpaceTest, AModelWithNothingToPruneIsRefused) {
  auto single = std::make_shared<mto::nn::LinearImpl>(4, 3);
  EXPECT_NE(error_of([&] {
              apply_mode(single, "fastnas", nullptr, std::nullopt,
                         RuntimeContext().set(kDummyForward, DummyForward([](torch::nn::Module& m) {
                                            return dynamic_cast<mto::nn::LinearImpl&>(m).forward(at::randn({2, 4}));
                                          })));
            }).find("fastnas: no searchable width"),
            std::string::npos);
  EXPECT_EQ(error_of([] { apply_mode(cnn_like(false).build(), "fastnas"); }), "missing mode argument 'dummy_forward'");
}

TEST(SearchSpaceTest, MaskedSubnetComputesWhatTheExportedOneDoes) {
  for (bool batch_norm : {false, true}) {
    ModulePtr model = fastnas(cnn_like(batch_norm).build(), images(2, 0));
    model->eval();
    SearchSpace space(*model);
    const std::vector<int64_t> widths = {4, 12, 20};
    space.set_widths(widths);
    const int64_t predicted_params = space.count_params(widths);
    const int64_t predicted_macs = space.count_macs(widths);
    const at::Tensor x = images(5, 3);
    const at::Tensor masked = run(*model, x);
    space.export_subnet();
    EXPECT_THROW(SearchSpace{*model}, ApplyModeError);
    const at::Tensor exported = run(*model, x);
    EXPECT_TRUE(at::allclose(masked, exported, 1e-5, 1e-6)) << "batch_norm " << batch_norm;
    auto& cnn = dynamic_cast<test::TestCnnImpl&>(*model);
    EXPECT_EQ(cnn.conv1->weight.sizes(), (std::vector<int64_t>{4, 1, 3, 3}));
    EXPECT_EQ(cnn.conv2->weight.sizes(), (std::vector<int64_t>{12, 4, 3, 3}));
    EXPECT_EQ(cnn.fc1->weight.sizes(), (std::vector<int64_t>{20, 48}));
    EXPECT_EQ(cnn.fc2->weight.sizes(), (std::vector<int64_t>{10, 20}));
    if (batch_norm) {
      EXPECT_EQ(cnn.bn2->running_var.size(0), 12);
    }
    int64_t params = 0;
    for (const auto& p : model->parameters()) params += p.numel();
    EXPECT_EQ(predicted_params, params);
    // conv1 4x1x9 x64 + conv2 12x4x9 x16 + fc1 20x48 + fc2 10x20
    EXPECT_EQ(predicted_macs, 4 * 9 * 64 + 12 * 4 * 9 * 16 + 20 * 48 + 10 * 20);
  }
}

TEST(SearchSpaceTest, SortingByImportanceKeepsTheFunctionAndIsIdempotent) {
  ModulePtr model = fastnas(cnn_like(true).build(), images(2, 0));
  model->eval();
  auto& cnn = dynamic_cast<test::TestCnnImpl&>(*model);
  {
    at::NoGradGuard no_grad;
    cnn.bn1->running_mean.normal_();
    cnn.bn2->running_var.uniform_(0.5, 2);
  }
  const at::Tensor x = images(5, 3);
  const at::Tensor before = run(*model, x);
  SearchSpace space(*model);
  space.sort_by_importance();
  EXPECT_TRUE(at::allclose(before, run(*model, x), 1e-5, 1e-6));
  const at::Tensor sorted_fc1 = cnn.fc1->weight.clone();
  const at::Tensor sorted_bn = cnn.bn2->running_var.clone();
  space.sort_by_importance();
  EXPECT_TRUE(at::equal(sorted_fc1, cnn.fc1->weight));
  EXPECT_TRUE(at::equal(sorted_bn, cnn.bn2->running_var));
  // fc2 reads fc1's features: their importance now falls along the columns.
  const at::Tensor importance = cnn.fc2->weight.pow(2).sum(0);
  EXPECT_TRUE(at::equal(std::get<0>(importance.sort(0, /*descending=*/true)), importance));
}

TEST(SearchSpaceTest, InstallRefusesAModelThatDoesNotFit) {
  ModulePtr traced = cnn_like(false).build();
  FastNasMetadata metadata = trace_search_space(*traced, [](torch::nn::Module& m) { return run(m, images(2, 0)); }, default_config());
  metadata.mutable_groups(1)->set_max_width(20);
  EXPECT_EQ(error_of([&] { SearchSpace::install(*cnn_like(false).build(), metadata); }),
            "fastnas: layer 'conv2' has width 16, the search space expects 20 with widths 4, 8, 12, 16");
  metadata.mutable_groups(1)->set_max_width(16);
  metadata.mutable_groups(0)->mutable_consumers(0)->set_layer("conv9");
  EXPECT_EQ(error_of([&] { SearchSpace::install(*cnn_like(false).build(), metadata); }),
            "fastnas: the model has no mto::nn::Linear or mto::nn::Conv2d 'conv9'");
  metadata.mutable_groups(0)->mutable_consumers(0)->set_layer("conv2");
  metadata.mutable_subnet_config(2)->set_width(30);
  EXPECT_EQ(error_of([&] { SearchSpace::install(*cnn_like(false).build(), metadata); }),
            "fastnas: width 30 of layer 'fc1' is not one of 4, 8, 12, 16, 20, 24, 28, 32");
}

TEST(SearchTest, BestSubnetMeetsTheConstraint) {
  ModulePtr teacher = cnn_like(false).build();
  ModulePtr model = fastnas(cnn_like(false).build(), images(2, 0));
  SearchOptions options;
  options.constraint = Constraint::parse("params=50%");
  options.num_candidates = 12;
  options.score = fidelity(teacher);
  const SearchResult result = search(model, options);
  EXPECT_EQ(result.candidates, 12);
  EXPECT_EQ(result.scored_here, 12);
  EXPECT_LE(result.fraction, 0.5);
  EXPECT_LE(result.params, result.full_params / 2);
  EXPECT_EQ(SearchSpace(*model).count_params(SearchSpace(*model).widths()), result.params);
  // The active subnet is the best one and scores what the search said.
  EXPECT_EQ(options.score(*model), result.score);
  // Same seed, same model: same subnet; no subnet scored higher.
  ModulePtr again = fastnas(cnn_like(false).build(), images(2, 0));
  std::vector<double> seen;
  SearchOptions recording = options;
  recording.score = [&](torch::nn::Module& m) {
    seen.push_back(options.score(m));
    return seen.back();
  };
  const SearchResult second = search(again, recording);
  ASSERT_EQ(second.subnet.size(), result.subnet.size());
  for (size_t i = 0; i < result.subnet.size(); ++i) EXPECT_EQ(second.subnet[i].width(), result.subnet[i].width());
  EXPECT_EQ(*std::max_element(seen.begin(), seen.end()), result.score);
}

TEST(SearchTest, FlopsConstraintAndErrors) {
  ModulePtr model = fastnas(cnn_like(false).build(), images(2, 0));
  SearchOptions options;
  options.constraint = Constraint::parse("flops=0.4");
  options.num_candidates = 6;
  options.score = fidelity(cnn_like(false).build());
  const SearchResult result = search(model, options);
  SearchSpace space(*model);
  EXPECT_LE(static_cast<double>(space.count_macs(space.widths())) / space.count_macs(space.max_widths()), 0.4);
  EXPECT_EQ(result.fraction, static_cast<double>(space.count_macs(space.widths())) / space.count_macs(space.max_widths()));

  // The smallest subnet (widths 4/4/4) keeps 306 of 3658 parameters.
  options.constraint = Constraint::parse("params=0.01");
  EXPECT_EQ(error_of([&] { search(model, options); }),
            "search: no subnet meets params=0.01: the smallest has 0.084 of the full model");
  EXPECT_EQ(error_of([] { Constraint::parse("size=0.5"); }),
            "constraint 'size=0.5' must be params=FRACTION or flops=FRACTION");
  EXPECT_EQ(error_of([] { Constraint::parse("params=-1"); }),
            "constraint 'params=-1' needs a positive number, e.g. params=0.5");
  EXPECT_EQ(error_of([] { Constraint::parse("params=2"); }),
            "constraint 'params=2' asks for more than the whole model, which every subnet meets: give a fraction of "
            "it up to 1 (or 100%)");
  EXPECT_EQ(Constraint::parse("flops=100%").fraction, 1.0);
  options.constraint = Constraint::parse("params=0.5");
  options.score = nullptr;
  EXPECT_EQ(error_of([&] { search(model, options); }), "search: options.score is required");
  options.score = fidelity(model);
  EXPECT_EQ(error_of([&] { search(cnn_like(false).build(), options); }),
            "the model has no search space: apply the fastnas mode first");
}

TEST(SearchTest, InterruptedSearchResumesFromItsCheckpoint) {
  const std::string dir = mto::test::make_temp_dir();
  const std::string checkpoint = dir + "/search.json";
  ModulePtr teacher = cnn_like(false).build();
  SearchOptions options;
  options.constraint = Constraint::parse("params=0.6");
  options.num_candidates = 10;
  options.score = fidelity(teacher);
  const SearchResult uninterrupted = search(fastnas(cnn_like(false).build(), images(2, 0)), options);

  options.checkpoint = checkpoint;
  int calls = 0;
  SearchOptions failing = options;
  failing.score = [&](torch::nn::Module& m) {
    if (++calls == 5) throw std::runtime_error("node lost");
    return options.score(m);
  };
  ModulePtr model = fastnas(cnn_like(false).build(), images(2, 0));
  EXPECT_EQ(error_of([&] { search(model, failing); }), "node lost");
  ASSERT_TRUE(std::filesystem::exists(checkpoint));

  // A new process: a fresh model from the same weights, the same checkpoint file.
  ModulePtr resumed_model = fastnas(cnn_like(false).build(), images(2, 0));
  int resumed_calls = 0;
  SearchOptions counting = options;
  counting.score = [&](torch::nn::Module& m) {
    ++resumed_calls;
    return options.score(m);
  };
  const SearchResult resumed = search(resumed_model, counting);
  EXPECT_EQ(resumed.resumed, 4);
  EXPECT_EQ(resumed.scored_here, 6);
  EXPECT_EQ(resumed_calls, 6);
  EXPECT_EQ(resumed.score, uninterrupted.score);
  for (size_t i = 0; i < resumed.subnet.size(); ++i) EXPECT_EQ(resumed.subnet[i].width(), uninterrupted.subnet[i].width());

  // A checkpoint of another search is refused, not silently mixed in.
  SearchOptions other = options;
  other.seed = 99;
  EXPECT_NE(error_of([&] { search(fastnas(cnn_like(false).build(), images(2, 0)), other); })
                .find("was written for other candidates"),
            std::string::npos);
  // So is one of another model with the same candidates (other weights), or of other data:
  // its scores are not this search's.
  ModulePtr changed = fastnas(cnn_like(false).build(), images(2, 0));
  {
    at::NoGradGuard no_grad;
    changed->parameters()[0].mul_(2);
  }
  EXPECT_NE(error_of([&] { search(changed, options); }).find("was written for another model or other data"),
            std::string::npos);
  SearchOptions other_data = options;
  other_data.data_fingerprint = "the last 500 images";
  EXPECT_NE(error_of([&] { search(fastnas(cnn_like(false).build(), images(2, 0)), other_data); })
                .find("was written for another model or other data"),
            std::string::npos);
  // The same search still resumes from it.
  EXPECT_EQ(search(fastnas(cnn_like(false).build(), images(2, 0)), options).resumed, 10);
}

TEST(BatchNormTest, RecalibrationMeasuresTheExactAverage) {
  ModulePtr model = cnn_like(true).build();
  auto& cnn = dynamic_cast<test::TestCnnImpl&>(*model);
  model->eval();
  const std::vector<at::Tensor> batches = {images(4, 10), images(4, 11), images(4, 12)};
  recalibrate_batch_norms(*model, [&](torch::nn::Module& m) {
    for (const at::Tensor& batch : batches) run(m, batch);
  });
  EXPECT_FALSE(cnn.bn1->is_training());
  EXPECT_EQ(cnn.bn1->options.momentum(), 0.1);
  at::NoGradGuard no_grad;
  const at::Tensor conv1 = cnn.conv1->forward(at::cat(batches));
  EXPECT_TRUE(at::allclose(cnn.bn1->running_mean, conv1.mean({0, 2, 3}), 1e-5, 1e-6));
}

TEST(NasModeTest, SearchExportSaveRestoreIsBitIdentical) {
  for (bool batch_norm : {false, true}) {
    const std::string dir = mto::test::make_temp_dir();
    ModulePtr model = fastnas(cnn_like(batch_norm).build(), images(2, 0));
    SearchOptions options;
    options.constraint = Constraint::parse("params=0.5");
    options.num_candidates = 8;
    options.score = fidelity(cnn_like(batch_norm).build());
    options.calibrate_loop = [](torch::nn::Module& m) { run(m, images(32, 20)); };
    const SearchResult result = search(model, options);
    // Saved while searching: restore selects the same subnet through the masks.
    save(*model, dir + "/searched");
    model->eval();
    ModulePtr searched = restore(dir + "/searched");
    searched->eval();
    const at::Tensor x = images(6, 4);
    EXPECT_TRUE(at::equal(run(*model, x), run(*searched, x)));

    model = apply_mode(model, "export_nas");
    save(*model, dir + "/exported");
    ModulePtr restored = restore(dir + "/exported");
    restored->eval();
    EXPECT_TRUE(at::equal(run(*model, x), run(*restored, x)));
    EXPECT_EQ(serialize_deterministic(modelopt_state(*restored)), serialize_deterministic(modelopt_state(*model)));
    int64_t params = 0;
    for (const auto& p : restored->parameters()) params += p.numel();
    EXPECT_EQ(params, result.params);
    EXPECT_EQ(dynamic_cast<test::TestCnnImpl&>(*restored).fc1->weight.size(0), result.subnet[2].width());
  }
}

TEST(NasModeTest, ChainsAcrossFamilies) {
  const std::string dir = mto::test::make_temp_dir();
  ModulePtr model = fastnas(cnn_like(false).build(), images(2, 0));
  SearchOptions options;
  options.constraint = Constraint::parse("params=0.5");
  options.num_candidates = 4;
  options.score = fidelity(cnn_like(false).build());
  search(model, options);
  model = apply_mode(model, "export_nas");
  model = quantization::quantize(model, "int8", [](torch::nn::Module& m) { run(m, images(16, 5)); });
  save(*model, dir);
  ModulePtr restored = restore(dir);
  const at::Tensor x = images(6, 4);
  EXPECT_TRUE(at::equal(run(*model, x), run(*restored, x)));
  std::vector<std::string> chain;
  const ModeloptState state = modelopt_state(*restored);
  for (const auto& entry : state.modelopt_state_dict()) chain.push_back(entry.mode());
  EXPECT_EQ(chain, (std::vector<std::string>{"fastnas", "export_nas", "quantize", "max_calibrate"}));

  EXPECT_EQ(error_of([] {
              ModulePtr quantized = apply_mode(cnn_like(false).build(), {{"quantize", quantization::quantize_preset("int8")}});
              fastnas(quantized, images(2, 0));
            }),
            "quantize does not allow fastnas to be its next mode.");
  EXPECT_EQ(error_of([] { apply_mode(cnn_like(false).build(), "export_nas"); }),
            "Cannot add export_nas according to the current export stack: [].");
}

}  // namespace
}  // namespace nas
}  // namespace mto
