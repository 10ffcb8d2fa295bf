// load_safetensors in one process: plain safetensors sets (one file, or shards with an
// index) written here by a small writer that knows nothing of mto, loaded into the zoo GPT;
// F16 and BF16 sources, renamed prefixes, and a CheckpointError naming the culprit, with
// the model untouched, for every kind of mismatch or damage.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "opt/load_safetensors.h"
#include "opt/state_dict.h"
#include "serialization/checkpoint_error.h"
#include "tests/opt/testing/plain_safetensors.h"
#include "tests/testing/temp_dir.h"
#include "tools/zoo/gpt.h"

namespace mto {
namespace {

namespace fs = std::filesystem;
using namespace test;  // the independent writer

// ---- The model. ----

zoo::GptOptions small_gpt(int64_t seed) {
  return zoo::GptOptions().vocab(32).width(16).depth(2).heads(4).context(8).seed(seed);
}

// Copies of the state dict of `model`, in order.
std::vector<Named> state_of(const torch::nn::Module& model) {
  std::vector<Named> out;
  for (const auto& t : model_state_dict(model)) out.push_back({t.name, t.tensor.detach().clone()});
  return out;
}

uint64_t data_bytes(const std::vector<Named>& tensors) {
  uint64_t total = 0;
  for (const auto& t : tensors) total += static_cast<uint64_t>(t.tensor.numel()) * t.tensor.element_size();
  return total;
}

std::vector<Named> cast(const std::vector<Named>& tensors, at::ScalarType type) {
  std::vector<Named> out;
  for (const auto& t : tensors) out.push_back({t.name, t.tensor.to(type)});
  return out;
}

// Whether `name` occurs in `message` as a whole name (not as the tail of a longer dotted name).
bool names(const std::string& message, const std::string& name) {
  for (size_t pos = message.find(name); pos != std::string::npos; pos = message.find(name, pos + 1)) {
    const char before = pos == 0 ? ' ' : message[pos - 1];
    const size_t after_pos = pos + name.size();
    const char after = after_pos < message.size() ? message[after_pos] : ' ';
    auto part_of_name = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.'; };
    if (!part_of_name(before) && !(std::isalnum(static_cast<unsigned char>(after)) || after == '_')) return true;
  }
  return false;
}

// Whether `message` shows `shape` as a list ("[64, 17]", "[64,17]", "(64, 17)").
bool shows_shape(const std::string& message, const std::vector<int64_t>& shape) {
  std::string squeezed;
  for (char c : message) {
    if (c == ' ') continue;
    squeezed += c == '(' ? '[' : c == ')' ? ']' : c;
  }
  std::string want = "[";
  for (size_t i = 0; i < shape.size(); ++i) want += (i ? "," : "") + std::to_string(shape[i]);
  want += "]";
  return squeezed.find(want) != std::string::npos;
}

class LoadSafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::make_temp_dir();
    source_ = zoo::Gpt(small_gpt(3));
    whole_ = state_of(*source_);
    target_ = zoo::Gpt(small_gpt(9));
    before_ = state_of(*target_);
    ASSERT_EQ(whole_.size(), before_.size());
    // Sanity: the two seeds differ, so a load that does nothing is caught.
    ASSERT_FALSE(at::equal(at_name(whole_, "tok_emb.weight"), at_name(before_, "tok_emb.weight")));
  }

  static at::Tensor at_name(const std::vector<Named>& tensors, const std::string& name) {
    for (const auto& t : tensors) {
      if (t.name == name) return t.tensor;
    }
    ADD_FAILURE() << "no tensor " << name;
    return at::Tensor();
  }

  // whole_ without `name`.
  std::vector<Named> without(const std::string& name) const {
    std::vector<Named> out;
    for (const auto& t : whole_) {
      if (t.name != name) out.push_back(t);
    }
    return out;
  }

  // Expects every tensor of target_ to equal `expected` (by name), exactly.
  void expect_target_equals(const std::vector<Named>& expected, const std::string& where) {
    const auto local = model_state_dict(*target_);
    ASSERT_EQ(local.size(), expected.size()) << where;
    for (size_t i = 0; i < local.size(); ++i) {
      const at::Tensor want = at_name(expected, local[i].name);
      ASSERT_TRUE(want.defined()) << where;
      ASSERT_EQ(local[i].tensor.scalar_type(), at::kFloat) << where << ": " << local[i].name;
      ASSERT_EQ(local[i].tensor.sizes(), want.sizes()) << where << ": " << local[i].name;
      EXPECT_TRUE(at::equal(local[i].tensor, want)) << where << ": " << local[i].name;
    }
  }

  // Loads `dir` into target_, expects a CheckpointError whose message contains each of
  // `needles`, and target_ unchanged; returns the message.
  std::string expect_error(const std::string& dir, const std::vector<std::string>& needles,
                           const LoadSafetensorsOptions& options = {}) {
    std::string message = "no error";
    try {
      load_safetensors(*target_, dir, options);
    } catch (const CheckpointError& e) {
      message = e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not a CheckpointError: " << e.what();
      message = e.what();
    }
    EXPECT_NE(message, "no error");
    for (const auto& needle : needles) {
      EXPECT_NE(message.find(needle), std::string::npos) << "\"" << needle << "\" not in: " << message;
    }
    expect_target_equals(before_, "after the error \"" + message + "\"");
    return message;
  }

  std::string dir_;
  zoo::Gpt source_{nullptr};
  zoo::Gpt target_{nullptr};
  std::vector<Named> whole_;   // seed 3
  std::vector<Named> before_;  // seed 9
};

// ---- Loading. ----

TEST_F(LoadSafetensorsTest, OneFileLoadsEveryTensorExactly) {
  const uint64_t total = write_safetensors(dir_ + "/model.safetensors", whole_);
  const LoadSafetensorsReport report = load_safetensors(*target_, dir_);
  expect_target_equals(whole_, "one file");
  EXPECT_EQ(report.loaded, static_cast<int64_t>(whole_.size()));
  EXPECT_TRUE(report.missing.empty());
  EXPECT_EQ(report.bytes_read, total);
  EXPECT_EQ(total, data_bytes(whole_));
}

TEST_F(LoadSafetensorsTest, ThreeShardsWithAnIndexLoadEveryTensorExactly) {
  const uint64_t total = write_sharded(dir_, whole_, 3);
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(fs::exists(dir_ + "/" + shard_name(i, 3)));
  const LoadSafetensorsReport report = load_safetensors(*target_, dir_);
  expect_target_equals(whole_, "three shards");
  EXPECT_EQ(report.loaded, static_cast<int64_t>(whole_.size()));
  EXPECT_TRUE(report.missing.empty());
  EXPECT_EQ(report.bytes_read, total);
  EXPECT_EQ(total, data_bytes(whole_));
}

TEST_F(LoadSafetensorsTest, F16AndBF16SourcesAreCastToF32Exactly) {
  for (at::ScalarType type : {at::kHalf, at::kBFloat16}) {
    const std::string dir = dir_ + "/" + dtype_name(type);
    fs::create_directories(dir);
    const std::vector<Named> narrow = cast(whole_, type);
    const uint64_t total = write_safetensors(dir + "/model.safetensors", narrow);
    EXPECT_EQ(total, data_bytes(whole_) / 2);
    const LoadSafetensorsReport report = load_safetensors(*target_, dir);
    expect_target_equals(cast(narrow, at::kFloat), dtype_name(type));
    EXPECT_EQ(report.loaded, static_cast<int64_t>(whole_.size())) << dtype_name(type);
    EXPECT_EQ(report.bytes_read, total) << dtype_name(type);
    // The cast loses bits: the result is not the F32 source.
    EXPECT_FALSE(at::equal(at_name(whole_, "tok_emb.weight"), model_state_dict(*target_)[0].tensor))
        << dtype_name(type);
  }
}

TEST_F(LoadSafetensorsTest, ShardedBF16SourceLoads) {
  const std::vector<Named> narrow = cast(whole_, at::kBFloat16);
  const uint64_t total = write_sharded(dir_, narrow, 3);
  const LoadSafetensorsReport report = load_safetensors(*target_, dir_);
  expect_target_equals(cast(narrow, at::kFloat), "sharded BF16");
  EXPECT_EQ(report.bytes_read, total);
}

TEST_F(LoadSafetensorsTest, F64SourcesAreCastAndAValueBeyondFloatRangeIsNamed) {
  const std::vector<Named> wide = cast(whole_, at::kDouble);
  write_safetensors(dir_ + "/model.safetensors", wide);
  load_safetensors(*target_, dir_);
  expect_target_equals(whole_, "F64");

  // A finite F64 value that float32 cannot hold would become an infinity.
  std::vector<Named> huge = cast(before_, at::kDouble);
  huge[0].tensor = huge[0].tensor.clone();
  huge[0].tensor.view(-1)[5] = 1e300;
  const std::string dir = dir_ + "/huge";
  fs::create_directories(dir);
  write_safetensors(dir + "/model.safetensors", huge);
  std::string message = "no error";
  try {
    load_safetensors(*target_, dir);
  } catch (const CheckpointError& e) {
    message = e.what();
  }
  EXPECT_EQ(message, "cannot load " + huge[0].name + " of " + dir + "/model.safetensors into " + huge[0].name +
                         ": its F64 value 1e+300 (flat index 5) lies beyond the range of Float");
  // Infinities and NaNs of the source stay what they are: they were never finite.
  huge[0].tensor.view(-1)[5] = std::numeric_limits<double>::infinity();
  write_safetensors(dir + "/model.safetensors", huge);
  load_safetensors(*target_, dir);
  EXPECT_TRUE(std::isinf(model_state_dict(*target_)[0].tensor.view(-1)[5].item<float>()));
}

// ---- Names. ----

TEST_F(LoadSafetensorsTest, RenamePrefixesMapSourceNames) {
  std::vector<Named> prefixed;
  for (const auto& t : whole_) prefixed.push_back({"transformer." + t.name, t.tensor});
  write_safetensors(dir_ + "/model.safetensors", prefixed);

  // Without the mapping every model tensor is missing and every source tensor unexpected.
  const std::string message = expect_error(dir_, {});
  EXPECT_TRUE(names(message, "tok_emb.weight")) << "the missing tensor is not named: " << message;
  EXPECT_TRUE(names(message, "lm_head.weight")) << "the missing tensor is not named: " << message;
  EXPECT_NE(message.find("transformer.tok_emb.weight"), std::string::npos) << message;
  EXPECT_NE(message.find("transformer.lm_head.weight"), std::string::npos) << message;

  LoadSafetensorsOptions options;
  options.rename_prefixes = {{"transformer.", ""}};
  const LoadSafetensorsReport report = load_safetensors(*target_, dir_, options);
  expect_target_equals(whole_, "renamed");
  EXPECT_EQ(report.loaded, static_cast<int64_t>(whole_.size()));
  EXPECT_TRUE(report.missing.empty());
}

TEST_F(LoadSafetensorsTest, ARenameThatMatchesNoNameIsReported) {
  write_safetensors(dir_ + "/model.safetensors", whole_);
  LoadSafetensorsOptions options;
  options.rename_prefixes = {{"transfomer.", ""}, {"blocks.", "blocks."}};
  const LoadSafetensorsReport report = load_safetensors(*target_, dir_, options);
  expect_target_equals(whole_, "one rename unused");
  EXPECT_EQ(report.unused_renames, (std::vector<std::pair<std::string, std::string>>{{"transfomer.", ""}}));
}

TEST_F(LoadSafetensorsTest, ASetWithNoTensorsIsRefusedEvenWithAllowMissing) {
  write_safetensors(dir_ + "/model.safetensors", {});
  LoadSafetensorsOptions options;
  options.allow_missing = true;
  expect_error(dir_, {"it holds no tensors"}, options);
}

TEST_F(LoadSafetensorsTest, AMissingDirectoryOrAFileIsNamedAsSuch) {
  expect_error(dir_ + "/nowhere", {dir_ + "/nowhere", "does not exist"});
  write_text(dir_ + "/plain", "x");
  expect_error(dir_ + "/plain", {dir_ + "/plain", "is not a directory"});
}

TEST_F(LoadSafetensorsTest, AQuantizedExportIsNamedAsOne) {
  std::vector<Named> codes = whole_;
  codes[2] = {codes[2].name, at::zeros(codes[2].tensor.sizes(), at::kInt)};
  write_safetensors(dir_ + "/model.safetensors", codes);
  write_text(dir_ + "/hf_quant_config.json", R"({"quantization": {"quant_algo": "W8A8_SQ_PER_CHANNEL"}})");
  expect_error(dir_, {codes[2].name + " is I32", "holds hf_quant_config.json: it is a quantized export"});
}

TEST_F(LoadSafetensorsTest, RenamePrefixesApplyInOrder) {
  // "model.h.0.attn.qkv.weight" -> "h.0.attn.qkv.weight" -> "blocks.0.attn.qkv.weight".
  std::vector<Named> renamed;
  for (const auto& t : whole_) {
    std::string name = t.name;
    if (name.rfind("blocks.", 0) == 0) name = "h." + name.substr(7);
    renamed.push_back({"model." + name, t.tensor});
  }
  write_safetensors(dir_ + "/model.safetensors", renamed);
  LoadSafetensorsOptions options;
  options.rename_prefixes = {{"model.", ""}, {"h.", "blocks."}};
  const LoadSafetensorsReport report = load_safetensors(*target_, dir_, options);
  expect_target_equals(whole_, "renamed in order");
  EXPECT_EQ(report.loaded, static_cast<int64_t>(whole_.size()));
}

// ---- Mismatches between the set and the model. ----

TEST_F(LoadSafetensorsTest, AMissingTensorIsNamedOrLeftAloneWithAllowMissing) {
  const std::string gone = "blocks.1.fc2.bias";
  const uint64_t total = write_safetensors(dir_ + "/model.safetensors", without(gone));
  const std::string message = expect_error(dir_, {gone});

  LoadSafetensorsOptions options;
  options.allow_missing = true;
  const LoadSafetensorsReport report = load_safetensors(*target_, dir_, options);
  EXPECT_EQ(report.loaded, static_cast<int64_t>(whole_.size()) - 1);
  EXPECT_EQ(report.missing, std::vector<std::string>{gone});
  EXPECT_EQ(report.bytes_read, total);
  std::vector<Named> expected = without(gone);
  expected.push_back({gone, at_name(before_, gone)});  // keeps its seed-9 value
  expect_target_equals(expected, "allow_missing");
}

TEST_F(LoadSafetensorsTest, AnUnexpectedTensorIsNamed) {
  std::vector<Named> extra = whole_;
  extra.push_back({"blocks.2.fc1.weight", at::ones({4, 4})});
  write_safetensors(dir_ + "/model.safetensors", extra);
  expect_error(dir_, {"blocks.2.fc1.weight"});
  // allow_missing does not excuse an unexpected tensor.
  LoadSafetensorsOptions options;
  options.allow_missing = true;
  expect_error(dir_, {"blocks.2.fc1.weight"}, options);
}

TEST_F(LoadSafetensorsTest, AShapeMismatchNamesTheTensorAndBothShapes) {
  std::vector<Named> tensors = whole_;
  for (auto& t : tensors) {
    if (t.name == "blocks.0.fc1.weight") t.tensor = at::zeros({64, 17});
  }
  write_safetensors(dir_ + "/model.safetensors", tensors);
  const std::string message = expect_error(dir_, {"blocks.0.fc1.weight"});
  EXPECT_TRUE(shows_shape(message, {64, 17})) << message;
  EXPECT_TRUE(shows_shape(message, {64, 16})) << message;
}

TEST_F(LoadSafetensorsTest, ASameSizeShapeMismatchIsCaught) {
  // The transposed shape holds as many bytes: only the shape check can catch it.
  std::vector<Named> tensors = whole_;
  for (auto& t : tensors) {
    if (t.name == "blocks.1.fc2.weight") t.tensor = t.tensor.t().contiguous();
  }
  write_safetensors(dir_ + "/model.safetensors", tensors);
  const std::string message = expect_error(dir_, {"blocks.1.fc2.weight"});
  EXPECT_TRUE(shows_shape(message, {64, 16})) << message;
  EXPECT_TRUE(shows_shape(message, {16, 64})) << message;
}

TEST_F(LoadSafetensorsTest, AnIntegerSourceForAFloatTensorIsRefused) {
  std::vector<Named> tensors = whole_;
  for (auto& t : tensors) {
    if (t.name == "ln_f.weight") t.tensor = at::ones({16}, at::kInt);
  }
  write_safetensors(dir_ + "/model.safetensors", tensors);
  expect_error(dir_, {"ln_f.weight"});
}

TEST_F(LoadSafetensorsTest, AnFp8SourceForAFloatTensorIsRefused) {
  // ln_f.weight as 16 FP8 E4M3 codes: 16 bytes, which a float tensor must not take for numbers.
  std::vector<Named> tensors = whole_;
  for (auto& t : tensors) {
    if (t.name == "ln_f.weight") t.tensor = at::zeros({4}, at::kInt);
  }
  Encoded e = encode(tensors);
  e.header["ln_f.weight"]["dtype"] = "F8_E4M3";
  e.header["ln_f.weight"]["shape"] = nlohmann::ordered_json::array({16});
  write_encoded(dir_ + "/model.safetensors", e);
  const std::string message = expect_error(dir_, {"F8_E4M3", "model.safetensors"});
  EXPECT_TRUE(names(message, "ln_f.weight")) << message;
}

TEST(LoadSafetensorsFp8Test, Fp8CodesLoadIntoAUint8Tensor) {
  const std::string dir = test::make_temp_dir();
  const at::Tensor codes = at::arange(256).to(at::kByte);
  write_raw(dir + "/model.safetensors",
            R"({"codes": {"dtype": "F8_E5M2", "shape": [256], "data_offsets": [0, 256]}})",
            std::string(static_cast<const char*>(codes.data_ptr()), 256));
  torch::nn::Module model;
  const at::Tensor target = model.register_buffer("codes", at::zeros({256}, at::kByte));
  EXPECT_EQ(load_safetensors(model, dir).loaded, 1);
  EXPECT_TRUE(target.equal(codes));
}

// ---- Damaged headers. ----

TEST_F(LoadSafetensorsTest, OverlappingDataOffsetsAreRefused) {
  Encoded e = encode(whole_);
  // Move the second tensor onto the first: same size, so only the overlap is wrong.
  const std::string second = whole_[1].name;
  const uint64_t size = e.header[second]["data_offsets"][1].get<uint64_t>() -
                        e.header[second]["data_offsets"][0].get<uint64_t>();
  e.header[second]["data_offsets"] = nlohmann::ordered_json::array({uint64_t{0}, size});
  write_encoded(dir_ + "/model.safetensors", e);
  const std::string message = expect_error(dir_, {"model.safetensors"});
  EXPECT_TRUE(message.find(second) != std::string::npos || message.find(whole_[0].name) != std::string::npos ||
              message.find(whole_[2].name) != std::string::npos)
      << "no tensor named: " << message;
}

TEST_F(LoadSafetensorsTest, DataOffsetsThatEndBeforeTheyBeginAreNamed) {
  Encoded e = encode(whole_);
  const std::string second = whole_[1].name;
  auto& offsets = e.header[second]["data_offsets"];
  offsets = nlohmann::ordered_json::array({offsets[1], offsets[0]});
  write_encoded(dir_ + "/model.safetensors", e);
  expect_error(dir_, {"model.safetensors", second, "end before they begin"});
}

TEST_F(LoadSafetensorsTest, ATruncatedFileIsRefused) {
  write_safetensors(dir_ + "/model.safetensors", whole_);
  const uint64_t size = fs::file_size(dir_ + "/model.safetensors");
  fs::resize_file(dir_ + "/model.safetensors", size - 10);
  // The last tensor's data_offsets reach beyond the end of the file.
  expect_error(dir_, {"model.safetensors", whole_.back().name});
}

TEST_F(LoadSafetensorsTest, AnUnknownDtypeIsRefused) {
  Encoded e = encode(whole_);
  e.header["pos_emb.weight"]["dtype"] = "F33";
  write_encoded(dir_ + "/model.safetensors", e);
  expect_error(dir_, {"model.safetensors", "F33"});
}

TEST_F(LoadSafetensorsTest, AHeaderThatIsNotJsonIsRefused) {
  write_raw(dir_ + "/model.safetensors", "{\"a\": ", std::string(8, '\0'));
  expect_error(dir_, {"model.safetensors"});
}

TEST_F(LoadSafetensorsTest, AHeaderLongerThanTheFileIsRefused) {
  std::ofstream out(dir_ + "/model.safetensors", std::ios::binary);
  const char prefix[8] = {'\x00', '\x10', 0, 0, 0, 0, 0, 0};  // 4096 bytes of header
  out.write(prefix, 8);
  out << "{}";
  out.close();
  expect_error(dir_, {"model.safetensors"});
}

// ---- Sets of several files. ----

TEST_F(LoadSafetensorsTest, TheSameTensorInTwoShardsNamesBothFiles) {
  write_sharded(dir_, whole_, 3);
  // Add the first shard's first tensor to the third shard as well.
  const std::string twice = whole_[0].name;
  std::vector<Named> third;
  const size_t per = (whole_.size() + 2) / 3;
  for (size_t j = 2 * per; j < whole_.size(); ++j) third.push_back(whole_[j]);
  third.push_back(whole_[0]);
  write_safetensors(dir_ + "/" + shard_name(3, 3), third);
  expect_error(dir_, {twice, shard_name(1, 3), shard_name(3, 3)});
}

TEST_F(LoadSafetensorsTest, AnIndexEntryForATensorNoFileHoldsIsRefused) {
  write_sharded(dir_, whole_, 3);
  std::map<std::string, std::string> weight_map;
  const size_t per = (whole_.size() + 2) / 3;
  for (size_t j = 0; j < whole_.size(); ++j) weight_map[whole_[j].name] = shard_name(1 + j / per, 3);
  weight_map["blocks.0.attn.ghost"] = shard_name(2, 3);
  write_index(dir_, weight_map, data_bytes(whole_));
  expect_error(dir_, {"blocks.0.attn.ghost"});
}

TEST_F(LoadSafetensorsTest, AnIndexThatMapsATensorToTheWrongFileIsRefused) {
  write_sharded(dir_, whole_, 3);
  std::map<std::string, std::string> weight_map;
  const size_t per = (whole_.size() + 2) / 3;
  for (size_t j = 0; j < whole_.size(); ++j) weight_map[whole_[j].name] = shard_name(1 + j / per, 3);
  const std::string moved = whole_[0].name;  // in shard 1
  weight_map[moved] = shard_name(2, 3);
  write_index(dir_, weight_map, data_bytes(whole_));
  expect_error(dir_, {moved});
}

TEST_F(LoadSafetensorsTest, AnIndexNamingAMissingFileIsRefused) {
  write_sharded(dir_, whole_, 3);
  fs::remove(dir_ + "/" + shard_name(2, 3));
  expect_error(dir_, {shard_name(2, 3)});
}

TEST_F(LoadSafetensorsTest, AnIndexNamingAFileOutsideTheDirectoryIsRefused) {
  write_sharded(dir_, whole_, 3);
  std::map<std::string, std::string> weight_map;
  const size_t per = (whole_.size() + 2) / 3;
  for (size_t j = 0; j < whole_.size(); ++j) weight_map[whole_[j].name] = shard_name(1 + j / per, 3);
  // A copy of shard 1 one level up, which the index reaches with "..".
  fs::copy_file(dir_ + "/" + shard_name(1, 3), dir_ + "/../outside.safetensors",
                fs::copy_options::overwrite_existing);
  for (size_t j = 0; j < per; ++j) weight_map[whole_[j].name] = "../outside.safetensors";
  fs::remove(dir_ + "/" + shard_name(1, 3));
  write_index(dir_, weight_map, data_bytes(whole_));
  expect_error(dir_, {"outside.safetensors"});
  fs::remove(dir_ + "/../outside.safetensors");
}

TEST_F(LoadSafetensorsTest, AnIndexThatIsNotJsonIsRefused) {
  write_sharded(dir_, whole_, 3);
  write_text(dir_ + "/model.safetensors.index.json", "{\"weight_map\": {");
  expect_error(dir_, {"model.safetensors.index.json"});
}

TEST_F(LoadSafetensorsTest, AnIndexThatListsNoTensorIsRefused) {
  // Not an empty model: an index that lists nothing is a broken download or a wrong file.
  write_sharded(dir_, whole_, 3);
  write_text(dir_ + "/model.safetensors.index.json", "{\"metadata\": {}, \"weight_map\": {}}");
  expect_error(dir_, {"model.safetensors.index.json", "empty"});
}

TEST_F(LoadSafetensorsTest, ADamagedShardFailsAfterTheOthersWereReadableAndChangesNothing) {
  write_sharded(dir_, whole_, 3);
  // The last shard is the one damaged: the first two are fine.
  const std::string last = dir_ + "/" + shard_name(3, 3);
  fs::resize_file(last, fs::file_size(last) - 4);
  expect_error(dir_, {shard_name(3, 3)});
}

TEST_F(LoadSafetensorsTest, AnEmptyDirectoryIsRefused) {
  expect_error(dir_, {dir_});
}

TEST_F(LoadSafetensorsTest, AMissingDirectoryIsRefused) {
  expect_error(dir_ + "/nowhere", {"nowhere"});
}

TEST_F(LoadSafetensorsTest, TwoFilesWithoutAnIndexAreRefused) {
  std::vector<Named> a(whole_.begin(), whole_.begin() + 10);
  std::vector<Named> b(whole_.begin() + 10, whole_.end());
  write_safetensors(dir_ + "/a.safetensors", a);
  write_safetensors(dir_ + "/b.safetensors", b);
  expect_error(dir_, {dir_});
}

}  // namespace
}  // namespace mto
