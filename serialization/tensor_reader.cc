#include "serialization/tensor_reader.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "serialization/bounce_buffer.h"
#include "absl/strings/str_join.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checksum.h"
#include "serialization/safetensors.h"

namespace mto {
namespace {

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
  char* bounce = bounce_buffer();
  Xxh3Stream hash;
  for (uint64_t done = 0; done < record.length(); done += kBounceBufferBytes) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kBounceBufferBytes, record.length() - done));
    file.read_at(bounce, n, record.offset() + done);
    hash.update(bounce, n);
    std::memcpy(data + done, bounce, n);
  }
  if (hash.digest() != record.xxh3()) {
    throw CheckpointError(absl::StrCat("checksum mismatch in ", file.path(), ": tensor ",
                                       record.name(), " at bytes [", record.offset(), ", ",
                                       record.offset() + record.length(),
                                       ") does not match the manifest (corrupt file)"));
  }
}

}  // namespace mto
