// The manifest: framed with its length and checksum, and validated before any use.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/file.h"
#include "serialization/manifest_file.h"
#include "tests/testing/temp_dir.h"

namespace mto {
namespace {

// A version-2 record of a whole tensor of `rows` rows: one block, not split.
void whole(TensorRecord* t, uint64_t rows) {
  t->set_split_parts(1);
  Block* b = t->add_blocks();
  b->set_row_end(rows);
  b->set_col_end(1);
}

// One shard whose data runs from byte 16 to 40: tensors a (F32 [2], 8 bytes) and b
// (I64 [2], 16 bytes).
Manifest valid_manifest() {
  Manifest m;
  m.set_format_version(kCheckpointFormatVersion);
  m.set_world_size(1);
  m.mutable_modelopt_state()->set_file("modelopt_state.pb");
  m.mutable_index()->set_file("model.safetensors.index.json");
  ShardRecord* shard = m.add_shards();
  shard->set_file("model-00001-of-00001.safetensors");
  shard->set_data_begin(16);
  shard->set_size(40);
  TensorRecord* a = m.add_tensors();
  a->set_name("a");
  a->set_dtype("F32");
  a->add_shape(2);
  a->set_offset(16);
  a->set_length(8);
  whole(a, 2);
  TensorRecord* b = m.add_tensors();
  b->set_name("b");
  b->set_dtype("I64");
  b->add_shape(2);
  b->set_offset(24);
  b->set_length(16);
  whole(b, 2);
  return m;
}

std::string validation_error(const Manifest& m) {
  try {
    validate_manifest(m, "M");
  } catch (const CheckpointError& e) {
    return e.what();
  }
  return "no error";
}

TEST(ManifestFileTest, VersionOneHasNoBlocksAndVersionTwoBlocksTileEachTensor) {
  Manifest v1 = valid_manifest();
  v1.set_format_version(1);
  for (auto& t : *v1.mutable_tensors()) {
    t.clear_blocks();
    t.clear_split_parts();
  }
  EXPECT_EQ(validation_error(v1), "no error");
  v1.mutable_tensors(0)->add_blocks();
  EXPECT_EQ(validation_error(v1), "invalid manifest M: tensor a has checksum blocks, which version 1 does not know");

  Manifest m = valid_manifest();
  m.mutable_tensors(1)->mutable_blocks(0)->set_row_end(1);
  EXPECT_EQ(validation_error(m), "invalid manifest M: the checksum blocks of tensor b: the columns [0, 1) end at row 1 "
                                 "(the tensor is 2 x 1)");
  m = valid_manifest();
  m.mutable_tensors(0)->set_split_dim(2);
  EXPECT_EQ(validation_error(m), "invalid manifest M: tensor a has an invalid split (1 parts along dimension 2)");
}

TEST(ManifestFileTest, RoundTripsThroughTheFramedFile) {
  const std::string dir = test::make_temp_dir();
  Manifest m = valid_manifest();
  write_manifest(dir, m);
  EXPECT_EQ(read_file(dir + "/MANIFEST", 1 << 20).substr(0, 8), "MTOMANI1");
  EXPECT_EQ(read_manifest(dir).SerializeAsString(), m.SerializeAsString());
}

TEST(ManifestFileTest, DamagedFramingIsDetected) {
  const std::string dir = test::make_temp_dir();
  write_manifest(dir, valid_manifest());
  const std::string path = dir + "/MANIFEST";
  std::string bytes = read_file(path, 1 << 20);

  auto error_for = [&](const std::string& contents) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << contents;
    try {
      read_manifest(dir);
    } catch (const CheckpointError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::string flipped = bytes;
  flipped[bytes.size() - 2] ^= 1;
  EXPECT_EQ(error_for(flipped), "invalid manifest " + path + ": checksum mismatch (corrupt file)");
  EXPECT_EQ(error_for("XXXXXXXX" + bytes.substr(8)),
            "invalid manifest " + path + ": the file does not start with an mto manifest header");
  EXPECT_EQ(error_for(bytes.substr(0, 10)),
            "invalid manifest " + path + ": the file does not start with an mto manifest header");
  const std::string appended = error_for(bytes + "x");
  EXPECT_NE(appended.find("but holds"), std::string::npos) << appended;
}

TEST(ManifestFileTest, ValidationRejectsInconsistentManifests) {
  EXPECT_EQ(validation_error(valid_manifest()), "no error");
  const std::string prefix = "invalid manifest M: ";

  Manifest m = valid_manifest();
  m.set_format_version(7);
  EXPECT_EQ(validation_error(m), prefix + "format version 7 is not supported (this mto reads versions 1 to 2)");

  m = valid_manifest();
  m.mutable_shards(0)->set_file("/etc/passwd");
  EXPECT_EQ(validation_error(m), "manifest M names the file \"/etc/passwd\", which is not a plain file "
                                 "name inside the checkpoint directory");
  m.mutable_shards(0)->set_file("..");
  EXPECT_NE(validation_error(m).find("not a plain file name"), std::string::npos);

  m = valid_manifest();
  m.mutable_tensors(1)->set_name("a");
  EXPECT_EQ(validation_error(m), prefix + "tensor a is listed twice");

  // A header larger than any reader accepts is refused before a reader allocates it.
  m = valid_manifest();
  m.mutable_shards(0)->set_size(kMaxMetadataBytes + 100);
  m.mutable_shards(0)->set_data_begin(kMaxMetadataBytes + 16);
  EXPECT_NE(validation_error(m).find("has its data at"), std::string::npos);

  m = valid_manifest();
  m.mutable_tensors(1)->set_shard(3);
  EXPECT_EQ(validation_error(m), prefix + "tensor b names shard 3 of 1");

  m = valid_manifest();
  m.mutable_tensors(1)->set_length(12);
  EXPECT_EQ(validation_error(m), prefix + "tensor b is 12 bytes but its dtype and shape need 16");

  m = valid_manifest();
  m.mutable_tensors(1)->set_offset(28);  // a hole after a
  EXPECT_EQ(validation_error(m), prefix + "tensor b at bytes [28, +16) of model-00001-of-00001.safetensors "
                                          "does not follow the previous data at 24 within the 40-byte file");

  m = valid_manifest();
  m.mutable_shards(0)->set_size(48);  // unaccounted bytes at the end
  EXPECT_EQ(validation_error(m), prefix + "the tensors of model-00001-of-00001.safetensors end at byte 40 "
                                          "but the file is 48 bytes");

  m = valid_manifest();
  *m.add_shards() = m.shards(0);
  EXPECT_EQ(validation_error(m), prefix + "the file model-00001-of-00001.safetensors is listed twice");
}

TEST(ManifestFileTest, Fp8TensorsAreOneByteAnElement) {
  Manifest m = valid_manifest();
  m.mutable_tensors(0)->set_dtype("F8_E4M3");
  m.mutable_tensors(0)->set_shape(0, 8);
  m.mutable_tensors(0)->mutable_blocks(0)->set_row_end(8);
  EXPECT_EQ(validation_error(m), "no error");
  m.mutable_tensors(0)->set_dtype("F8_E5M2");
  EXPECT_EQ(validation_error(m), "no error");
  m.mutable_tensors(0)->set_shape(0, 2);
  m.mutable_tensors(0)->mutable_blocks(0)->set_row_end(2);
  EXPECT_EQ(validation_error(m), "invalid manifest M: tensor a is 8 bytes but its dtype and shape need 2");
}

TEST(ManifestFileTest, ExtraFilesHavePlainVisibleNamesOfTheirOwn) {
  auto with_extra = [](const std::vector<std::string>& names) {
    Manifest m = valid_manifest();
    for (const auto& name : names) {
      FileRecord* record = m.add_extra_files();
      record->set_file(name);
      record->set_size(2);
    }
    return m;
  };
  EXPECT_EQ(validation_error(with_extra({"config.json", "hf_quant_config.json"})), "no error");
  EXPECT_EQ(validation_error(with_extra({"config.json", "config.json"})),
            "invalid manifest M: the file config.json is listed twice");
  EXPECT_EQ(validation_error(with_extra({"../config.json"})),
            "manifest M names the file \"../config.json\", which is not a plain file name inside the "
            "checkpoint directory");
  EXPECT_EQ(validation_error(with_extra({""})),
            "manifest M names the file \"\", which is not a plain file name inside the checkpoint directory");
  EXPECT_EQ(validation_error(with_extra({".config.json"})),
            "manifest M names the extra file \".config.json\", which would be hidden (its name starts with '.')");
  for (const std::string own : {"MANIFEST", "modelopt_state.pb", "model.safetensors.index.json",
                                "model-00001-of-00001.safetensors", "model-00002-of-00004.safetensors"}) {
    EXPECT_EQ(validation_error(with_extra({own})),
              "manifest M names the extra file \"" + own + "\", which is a name of the checkpoint's own files");
  }
  // Names that only look like a shard's are the caller's.
  EXPECT_EQ(validation_error(with_extra({"model-1-of-x.safetensors", "model.safetensors", "model-of-.safetensors"})),
            "no error");

  Manifest m = with_extra({"config.json"});
  m.mutable_extra_files(0)->set_size(kMaxMetadataBytes + 1);
  EXPECT_EQ(validation_error(m), "manifest M gives the extra file \"config.json\" " +
                                     std::to_string(kMaxMetadataBytes + 1) + " bytes, more than the " +
                                     std::to_string(kMaxMetadataBytes) + " a reader accepts");
}

}  // namespace
}  // namespace mto
