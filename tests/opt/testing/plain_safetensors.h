#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

namespace mto {
namespace test {

// A safetensors writer that knows nothing of mto (the format as Python's safetensors writes
// it, not mto's encoder), so that the import tests read files from an independent writer.

// A tensor under its name.
struct Named {
  std::string name;
  at::Tensor tensor;
};

// The format's name of `type`: "F32", "F16", "BF16" or "I32".
std::string dtype_name(at::ScalarType type);

// A file's header (JSON, in insertion order) and its data section.
struct Encoded {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  std::string data;
};

// The header and the raw little-endian bytes of `tensors` (F32, F16, BF16 or I32), back to
// back in order, with {"__metadata__": {"format": "pt"}}.
Encoded encode(const std::vector<Named>& tensors);

// Writes `json` (padded with spaces to a multiple of 8) after its 8-byte little-endian
// length, then `data`: a header crafted by hand for the fault tests.
void write_raw(const std::string& path, std::string json, const std::string& data);

void write_encoded(const std::string& path, const Encoded& encoded);

// Writes `tensors` as one safetensors file; returns its data bytes.
uint64_t write_safetensors(const std::string& path, const std::vector<Named>& tensors);

void write_text(const std::string& path, const std::string& text);

// Writes dir/model.safetensors.index.json.
void write_index(const std::string& dir, const std::map<std::string, std::string>& weight_map,
                 uint64_t total_size);

// "model-00001-of-00003.safetensors".
std::string shard_name(int i, int n);

// Writes `tensors` over `n` shards (contiguous runs, Hugging Face's naming) and the index;
// returns the data bytes of all shards.
uint64_t write_sharded(const std::string& dir, const std::vector<Named>& tensors, int n);

}  // namespace test
}  // namespace mto
