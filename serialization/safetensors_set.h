#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "serialization/safetensors.h"

namespace mto {

// Where one tensor of a plain safetensors set lies.
struct SafetensorsLocation {
  // The file's path and the tensor's header entry (offsets relative to the data section).
  std::string file;
  SafetensorsEntry entry;
  // Offset of the file's data section: add it to entry.begin for the absolute offset.
  uint64_t data_begin = 0;
};

// The tensors of a plain safetensors set, as Python's safetensors and Hugging Face's
// save_pretrained write them: one `*.safetensors` file, or shards listed by
// `model.safetensors.index.json` ({"weight_map": {tensor: file}}), with no MANIFEST and no
// checksums. Every header is validated as the checkpoint reader validates its own (dtype
// names, shapes, offsets within the file and consistent with dtype and shape, no overlap).
//
// Throws CheckpointError naming the directory or file when: the directory holds no
// safetensors file, or several without an index; the index is not valid JSON, names a file
// outside the directory or one that does not exist, or lists no tensor; a header is invalid; a tensor appears in
// two files (naming both); the index maps a tensor to a file that does not hold it, or a file
// holds a tensor the index does not list.
std::map<std::string, SafetensorsLocation> read_safetensors_set(const std::string& dir);

}  // namespace mto
