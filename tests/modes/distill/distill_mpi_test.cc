// Distillation of the zoo GPT on 4 real mpirun ranks at (dp=2, tp=2): a teacher restored
// from a checkpoint saved on the same ranks and mesh, a student wrapped in DataParallel over
// the dp group, one training step equal to the single-process step with the replicas
// identical, and a checkpoint saved while distilling that restores as the student alone on 4,
// 2 and 1 ranks.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/optim/sgd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "distributed/data_parallel.h"
#include "distributed/mesh.h"
#include "distributed/world.h"
#include "modes/distill/distill.pb.h"
#include "modes/distill/distillation_model.h"
#include "opt/checkpoint.h"
#include "opt/conversion.h"
#include "opt/errors.h"
#include "opt/state_dict.h"
#include "serialization/checkpoint_reader.h"
#include "tests/testing/errors.h"
#include "tests/testing/model_checks.h"
#include "tools/zoo/forward.h"
#include "tools/zoo/gpt.h"

namespace mto {
namespace distill {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::error_of;
using test::expect_slices_of;

// Outputs of different tp sizes differ by the order of their sums only.
constexpr double kTolerance = 1e-5;
constexpr int64_t kStudentSeed = 3;
constexpr int64_t kTeacherSeed = 5;
constexpr double kTemperature = 2.0;
constexpr double kWeight = 0.5;

json gpt_args(int64_t seed) {
  return {{"vocab", 32}, {"width", 16}, {"depth", 2}, {"heads", 4}, {"context", 8}, {"seed", seed}};
}

zoo::GptOptions small_gpt(std::shared_ptr<Mesh> mesh, int64_t seed) {
  return zoo::GptOptions::from_json(gpt_args(seed)).mesh(std::move(mesh));
}

// A mesh of this rank alone, for the single-process reference; made once, by every rank
// together (splitting is collective).
std::shared_ptr<Mesh> solo() {
  static std::shared_ptr<Mesh>* mesh = new std::shared_ptr<Mesh>(Mesh::create(world()->split(world()->rank(), 0), 1));
  return *mesh;
}

// Tokens every rank agrees on.
at::Tensor tokens(int64_t batch) { return at::arange(batch * 8, at::kLong).reshape({batch, 8}).mul(7).remainder(32); }

at::Tensor lm_loss(const at::Tensor& logits, const at::Tensor& input) {
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), input.roll(-1, 1).reshape({-1}));
}

std::vector<std::string> saved_modes(const ModeloptState& state) {
  std::vector<std::string> out;
  for (const ModeEntry& entry : state.modelopt_state_dict()) out.push_back(entry.mode());
  return out;
}

// One step of SGD on the distillation loss: the student's own loss balanced with the
// logits distillation loss against the teacher.
void distillation_step(torch::nn::Module& model, const at::Tensor& input, DataParallelImpl* dp) {
  torch::optim::SGD optimizer(model.parameters(), torch::optim::SGDOptions(0.5));
  optimizer.zero_grad();
  const at::Tensor logits = distillation_forward(model, zoo::forward, input);
  compute_kd_loss(model, lm_loss(logits, input)).backward();
  if (dp) dp->average_gradients();
  optimizer.step();
}

class DistillMpiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    at::set_num_threads(1);
    ASSERT_EQ(world()->world_size(), 4) << "run with 4 ranks";
    solo();
    base = std::string(std::getenv("TEST_TMPDIR")) + "/" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    if (rank == 0) fs::create_directories(base);
    // Model-likes (the teacher's and the student's) are built on the default mesh.
    mesh = Mesh::create(world(), 2);
    set_default_mesh(mesh);
    world()->barrier();
  }
  void TearDown() override {
    set_default_mesh(nullptr);
    world()->barrier();
  }

  // The first `size` ranks as their own communicator; nullptr on the others. Collective.
  std::shared_ptr<Communicator> first(int size) { return world()->split(rank < size ? 0 : -1, rank); }

  // Saves the teacher (seed 5), built from its model-like at (2, 2), on all 4 ranks.
  std::string save_teacher() {
    const std::string dir = base + "/teacher";
    save(*ModelLike("gpt", gpt_args(kTeacherSeed)).build(), dir);
    return dir;
  }

  const int rank = world()->rank();
  std::string base;
  std::shared_ptr<Mesh> mesh;
};

TEST_F(DistillMpiTest, ATrainingStepAtTwoByTwoEqualsOneProcessAndSavesTheStudentAlone) {
  const std::string teacher_dir = save_teacher();
  const std::string config =
      json{{"teacher", teacher_dir}, {"temperature", kTemperature}, {"kd_loss_weight", kWeight}}.dump();

  // The student (seed 3), sparse, distilling from the checkpoint, wrapped over the dp group.
  ModulePtr student = apply_mode(ModelLike("gpt", gpt_args(kStudentSeed)), "sparse_magnitude");
  student = apply_mode(student, {{"kd_loss", config}});
  const std::shared_ptr<DistillationHolder> holder = find_distillation(*student);
  ASSERT_TRUE(holder);
  // The teacher was restored on the same mesh: this rank holds its (2, 2) slices.
  zoo::Gpt teacher_reference(small_gpt(solo(), kTeacherSeed));
  expect_slices_of(*holder->teacher, *teacher_reference, "the teacher at (2, 2)");
  DataParallel dp(student, mesh->dp());
  EXPECT_EQ(find_distillation(*dp), holder);
  // Its parameters are the student's alone (the teacher has as many again).
  EXPECT_EQ(dp->parameters().size(), teacher_reference->parameters().size());

  // The single-process reference: the same student and teacher, whole, on the full batch.
  ModulePtr reference = apply_mode(zoo::Gpt(small_gpt(solo(), kStudentSeed)).ptr(), "sparse_magnitude");
  {
    KdLossConfig reference_config;
    reference_config.set_temperature(kTemperature);
    reference_config.set_kd_loss_weight(kWeight);
    RuntimeContext context;
    context.set(kTeacher, zoo::Gpt(small_gpt(solo(), kTeacherSeed)).ptr());
    reference = apply_mode(reference, {{"kd_loss", reference_config}}, nullptr, std::nullopt, context);
  }
  distillation_step(*reference, tokens(4), nullptr);

  // Each replica takes half the batch; the averaged gradient is the full batch's.
  distillation_step(*dp, tokens(4).narrow(0, 2 * mesh->dp_index(), 2), dp.get());
  expect_slices_of(*student, *reference, "the student after one step at (2, 2)", /*exact=*/false);
  expect_slices_of(*holder->teacher, *teacher_reference, "the teacher after the step");
  for (const StateTensor& t : model_state_slices(*student)) {
    const std::vector<at::Tensor> replicas = mesh->dp()->all_gather(t.tensor.contiguous());
    ASSERT_EQ(replicas.size(), 2u);
    EXPECT_TRUE(at::equal(replicas[0], replicas[1])) << t.name << " differs between the dp replicas";
  }

  // Saved on 4 ranks while distilling: the student and its sparsity alone.
  const std::string dir = base + "/student";
  save(*dp, dir);
  ASSERT_TRUE(find_distillation(*dp));
  if (rank == 0) {
    const CheckpointContents contents = read_checkpoint_contents(dir);
    EXPECT_EQ(saved_modes(contents.state), std::vector<std::string>{"sparse_magnitude"});
    EXPECT_EQ(static_cast<size_t>(contents.manifest.tensors_size()), model_state_dict(*reference).size());
  }

  // On all 4 ranks as (4, 1), from the recorded model-like: every rank holds the whole
  // student, equal to the slices of the saved one.
  set_default_mesh(Mesh::create(world(), 1));
  ModulePtr whole = restore(dir);
  set_default_mesh(mesh);
  EXPECT_FALSE(find_distillation(*whole));
  EXPECT_EQ(saved_modes(modelopt_state(*whole)), std::vector<std::string>{"sparse_magnitude"});
  expect_slices_of(*student, *whole, "the saved student vs restored at (4, 1)");
  EXPECT_TRUE(model_state_slices(*whole).front().slice == std::nullopt);
  {
    torch::NoGradGuard no_grad;
    EXPECT_TRUE(at::allclose(zoo::forward(*whole, tokens(2)), zoo::forward(*student, tokens(2)), kTolerance,
                             kTolerance));
  }

  // On a sub-communicator of 2 ranks as (1, 2), and on 1 rank, into GPTs of other weights.
  const std::shared_ptr<Communicator> two = first(2);
  const std::shared_ptr<Communicator> one = first(1);
  for (const auto& [comm, tp] : {std::pair{two, 2}, std::pair{one, 1}}) {
    if (!comm) continue;
    const std::shared_ptr<Mesh> sub = Mesh::create(comm, tp);
    zoo::Gpt target(small_gpt(sub, 9));
    RestoreOptions options;
    options.communicator = comm;
    ModulePtr restored = restore(target, dir, options);
    const std::string where = "restored at " + sub->describe();
    EXPECT_FALSE(find_distillation(*restored)) << where;
    EXPECT_EQ(saved_modes(modelopt_state(*restored)), std::vector<std::string>{"sparse_magnitude"}) << where;
    expect_slices_of(*restored, *whole, where);
  }
  world()->barrier();
}

TEST_F(DistillMpiTest, DistillationResumesOnASubMeshOfTwoRanks) {
  // A student saved on 4 ranks, restored on ranks 0 and 1 as (1, 2), distills again from the
  // teacher checkpoint restored on those two ranks (the mesh of the context), while ranks 2
  // and 3 do something else.
  const std::string teacher_dir = save_teacher();
  const std::string dir = base + "/student";
  save(*ModelLike("gpt", gpt_args(kStudentSeed)).build(), dir);
  const std::shared_ptr<Communicator> two = first(2);
  if (two) {
    const std::shared_ptr<Mesh> sub = Mesh::create(two, 2);
    RestoreOptions options;
    options.communicator = two;
    ModulePtr student = restore(zoo::Gpt(small_gpt(sub, 9)).ptr(), dir, options);
    RuntimeContext context;
    context.set_mesh(sub);
    student = apply_mode(student, {{"kd_loss", json{{"teacher", teacher_dir}}.dump()}}, nullptr, std::nullopt,
                         context);
    const std::shared_ptr<DistillationHolder> holder = find_distillation(*student);
    ASSERT_TRUE(holder);
    zoo::Gpt teacher_reference(small_gpt(solo(), kTeacherSeed));
    expect_slices_of(*holder->teacher, *teacher_reference, "the teacher restored on two ranks");
    const at::Tensor out = distillation_forward(*student, zoo::forward, tokens(2));
    const at::Tensor loss = compute_kd_loss(*student, lm_loss(out, tokens(2)));
    zoo::Gpt student_reference(small_gpt(solo(), kStudentSeed));
    EXPECT_TRUE(at::allclose(out, student_reference->forward(tokens(2)), kTolerance, kTolerance));
    EXPECT_TRUE(std::isfinite(loss.item<double>()));
  }
  world()->barrier();
}

TEST_F(DistillMpiTest, ATeacherDirectorySomeRanksLackFailsEveryRankAtOnce) {
  // A plain name is a checkpoint where it is a directory: seen by rank 0 alone (each rank
  // in its own working directory), every rank refuses it, rather than rank 0 restoring
  // while the others build a model-like of that name.
  const fs::path before = fs::current_path();
  const fs::path here = fs::path(base) / ("rank" + std::to_string(rank));
  fs::create_directories(rank == 0 ? here / "teacher" : here);
  fs::current_path(here);
  const std::string error = error_of<ApplyModeError>([&] {
    apply_mode(ModelLike("gpt", gpt_args(kStudentSeed)).build(), {{"kd_loss", json{{"teacher", "teacher"}}.dump()}});
  });
  fs::current_path(before);
  EXPECT_EQ(error, "kd_loss: the teacher checkpoint teacher is a directory on some of the 4 ranks but not on all "
                   "(rank " + std::to_string(rank) + ": " + (rank == 0 ? "present" : "missing") +
                       "); every rank must see it");
  world()->barrier();
}

}  // namespace
}  // namespace distill
}  // namespace mto
