#include "tests/opt/testing/plain_safetensors.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <stdexcept>

namespace mto {
namespace test {

std::string dtype_name(at::ScalarType type) {
  switch (type) {
    case at::kDouble: return "F64";
    case at::kFloat: return "F32";
    case at::kHalf: return "F16";
    case at::kBFloat16: return "BF16";
    case at::kInt: return "I32";
    default: throw std::invalid_argument("test writer: unsupported dtype");
  }
}

Encoded encode(const std::vector<Named>& tensors) {
  Encoded out;
  for (const auto& t : tensors) {
    const at::Tensor c = t.tensor.detach().contiguous();
    const uint64_t bytes = static_cast<uint64_t>(c.numel()) * c.element_size();
    const uint64_t begin = out.data.size();
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = dtype_name(c.scalar_type());
    entry["shape"] = c.sizes().vec();
    entry["data_offsets"] = nlohmann::ordered_json::array({begin, begin + bytes});
    out.header[t.name] = entry;
    out.data.append(static_cast<const char*>(c.data_ptr()), bytes);
  }
  out.header["__metadata__"] = {{"format", "pt"}};
  return out;
}

void write_raw(const std::string& path, std::string json, const std::string& data) {
  json.append((8 - json.size() % 8) % 8, ' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const uint64_t length = json.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((length >> (8 * i)) & 0xff));
  out.write(json.data(), json.size());
  out.write(data.data(), data.size());
  if (!out) throw std::runtime_error("test writer: cannot write " + path);
}

void write_encoded(const std::string& path, const Encoded& encoded) {
  write_raw(path, encoded.header.dump(), encoded.data);
}

uint64_t write_safetensors(const std::string& path, const std::vector<Named>& tensors) {
  const Encoded e = encode(tensors);
  write_encoded(path, e);
  return e.data.size();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

void write_index(const std::string& dir, const std::map<std::string, std::string>& weight_map,
                 uint64_t total_size) {
  nlohmann::json index = {{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map}};
  write_text(dir + "/model.safetensors.index.json", index.dump(2));
}

std::string shard_name(int i, int n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05d-of-%05d.safetensors", i, n);
  return buf;
}

uint64_t write_sharded(const std::string& dir, const std::vector<Named>& tensors, int n) {
  std::map<std::string, std::string> weight_map;
  uint64_t total = 0;
  const size_t per = (tensors.size() + n - 1) / n;
  for (int i = 0; i < n; ++i) {
    std::vector<Named> part;
    for (size_t j = i * per; j < std::min(tensors.size(), (i + 1) * per); ++j) part.push_back(tensors[j]);
    const std::string file = shard_name(i + 1, n);
    total += write_safetensors(dir + "/" + file, part);
    for (const auto& t : part) weight_map[t.name] = file;
  }
  write_index(dir, weight_map, total);
  return total;
}

}  // namespace test
}  // namespace mto
