#include "serialization/shard_writer.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "serialization/bounce_buffer.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/checksum.h"
#include "serialization/file.h"
#include "serialization/safetensors.h"

namespace mto {
namespace {

}  // namespace

WrittenShard write_shard(const std::string& dir, const std::string& file,
                         const std::vector<NamedTensor>& tensors, int writer_rank,
                         uint32_t shard_index) {
  std::vector<at::Tensor> contiguous;
  std::vector<SafetensorsEntry> entries;
  contiguous.reserve(tensors.size());
  entries.reserve(tensors.size());
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    if (!t.tensor.device().is_cpu()) {
      throw CheckpointError(absl::StrCat("tensor ", t.name, " is on ", t.tensor.device().str(),
                                         "; move the model to the CPU before saving"));
    }
    at::Tensor c = t.tensor.contiguous();
    SafetensorsEntry e;
    e.name = t.name;
    e.dtype = safetensors_dtype(c.scalar_type(), t.name);
    e.shape = c.sizes().vec();
    e.begin = offset;
    e.end = offset + c.nbytes();
    offset = e.end;
    entries.push_back(std::move(e));
    contiguous.push_back(std::move(c));
  }
  const std::string header = encode_safetensors_header(
      entries, {{"format", "pt"}, {"writer_rank", std::to_string(writer_rank)}});

  WrittenShard out;
  out.shard.set_file(file);
  out.shard.set_data_begin(header.size());
  out.shard.set_header_xxh3(xxh3_64(header.data(), header.size()));
  out.shard.set_writer_rank(writer_rank);
  out.shard.set_size(header.size() + offset);

  File f = File::create(path_in(dir, file));
  f.write(header.data(), header.size());
  for (size_t i = 0; i < contiguous.size(); ++i) {
    const char* data = static_cast<const char*>(contiguous[i].data_ptr());
    const size_t size = contiguous[i].nbytes();
    char* bounce = bounce_buffer();
    Xxh3Stream hash;
    for (size_t done = 0; done < size; done += kBounceBufferBytes) {
      const size_t n = std::min(kBounceBufferBytes, size - done);
      std::memcpy(bounce, data + done, n);
      hash.update(bounce, n);
      f.write(bounce, n);
    }
    TensorRecord& r = out.tensors.emplace_back();
    r.set_name(entries[i].name);
    r.set_dtype(entries[i].dtype);
    for (int64_t d : entries[i].shape) r.add_shape(d);
    r.set_shard(shard_index);
    r.set_offset(header.size() + entries[i].begin);
    r.set_length(size);
    r.set_xxh3(hash.digest());
  }
  f.sync();
  f.close();
  return out;
}

}  // namespace mto
