// The distillation modes in one process: logits_distillation_loss against a hand computation,
// "kd_loss" with a teacher given as a model-like, a checkpoint or a built module (the
// student's output, the balanced loss, gradients that reach the student only, a teacher that
// stays frozen, in eval mode and out of the student's state), every error, the chains with
// the other modes and the texts of the ones refused, and a model saved while distilling that
// restores as the student alone.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/optim/sgd.h>

#include <cmath>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <google/protobuf/struct.pb.h>
#include <nlohmann/json.hpp>

#include "distributed/world.h"
#include "modes/distill/distill.pb.h"
#include "modes/distill/distillation_model.h"
#include "modes/distill/logits_distillation_loss.h"
#include "modes/nas/search_space.h"
#include "modes/nas/trace.h"
#include "modes/quantization/quantize.h"
#include "modes/sparsity/sparsity.h"
#include "opt/checkpoint.h"
#include "opt/config.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/registry.h"
#include "opt/state_dict.h"
#include "serialization/checkpoint_reader.h"
#include "tests/opt/testing/test_modes.h"
#include "tests/testing/errors.h"
#include "tests/testing/model_checks.h"
#include "tests/testing/temp_dir.h"
#include "tools/zoo/forward.h"
#include "tools/zoo/gpt.h"

namespace mto {
namespace distill {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::error_of;
using test::expect_same_state_dict;
using test::same_bytes;

constexpr int64_t kVocab = 16;

json gpt_args(int seed) {
  return {{"vocab", kVocab}, {"width", 16}, {"depth", 1}, {"heads", 2}, {"context", 8}, {"seed", seed}};
}
ModelLike gpt_like(int seed) { return ModelLike("gpt", gpt_args(seed)); }
// The teacher as the model-like string of the config: "gpt:{...}".
std::string gpt_teacher(int seed) { return "gpt:" + gpt_args(seed).dump(); }

ModelLike mlp_like(int seed) { return ModelLike("test_mlp", {{"hidden", 16}, {"seed", seed}}); }

// Tokens [2, 8] in [0, kVocab).
at::Tensor tokens(int64_t shift = 0) {
  return at::arange(16, at::kLong).reshape({2, 8}).mul(5).add(shift).remainder(kVocab);
}

// The forward of a TestMlp or TestCnn, as distillation runs it.
at::Tensor test_model_forward(torch::nn::Module& model, const at::Tensor& x) {
  return test::test_forward(model.shared_from_this(), x);
}

// The language-model loss of logits [B, T, V] against the next tokens.
at::Tensor lm_loss(const at::Tensor& logits, const at::Tensor& input) {
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), input.roll(-1, 1).reshape({-1}));
}

std::string kd_config(const std::string& teacher, double temperature = 1.0, double weight = 0.5) {
  return json{{"teacher", teacher}, {"temperature", temperature}, {"kd_loss_weight", weight}}.dump();
}

ModulePtr with_teacher(ModulePtr student, const std::string& teacher, double temperature = 1.0,
                       double weight = 0.5) {
  return apply_mode(student, {{"kd_loss", kd_config(teacher, temperature, weight)}});
}

// The saved modes of `model`'s modelopt state, in order.
std::vector<std::string> saved_modes(const ModeloptState& state) {
  std::vector<std::string> out;
  for (const ModeEntry& entry : state.modelopt_state_dict()) out.push_back(entry.mode());
  return out;
}

std::vector<std::string> state_dict_keys(const torch::nn::Module& model) {
  std::vector<std::string> keys;
  for (const NamedTensor& t : model_state_dict(model)) keys.push_back(t.name);
  return keys;
}

// T^2 * KL(softmax(t / T) || softmax(s / T)) summed over the last dimension and divided by
// the number of ALL elements (B * S * V), entry by entry in double precision.
double hand_kd_loss(const at::Tensor& student, const at::Tensor& teacher, double temperature) {
  const at::Tensor s = student.detach().to(at::kDouble).reshape({-1, student.size(-1)}).contiguous();
  const at::Tensor t = teacher.detach().to(at::kDouble).reshape({-1, teacher.size(-1)}).contiguous();
  auto sa = s.accessor<double, 2>();
  auto ta = t.accessor<double, 2>();
  const int64_t rows = s.size(0), vocab = s.size(1);
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double s_max = -INFINITY, t_max = -INFINITY;
    for (int64_t v = 0; v < vocab; ++v) {
      s_max = std::max(s_max, sa[r][v] / temperature);
      t_max = std::max(t_max, ta[r][v] / temperature);
    }
    double s_sum = 0, t_sum = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      s_sum += std::exp(sa[r][v] / temperature - s_max);
      t_sum += std::exp(ta[r][v] / temperature - t_max);
    }
    for (int64_t v = 0; v < vocab; ++v) {
      const double log_p_s = sa[r][v] / temperature - s_max - std::log(s_sum);
      const double log_p_t = ta[r][v] / temperature - t_max - std::log(t_sum);
      total += std::exp(log_p_t) * (log_p_t - log_p_s);
    }
  }
  return temperature * temperature * total / static_cast<double>(rows * vocab);
}

// d loss / d student: T^2 / N * (1 / T) * (softmax(s / T) - softmax(t / T)) = T / N * (p_s - p_t).
at::Tensor hand_kd_gradient(const at::Tensor& student, const at::Tensor& teacher, double temperature) {
  const at::Tensor s = student.detach().to(at::kDouble), t = teacher.detach().to(at::kDouble);
  return (at::softmax(s / temperature, -1) - at::softmax(t / temperature, -1)) * (temperature / s.numel());
}

class DistillTest : public ::testing::Test {
 protected:
  void SetUp() override {
    at::set_num_threads(1);
    world();  // one rank: the default mesh is (1, 1)
  }
};

// ---------------------------------------------------------------------------------------
// logits_distillation_loss

TEST_F(DistillTest, LogitsLossEqualsTheHandComputationAtTemperatureOneAndTwo) {
  at::manual_seed(11);
  const at::Tensor student = at::randn({2, 3, 5}) * 2;
  const at::Tensor teacher = at::randn({2, 3, 5}) * 2;
  const double at_1 = hand_kd_loss(student, teacher, 1.0);
  const double at_2 = hand_kd_loss(student, teacher, 2.0);
  EXPECT_NEAR(logits_distillation_loss(student, teacher, 1.0).item<double>(), at_1, 1e-6);
  EXPECT_NEAR(logits_distillation_loss(student, teacher, 2.0).item<double>(), at_2, 1e-6);
  // The T^2 factor: at T = 2 the loss is 4 times the KL of the softened distributions.
  EXPECT_NEAR(logits_distillation_loss(student / 2, teacher / 2, 1.0).item<double>() * 4, at_2, 1e-6);
  // The mean runs over all B * S * V elements, not over the batch (batchmean would be 15x).
  const double kl_sum = at::kl_div(at::log_softmax(student.to(at::kDouble), -1),
                                   at::softmax(teacher.to(at::kDouble), -1), at::Reduction::Sum)
                            .item<double>();
  EXPECT_NEAR(at_1, kl_sum / 30, 1e-9);
  // A scalar; zero when the two agree; 2-D logits [N, V] as well.
  EXPECT_EQ(logits_distillation_loss(student, teacher, 1.0).dim(), 0);
  EXPECT_NEAR(logits_distillation_loss(teacher, teacher, 2.0).item<double>(), 0.0, 1e-7);
  const at::Tensor s2 = student.reshape({6, 5}), t2 = teacher.reshape({6, 5});
  EXPECT_NEAR(logits_distillation_loss(s2, t2, 1.0).item<double>(), at_1, 1e-6);
}

TEST_F(DistillTest, LogitsLossGradientReachesTheStudentLogitsOnly) {
  at::manual_seed(12);
  for (double temperature : {1.0, 2.0}) {
    const at::Tensor student = at::randn({2, 3, 5}).requires_grad_(true);
    const at::Tensor teacher = at::randn({2, 3, 5}).requires_grad_(true);
    logits_distillation_loss(student, teacher, temperature).backward();
    ASSERT_TRUE(student.grad().defined()) << temperature;
    EXPECT_TRUE(at::allclose(student.grad().to(at::kDouble), hand_kd_gradient(student, teacher, temperature),
                             1e-5, 1e-7))
        << temperature;
    EXPECT_FALSE(teacher.grad().defined()) << "the teacher's logits got a gradient at T = " << temperature;
  }
}

// ---------------------------------------------------------------------------------------
// kd_loss with its three kinds of teacher

enum class TeacherKind { kModelLike, kCheckpoint, kContext };

std::string describe(TeacherKind kind) {
  switch (kind) {
    case TeacherKind::kModelLike:
      return "model-like";
    case TeacherKind::kCheckpoint:
      return "checkpoint";
    case TeacherKind::kContext:
      return "context";
  }
  return "?";
}

// A GPT student (seed 1) with the kd_loss mode applied, its teacher (seed 2) given as `kind`.
ModulePtr distilling_gpt(TeacherKind kind, double temperature, double weight) {
  ModulePtr student = gpt_like(1).build();
  switch (kind) {
    case TeacherKind::kModelLike:
      return with_teacher(student, gpt_teacher(2), temperature, weight);
    case TeacherKind::kCheckpoint: {
      const std::string dir = test::make_temp_dir() + "/teacher";
      save(*gpt_like(2).build(), dir);
      return with_teacher(student, dir, temperature, weight);
    }
    case TeacherKind::kContext: {
      RuntimeContext context;
      context.set(kTeacher, gpt_like(2).build());
      KdLossConfig config;
      config.set_temperature(temperature);
      config.set_kd_loss_weight(weight);
      return apply_mode(student, {{"kd_loss", config}}, nullptr, std::nullopt, context);
    }
  }
  return nullptr;
}

class KdLossTest : public DistillTest, public ::testing::WithParamInterface<TeacherKind> {};

TEST_P(KdLossTest, ForwardLossGradientsAndTheFrozenTeacher) {
  const std::string where = describe(GetParam());
  const double temperature = 2.0, weight = 0.25;
  ModulePtr model = distilling_gpt(GetParam(), temperature, weight);
  ModulePtr student_reference = gpt_like(1).build();
  ModulePtr teacher_reference = gpt_like(2).build();
  std::shared_ptr<DistillationHolder> holder = find_distillation(*model);
  ASSERT_TRUE(holder) << where;
  EXPECT_DOUBLE_EQ(holder->temperature, temperature);
  EXPECT_DOUBLE_EQ(holder->kd_loss_weight, weight);
  ASSERT_TRUE(holder->teacher) << where;
  expect_same_state_dict(*holder->teacher, *teacher_reference, where + ": the teacher");
  EXPECT_EQ(saved_modes(modelopt_state(*model)), std::vector<std::string>{}) << where;

  // The teacher is not part of the student: its state dict and parameters are the student's.
  EXPECT_EQ(state_dict_keys(*model), state_dict_keys(*student_reference)) << where;
  EXPECT_EQ(model->parameters().size(), student_reference->parameters().size()) << where;
  for (const at::Tensor& p : holder->teacher->parameters()) EXPECT_FALSE(p.requires_grad()) << where;
  for (const at::Tensor& p : model->parameters()) EXPECT_TRUE(p.requires_grad()) << where;

  // train() / eval() of the student leave the teacher in eval mode.
  model->train();
  EXPECT_TRUE(model->is_training()) << where;
  EXPECT_FALSE(holder->teacher->is_training()) << where;
  model->eval();
  model->train();
  EXPECT_FALSE(holder->teacher->is_training()) << where;

  // The student's output is a plain forward of the student.
  const at::Tensor input = tokens();
  const at::Tensor out = distillation_forward(*model, zoo::forward, input);
  at::Tensor expected_out, teacher_out;
  {
    torch::NoGradGuard no_grad;
    expected_out = zoo::forward(*student_reference, input);
    teacher_out = zoo::forward(*teacher_reference, input);
  }
  EXPECT_TRUE(at::equal(out, expected_out)) << where;
  EXPECT_TRUE(out.requires_grad()) << where;
  ASSERT_TRUE(holder->teacher_output.defined()) << where;
  EXPECT_FALSE(holder->teacher_output.requires_grad()) << where;
  EXPECT_TRUE(at::equal(holder->teacher_output, teacher_out)) << where;

  // w * kd + (1 - w) * student_loss, kd by hand.
  const at::Tensor student_loss = lm_loss(out, input);
  const double kd = hand_kd_loss(out, teacher_out, temperature);
  const at::Tensor total = compute_kd_loss(*model, student_loss);
  EXPECT_NEAR(total.item<double>(), weight * kd + (1 - weight) * student_loss.item<double>(), 1e-5) << where;
  EXPECT_FALSE(holder->student_output.defined()) << where << ": the outputs are kept after the loss";
  EXPECT_FALSE(holder->teacher_output.defined()) << where;

  total.backward();
  for (const auto& p : model->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << where << ": " << p.key();
  }
  EXPECT_GT(model->named_parameters()["lm_head.weight"].grad().abs().sum().item<double>(), 0) << where;
  for (const auto& p : holder->teacher->named_parameters()) {
    EXPECT_FALSE(p.value().grad().defined()) << where << ": the teacher's " << p.key() << " got a gradient";
  }

  // Without a student loss: the weighted kd alone, as Model Optimizer's StaticLossBalancer.
  const at::Tensor out2 = distillation_forward(*model, zoo::forward, tokens(3));
  at::Tensor teacher_out2;
  {
    torch::NoGradGuard no_grad;
    teacher_out2 = zoo::forward(*teacher_reference, tokens(3));
  }
  EXPECT_NEAR(compute_kd_loss(*model).item<double>(), weight * hand_kd_loss(out2, teacher_out2, temperature), 1e-6)
      << where;
}

TEST_P(KdLossTest, TrainingMovesTheStudentOnlyAndExportStudentLeavesIt) {
  const std::string where = describe(GetParam());
  ModulePtr model = distilling_gpt(GetParam(), 1.0, 0.5);
  std::shared_ptr<torch::nn::Module> teacher = find_distillation(*model)->teacher;
  ModulePtr teacher_reference = gpt_like(2).build();
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.5));
  for (int step = 0; step < 2; ++step) {
    optimizer.zero_grad();
    const at::Tensor out = distillation_forward(*model, zoo::forward, tokens(step));
    compute_kd_loss(*model, lm_loss(out, tokens(step))).backward();
    optimizer.step();
  }
  expect_same_state_dict(*teacher, *teacher_reference, where + ": the teacher after training");
  EXPECT_FALSE(same_bytes(model->named_parameters()["lm_head.weight"],
                          gpt_like(1).build()->named_parameters()["lm_head.weight"]))
      << where << ": the student did not train";

  ModulePtr exported = apply_mode(model, "export_student");
  EXPECT_EQ(exported, model);
  EXPECT_FALSE(find_distillation(*exported)) << where;
  EXPECT_EQ(state_dict_keys(*exported), state_dict_keys(*gpt_like(1).build())) << where;
  for (const auto& child : exported->named_children()) EXPECT_NE(child.key(), "_distillation") << where;
  EXPECT_EQ(error_of<StateError>([&] { distillation_forward(*exported, zoo::forward, tokens()); }),
            "distillation_forward: the model is not distilling (apply the mode 'kd_loss' first)");
}

INSTANTIATE_TEST_SUITE_P(Teachers, KdLossTest,
                         ::testing::Values(TeacherKind::kModelLike, TeacherKind::kCheckpoint, TeacherKind::kContext),
                         [](const ::testing::TestParamInfo<TeacherKind>& info) {
                           std::string name = describe(info.param);
                           name.erase(std::remove(name.begin(), name.end(), '-'), name.end());
                           return name;
                         });

TEST_F(DistillTest, DefaultConfigIsTemperatureOneAndHalfAndHalf) {
  ModulePtr model = apply_mode(gpt_like(1).build(), {{"kd_loss", json{{"teacher", gpt_teacher(2)}}.dump()}});
  std::shared_ptr<DistillationHolder> holder = find_distillation(*model);
  ASSERT_TRUE(holder);
  EXPECT_DOUBLE_EQ(holder->temperature, 1.0);
  EXPECT_DOUBLE_EQ(holder->kd_loss_weight, 0.5);
  // Weight 1: kd alone even with a student loss; weight 0: the student loss alone.
  for (double weight : {0.0, 1.0}) {
    ModulePtr m = with_teacher(gpt_like(1).build(), gpt_teacher(2), 1.0, weight);
    const at::Tensor out = distillation_forward(*m, zoo::forward, tokens());
    const at::Tensor student_loss = lm_loss(out, tokens());
    const double kd = hand_kd_loss(out, zoo::forward(*find_distillation(*m)->teacher, tokens()), 1.0);
    EXPECT_NEAR(compute_kd_loss(*m, student_loss).item<double>(),
                weight == 1.0 ? kd : student_loss.item<double>(), 1e-6)
        << weight;
  }
}

TEST_F(DistillTest, TheContextTeacherIsFrozenInPlace) {
  ModulePtr teacher = gpt_like(2).build();
  teacher->train();
  RuntimeContext context;
  context.set(kTeacher, teacher);
  ModulePtr model = apply_mode(gpt_like(1).build(), "kd_loss", nullptr, std::nullopt, context);
  EXPECT_EQ(find_distillation(*model)->teacher, teacher);
  EXPECT_FALSE(teacher->is_training());
  for (const at::Tensor& p : teacher->parameters()) EXPECT_FALSE(p.requires_grad());
}

TEST_F(DistillTest, ATeacherWithModesOfItsOwnStaysOutOfTheStudentsState) {
  // A sparse teacher checkpoint: its modelopt state lives on the teacher, apart from the
  // student's, and nothing of it reaches the student's checkpoint.
  const std::string teacher_dir = test::make_temp_dir() + "/teacher";
  save(*apply_mode(gpt_like(2), "sparse_magnitude"), teacher_dir);
  ModulePtr model = with_teacher(apply_mode(gpt_like(1), "fastnas", nullptr, std::nullopt,
                                            RuntimeContext().set(nas::kDummyForward,
                                                                 [](torch::nn::Module& m) {
                                                                   return zoo::forward(m, tokens());
                                                                 })),
                                 teacher_dir);
  std::shared_ptr<torch::nn::Module> teacher = find_distillation(*model)->teacher;
  EXPECT_EQ(saved_modes(modelopt_state(*teacher)), std::vector<std::string>{"sparse_magnitude"});
  EXPECT_EQ(saved_modes(modelopt_state(*model)), std::vector<std::string>{"fastnas"});
  const std::string dir = test::make_temp_dir() + "/student";
  save(*model, dir);
  ModulePtr restored = restore(dir);
  EXPECT_EQ(saved_modes(modelopt_state(*restored)), std::vector<std::string>{"fastnas"});
  expect_same_state_dict(*restored, *model, "restored");
  model = apply_mode(model, {"export_student", "export_nas"});
  EXPECT_EQ(saved_modes(modelopt_state(*teacher)), std::vector<std::string>{"sparse_magnitude"});
}

TEST_F(DistillTest, KdLossOnAModelLikeBuildsTheStudentFirst) {
  ModulePtr model = apply_mode(gpt_like(1), {{"kd_loss", kd_config(gpt_teacher(2))}});
  ASSERT_TRUE(find_distillation(*model));
  EXPECT_TRUE(at::equal(distillation_forward(*model, zoo::forward, tokens()),
                        zoo::forward(*gpt_like(1).build(), tokens())));
  const ModeloptState state = modelopt_state(*model);
  EXPECT_EQ(saved_modes(state), std::vector<std::string>{});
  EXPECT_EQ(state.model_like().factory(), "gpt");
}

// kd_loss, left out of the saved state, does not keep the mode before it from updating its
// metadata for the save.
TEST_F(DistillTest, TheLastSavedModeUpdatesForTheSaveBehindKdLoss) {
  ModulePtr model = apply_mode(gpt_like(1), {{"test_hooks"}, {"kd_loss", kd_config(gpt_teacher(2))}});
  const ModeloptState state = modelopt_state(*model);
  ASSERT_EQ(saved_modes(state), std::vector<std::string>{"test_hooks"});
  google::protobuf::Struct metadata;
  ASSERT_TRUE(state.modelopt_state_dict(0).metadata().UnpackTo(&metadata));
  EXPECT_TRUE(metadata.fields().at("saved").bool_value());
}

// ---------------------------------------------------------------------------------------
// Errors

TEST_F(DistillTest, ErrorsOfTheTeacher) {
  EXPECT_EQ(error_of<ApplyModeError>([] { apply_mode(gpt_like(1).build(), "kd_loss"); }),
            "kd_loss: no teacher; set \"teacher\" to a checkpoint directory or a model-like, or pass "
            "distill::kTeacher in the context");

  const std::string missing = test::make_temp_dir() + "/no/such/teacher";
  const std::string missing_error =
      error_of<ApplyModeError>([&] { with_teacher(gpt_like(1).build(), missing); });
  EXPECT_EQ(missing_error, "kd_loss: the teacher checkpoint " + missing + " does not exist");

  // A directory that is no checkpoint: empty, or holding files that are not one.
  const std::string empty = test::make_temp_dir();
  const std::string empty_error = error_of<ApplyModeError>([&] { with_teacher(gpt_like(1).build(), empty); });
  EXPECT_EQ(empty_error.rfind("kd_loss: cannot restore the teacher from " + empty + ": ", 0), 0u) << empty_error;
  const std::string garbage = test::make_temp_dir();
  for (const char* name : {"MANIFEST", "modelopt_state.pb", "model-00001-of-00001.safetensors"}) {
    std::ofstream(garbage + "/" + name) << "not a checkpoint";
  }
  const std::string garbage_error = error_of<ApplyModeError>([&] { with_teacher(gpt_like(1).build(), garbage); });
  EXPECT_EQ(garbage_error.rfind("kd_loss: cannot restore the teacher from " + garbage + ": ", 0), 0u)
      << garbage_error;

  // A checkpoint whose weights are corrupt.
  const std::string corrupt = test::make_temp_dir() + "/teacher";
  save(*gpt_like(2).build(), corrupt);
  for (const auto& entry : fs::directory_iterator(corrupt)) {
    if (entry.path().extension() != ".safetensors") continue;
    std::fstream file(entry.path(), std::ios::in | std::ios::out | std::ios::binary);
    file.seekp(-8, std::ios::end);
    file.write("\x7f\x7f\x7f\x7f\x7f\x7f\x7f\x7f", 8);
  }
  const std::string corrupt_error = error_of<ApplyModeError>([&] { with_teacher(gpt_like(1).build(), corrupt); });
  EXPECT_EQ(corrupt_error.rfind("kd_loss: cannot restore the teacher from " + corrupt + ": ", 0), 0u)
      << corrupt_error;

  // Neither a directory nor a registered model-like; model-like arguments that are no JSON.
  EXPECT_EQ(error_of<ApplyModeError>([] { with_teacher(gpt_like(1).build(), "no_such_model"); })
                .rfind("kd_loss: the teacher 'no_such_model' is neither a checkpoint directory nor a model-like: ", 0),
            0u);
  EXPECT_EQ(error_of<ApplyModeError>([] { with_teacher(gpt_like(1).build(), "gpt:{\"seed\": "); }),
            "kd_loss: the teacher's model-like arguments are not JSON: gpt:{\"seed\": ");
  // The model-like's own error (an unknown argument) is passed on.
  const std::string bad_args = error_of<ApplyModeError>([] { with_teacher(gpt_like(1).build(), "gpt:{\"seeds\": 1}"); });
  EXPECT_EQ(bad_args.rfind("kd_loss: the teacher 'gpt:{\"seeds\": 1}' is neither a checkpoint directory nor a "
                           "model-like: ",
                           0),
            0u)
      << bad_args;

  // The teacher given twice.
  RuntimeContext context;
  context.set(kTeacher, gpt_like(2).build());
  EXPECT_EQ(error_of<ApplyModeError>([&] {
              apply_mode(gpt_like(1).build(), {{"kd_loss", kd_config(gpt_teacher(2))}}, nullptr, std::nullopt,
                         context);
            }),
            "kd_loss: the teacher is given twice (in the config and in the context)");
}

TEST_F(DistillTest, ErrorsOfTheConfig) {
  for (double temperature : {0.0, -1.0, std::nan("")}) {
    const std::string error =
        error_of<ConfigError>([&] { with_teacher(gpt_like(1).build(), gpt_teacher(2), temperature); });
    EXPECT_EQ(error.rfind("kd_loss: temperature must be positive, got ", 0), 0u) << error;
  }
  EXPECT_EQ(error_of<ConfigError>([] { with_teacher(gpt_like(1).build(), gpt_teacher(2), 1.0, 1.5); }),
            "kd_loss: kd_loss_weight must be in [0, 1], got 1.5");
  EXPECT_EQ(error_of<ConfigError>([] { with_teacher(gpt_like(1).build(), gpt_teacher(2), 1.0, -0.25); }),
            "kd_loss: kd_loss_weight must be in [0, 1], got -0.25");
  // An unknown key is refused, as pydantic's extra="forbid" does.
  const std::string unknown = error_of<ConfigError>([] {
    apply_mode(gpt_like(1).build(), {{"kd_loss", R"({"teacher": "gpt", "temprature": 2})"}});
  });
  EXPECT_NE(unknown.find("temprature"), std::string::npos) << unknown;
  // A failed kd_loss leaves the model as it was: no holder, no mode recorded.
  ModulePtr model = gpt_like(1).build();
  EXPECT_THROW(with_teacher(model, gpt_teacher(2), 0.0), ConfigError);
  EXPECT_THROW(with_teacher(model, "no_such_model"), ApplyModeError);
  EXPECT_FALSE(find_distillation(*model));
  EXPECT_EQ(saved_modes(modelopt_state(*model)), std::vector<std::string>{});
  EXPECT_NO_THROW(with_teacher(model, gpt_teacher(2)));
}

TEST_F(DistillTest, ErrorsOfTheTrainingStep) {
  ModulePtr plain = gpt_like(1).build();
  EXPECT_EQ(error_of<StateError>([&] { distillation_forward(*plain, zoo::forward, tokens()); }),
            "distillation_forward: the model is not distilling (apply the mode 'kd_loss' first)");
  EXPECT_EQ(error_of<StateError>([&] { compute_kd_loss(*plain); }),
            "compute_kd_loss: the model is not distilling (apply the mode 'kd_loss' first)");

  ModulePtr model = with_teacher(gpt_like(1).build(), gpt_teacher(2));
  EXPECT_EQ(error_of<StateError>([&] { compute_kd_loss(*model); }),
            "compute_kd_loss: no distillation_forward since the last loss");
  distillation_forward(*model, zoo::forward, tokens());
  compute_kd_loss(*model);
  EXPECT_EQ(error_of<StateError>([&] { compute_kd_loss(*model, at::zeros({})); }),
            "compute_kd_loss: no distillation_forward since the last loss");

  // A teacher that does not fit the student: a shorter context, which the student's input
  // exceeds, or another vocabulary, whose logits cannot be compared with the student's.
  json short_context = gpt_args(2);
  short_context["context"] = 4;
  const std::string short_teacher = "gpt:" + short_context.dump();
  ModulePtr short_student = with_teacher(gpt_like(1).build(), short_teacher);
  EXPECT_EQ(error_of<std::invalid_argument>([&] { distillation_forward(*short_student, zoo::forward, tokens()); }),
            "kd_loss: the teacher '" + short_teacher +
                "' cannot take the student's input of shape [2, 8]: Gpt expects int64 tokens [B, T] with T <= 4, got "
                "Long [2, 8]");
  json other_vocab = gpt_args(2);
  other_vocab["vocab"] = 2 * kVocab;
  const std::string wide_teacher = "gpt:" + other_vocab.dump();
  ModulePtr wide_student = with_teacher(gpt_like(1).build(), wide_teacher);
  distillation_forward(*wide_student, zoo::forward, tokens());
  EXPECT_EQ(error_of<std::invalid_argument>([&] { compute_kd_loss(*wide_student); }),
            "kd_loss: the teacher '" + wide_teacher +
                "' gives logits of shape [2, 8, 32], the student [2, 8, 16]: distilling needs the same");
  // The failed step leaves nothing behind: the next one starts afresh.
  EXPECT_EQ(error_of<StateError>([&] { compute_kd_loss(*wide_student); }),
            "compute_kd_loss: no distillation_forward since the last loss");

  // kd_loss twice.
  EXPECT_EQ(error_of<ApplyModeError>([&] { with_teacher(model, gpt_teacher(3)); }),
            "kd_loss: the model is distilling already");
  // export_student on a model that was never distilling.
  EXPECT_EQ(error_of<StateError>([] { apply_mode(gpt_like(1).build(), "export_student"); }),
            "Cannot add export_student according to the current export stack: [].");
}

// ---------------------------------------------------------------------------------------
// Chains

RuntimeContext trace_context() {
  RuntimeContext context;
  context.set(nas::kDummyForward, [](torch::nn::Module& m) { return test_model_forward(m, at::ones({2, 8})); });
  return context;
}

at::Tensor mlp_input() {
  at::manual_seed(21);
  return at::randn({4, 8});
}

std::string mlp_teacher() { return "test_mlp:" + json{{"hidden", 16}, {"seed", 2}}.dump(); }

TEST_F(DistillTest, FastnasExportNasKdLossExportStudent) {
  ModulePtr model = apply_mode(mlp_like(1).build(), "fastnas", nullptr, std::nullopt, trace_context());
  nas::SearchSpace space(*model);
  std::vector<int64_t> widths = space.max_widths();
  for (int64_t& w : widths) w /= 2;
  space.set_widths(widths);
  model = apply_mode(model, "export_nas");
  const at::Tensor before = test_model_forward(*model, mlp_input());
  const std::vector<std::string> keys = state_dict_keys(*model);
  const ModeloptState state_before = modelopt_state(*model);

  model = with_teacher(model, mlp_teacher());
  {
    const at::Tensor out = distillation_forward(*model, test_model_forward, mlp_input());
    EXPECT_TRUE(at::equal(out, before));
    compute_kd_loss(*model, out.pow(2).mean()).backward();
  }
  EXPECT_EQ(state_dict_keys(*model), keys);
  EXPECT_EQ(saved_modes(modelopt_state(*model)), (std::vector<std::string>{"fastnas", "export_nas"}));
  model = apply_mode(model, "export_student");
  EXPECT_FALSE(find_distillation(*model));
  EXPECT_EQ(state_dict_keys(*model), keys);
  EXPECT_TRUE(at::equal(test_model_forward(*model, mlp_input()), before));
  EXPECT_EQ(modelopt_state(*model).SerializeAsString(), state_before.SerializeAsString());
}

TEST_F(DistillTest, SparseMagnitudeKdLossExportStudentExportSparse) {
  ModulePtr model = apply_mode(mlp_like(1).build(), "sparse_magnitude");
  const at::Tensor before = test_model_forward(*model, mlp_input());
  const std::vector<std::string> keys = state_dict_keys(*model);
  ASSERT_NE(std::find(keys.begin(), keys.end(), "fc1._weight_mask"), keys.end());

  model = with_teacher(model, mlp_teacher(), 2.0, 0.5);
  const at::Tensor out = distillation_forward(*model, test_model_forward, mlp_input());
  EXPECT_TRUE(at::equal(out, before));
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.1));
  compute_kd_loss(*model, out.pow(2).mean()).backward();
  optimizer.step();
  EXPECT_EQ(state_dict_keys(*model), keys);

  model = apply_mode(model, "export_student");
  EXPECT_EQ(state_dict_keys(*model), keys);
  EXPECT_EQ(saved_modes(modelopt_state(*model)), std::vector<std::string>{"sparse_magnitude"});
  model = apply_mode(model, "export_sparse");
  EXPECT_EQ(saved_modes(modelopt_state(*model)), (std::vector<std::string>{"sparse_magnitude", "export_sparse"}));
  // Training under distillation kept the 2:4 pattern.
  for (const char* layer : {"fc1", "fc2", "fc3"}) {
    const at::Tensor w = model->named_parameters()[std::string(layer) + ".weight"];
    EXPECT_TRUE(w.reshape({w.size(0), -1, 4}).ne(0).sum(-1).le(2).all().item<bool>()) << layer;
  }
}

TEST_F(DistillTest, KdLossThenExportStudentLeavesTheStudentsKeysAndForward) {
  ModulePtr reference = gpt_like(1).build();
  ModulePtr model = with_teacher(gpt_like(1).build(), gpt_teacher(2));
  const at::Tensor inside = distillation_forward(*model, zoo::forward, tokens());
  compute_kd_loss(*model);
  model = apply_mode(model, "export_student");
  EXPECT_EQ(state_dict_keys(*model), state_dict_keys(*reference));
  EXPECT_TRUE(at::equal(zoo::forward(*model, tokens()), inside));
  EXPECT_TRUE(at::equal(zoo::forward(*model, tokens()), zoo::forward(*reference, tokens())));
  EXPECT_EQ(saved_modes(modelopt_state(*model)), std::vector<std::string>{});
  // A second round of distillation may follow the export.
  model = with_teacher(model, gpt_teacher(3));
  EXPECT_TRUE(find_distillation(*model));
  model = apply_mode(model, "export_student");
  EXPECT_FALSE(find_distillation(*model));
}

TEST_F(DistillTest, ChainsTheRelationsRefuseWithTheReferenceTexts) {
  // export_student with no kd_loss before it.
  EXPECT_EQ(error_of<StateError>([] { apply_mode(mlp_like(1).build(), "export_student"); }),
            "Cannot add export_student according to the current export stack: [].");
  // export_student right after sparse_magnitude: the export stack asks for export_sparse (an
  // export mode meets the stack first, as in the Python original).
  EXPECT_EQ(error_of<StateError>([] { apply_mode(mlp_like(1).build(), {"sparse_magnitude", "export_student"}); }),
            "Cannot add export_student according to the current export stack: ['export_sparse'].");
  // export_sparse while kd_loss is on top of the export stack.
  {
    ModulePtr model = apply_mode(mlp_like(1).build(), "sparse_magnitude");
    model = with_teacher(model, mlp_teacher());
    EXPECT_EQ(error_of<StateError>([&] { apply_mode(model, "export_sparse"); }),
              "Cannot add export_sparse according to the current export stack: ['export_sparse', 'export_student'].");
    // The refused mode left the chain as it was: the right order still works.
    model = apply_mode(model, {"export_student", "export_sparse"});
    EXPECT_EQ(saved_modes(modelopt_state(*model)),
              (std::vector<std::string>{"sparse_magnitude", "export_sparse"}));
  }
  // export_nas while kd_loss is on top of the export stack.
  {
    ModulePtr model = apply_mode(mlp_like(1).build(), "fastnas", nullptr, std::nullopt, trace_context());
    model = with_teacher(model, mlp_teacher());
    EXPECT_EQ(error_of<StateError>([&] { apply_mode(model, "export_nas"); }),
              "Cannot add export_nas according to the current export stack: ['export_nas', 'export_student'].");
    model = apply_mode(model, {"export_student", "export_nas"});
    EXPECT_EQ(saved_modes(modelopt_state(*model)), (std::vector<std::string>{"fastnas", "export_nas"}));
  }
  // quantize allows kd_loss after it (quantization-aware distillation)...
  const std::string int8 = "int8";
  RuntimeContext calibrate;
  calibrate.set(quantization::kForwardLoop,
                [](torch::nn::Module& m) { test_model_forward(m, mlp_input()); });
  {
    ModulePtr model = apply_mode(mlp_like(1).build(), ModeList(quantization::quantize_modes(int8)), nullptr,
                                 std::nullopt, calibrate);
    const at::Tensor before = test_model_forward(*model, mlp_input());
    model = with_teacher(model, mlp_teacher());
    EXPECT_TRUE(at::equal(distillation_forward(*model, test_model_forward, mlp_input()), before));
    compute_kd_loss(*model);
    EXPECT_EQ(saved_modes(modelopt_state(*model)), (std::vector<std::string>{"quantize", "max_calibrate"}));
    // ...but still prohibits sparsity after it, kd_loss in between or not.
    EXPECT_EQ(error_of<StateError>([&] { apply_mode(model, "sparse_magnitude"); }),
              "quantize does not allow sparse_magnitude to be its next mode.");
    model = apply_mode(model, "export_student");
    EXPECT_EQ(saved_modes(modelopt_state(*model)), (std::vector<std::string>{"quantize", "max_calibrate"}));
  }
  // A mode allowed only behind kd_loss is refused: a restore replays the chain without
  // kd_loss, which is never saved, and would refuse the checkpoint instead.
  {
    ModulePtr model = apply_mode(mlp_like(1).build(), "sparse_magnitude");
    model = with_teacher(model, mlp_teacher());
    model = apply_mode(model, ModeList(quantization::quantize_modes(int8)), nullptr, std::nullopt, calibrate);
    EXPECT_EQ(error_of<StateError>([&] { apply_mode(model, "export_quantize"); }),
              "Cannot add export_quantize after sparse_magnitude! Next modes of sparse_magnitude are "
              "{'awq_clip_calibrate', 'awq_full_calibrate', 'awq_lite_calibrate', 'export_sparse', 'kd_loss', "
              "'max_calibrate', 'quantize', 'smoothquant_calibrate'}. (kd_loss is never saved, so a restore would "
              "replay the chain without it)");
    // What was allowed saves and restores.
    const std::string dir = test::make_temp_dir() + "/ckpt";
    save(*model, dir);
    EXPECT_EQ(saved_modes(modelopt_state(*restore(dir))),
              (std::vector<std::string>{"sparse_magnitude", "quantize", "max_calibrate"}));
  }
  // Nothing follows export_quantize, kd_loss included.
  {
    ModulePtr model = apply_mode(mlp_like(1).build(), ModeList(quantization::quantize_modes(int8)), nullptr,
                                 std::nullopt, calibrate);
    model = apply_mode(model, "export_quantize");
    EXPECT_EQ(error_of<StateError>([&] { with_teacher(model, mlp_teacher()); }),
              "Cannot add kd_loss after export_quantize! Next modes of export_quantize are set().");
  }
  // kd_loss declares no next modes of its own: any mode may follow it, and the export stack
  // then asks for that mode's export first.
  {
    ModulePtr model = with_teacher(mlp_like(1).build(), mlp_teacher());
    model = apply_mode(model, "sparse_magnitude");
    EXPECT_EQ(error_of<StateError>([&] { apply_mode(model, "export_student"); }),
              "Cannot add export_student according to the current export stack: ['export_student', "
              "'export_sparse'].");
    model = apply_mode(model, {"export_sparse", "export_student"});
    EXPECT_FALSE(find_distillation(*model));
    EXPECT_EQ(saved_modes(modelopt_state(*model)), (std::vector<std::string>{"sparse_magnitude", "export_sparse"}));
  }
}

// ---------------------------------------------------------------------------------------
// Saving while distilling

TEST_F(DistillTest, SavedWhileDistillingRestoresAsTheStudentAlone) {
  ModulePtr model = apply_mode(gpt_like(1), "sparse_magnitude");
  model = with_teacher(model, gpt_teacher(2), 2.0, 0.5);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(0.5));
  const at::Tensor out = distillation_forward(*model, zoo::forward, tokens());
  compute_kd_loss(*model, lm_loss(out, tokens())).backward();
  optimizer.step();

  const ModeloptState state = modelopt_state(*model);
  EXPECT_EQ(saved_modes(state), std::vector<std::string>{"sparse_magnitude"});
  ASSERT_TRUE(state.has_model_like());
  EXPECT_EQ(state.model_like().factory(), "gpt");

  const std::string dir = test::make_temp_dir() + "/student";
  save(*model, dir);
  // The model is still distilling after the save.
  ASSERT_TRUE(find_distillation(*model));
  const CheckpointContents contents = read_checkpoint_contents(dir);
  EXPECT_EQ(saved_modes(contents.state), std::vector<std::string>{"sparse_magnitude"});
  for (const TensorRecord& record : contents.manifest.tensors()) {
    EXPECT_EQ(record.name().find("_distillation"), std::string::npos) << record.name();
  }

  ModulePtr restored = restore(dir);
  EXPECT_FALSE(find_distillation(*restored));
  EXPECT_EQ(saved_modes(modelopt_state(*restored)), std::vector<std::string>{"sparse_magnitude"});
  expect_same_state_dict(*restored, *model, "restored");
  {
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(at::equal(zoo::forward(*restored, tokens(1)), zoo::forward(*model, tokens(1))));
  }
  // Into a model of other weights; and from the state alone, with no kd_loss to restore.
  ModulePtr into = restore(gpt_like(9).build(), dir);
  expect_same_state_dict(*into, *model, "restored into seed 9");
  ModulePtr replayed = restore_from_modelopt_state(gpt_like(9).build(), state);
  EXPECT_FALSE(find_distillation(*replayed));
  EXPECT_EQ(saved_modes(modelopt_state(*replayed)), std::vector<std::string>{"sparse_magnitude"});

  // The restored student distills again, and its export is the saved chain.
  restored = with_teacher(restored, gpt_teacher(2));
  restored = apply_mode(restored, {"export_student", "export_sparse"});
  EXPECT_EQ(saved_modes(modelopt_state(*restored)), (std::vector<std::string>{"sparse_magnitude", "export_sparse"}));
}

TEST_F(DistillTest, SavedWithKdLossAloneRestoresAsThePlainStudent) {
  ModulePtr model = with_teacher(gpt_like(4).build(), gpt_teacher(2));
  const std::string dir = test::make_temp_dir() + "/student";
  save(*model, dir);
  EXPECT_EQ(saved_modes(read_checkpoint_contents(dir).state), std::vector<std::string>{});
  ModulePtr restored = restore(dir);
  EXPECT_FALSE(find_distillation(*restored));
  expect_same_state_dict(*restored, *gpt_like(4).build(), "restored");
  // The plain student takes any first mode, export_student excepted.
  EXPECT_EQ(error_of<StateError>([&] { apply_mode(restored, "export_student"); }),
            "Cannot add export_student according to the current export stack: [].");
}

TEST_F(DistillTest, RestoringAStateThatRecordsKdLossFails) {
  // No saved state holds kd_loss; one written by hand reaches kd_loss's restore, which refuses.
  ModeloptState state = modelopt_state(*apply_mode(gpt_like(1).build(), "sparse_magnitude"));
  ModeEntry* entry = state.add_modelopt_state_dict();
  entry->set_mode("kd_loss");
  KdLossConfig config;
  config.set_teacher(gpt_teacher(2));
  config.set_temperature(1);
  config.set_kd_loss_weight(0.5);
  *entry->mutable_config() = pack_message(config);
  *entry->mutable_metadata() = pack_message(*ModeRegistry::get_from_any("kd_loss")->metadata_class());
  EXPECT_EQ(error_of<ApplyModeError>([&] { restore_from_modelopt_state(gpt_like(1).build(), state); }),
            "kd_loss cannot be restored: it is never saved (the checkpoint holds the student alone)");
}

}  // namespace
}  // namespace distill
}  // namespace mto
