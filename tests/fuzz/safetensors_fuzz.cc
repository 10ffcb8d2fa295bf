// Fuzzes read_safetensors_header with whole safetensors files: the 8-byte length prefix, the
// JSON header and the data section. Every input must give a header whose tensors tile the
// data section exactly, or a CheckpointError naming the file.
#include <c10/core/ScalarType.h>

#include <cstddef>
#include <cstdint>

#include "serialization/checkpoint_error.h"
#include "serialization/safetensors.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = mto::fuzz::write_input("model.safetensors", data, size);
  mto::SafetensorsHeader header;
  try {
    header = mto::read_safetensors_header(path);
  } catch (const mto::CheckpointError& e) {
    mto::fuzz::check_names(e, path);
    return 0;
  }
  mto::fuzz::check(header.data_begin >= 8 && header.data_begin <= size, "data_begin outside the file");
  uint64_t next = 0;
  for (const auto& entry : header.entries) {
    uint64_t bytes = c10::elementSize(mto::scalar_type_from_safetensors(entry.dtype, path));
    for (int64_t d : entry.shape) bytes *= static_cast<uint64_t>(d);
    mto::fuzz::check(entry.begin == next && entry.end - entry.begin == bytes,
                     "tensor " + entry.name + " does not follow the previous one");
    next = entry.end;
  }
  mto::fuzz::check(next == size - header.data_begin, "the tensors do not cover the data");
  return 0;
}
