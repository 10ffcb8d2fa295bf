// save and restore of a checkpoint directory in one process: the layout other tools read,
// atomic replacement, and a clear error naming the file for every kind of damage.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <google/protobuf/struct.pb.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "opt/checkpoint.h"
#include "opt/conversion.h"
#include "opt/registry.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/checkpoint_reader.h"
#include "serialization/file.h"
#include "serialization/manifest_file.h"
#include "serialization/safetensors.h"
#include "tests/opt/testing/test_modes.h"
#include "tests/testing/temp_dir.h"

namespace mto {
namespace {

namespace fs = std::filesystem;
using google::protobuf::Struct;

// A test-only mode that gives the model a [16, 16] uint8 buffer "fp8_codes" (every byte value
// once) and reports one tensor as stored in another dtype: config {"key": state-dict key,
// default "fp8_codes"; "dtype": default "F8_E4M3"}. Applied twice, it keeps the one buffer.
class TestFp8CodesMode : public ModeDescriptor {
 public:
  std::string name() const override { return "test_fp8_codes"; }
  MessagePtr config_class() const override { return std::make_unique<Struct>(); }
  ConvertResult convert(ModulePtr model, const Message&, const RuntimeContext&) const override {
    codes_of(*model).copy_(at::arange(256).to(at::kByte).reshape({16, 16}));
    return {model, nullptr};
  }
  ModulePtr restore(ModulePtr model, const Message&, const Message&) const override {
    codes_of(*model);
    return model;
  }
  std::map<std::string, std::string> stored_dtypes(const Message& config, const Message&) const override {
    const auto& fields = message_as<Struct>(config, name()).fields();
    auto field = [&](const std::string& key, const std::string& fallback) {
      auto it = fields.find(key);
      return it == fields.end() ? fallback : it->second.string_value();
    };
    return {{field("key", "fp8_codes"), field("dtype", "F8_E4M3")}};
  }

 private:
  // The buffer fp8_codes of `model`, registered as zeros if it has none.
  static at::Tensor codes_of(torch::nn::Module& model) {
    if (const at::Tensor* codes = model.named_buffers(/*recurse=*/false).find("fp8_codes")) return *codes;
    return model.register_buffer("fp8_codes", at::zeros({16, 16}, at::kByte));
  }
};

MTO_REGISTER_MODE(test_checkpoint, TestFp8CodesMode);

// The config of test_fp8_codes.
Struct fp8_config(const std::string& key, const std::string& dtype) {
  Struct config;
  (*config.mutable_fields())["key"].set_string_value(key);
  (*config.mutable_fields())["dtype"].set_string_value(dtype);
  return config;
}

// The record of tensor `name` in `manifest`.
const TensorRecord& record_of(const Manifest& manifest, const std::string& name) {
  for (const auto& t : manifest.tensors()) {
    if (t.name() == name) return t;
  }
  throw std::runtime_error("no record of " + name);
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    parent_ = test::make_temp_dir();
    dir_ = parent_ + "/ckpt";
    model_ = apply_mode(ModelLike("test_mlp", {{"seed", 1}}).build(), {"test_sparse", "test_quantize"});
    x_ = test::test_input(model_);
    expected_ = test::test_forward(model_, x_);
  }

  // Restores dir_ and returns the error message, or "no error".
  std::string restore_error() {
    try {
      restore(ModelLike("test_mlp"), dir_);
    } catch (const CheckpointError& e) {
      return e.what();
    }
    return "no error";
  }

  // Flips one byte of `file` at `offset` from the end (or from the start when >= 0).
  void flip_byte(const std::string& file, int64_t offset) {
    std::fstream f(dir_ + "/" + file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(offset >= 0 ? std::streamoff(offset) : std::streamoff(offset), offset >= 0 ? std::ios::beg : std::ios::end);
    const std::streampos at = f.tellg();
    char c;
    f.read(&c, 1);
    c ^= 0x5a;
    f.seekp(at);
    f.write(&c, 1);
  }

  std::vector<std::string> hidden_entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(parent_)) {
      if (e.path().filename().string()[0] == '.') out.push_back(e.path().filename());
    }
    return out;
  }

  std::string parent_;
  std::string dir_;
  ModulePtr model_;
  at::Tensor x_;
  at::Tensor expected_;
};

TEST_F(CheckpointTest, LayoutIsReadableByOtherTools) {
  save(*model_, dir_);
  std::set<std::string> files;
  for (const auto& e : fs::directory_iterator(dir_)) files.insert(e.path().filename());
  EXPECT_EQ(files, (std::set<std::string>{"MANIFEST", "model-00001-of-00001.safetensors",
                                          "model.safetensors.index.json", "modelopt_state.pb"}));

  auto index = nlohmann::json::parse(read_file(dir_ + "/model.safetensors.index.json", 1 << 20));
  const auto& weight_map = index["weight_map"];
  EXPECT_EQ(weight_map["fc1.weight"], "model-00001-of-00001.safetensors");
  EXPECT_EQ(weight_map["fc2.weight_sparsifier._weight_mask"], "model-00001-of-00001.safetensors");
  EXPECT_EQ(weight_map["fc3.weight_quantizer._amax"], "model-00001-of-00001.safetensors");
  EXPECT_EQ(weight_map.size(), 12u);

  SafetensorsHeader header = read_safetensors_header(dir_ + "/model-00001-of-00001.safetensors");
  EXPECT_EQ(header.metadata.at("writer_rank"), "0");
  EXPECT_EQ(header.metadata.at("format"), "pt");
  EXPECT_EQ(header.data_begin % kDataAlignment, 0u);
  uint64_t total = 0;
  for (const auto& e : header.entries) total += e.end - e.begin;
  EXPECT_EQ(index["metadata"]["total_size"], total);

  Manifest manifest = read_manifest(dir_);
  EXPECT_EQ(manifest.tensors_size(), 12);
  EXPECT_EQ(manifest.shards(0).writer_rank(), 0);
  EXPECT_EQ(manifest.world_size(), 1);
  EXPECT_TRUE(hidden_entries().empty());
}

TEST_F(CheckpointTest, RestoredWeightsAreBitIdentical) {
  save(*model_, dir_);
  ModulePtr restored = restore(ModelLike("test_mlp", {{"seed", 2}}), dir_);
  auto original = model_->named_buffers();
  auto params = model_->named_parameters();
  for (const auto& p : restored->named_parameters()) EXPECT_TRUE(p.value().equal(params[p.key()])) << p.key();
  for (const auto& b : restored->named_buffers()) EXPECT_TRUE(b.value().equal(original[b.key()])) << b.key();
  EXPECT_TRUE(test::test_forward(restored, x_).equal(expected_));
}

// Past 8 MiB a restore reads its bands on read_threads() threads (2 on a 2-core machine).
TEST_F(CheckpointTest, ALargeModelReadOnThreadsRestoresBitForBit) {
  const ModulePtr large = ModelLike("test_mlp", {{"seed", 1}, {"hidden", 1536}}).build();
  uint64_t bytes = 0;
  for (const auto& p : large->named_parameters()) bytes += p.value().nbytes();
  ASSERT_GT(bytes, kParallelReadBytes);
  save(*large, dir_);
  const ModulePtr restored = restore(ModelLike("test_mlp", {{"seed", 2}, {"hidden", 1536}}), dir_);
  auto params = large->named_parameters();
  for (const auto& p : restored->named_parameters()) EXPECT_TRUE(p.value().equal(params[p.key()])) << p.key();
  verify_checkpoint(dir_);
}

TEST_F(CheckpointTest, SavingOverACheckpointReplacesItAtomically) {
  save(*model_, dir_);
  ModulePtr other = apply_mode(ModelLike("test_mlp", {{"seed", 5}}).build(), "test_kd");
  save(*other, dir_);
  ModulePtr restored = restore(dir_);
  EXPECT_TRUE(test::test_forward(restored, x_).equal(test::test_forward(other, x_)));
  EXPECT_EQ(modelopt_state(*restored).modelopt_state_dict(0).mode(), "test_kd");
  EXPECT_TRUE(hidden_entries().empty());
}

TEST_F(CheckpointTest, RefusesToReplaceADirectoryThatIsNotACheckpoint) {
  fs::create_directories(dir_);
  std::ofstream(dir_ + "/notes.txt") << "precious";
  try {
    save(*model_, dir_);
    FAIL() << "no error";
  } catch (const CheckpointError& e) {
    EXPECT_EQ(std::string(e.what()),
              "refusing to replace " + dir_ + ": it exists and is not an mto checkpoint (no MANIFEST)");
  }
  EXPECT_EQ(read_file(dir_ + "/notes.txt", 100), "precious");
  EXPECT_TRUE(hidden_entries().empty());
}

TEST_F(CheckpointTest, FailedSaveLeavesThePreviousCheckpointIntact) {
  save(*model_, dir_);
  auto broken = apply_mode(ModelLike("test_mlp", {{"seed", 5}}).build(), "test_kd");
  broken->register_buffer("phase", at::zeros({2}, at::kComplexFloat));
  try {
    save(*broken, dir_);
    FAIL() << "no error";
  } catch (const CheckpointError& e) {
    EXPECT_STREQ(e.what(), "tensor phase has dtype ComplexFloat, which safetensors cannot store");
  }
  EXPECT_TRUE(hidden_entries().empty());
  EXPECT_TRUE(test::test_forward(restore(dir_), x_).equal(expected_));
}

TEST_F(CheckpointTest, AnInterruptedSaveLeavesThePreviousCheckpointIntact) {
  save(*model_, dir_);
  // What a crash in the middle of a save leaves: a partial staging directory.
  fs::create_directories(parent_ + "/.ckpt.mto-staging-abc123");
  std::ofstream(parent_ + "/.ckpt.mto-staging-abc123/model-00001-of-00001.safetensors") << "partial";
  EXPECT_TRUE(test::test_forward(restore(dir_), x_).equal(expected_));
  save(*model_, dir_);
  EXPECT_TRUE(test::test_forward(restore(dir_), x_).equal(expected_));
}

TEST_F(CheckpointTest, MissingDirectoryAndMissingManifestAreReported) {
  EXPECT_EQ(restore_error(), "cannot open checkpoint directory " + dir_ + ": No such file or directory");
  save(*model_, dir_);
  fs::remove(dir_ + "/MANIFEST");
  EXPECT_EQ(restore_error(),
            dir_ + " is not a complete mto checkpoint: " + dir_ + "/MANIFEST is missing");
}

TEST_F(CheckpointTest, InterruptedFallbackCommitNamesThePreviousCheckpoint) {
  save(*model_, dir_);
  const std::string aside = parent_ + "/.ckpt.mto-previous-XYZ123";
  fs::rename(dir_, aside);
  const std::string error = restore_error();
  EXPECT_NE(error.find("a save into " + dir_ + " was interrupted, and the previous checkpoint is at " + aside),
            std::string::npos) << error;
}

TEST_F(CheckpointTest, TruncatedStateFileIsReported) {
  save(*model_, dir_);
  const std::string path = dir_ + "/modelopt_state.pb";
  const uint64_t size = fs::file_size(path);
  fs::resize_file(path, size - 10);
  EXPECT_EQ(restore_error(), "file " + path + " is " + std::to_string(size - 10) +
                                 " bytes but the manifest says " + std::to_string(size) + " (truncated)");
}

TEST_F(CheckpointTest, CorruptStateFileIsReported) {
  save(*model_, dir_);
  flip_byte("modelopt_state.pb", 20);
  EXPECT_EQ(restore_error(), "checksum mismatch in " + dir_ + "/modelopt_state.pb (corrupt file)");
}

TEST_F(CheckpointTest, CorruptWeightIsReportedWithItsTensor) {
  save(*model_, dir_);
  flip_byte("model-00001-of-00001.safetensors", -3);
  const std::string error = restore_error();
  EXPECT_EQ(error.rfind("checksum mismatch in " + dir_ + "/model-00001-of-00001.safetensors: tensor ", 0), 0u)
      << error;
  EXPECT_NE(error.find("does not match the manifest (corrupt file)"), std::string::npos);
}

TEST_F(CheckpointTest, CorruptSafetensorsHeaderIsReported) {
  save(*model_, dir_);
  flip_byte("model-00001-of-00001.safetensors", 12);
  EXPECT_EQ(restore_error(), "checksum mismatch in " + dir_ +
                                 "/model-00001-of-00001.safetensors: the safetensors header does "
                                 "not match the manifest");
}

TEST_F(CheckpointTest, TruncatedAndMissingShardsAreReported) {
  save(*model_, dir_);
  const std::string shard = dir_ + "/model-00001-of-00001.safetensors";
  const uint64_t size = fs::file_size(shard);
  fs::resize_file(shard, size / 2);
  EXPECT_EQ(restore_error(), "file " + shard + " is " + std::to_string(size / 2) +
                                 " bytes but the manifest says " + std::to_string(size) + " (truncated)");
  fs::remove(shard);
  EXPECT_EQ(restore_error(), "cannot open " + shard + ": No such file or directory");
}

TEST_F(CheckpointTest, ManifestNamingAFileOutsideTheDirectoryIsRejected) {
  save(*model_, dir_);
  Manifest manifest = read_manifest(dir_);
  manifest.mutable_shards(0)->set_file("../../etc/passwd");
  write_manifest(dir_, manifest);
  EXPECT_EQ(restore_error(), "manifest " + dir_ +
                                 "/MANIFEST names the file \"../../etc/passwd\", which is not a "
                                 "plain file name inside the checkpoint directory");
}

TEST_F(CheckpointTest, TruncatedManifestIsReported) {
  save(*model_, dir_);
  const std::string path = dir_ + "/MANIFEST";
  fs::resize_file(path, fs::file_size(path) - 1);
  const std::string error = restore_error();
  EXPECT_EQ(error.rfind("invalid manifest " + path + ": it announces ", 0), 0u) << error;
  EXPECT_NE(error.find("(truncated?)"), std::string::npos);
}

TEST_F(CheckpointTest, StateDictMismatchNamesTheTensor) {
  save(*model_, dir_);
  try {
    restore(ModelLike("test_mlp", {{"hidden", 8}}), dir_);
    FAIL() << "no error";
  } catch (const CheckpointError& e) {
    EXPECT_STREQ(e.what(), "tensor fc1.weight: the checkpoint holds F32 [16, 8] but the model has F32 [8, 8]");
  }
  ModulePtr plain = apply_mode(ModelLike("test_mlp").build(), "test_kd");
  save(*plain, dir_);
  ModulePtr extra = ModelLike("test_mlp").build();
  extra->register_buffer("step", at::zeros({1}));
  try {
    restore(extra, dir_);
    FAIL() << "no error";
  } catch (const CheckpointError& e) {
    EXPECT_EQ(std::string(e.what()), "checkpoint " + dir_ + " has no tensor step, which the model has");
  }
}

// ---- A dtype that a mode chooses (ModeDescriptor::stored_dtypes). ----

TEST_F(CheckpointTest, AModesStoredDtypeIsRecordedAndRestoresTheSameBytes) {
  ModulePtr model = apply_mode(ModelLike("test_mlp", {{"seed", 1}}).build(), "test_fp8_codes");
  save(*model, dir_);
  const std::string shard = dir_ + "/model-00001-of-00001.safetensors";
  for (const auto& e : read_safetensors_header(shard).entries) {
    EXPECT_EQ(e.dtype, e.name == "fp8_codes" ? "F8_E4M3" : "F32") << e.name;
  }
  const Manifest manifest = read_manifest(dir_);
  EXPECT_EQ(record_of(manifest, "fp8_codes").dtype(), "F8_E4M3");
  EXPECT_EQ(record_of(manifest, "fp8_codes").length(), 256u);
  EXPECT_EQ(record_of(manifest, "fc1.weight").dtype(), "F32");
  verify_checkpoint(dir_);

  const at::Tensor codes = model->named_buffers()["fp8_codes"];
  for (ModulePtr restored : {restore(ModelLike("test_mlp", {{"seed", 2}}), dir_), restore(dir_)}) {
    const at::Tensor back = restored->named_buffers()["fp8_codes"];
    EXPECT_EQ(back.scalar_type(), at::kByte);
    EXPECT_TRUE(back.equal(codes));
    EXPECT_TRUE(test::test_forward(restored, x_).equal(test::test_forward(model, x_)));
  }
}

TEST_F(CheckpointTest, AStoredDtypeTheModelCannotHoldFailsTheSaveNamingTheModeAndTensor) {
  save(*model_, dir_);
  auto save_error = [&](const ModeList& modes) {
    ModulePtr model = apply_mode(ModelLike("test_mlp", {{"seed", 5}}).build(), modes);
    try {
      save(*model, dir_);
    } catch (const CheckpointError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(save_error({{"test_fp8_codes", fp8_config("fc1.weight", "F8_E4M3")}}),
            "mode test_fp8_codes stores tensor fc1.weight as F8_E4M3, which a Float tensor cannot hold");
  EXPECT_EQ(save_error({{"test_fp8_codes", fp8_config("fc9.weight", "F8_E4M3")}}),
            "mode test_fp8_codes stores tensor fc9.weight as F8_E4M3, but the model has no tensor fc9.weight");
  EXPECT_EQ(save_error({{"test_fp8_codes", fp8_config("fp8_codes", "F8_E4M3")},
                        {"test_fp8_codes", fp8_config("fp8_codes", "F8_E5M2")}}),
            "mode test_fp8_codes stores tensor fp8_codes as F8_E5M2, but mode test_fp8_codes stores it as F8_E4M3");
  EXPECT_TRUE(hidden_entries().empty());
  EXPECT_TRUE(test::test_forward(restore(dir_), x_).equal(expected_));
}

TEST_F(CheckpointTest, ARecordOfAnotherDtypeThanTheModeStoresIsNamed) {
  ModulePtr model = apply_mode(ModelLike("test_mlp").build(), {{"test_fp8_codes", fp8_config("fp8_codes", "F8_E5M2")}});
  save(*model, dir_);
  EXPECT_EQ(record_of(read_manifest(dir_), "fp8_codes").dtype(), "F8_E5M2");
  for (const std::string other : {"U8", "F8_E4M3"}) {
    Manifest manifest = read_manifest(dir_);
    for (auto& t : *manifest.mutable_tensors()) {
      if (t.name() == "fp8_codes") t.set_dtype(other);
    }
    write_manifest(dir_, manifest);
    EXPECT_EQ(restore_error(), "tensor fp8_codes: the checkpoint holds " + other +
                                   " [16, 16] but the model has F8_E5M2 [16, 16]");
  }

  // A uint8 buffer no mode speaks for is U8, and an F8 record does not fill it.
  ModulePtr plain = apply_mode(ModelLike("test_mlp").build(), "test_kd");
  plain->register_buffer("fp8_codes", at::zeros({16, 16}, at::kByte));
  save(*plain, dir_);
  EXPECT_EQ(record_of(read_manifest(dir_), "fp8_codes").dtype(), "U8");
  Manifest manifest = read_manifest(dir_);
  for (auto& t : *manifest.mutable_tensors()) {
    if (t.name() == "fp8_codes") t.set_dtype("F8_E4M3");
  }
  write_manifest(dir_, manifest);
  ModulePtr target = ModelLike("test_mlp").build();
  target->register_buffer("fp8_codes", at::zeros({16, 16}, at::kByte));
  try {
    restore(target, dir_);
    FAIL() << "no error";
  } catch (const CheckpointError& e) {
    EXPECT_STREQ(e.what(), "tensor fp8_codes: the checkpoint holds F8_E4M3 [16, 16] but the model has U8 [16, 16]");
  }
}

// ---- Extra files. ----

const std::map<std::string, std::string> kExtraFiles = {
    {"config.json", "{\"architectures\": [\"TestMlp\"]}\n"},
    {"hf_quant_config.json", "{\"quantization\": {\"quant_algo\": \"FP8\"}}\n"},
};

TEST_F(CheckpointTest, ExtraFilesAreWrittenRecordedAndVerified) {
  SaveOptions options;
  options.extra_files = kExtraFiles;
  save(*model_, dir_, options);
  std::set<std::string> files;
  for (const auto& e : fs::directory_iterator(dir_)) files.insert(e.path().filename());
  EXPECT_EQ(files, (std::set<std::string>{"MANIFEST", "config.json", "hf_quant_config.json",
                                          "model-00001-of-00001.safetensors", "model.safetensors.index.json",
                                          "modelopt_state.pb"}));
  for (const auto& [name, contents] : kExtraFiles) EXPECT_EQ(read_file(dir_ + "/" + name, 1 << 20), contents);

  const Manifest manifest = read_manifest(dir_);
  ASSERT_EQ(manifest.extra_files_size(), 2);
  EXPECT_EQ(manifest.extra_files(0).file(), "config.json");
  EXPECT_EQ(manifest.extra_files(0).size(), kExtraFiles.at("config.json").size());
  EXPECT_EQ(manifest.extra_files(1).file(), "hf_quant_config.json");
  EXPECT_EQ(manifest.extra_files(1).size(), kExtraFiles.at("hf_quant_config.json").size());
  EXPECT_NE(manifest.extra_files(0).xxh3(), manifest.extra_files(1).xxh3());
  verify_checkpoint(dir_);
  EXPECT_TRUE(test::test_forward(restore(dir_), x_).equal(expected_));

  // A save without extra files leaves none behind.
  save(*model_, dir_);
  EXPECT_FALSE(fs::exists(dir_ + "/config.json"));
  EXPECT_EQ(read_manifest(dir_).extra_files_size(), 0);
}

TEST_F(CheckpointTest, ADamagedExtraFileFailsVerifyAndRestoreNamingIt) {
  SaveOptions options;
  options.extra_files = kExtraFiles;
  save(*model_, dir_, options);
  const std::string path = dir_ + "/config.json";
  auto verify_error = [&] {
    try {
      verify_checkpoint(dir_);
    } catch (const CheckpointError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };

  flip_byte("config.json", 3);
  EXPECT_EQ(verify_error(), "checksum mismatch in " + path + " (corrupt file)");
  EXPECT_EQ(restore_error(), "checksum mismatch in " + path + " (corrupt file)");
  flip_byte("config.json", 3);
  EXPECT_EQ(verify_error(), "no error");

  const uint64_t size = fs::file_size(path);
  fs::resize_file(path, size - 1);
  const std::string truncated = "file " + path + " is " + std::to_string(size - 1) +
                                " bytes but the manifest says " + std::to_string(size) + " (truncated)";
  EXPECT_EQ(verify_error(), truncated);
  EXPECT_EQ(restore_error(), truncated);

  fs::remove(path);
  EXPECT_EQ(verify_error(), "cannot open " + path + ": No such file or directory");
  EXPECT_EQ(restore_error(), "cannot open " + path + ": No such file or directory");
}

TEST_F(CheckpointTest, ExtraFilesWithReservedOrNonPlainNamesAreRefusedBeforeWriting) {
  save(*model_, dir_);
  ModulePtr other = apply_mode(ModelLike("test_mlp", {{"seed", 5}}).build(), "test_kd");
  for (const std::string name : {"MANIFEST", "modelopt_state.pb", "model.safetensors.index.json",
                                 "model-00001-of-00001.safetensors", "model-00002-of-00002.safetensors",
                                 "sub/config.json", "/etc/config.json", ".config.json", "..", ""}) {
    SaveOptions options;
    options.extra_files = {{"config.json", "{}"}, {name, "{}"}};
    try {
      save(*other, dir_, options);
      ADD_FAILURE() << "no error for \"" << name << "\"";
    } catch (const CheckpointError& e) {
      const std::string message = e.what();
      EXPECT_EQ(message.rfind("save: options.extra_files names ", 0), 0u) << message;
      EXPECT_NE(message.find("\"" + name + "\""), std::string::npos) << message;
    }
  }
  SaveOptions options;
  options.extra_files = {{"MANIFEST", "{}"}};
  try {
    save(*other, dir_, options);
    FAIL() << "no error";
  } catch (const CheckpointError& e) {
    EXPECT_STREQ(e.what(), "save: options.extra_files names the extra file \"MANIFEST\", which is a name of the "
                           "checkpoint's own files");
  }
  options.extra_files = {{"sub/config.json", "{}"}};
  try {
    save(*other, dir_, options);
    FAIL() << "no error";
  } catch (const CheckpointError& e) {
    EXPECT_STREQ(e.what(), "save: options.extra_files names the file \"sub/config.json\", which is not a plain "
                           "file name inside the checkpoint directory");
  }

  EXPECT_TRUE(hidden_entries().empty());
  EXPECT_FALSE(fs::exists(dir_ + "/config.json"));
  EXPECT_EQ(read_manifest(dir_).extra_files_size(), 0);
  ModulePtr restored = restore(dir_);
  EXPECT_TRUE(test::test_forward(restored, x_).equal(expected_));
  EXPECT_EQ(modelopt_state(*restored).modelopt_state_dict(0).mode(), "test_sparse");
}

}  // namespace
}  // namespace mto
