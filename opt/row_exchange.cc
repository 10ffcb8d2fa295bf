#include "opt/row_exchange.h"

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <exception>
#include <map>
#include <set>

#include "serialization/block_io.h"
#include "serialization/safetensors.h"

namespace mto {
namespace {

// Bytes a band's writer receives per round, at most (at least one checksum band of rows).
constexpr uint64_t kRoundBytes = uint64_t{8} << 20;

// Rows per round of a tensor of `cols` columns: whole checksum bands (checksum_blocks), so
// that the blocks of each round are those of the writer's band.
uint64_t round_rows(uint64_t cols, size_t element_size) {
  const uint64_t row_bytes = std::max<uint64_t>(cols * element_size, 1);
  const uint64_t band = std::max<uint64_t>(1, kChecksumBlockBytes / row_bytes);
  return band * std::max<uint64_t>(1, kRoundBytes / (band * row_bytes));
}

// The rows of `band` that round `round` moves (none past its end).
Rect rows_in_round(const Rect& band, uint64_t round, uint64_t per_round) {
  const uint64_t begin = std::min(band.row_end, band.row_begin + round * per_round);
  return {begin, std::min(band.row_end, begin + per_round), band.col_begin, band.col_end};
}

// The receive buffer, kept from one round and one save to the next: memory the kernel has
// written into before costs no page faults again.
std::vector<char>& receive_buffer() {
  thread_local std::vector<char> buffer;
  return buffer;
}

}  // namespace

std::vector<RowExchange> row_exchanges(const CheckpointPlan& plan) {
  std::map<size_t, std::vector<size_t>> parts_of;
  for (size_t i = 0; i < plan.slices.size(); ++i) parts_of[plan.slices[i].tensor].push_back(i);
  std::vector<RowExchange> out;
  for (auto& [tensor, parts] : parts_of) {
    const TensorRecord& record = plan.tensors[tensor];
    const MatrixShape matrix = matrix_shape({record.shape().begin(), record.shape().end()});
    std::set<int> writers;
    bool columns = parts.size() >= 2 && matrix.rows > 0;
    for (size_t i : parts) {
      const Rect& r = plan.slices[i].rect;
      columns = columns && r.row_begin == 0 && r.row_end == matrix.rows && r.cols() < matrix.cols;
      writers.insert(plan.slices[i].writer);
    }
    if (!columns || writers.size() != parts.size()) continue;
    std::sort(parts.begin(), parts.end(),
              [&](size_t a, size_t b) { return plan.slices[a].rect.col_begin < plan.slices[b].rect.col_begin; });
    out.push_back({tensor, parts});
  }
  return out;
}

Rect band_rows(const CheckpointPlan& plan, const RowExchange& exchange, size_t i) {
  const TensorRecord& record = plan.tensors[exchange.tensor];
  const MatrixShape matrix = matrix_shape({record.shape().begin(), record.shape().end()});
  const uint64_t n = exchange.parts.size();
  return {matrix.rows * i / n, matrix.rows * (i + 1) / n, 0, matrix.cols};
}

void write_by_row_exchange(const CheckpointPlan& plan, const std::vector<RowExchange>& exchanges,
                           const std::vector<StateTensor>& tensors, const std::function<File&(uint32_t)>& file,
                           Communicator& comm, Manifest* written) {
  const int me = comm.rank();
  std::exception_ptr failure;
  for (const RowExchange& exchange : exchanges) {
    const TensorRecord& record = plan.tensors[exchange.tensor];
    const std::vector<int64_t> shape(record.shape().begin(), record.shape().end());
    const uint64_t cols = matrix_shape(shape).cols;
    const size_t n = exchange.parts.size();
    // The part this rank writes, if any; it then also writes that part's band of rows.
    size_t mine = n;
    for (size_t i = 0; i < n; ++i) {
      if (plan.slices[exchange.parts[i]].writer == me) mine = i;
    }
    const at::Tensor local = mine < n ? tensors[exchange.tensor].tensor.contiguous() : at::Tensor();
    // Every rank computes the same rounds, from the plan.
    const size_t element_size = c10::elementSize(scalar_type_from_safetensors(record.dtype(), record.name()));
    const uint64_t per_round = round_rows(cols, element_size);
    const uint64_t grid = column_grid(shape, element_size);
    uint64_t rounds = 0;
    for (size_t i = 0; i < n; ++i) {
      rounds = std::max(rounds, (band_rows(plan, exchange, i).rows() + per_round - 1) / per_round);
    }
    TensorRecord* out = nullptr;
    if (mine < n) {
      out = written->add_tensors();
      out->set_name(record.name());
    }
    for (uint64_t round = 0; round < rounds; ++round) {
      std::vector<SendBuffer> send(comm.world_size());
      std::vector<ReceiveBuffer> receive(comm.world_size());
      std::vector<ColumnPiece> pieces;
      Rect rows;
      if (mine < n) {
        const Rect& part = plan.slices[exchange.parts[mine]].rect;
        const char* data = static_cast<const char*>(local.data_ptr());
        for (size_t i = 0; i < n; ++i) {
          const Rect r = rows_in_round(band_rows(plan, exchange, i), round, per_round);
          send[plan.slices[exchange.parts[i]].writer] = {data + r.row_begin * part.cols() * element_size,
                                                         r.rows() * part.cols() * element_size};
        }
        rows = rows_in_round(band_rows(plan, exchange, mine), round, per_round);
        std::vector<char>& buffer = receive_buffer();
        if (buffer.size() < rows.area() * element_size) buffer.resize(rows.area() * element_size);
        uint64_t at = 0;
        for (size_t j = 0; j < n && rows.rows() > 0; ++j) {
          const SlicePlan& from = plan.slices[exchange.parts[j]];
          const uint64_t bytes = rows.rows() * from.rect.cols() * element_size;
          receive[from.writer] = {buffer.data() + at, bytes};
          pieces.push_back({from.rect.col_begin, from.rect.col_end, buffer.data() + at});
          at += bytes;
        }
      }
      comm.all_to_all(send, receive);
      if (pieces.empty() || failure) continue;
      try {
        for (Block& b : write_rows(file(record.shard()), record.offset(), cols, element_size, rows, pieces, grid)) {
          *out->add_blocks() = std::move(b);
        }
      } catch (...) {
        failure = std::current_exception();
      }
    }
  }
  if (failure) std::rethrow_exception(failure);
}

}  // namespace mto
