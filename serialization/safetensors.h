#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace mto {

// The safetensors format: an 8-byte little-endian header length, a JSON header
// {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// padded with spaces so the data starts 8-byte aligned, then the raw little-endian bytes.
// Offsets are relative to the start of the data.

// safetensors' name for `type` ("F32", "BF16", "U8" for Byte, ...); throws CheckpointError for
// dtypes the format cannot hold (complex, quantized), naming `tensor`.
std::string safetensors_dtype(c10::ScalarType type, const std::string& tensor);

// The scalar type for a safetensors dtype name; throws CheckpointError naming `where` for
// an unknown name. The FP8 names F8_E4M3 and F8_E5M2 give Byte: LibTorch 1.13 has no 8-bit
// float type, so their codes travel in uint8 tensors.
c10::ScalarType scalar_type_from_safetensors(const std::string& dtype, const std::string& where);

// Whether a tensor of `type` may be written as, or read from, the safetensors dtype `stored`:
// `stored` is safetensors_dtype(type), or an FP8 name and `type` is Byte, holding its codes.
// False for unknown names.
bool dtype_holds(const std::string& stored, c10::ScalarType type);

// One tensor as a safetensors header describes it.
struct SafetensorsEntry {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  // Relative to the start of the data.
  uint64_t begin = 0;
  uint64_t end = 0;
};

// A parsed and validated safetensors header.
struct SafetensorsHeader {
  // Offset of the first data byte in the file: 8 + the header length.
  uint64_t data_begin = 0;
  // Entries in data order.
  std::vector<SafetensorsEntry> entries;
  std::map<std::string, std::string> metadata;
};

// Where the data of a file mto writes starts: a multiple of 64 bytes (the header is padded
// with spaces, as the format allows). The kernel copies a file's bytes into memory more
// slowly when the two are not aligned alike: 764 MiB from the page cache into 64-byte-aligned
// memory took 0.063 s from a file offset that is a multiple of 32, and 0.092 s from one 8
// bytes past it (the format's own 8-byte alignment, which mto used before).
inline constexpr uint64_t kDataAlignment = 64;

// Builds the header bytes (length prefix, JSON, padding to kDataAlignment) for `entries`,
// whose offsets must already be set, and `metadata`.
std::string encode_safetensors_header(const std::vector<SafetensorsEntry>& entries,
                                      const std::map<std::string, std::string>& metadata);

// Parses the JSON header `json` of the file `file` whose data section is `data_size` bytes.
// Every field is checked: dtype names, shapes, offsets within the data and consistent with
// dtype and shape, no overlap, no hole. Throws CheckpointError naming the file and the tensor.
SafetensorsHeader parse_safetensors_header(const std::string& file, std::string_view json,
                                           uint64_t data_size);

// Reads the length prefix and header of the safetensors file at `path` and parses it.
SafetensorsHeader read_safetensors_header(const std::string& path);

// The text of model.safetensors.index.json for a multi-file checkpoint:
// {"metadata": {"total_size": total_size}, "weight_map": {tensor: file}}.
std::string encode_safetensors_index(const std::map<std::string, std::string>& weight_map,
                                     uint64_t total_size);

}  // namespace mto
