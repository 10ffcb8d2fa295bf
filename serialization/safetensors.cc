#include "serialization/safetensors.h"

#include <algorithm>
#include <cstring>
#include <iterator>
#include <limits>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/file.h"

namespace mto {
namespace {

struct DtypeName {
  c10::ScalarType type;
  const char* name;
};

// Every safetensors dtype name with the scalar type that holds it. A type's first name is
// its own (safetensors_dtype): U8 comes before the FP8 names whose codes Byte also holds.
constexpr DtypeName kDtypes[] = {
    {c10::ScalarType::Double, "F64"},   {c10::ScalarType::Float, "F32"},
    {c10::ScalarType::Half, "F16"},     {c10::ScalarType::BFloat16, "BF16"},
    {c10::ScalarType::Long, "I64"},     {c10::ScalarType::Int, "I32"},
    {c10::ScalarType::Short, "I16"},    {c10::ScalarType::Char, "I8"},
    {c10::ScalarType::Byte, "U8"},      {c10::ScalarType::Bool, "BOOL"},
    {c10::ScalarType::Byte, "F8_E4M3"}, {c10::ScalarType::Byte, "F8_E5M2"},
};

[[noreturn]] void bad_header(const std::string& file, const std::string& what) {
  throw CheckpointError(absl::StrCat("invalid safetensors header in ", file, ": ", what));
}

uint64_t to_u64(const nlohmann::json& value, const std::string& file, const std::string& what) {
  if (!value.is_number_unsigned()) bad_header(file, absl::StrCat(what, " is not a non-negative integer"));
  return value.get<uint64_t>();
}

}  // namespace

std::string safetensors_dtype(c10::ScalarType type, const std::string& tensor) {
  for (const auto& d : kDtypes) {
    if (d.type == type) return d.name;
  }
  throw CheckpointError(absl::StrCat("tensor ", tensor, " has dtype ", c10::toString(type),
                                     ", which safetensors cannot store"));
}

c10::ScalarType scalar_type_from_safetensors(const std::string& dtype, const std::string& where) {
  for (const auto& d : kDtypes) {
    if (dtype == d.name) return d.type;
  }
  throw CheckpointError(absl::StrCat(where, ": unknown dtype \"", dtype, "\""));
}

bool dtype_holds(const std::string& stored, c10::ScalarType type) {
  return std::any_of(std::begin(kDtypes), std::end(kDtypes),
                     [&](const DtypeName& d) { return d.type == type && stored == d.name; });
}

std::string encode_safetensors_header(const std::vector<SafetensorsEntry>& entries,
                                      const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  for (const auto& e : entries) {
    header[e.name] = {{"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {e.begin, e.end}}};
  }
  std::string json = header.dump();
  // Pad with spaces so that the data starts at a multiple of kDataAlignment.
  json.append((kDataAlignment - (8 + json.size()) % kDataAlignment) % kDataAlignment, ' ');
  std::string out(8, '\0');
  uint64_t length = json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  out += json;
  return out;
}

SafetensorsHeader parse_safetensors_header(const std::string& file, std::string_view json,
                                           uint64_t data_size) {
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(json.begin(), json.end());
  } catch (const nlohmann::json::parse_error& e) {
    bad_header(file, absl::StrCat("not JSON (byte ", e.byte, " of the header)"));
  } catch (const nlohmann::json::out_of_range&) {
    // A number beyond double's range ("1e999"): well-formed JSON that no header holds.
    bad_header(file, "a number in the header is out of range");
  }
  if (!header.is_object()) bad_header(file, "the header is not a JSON object");

  SafetensorsHeader out;
  out.data_begin = 8 + json.size();
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) bad_header(file, "__metadata__ is not an object");
      for (const auto& [key, text] : value.items()) {
        if (!text.is_string()) bad_header(file, absl::StrCat("__metadata__.", key, " is not a string"));
        out.metadata[key] = text.get<std::string>();
      }
      continue;
    }
    const std::string where = absl::StrCat("tensor \"", name, "\"");
    if (!value.is_object()) bad_header(file, absl::StrCat(where, " is not an object"));
    for (const char* key : {"dtype", "shape", "data_offsets"}) {
      if (!value.contains(key)) bad_header(file, absl::StrCat(where, " has no \"", key, "\""));
    }
    SafetensorsEntry entry;
    entry.name = name;
    if (!value["dtype"].is_string()) bad_header(file, absl::StrCat(where, " has a dtype that is not a string"));
    entry.dtype = value["dtype"].get<std::string>();
    c10::ScalarType type = scalar_type_from_safetensors(entry.dtype, absl::StrCat(file, ", ", where));
    const auto& shape = value["shape"];
    if (!shape.is_array()) bad_header(file, absl::StrCat(where, " has a shape that is not an array"));
    uint64_t numel = 1;
    for (const auto& dim : shape) {
      uint64_t d = to_u64(dim, file, absl::StrCat(where, ": a dimension"));
      if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          (d != 0 && numel > std::numeric_limits<uint64_t>::max() / d)) {
        bad_header(file, absl::StrCat(where, " has a shape too large to address"));
      }
      numel *= d;
      entry.shape.push_back(static_cast<int64_t>(d));
    }
    const auto& offsets = value["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2) {
      bad_header(file, absl::StrCat(where, ": data_offsets is not [begin, end]"));
    }
    entry.begin = to_u64(offsets[0], file, absl::StrCat(where, ": data_offsets[0]"));
    entry.end = to_u64(offsets[1], file, absl::StrCat(where, ": data_offsets[1]"));
    uint64_t itemsize = c10::elementSize(type);
    if (entry.begin > entry.end) {
      bad_header(file, absl::StrCat(where, ": data_offsets [", entry.begin, ", ", entry.end,
                                    "] end before they begin"));
    }
    if (entry.end > data_size) {
      bad_header(file, absl::StrCat(where, ": data_offsets [", entry.begin, ", ", entry.end,
                                    "] lie outside the ", data_size, " data bytes"));
    }
    if (numel > std::numeric_limits<uint64_t>::max() / itemsize ||
        entry.end - entry.begin != numel * itemsize) {
      bad_header(file, absl::StrCat(where, ": data_offsets span ", entry.end - entry.begin,
                                    " bytes but dtype and shape need ", numel * itemsize));
    }
    out.entries.push_back(std::move(entry));
  }
  std::sort(out.entries.begin(), out.entries.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  uint64_t expected = 0;
  for (const auto& e : out.entries) {
    if (e.begin != expected) {
      bad_header(file, absl::StrCat("tensor \"", e.name, "\" starts at data byte ", e.begin,
                                    " but the previous tensor ends at ", expected,
                                    " (overlap or hole)"));
    }
    expected = e.end;
  }
  if (expected != data_size) {
    bad_header(file, absl::StrCat("tensors cover ", expected, " data bytes but the file holds ",
                                  data_size));
  }
  return out;
}

SafetensorsHeader read_safetensors_header(const std::string& path) {
  File file = File::open(path);
  uint64_t size = file.size();
  if (size < 8) bad_header(path, absl::StrCat("the file is only ", size, " bytes"));
  unsigned char prefix[8];
  file.read_at(prefix, 8, 0);
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i) length = (length << 8) | prefix[i];
  if (length > kMaxMetadataBytes || length > size - 8) {
    bad_header(path, absl::StrCat("header length ", length, " does not fit the ", size,
                                  "-byte file"));
  }
  std::string json(length, '\0');
  file.read_at(json.data(), json.size(), 8);
  return parse_safetensors_header(path, json, size - 8 - length);
}

std::string encode_safetensors_index(const std::map<std::string, std::string>& weight_map,
                                     uint64_t total_size) {
  nlohmann::json index = {{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map}};
  return index.dump(2) + "\n";
}

}  // namespace mto
