// "export_quantize" of the zoo GPT split over real mpirun ranks (run with 4): a deployed
// checkpoint saved at tp = 4 holds the same tensors, byte for byte, and the same
// hf_quant_config.json as the one saved on one process, for int8, FP8 and int4 blocks; and
// it restores on another mesh to the outputs of the fake-quantized model.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "distributed/mesh.h"
#include "distributed/world.h"
#include "modes/quantization/deploy.h"
#include "modes/quantization/quantize.h"
#include "opt/checkpoint.h"
#include "opt/conversion.h"
#include "serialization/checkpoint_reader.h"
#include "tests/testing/model_checks.h"
#include "tools/zoo/gpt.h"

namespace mto {
namespace quantization {
namespace {

namespace fs = std::filesystem;
using test::same_bytes;

// Outputs of different tp sizes differ by the order of their sums only.
constexpr double kTolerance = 1e-5;

zoo::GptOptions gpt_options(int64_t width, std::shared_ptr<Mesh> mesh, int64_t seed = 3) {
  return zoo::GptOptions().vocab(32).width(width).depth(1).heads(4).context(8).seed(seed).mesh(std::move(mesh));
}

at::Tensor tokens(int64_t shift = 0) {
  return at::arange(16, at::kLong).reshape({2, 8}).mul(7).add(shift).remainder(32);
}

ForwardLoop loop() {
  return [](torch::nn::Module& model) {
    for (int b = 0; b < 3; ++b) dynamic_cast<zoo::GptImpl&>(model).forward(tokens(5 * b + 1));
  };
}

at::Tensor forward(const ModulePtr& model) {
  torch::NoGradGuard no_grad;
  return std::dynamic_pointer_cast<zoo::GptImpl>(model)->forward(tokens());
}

// A GPT on `mesh` quantized with `preset`, each data-parallel replica calibrating on all
// the data (the amax are the same).
ModulePtr quantized_gpt(const std::string& preset, int64_t width, const std::shared_ptr<Mesh>& mesh) {
  zoo::Gpt gpt(gpt_options(width, mesh));
  return quantize(gpt.ptr(), preset, loop(), mesh->dp());
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Every tensor of the checkpoint `dir` as its manifest records it (dtype, global shape) with
// its bytes, read from its shard.
struct StoredTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

std::map<std::string, StoredTensor> stored_tensors(const std::string& dir) {
  const CheckpointContents contents = read_checkpoint_contents(dir);
  std::map<std::string, StoredTensor> out;
  for (const TensorRecord& record : contents.manifest.tensors()) {
    StoredTensor& t = out[record.name()];
    t.dtype = record.dtype();
    t.shape.assign(record.shape().begin(), record.shape().end());
    std::ifstream in(dir + "/" + contents.manifest.shards(static_cast<int>(record.shard())).file(), std::ios::binary);
    in.seekg(static_cast<std::streamoff>(record.offset()));
    t.bytes.resize(record.length());
    in.read(t.bytes.data(), static_cast<std::streamsize>(record.length()));
    EXPECT_TRUE(in) << dir << ": " << record.name();
  }
  return out;
}

// The float32 values of a stored 0-d float tensor.
float scalar_of(const StoredTensor& t) {
  float value = 0;
  EXPECT_EQ(t.bytes.size(), sizeof(value));
  std::memcpy(&value, t.bytes.data(), sizeof(value));
  return value;
}

// How closely two checkpoints of the same model must agree.
enum class Agreement {
  kExact,             // every tensor, byte for byte
  kInputScalesClose,  // the same but the input scales, equal up to kTolerance: their amax
                      // come from activations downstream of the tensor-parallel sums,
                      // which differ in the order of their additions
  kLayout,            // the same names, dtypes and shapes (SmoothQuant and AWQ smooth the
                      // weights by scales computed from those activations)
};

// Expects the checkpoints `a` and `b` to hold the same tensors as `agreement` says, and the
// same hf_quant_config.json and config.json.
void expect_same_checkpoint(const std::string& a, const std::string& b, Agreement agreement,
                            const std::string& where) {
  const auto left = stored_tensors(a);
  const auto right = stored_tensors(b);
  ASSERT_EQ(left.size(), right.size()) << where;
  for (const auto& [name, t] : left) {
    ASSERT_TRUE(right.count(name)) << where << ": " << name;
    const StoredTensor& u = right.at(name);
    EXPECT_EQ(t.dtype, u.dtype) << where << ": " << name;
    EXPECT_EQ(t.shape, u.shape) << where << ": " << name;
    const bool input_scale = name.size() > 12 && name.compare(name.size() - 12, 12, ".input_scale") == 0;
    if (agreement == Agreement::kLayout) continue;
    if (input_scale && agreement == Agreement::kInputScalesClose) {
      EXPECT_NEAR(scalar_of(t), scalar_of(u), kTolerance * std::abs(scalar_of(u))) << where << ": " << name;
    } else {
      EXPECT_TRUE(t.bytes == u.bytes) << where << ": " << name;
    }
  }
  for (const char* file : {"hf_quant_config.json", "config.json"}) {
    EXPECT_EQ(read_text(a + "/" + file), read_text(b + "/" + file)) << where << ": " << file;
  }
}

struct Case {
  std::string preset;
  int64_t width;
  // How the exports of models calibrated at tp 4 and at tp 1 agree.
  Agreement independent;
};

class ExportQuantizeMpiTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    at::set_num_threads(1);
    ASSERT_EQ(world()->world_size(), 4) << "run with 4 ranks";
    std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    for (char& c : name) {
      if (c == '/') c = '_';
    }
    base = std::string(std::getenv("TEST_TMPDIR")) + "/" + name;
    if (rank == 0) fs::create_directories(base);
    world()->barrier();
  }

  const int rank = world()->rank();
  std::string base;
};

TEST_P(ExportQuantizeMpiTest, Tp4ExportEqualsOneProcessExportAndRestoresOnAnotherMesh) {
  const std::string preset = GetParam().preset;
  const int64_t width = GetParam().width;
  const nlohmann::json config = {{"model_type", "gpt"}, {"hidden_size", width}};

  // At tp = 4, calibrated there: save the fake-quantized model, then the deployed one.
  const auto tp4 = Mesh::create(world(), 4);
  ModulePtr split = quantized_gpt(preset, width, tp4);
  const at::Tensor fake_out = forward(split);
  save(*split, base + "/fake_tp4");
  ModulePtr exported = save_deployed(split, base + "/deployed_tp4", {}, config);
  EXPECT_TRUE(same_bytes(forward(exported), fake_out)) << "the export changed the outputs at tp 4";

  // On one process (rank 0 alone): the same, at tp = 1.
  const auto alone = world()->split(rank == 0 ? 0 : -1, rank);
  if (alone) {
    const auto tp1 = Mesh::create(alone, 1);
    ModulePtr whole = quantized_gpt(preset, width, tp1);
    const at::Tensor whole_out = forward(whole);
    EXPECT_TRUE(at::allclose(whole_out, fake_out, kTolerance, kTolerance));
    SaveOptions options;
    options.communicator = alone;
    save(*whole, base + "/fake_tp1", options);
    ModulePtr whole_exported = save_deployed(whole, base + "/deployed_tp1", options, config);
    EXPECT_TRUE(same_bytes(forward(whole_exported), whole_out)) << "the export changed the outputs at tp 1";
  }
  world()->barrier();

  // The fake-quantized model calibrated on one process, restored at tp = 4 and exported
  // there: the same calibration, so every byte must match the one-process export.
  zoo::Gpt target(gpt_options(width, tp4, /*seed=*/9));
  ModulePtr from_tp1 = restore(target.ptr(), base + "/fake_tp1");
  save_deployed(from_tp1, base + "/deployed_tp4_from_tp1", {}, config);
  world()->barrier();

  if (rank == 0) {
    const std::string where = preset + " at tp 4 against tp 1";
    expect_same_checkpoint(base + "/deployed_tp4_from_tp1", base + "/deployed_tp1", Agreement::kExact,
                           where + " (calibrated at tp 1)");
    // Calibrated at tp 4 itself: with max calibration, weights and their scales are the
    // same bytes.
    expect_same_checkpoint(base + "/deployed_tp4", base + "/deployed_tp1", GetParam().independent, where);
    const auto files = deployment_files(*exported, config);
    EXPECT_EQ(read_text(base + "/deployed_tp4/hf_quant_config.json"), files.at("hf_quant_config.json"));
    EXPECT_EQ(read_checkpoint_contents(base + "/deployed_tp4").manifest.tensor_parallel_size(), 4);
    EXPECT_EQ(read_checkpoint_contents(base + "/deployed_tp1").manifest.tensor_parallel_size(), 1);
    EXPECT_NO_THROW(verify_checkpoint(base + "/deployed_tp4"));
  }
  world()->barrier();

  // The tp = 4 export restored on (1, 4) computes exactly what the model did; on (2, 2) exactly
  // what the fake-quantized checkpoint restored there computes, and the tp = 4 outputs up to
  // the order of the sums.
  {
    zoo::Gpt same_mesh(gpt_options(width, tp4, /*seed=*/9));
    EXPECT_TRUE(same_bytes(forward(restore(same_mesh.ptr(), base + "/deployed_tp4")), fake_out));
  }
  const auto tp2 = Mesh::create(world(), 2);
  zoo::Gpt deployed_model(gpt_options(width, tp2, /*seed=*/9));
  ModulePtr deployed = restore(deployed_model.ptr(), base + "/deployed_tp4");
  zoo::Gpt fake_model(gpt_options(width, tp2, /*seed=*/9));
  ModulePtr fake = restore(fake_model.ptr(), base + "/fake_tp4");
  const at::Tensor deployed_out = forward(deployed);
  EXPECT_TRUE(same_bytes(deployed_out, forward(fake))) << preset << " at (2, 2)";
  EXPECT_TRUE(at::allclose(deployed_out, fake_out, kTolerance, kTolerance))
      << preset << " at (2, 2): " << (deployed_out - fake_out).abs().max().item<float>();
  world()->barrier();
}

INSTANTIATE_TEST_SUITE_P(Presets, ExportQuantizeMpiTest,
                         ::testing::Values(Case{"int8", 128, Agreement::kInputScalesClose},
                                           Case{"fp8", 128, Agreement::kInputScalesClose},
                                           // Blocks of 128 fit every rank's columns of proj and
                                           // fc2 at tp 4 (512 / 4).
                                           Case{"int4_blockwise", 512, Agreement::kExact},
                                           // Pre-quantization scales split with the row-parallel
                                           // layers' input features.
                                           Case{"int8_smoothquant", 128, Agreement::kLayout},
                                           Case{"int4_awq", 512, Agreement::kLayout}),
                         [](const auto& info) { return info.param.preset; });

}  // namespace
}  // namespace quantization
}  // namespace mto
