// Fuzzes the reading of model.safetensors.index.json, the weight map that other tools follow
// to the shards. At start the target lays out, with the format layer alone, the metadata of a
// checkpoint of a fashion_mlp with 4 hidden units saved by 2 ranks (state, index, manifest;
// the index reader never opens the shards); each input replaces its index, and a manifest
// that records the input's size and checksum replaces its MANIFEST, so that
// read_checkpoint_contents gets past the checksums to the index itself. Every input must read
// or give a CheckpointError naming the index.
#include <cstddef>
#include <cstdint>
#include <string>

#include <filesystem>
#include <map>
#include <vector>

#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/checkpoint_plan.h"
#include "serialization/checkpoint_reader.h"
#include "serialization/checksum.h"
#include "serialization/deterministic.h"
#include "serialization/manifest_file.h"
#include "serialization/modelopt_state.pb.h"
#include "serialization/safetensors.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/manifest_frame.h"

namespace {

constexpr char kCheckpoint[] = "ckpt";

// The manifest of the checkpoint laid out at start.
mto::Manifest& manifest() {
  static mto::Manifest* manifest = new mto::Manifest;
  return *manifest;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const std::string dir = mto::path_in(mto::fuzz::input_dir(), kCheckpoint);
  std::filesystem::create_directories(dir);
  // fashion_mlp, hidden [4], held whole by 2 ranks.
  std::vector<mto::HeldSlice> tensors;
  for (const auto& [name, shape] : std::vector<std::pair<std::string, std::vector<int64_t>>>{
           {"fc1.weight", {4, 784}}, {"fc1.bias", {4}}, {"fc2.weight", {10, 4}}, {"fc2.bias", {10}}}) {
    tensors.push_back({name, "F32", shape, mto::whole_rect(mto::matrix_shape(shape))});
  }
  const mto::CheckpointPlan plan = mto::plan_checkpoint({tensors, tensors});
  mto::Manifest& m = manifest();
  m.set_format_version(mto::kCheckpointFormatVersion);
  m.set_world_size(2);
  m.set_tensor_parallel_size(1);
  for (const auto& shard : plan.shards) *m.add_shards() = shard;
  std::map<std::string, std::string> weight_map;
  uint64_t total = 0;
  for (mto::TensorRecord record : plan.tensors) {
    *record.add_blocks() =
        mto::block_of(mto::whole_rect(mto::matrix_shape({record.shape().begin(), record.shape().end()})), 0);
    weight_map[record.name()] = plan.shards[record.shard()].file();
    total += record.length();
    *m.add_tensors() = std::move(record);
  }
  *m.mutable_modelopt_state() = mto::write_recorded_file(dir, mto::kStateFileName, mto::serialize_deterministic(mto::ModeloptState()));
  *m.mutable_index() = mto::write_recorded_file(dir, mto::kIndexFileName, mto::encode_safetensors_index(weight_map, total));
  mto::write_manifest(dir, m);
  mto::read_checkpoint_contents(dir);  // the layout is a valid checkpoint's
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  mto::Manifest& m = manifest();
  const std::string index_name = mto::path_in(kCheckpoint, m.index().file());
  const std::string index_path = mto::fuzz::write_input(index_name, data, size);
  m.mutable_index()->set_size(size);
  m.mutable_index()->set_xxh3(mto::xxh3_64(data, size));
  const std::string framed = mto::fuzz::frame_manifest(mto::serialize_deterministic(m));
  mto::fuzz::write_input(mto::path_in(kCheckpoint, mto::kManifestFileName),
                         reinterpret_cast<const uint8_t*>(framed.data()), framed.size());
  try {
    mto::read_checkpoint_contents(mto::path_in(mto::fuzz::input_dir(), kCheckpoint));
  } catch (const mto::CheckpointError& e) {
    mto::fuzz::check_names(e, index_path);
  }
  return 0;
}
