// newer_state DIR: rewrites the checkpoint in DIR as a newer mto version might have written
// it: its first mode's config gains field 99, which this version's config type does not
// declare, and its second mode is renamed to one this version does not have. The state file
// and the MANIFEST are recorded again, so that only the state's contents are new.
#include <iostream>
#include <string>

#include "serialization/checkpoint_layout.h"
#include "serialization/deterministic.h"
#include "serialization/file.h"
#include "serialization/manifest_file.h"
#include "serialization/modelopt_state.pb.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: newer_state DIR\n";
    return 2;
  }
  const std::string dir = argv[1];
  mto::Manifest manifest = mto::read_manifest(dir);
  mto::ModeloptState state;
  const std::string path = dir + "/" + mto::kStateFileName;
  if (!state.ParseFromString(mto::read_file(path, manifest.modelopt_state().size())) ||
      state.modelopt_state_dict_size() < 2) {
    std::cerr << "newer_state: " << path << " holds no state of two modes\n";
    return 1;
  }
  // Field 99, wire type 0 (varint), value 1: the tag is 99 << 3 = 792, two varint bytes.
  state.mutable_modelopt_state_dict(0)->mutable_config()->mutable_value()->append("\x98\x06\x01");
  state.mutable_modelopt_state_dict(1)->set_mode("mode_of_a_newer_version");
  *manifest.mutable_modelopt_state() =
      mto::write_recorded_file(dir, mto::kStateFileName, mto::serialize_deterministic(state));
  mto::write_manifest(dir, manifest);
  return 0;
}
