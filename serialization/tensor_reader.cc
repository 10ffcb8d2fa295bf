#include "serialization/tensor_reader.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checksum.h"
#include "serialization/safetensors.h"

namespace mto {
namespace {

// Read and hash in steps that stay in the cache between the copy and the hash.
constexpr size_t kReadChunk = size_t{8} << 20;

}  // namespace

void check_tensor_matches(const TensorRecord& record, const at::Tensor& dest) {
  const std::string where = absl::StrCat("tensor ", record.name());
  c10::ScalarType type = scalar_type_from_safetensors(record.dtype(), where);
  std::vector<int64_t> shape(record.shape().begin(), record.shape().end());
  if (dest.scalar_type() != type || dest.sizes().vec() != shape) {
    throw CheckpointError(absl::StrCat(
        where, ": the checkpoint holds ", record.dtype(), " [", absl::StrJoin(shape, ", "),
        "] but the model has ", safetensors_dtype(dest.scalar_type(), record.name()), " [",
        absl::StrJoin(dest.sizes(), ", "), "]"));
  }
  if (!dest.device().is_cpu() || !dest.is_contiguous()) {
    throw CheckpointError(absl::StrCat(where, ": the destination must be a contiguous CPU tensor"));
  }
}

void read_tensor_into(const File& file, const TensorRecord& record, const at::Tensor& dest) {
  check_tensor_matches(record, dest);
  char* data = static_cast<char*>(dest.data_ptr());
  Xxh3Stream hash;
  for (uint64_t done = 0; done < record.length(); done += kReadChunk) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kReadChunk, record.length() - done));
    file.read_at(data + done, n, record.offset() + done);
    hash.update(data + done, n);
  }
  if (hash.digest() != record.xxh3()) {
    throw CheckpointError(absl::StrCat("checksum mismatch in ", file.path(), ": tensor ",
                                       record.name(), " at bytes [", record.offset(), ", ",
                                       record.offset() + record.length(),
                                       ") does not match the manifest (corrupt file)"));
  }
}

}  // namespace mto
