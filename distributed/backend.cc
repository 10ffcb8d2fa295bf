#include "distributed/backend.h"

#include <atomic>

namespace mto {
namespace {

std::atomic<bool> a_backend_broke{false};

}  // namespace

bool Backend::any_broken() { return a_backend_broke.load(); }

void Backend::note_broken() { a_backend_broke.store(true); }

size_t data_type_size(DataType type) {
  switch (type) {
    case DataType::kUInt8:
      return 1;
    case DataType::kInt32:
    case DataType::kFloat32:
      return 4;
    case DataType::kInt64:
    case DataType::kFloat64:
      return 8;
  }
  return 1;
}

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kMax:
      return "max";
    case ReduceOp::kMin:
      return "min";
  }
  return "?";
}

}  // namespace mto
