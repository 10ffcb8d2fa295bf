// The safetensors header: encoding, strict parsing of untrusted headers, dtype names.
#include <gtest/gtest.h>

#include "serialization/checkpoint_error.h"
#include "serialization/safetensors.h"

namespace mto {
namespace {

std::string parse_error(const std::string& json, uint64_t data_size) {
  try {
    parse_safetensors_header("f.safetensors", json, data_size);
  } catch (const CheckpointError& e) {
    return e.what();
  }
  return "no error";
}

TEST(SafetensorsTest, HeaderRoundTripsAndIsAligned) {
  std::vector<SafetensorsEntry> entries = {{"a", "F32", {2, 3}, 0, 24}, {"b", "I64", {}, 24, 32},
                                           {"empty", "BF16", {0, 4}, 32, 32}};
  const std::string bytes = encode_safetensors_header(entries, {{"writer_rank", "3"}});
  // The data starts at a multiple of 64 bytes, whatever the header's length.
  ASSERT_EQ(bytes.size() % 64, 0u);
  for (const char* name : {"c", "cc", "ccc", "cccc", "ccccccccc"}) {
    EXPECT_EQ(encode_safetensors_header({{name, "F32", {1}, 0, 4}}, {}).size() % 64, 0u) << name;
  }
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i) length = (length << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ(length, bytes.size() - 8);
  SafetensorsHeader header = parse_safetensors_header("f", std::string_view(bytes).substr(8), 32);
  EXPECT_EQ(header.data_begin, bytes.size());
  ASSERT_EQ(header.entries.size(), 3u);
  EXPECT_EQ(header.entries[0].name, "a");
  EXPECT_EQ(header.entries[0].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(header.entries[1].dtype, "I64");
  EXPECT_EQ(header.metadata.at("writer_rank"), "3");
}

TEST(SafetensorsTest, DtypeNamesMapBothWays) {
  for (auto type : {c10::kDouble, c10::kFloat, c10::kHalf, c10::kBFloat16, c10::kLong, c10::kInt,
                    c10::kShort, c10::kChar, c10::kByte, c10::kBool}) {
    EXPECT_EQ(scalar_type_from_safetensors(safetensors_dtype(type, "t"), "here"), type);
  }
  EXPECT_EQ(safetensors_dtype(c10::kBFloat16, "t"), "BF16");
  EXPECT_THROW(safetensors_dtype(c10::kComplexDouble, "t"), CheckpointError);
  EXPECT_THROW(scalar_type_from_safetensors("F8_E4M3X", "here"), CheckpointError);
}

TEST(SafetensorsTest, Fp8NamesTravelAsUint8Codes) {
  EXPECT_EQ(scalar_type_from_safetensors("F8_E4M3", "here"), c10::kByte);
  EXPECT_EQ(scalar_type_from_safetensors("F8_E5M2", "here"), c10::kByte);
  EXPECT_EQ(safetensors_dtype(c10::kByte, "t"), "U8");

  EXPECT_TRUE(dtype_holds("F32", c10::kFloat));
  EXPECT_TRUE(dtype_holds("U8", c10::kByte));
  EXPECT_TRUE(dtype_holds("F8_E4M3", c10::kByte));
  EXPECT_TRUE(dtype_holds("F8_E5M2", c10::kByte));
  EXPECT_FALSE(dtype_holds("F8_E4M3", c10::kFloat));
  EXPECT_FALSE(dtype_holds("F8_E5M2", c10::kChar));
  EXPECT_FALSE(dtype_holds("F16", c10::kFloat));
  EXPECT_FALSE(dtype_holds("U8", c10::kChar));
  EXPECT_FALSE(dtype_holds("F8_E4M3X", c10::kByte));

  // One byte an element.
  EXPECT_EQ(parse_error(R"({"a": {"dtype": "F8_E4M3", "shape": [2, 3], "data_offsets": [0, 6]},
                            "b": {"dtype": "F8_E5M2", "shape": [2], "data_offsets": [6, 8]}})", 8),
            "no error");
  EXPECT_EQ(parse_error(R"({"a": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 8]}})", 8),
            "invalid safetensors header in f.safetensors: tensor \"a\": data_offsets span 8 bytes but "
            "dtype and shape need 2");
}

TEST(SafetensorsTest, UntrustedHeadersAreCheckedFieldByField) {
  const std::string prefix = "invalid safetensors header in f.safetensors: ";
  EXPECT_EQ(parse_error("{\"a\": ", 0), prefix + "not JSON (byte 7 of the header)");
  EXPECT_EQ(parse_error("[]", 0), prefix + "the header is not a JSON object");
  EXPECT_EQ(parse_error(R"({"a": 1e999})", 0), prefix + "a number in the header is out of range");
  EXPECT_EQ(parse_error(R"({"a": {"dtype": "F32", "shape": [2]}})", 8),
            prefix + "tensor \"a\" has no \"data_offsets\"");
  EXPECT_EQ(parse_error(R"({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}})", 8),
            "f.safetensors, tensor \"a\": unknown dtype \"Q4\"");
  EXPECT_EQ(parse_error(R"({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", 8),
            prefix + "tensor \"a\": a dimension is not a non-negative integer");
  EXPECT_EQ(parse_error(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}})", 8),
            prefix + "tensor \"a\": data_offsets [0, 16] lie outside the 8 data bytes");
  EXPECT_EQ(parse_error(R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}})", 8),
            prefix + "tensor \"a\": data_offsets span 8 bytes but dtype and shape need 12");
  EXPECT_EQ(parse_error(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                            "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", 12),
            prefix + "tensor \"b\" starts at data byte 4 but the previous tensor ends at 8 (overlap or hole)");
  EXPECT_EQ(parse_error(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})", 16),
            prefix + "tensor \"a\" starts at data byte 8 but the previous tensor ends at 0 (overlap or hole)");
  EXPECT_EQ(parse_error(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 12),
            prefix + "tensors cover 8 data bytes but the file holds 12");
  EXPECT_EQ(parse_error(R"({"__metadata__": {"k": 1}})", 0), prefix + "__metadata__.k is not a string");
  EXPECT_EQ(parse_error(R"({"a": {"dtype": "U8", "shape": [4294967296, 4294967296, 4294967296], "data_offsets": [0, 8]}})", 8),
            prefix + "tensor \"a\" has a shape too large to address");
}

}  // namespace
}  // namespace mto
