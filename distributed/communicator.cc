#include "distributed/communicator.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "distributed/distributed_error.h"

namespace mto {
namespace {

// The backend type for `type`, and the dtype a tensor is reduced in.
struct ReduceType {
  DataType backend;
  at::ScalarType compute;
};

ReduceType reduce_type(at::ScalarType type) {
  switch (type) {
    case at::kByte:
      return {DataType::kUInt8, at::kByte};
    case at::kInt:
      return {DataType::kInt32, at::kInt};
    case at::kLong:
      return {DataType::kInt64, at::kLong};
    case at::kFloat:
      return {DataType::kFloat32, at::kFloat};
    case at::kDouble:
      return {DataType::kFloat64, at::kDouble};
    case at::kHalf:
    case at::kBFloat16:
      return {DataType::kFloat32, at::kFloat};
    case at::kChar:
    case at::kShort:
    case at::kBool:
      return {DataType::kInt32, at::kInt};
    default:
      throw DistributedError(absl::StrCat("all_reduce does not support dtype ", c10::toString(type)));
  }
}

void check_cpu(const at::Tensor& tensor, const char* op) {
  if (!tensor.defined() || !tensor.device().is_cpu()) {
    throw DistributedError(absl::StrCat(op, " needs a defined CPU tensor"));
  }
}

// Copies `buffer` into `tensor` unless it is `tensor` itself (contiguous() returns the
// tensor when it already is contiguous, else a copy).
void write_back(const at::Tensor& tensor, const at::Tensor& buffer) {
  if (!buffer.is_same(tensor)) tensor.copy_(buffer);
}

}  // namespace

Communicator::Communicator(std::unique_ptr<Backend> backend, std::chrono::milliseconds default_timeout)
    : backend_(std::move(backend)), default_timeout_(default_timeout) {}

std::chrono::milliseconds Communicator::timeout(const CollectiveOptions& options) const {
  return options.timeout.count() > 0 ? options.timeout : default_timeout_;
}

void Communicator::count(uint64_t bytes) {
  stats_.collectives += 1;
  stats_.bytes += bytes;
}

void Communicator::all_reduce(const at::Tensor& tensor, ReduceOp op, const CollectiveOptions& options) {
  check_cpu(tensor, "all_reduce");
  const ReduceType type = reduce_type(tensor.scalar_type());
  at::Tensor buffer = type.compute == tensor.scalar_type() ? tensor.contiguous()
                                                           : tensor.to(type.compute).contiguous();
  count(buffer.nbytes());
  backend_->all_reduce(buffer.data_ptr(), buffer.numel(), type.backend, op, timeout(options));
  write_back(tensor, buffer);
}

void Communicator::all_reduce(std::string& bytes, ReduceOp op, const CollectiveOptions& options) {
  count(bytes.size());
  backend_->all_reduce(bytes.data(), bytes.size(), DataType::kUInt8, op, timeout(options));
}

void Communicator::broadcast(const at::Tensor& tensor, int root, const CollectiveOptions& options) {
  check_cpu(tensor, "broadcast");
  at::Tensor buffer = tensor.contiguous();
  count(buffer.nbytes());
  backend_->broadcast(buffer.data_ptr(), buffer.nbytes(), root, timeout(options));
  write_back(tensor, buffer);
}

void Communicator::broadcast(std::string& bytes, int root, const CollectiveOptions& options) {
  int64_t size = static_cast<int64_t>(bytes.size());
  count(sizeof(size));
  backend_->broadcast(&size, sizeof(size), root, timeout(options));
  bytes.resize(static_cast<size_t>(size));
  count(bytes.size());
  backend_->broadcast(bytes.data(), bytes.size(), root, timeout(options));
}

std::vector<at::Tensor> Communicator::all_gather(const at::Tensor& tensor, const CollectiveOptions& options) {
  check_cpu(tensor, "all_gather");
  at::Tensor input = tensor.contiguous();
  std::vector<int64_t> sizes = {world_size()};
  for (int64_t d : input.sizes()) sizes.push_back(d);
  at::Tensor gathered = at::empty(sizes, input.options());
  count(gathered.nbytes());
  backend_->all_gather(input.data_ptr(), gathered.data_ptr(), input.nbytes(), timeout(options));
  return gathered.unbind(0);
}

std::vector<std::string> Communicator::all_gather(const std::string& bytes, const CollectiveOptions& options) {
  const int n = world_size();
  int64_t size = static_cast<int64_t>(bytes.size());
  std::vector<int64_t> sizes(n);
  count(sizeof(int64_t) * n);
  backend_->all_gather(&size, sizes.data(), sizeof(size), timeout(options));
  const size_t longest = static_cast<size_t>(*std::max_element(sizes.begin(), sizes.end()));
  std::string padded = bytes;
  padded.resize(longest);
  std::string gathered(longest * n, '\0');
  count(gathered.size());
  backend_->all_gather(padded.data(), gathered.data(), longest, timeout(options));
  std::vector<std::string> out(n);
  for (int r = 0; r < n; ++r) out[r] = gathered.substr(longest * r, static_cast<size_t>(sizes[r]));
  return out;
}

void Communicator::all_to_all(const std::vector<SendBuffer>& send, const std::vector<ReceiveBuffer>& receive,
                              const CollectiveOptions& options) {
  const size_t n = static_cast<size_t>(world_size());
  if (send.size() != n || receive.size() != n) {
    throw DistributedError(absl::StrCat("all_to_all on rank ", rank(), " of ", n, ": ", send.size(), " send and ",
                                        receive.size(), " receive buffers, not one per rank"));
  }
  const size_t self = static_cast<size_t>(rank());
  if (send[self].bytes != receive[self].bytes) {
    throw DistributedError(absl::StrCat("all_to_all on rank ", rank(), " of ", n, ": sends itself ", send[self].bytes,
                                        " bytes but expects ", receive[self].bytes));
  }
  uint64_t bytes = 0;
  for (const SendBuffer& b : send) bytes += b.bytes;
  count(bytes);
  backend_->all_to_all(send, receive, timeout(options));
}

void Communicator::barrier(const CollectiveOptions& options) {
  count(0);
  backend_->barrier(timeout(options));
}

std::shared_ptr<Communicator> Communicator::split(int color, int key, const CollectiveOptions& options) {
  count(0);
  std::unique_ptr<Backend> backend = backend_->split(color, key, timeout(options));
  if (!backend) return nullptr;
  return std::make_shared<Communicator>(std::move(backend), default_timeout_);
}

}  // namespace mto
