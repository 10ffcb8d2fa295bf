// Fuzzes the reading of model.safetensors.index.json, the weight map that other tools follow
// to the shards. At start the target saves a real checkpoint (a fashion_mlp with 4 hidden
// units); each input replaces its index, and a manifest that records the input's size and
// checksum replaces its MANIFEST, so that read_checkpoint_contents gets past the checksums
// to the index itself. Every input must read or give a CheckpointError naming the index.
#include <cstddef>
#include <cstdint>
#include <string>

#include "opt/checkpoint.h"
#include "opt/model_like.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/checksum.h"
#include "serialization/deterministic.h"
#include "serialization/manifest_file.h"
#include "tests/fuzz/fuzz_input.h"
#include "tests/fuzz/manifest_frame.h"

namespace {

constexpr char kCheckpoint[] = "ckpt";

// The manifest of the checkpoint saved at start.
mto::Manifest& manifest() {
  static mto::Manifest* manifest = new mto::Manifest;
  return *manifest;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const std::string dir = mto::path_in(mto::fuzz::input_dir(), kCheckpoint);
  mto::ModulePtr model = mto::ModelLike("fashion_mlp", {{"hidden", {4}}}).build();
  mto::save(*model, dir);
  manifest() = mto::read_manifest(dir);
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
