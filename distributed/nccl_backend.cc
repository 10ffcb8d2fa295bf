#include "distributed/nccl_backend.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "distributed/distributed_error.h"

namespace mto {
namespace {

// Bytes staged through the device per step.
constexpr size_t kChunkBytes = size_t{64} << 20;

ncclDataType_t nccl_type(DataType type) {
  switch (type) {
    case DataType::kUInt8:
      return ncclUint8;
    case DataType::kInt32:
      return ncclInt32;
    case DataType::kInt64:
      return ncclInt64;
    case DataType::kFloat32:
      return ncclFloat32;
    case DataType::kFloat64:
      return ncclFloat64;
  }
  return ncclUint8;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kMax:
      return ncclMax;
    case ReduceOp::kMin:
      return ncclMin;
  }
  return ncclSum;
}

using Clock = std::chrono::steady_clock;

// Sleeps a little longer each time: polling must not starve ranks that share cores.
class Backoff {
 public:
  void pause() {
    if (++spins_ < 100) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(sleep_);
      sleep_ = std::min(sleep_ * 2, std::chrono::microseconds(1000));
    }
  }

 private:
  int spins_ = 0;
  std::chrono::microseconds sleep_{10};
};

}  // namespace

struct NcclBackend::State {
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  int device = 0;
  void* buffer = nullptr;
  size_t capacity = 0;
  std::string broken_reason;

  // Throws DistributedError for `op` on `rank`/`size` with `detail`, aborting the
  // communicator first so that peers fail too instead of hanging.
  [[noreturn]] void fail(const std::string& op, const std::string& detail, int rank, int size) {
    broken_reason = absl::StrCat(op, ": ", detail);
    Backend::note_broken();
    if (comm != nullptr) {
      ncclCommAbort(comm);
      comm = nullptr;
    }
    throw DistributedError(absl::StrCat(op, " failed on rank ", rank, " of ", size, ": ", detail));
  }

  // Throws if an earlier failure broke the communicator.
  void check_usable(const std::string& op, int rank, int size) {
    if (comm == nullptr) {
      throw DistributedError(absl::StrCat("cannot run ", op, " on rank ", rank, " of ", size,
                                          ": the communicator broke earlier (", broken_reason, ")"));
    }
  }

  void check_cuda(cudaError_t rc, const std::string& op, int rank, int size) {
    if (rc != cudaSuccess) fail(op, absl::StrCat("CUDA error: ", cudaGetErrorString(rc)), rank, size);
  }

  void check_nccl(ncclResult_t rc, const std::string& op, int rank, int size) {
    if (rc != ncclSuccess && rc != ncclInProgress) {
      fail(op, absl::StrCat("NCCL error: ", ncclGetErrorString(rc), " ",
                            comm ? ncclGetLastError(comm) : ""), rank, size);
    }
  }

  // Waits until the communicator has no operation being enqueued (non-blocking mode).
  void wait_enqueued(const std::string& op, int rank, int size, Clock::time_point deadline,
                     std::chrono::milliseconds timeout) {
    Backoff backoff;
    while (true) {
      ncclResult_t state = ncclSuccess;
      check_nccl(ncclCommGetAsyncError(comm, &state), op, rank, size);
      if (state == ncclSuccess) return;
      check_nccl(state, op, rank, size);
      if (Clock::now() > deadline) fail(op, timed_out(timeout), rank, size);
      backoff.pause();
    }
  }

  // Waits until the stream has run everything issued, checking NCCL for errors.
  void wait_stream(const std::string& op, int rank, int size, Clock::time_point deadline,
                   std::chrono::milliseconds timeout) {
    Backoff backoff;
    while (true) {
      cudaError_t rc = cudaStreamQuery(stream);
      if (rc == cudaSuccess) return;
      if (rc != cudaErrorNotReady) check_cuda(rc, op, rank, size);
      ncclResult_t state = ncclSuccess;
      check_nccl(ncclCommGetAsyncError(comm, &state), op, rank, size);
      check_nccl(state, op, rank, size);
      if (Clock::now() > deadline) fail(op, timed_out(timeout), rank, size);
      backoff.pause();
    }
  }

  static std::string timed_out(std::chrono::milliseconds timeout) {
    return absl::StrCat("timed out after ", static_cast<double>(timeout.count()) / 1000.0,
                        " s: a peer did not join (it may have died or be stuck)");
  }

  void reserve(size_t bytes, const std::string& op, int rank, int size) {
    if (bytes <= capacity) return;
    if (buffer != nullptr) cudaFree(buffer);
    buffer = nullptr;
    capacity = 0;
    check_cuda(cudaMalloc(&buffer, bytes), op, rank, size);
    capacity = bytes;
  }
};

std::string NcclBackend::new_unique_id() {
  ncclUniqueId id;
  ncclResult_t rc = ncclGetUniqueId(&id);
  if (rc != ncclSuccess) {
    throw DistributedError(absl::StrCat("cannot create an NCCL unique id: ", ncclGetErrorString(rc)));
  }
  return std::string(id.internal, sizeof(id.internal));
}

namespace {

// Finishes a non-blocking communicator creation (init or split).
void wait_created(ncclComm_t comm, const char* op, int rank, int size,
                  std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  Backoff backoff;
  while (true) {
    ncclResult_t state = ncclSuccess;
    ncclResult_t rc = ncclCommGetAsyncError(comm, &state);
    if (rc != ncclSuccess) state = rc;
    if (state == ncclSuccess) return;
    if (state != ncclInProgress || Clock::now() > deadline) {
      const std::string detail = state != ncclInProgress
                                     ? absl::StrCat("NCCL error: ", ncclGetErrorString(state), " ",
                                                    ncclGetLastError(comm))
                                     : absl::StrCat("peers did not join within ",
                                                    static_cast<double>(timeout.count()) / 1000.0, " s");
      ncclCommAbort(comm);
      throw DistributedError(absl::StrCat(op, " failed on rank ", rank, " of ", size, ": ", detail));
    }
    backoff.pause();
  }
}

}  // namespace

std::unique_ptr<NcclBackend> NcclBackend::create(const std::string& unique_id, int rank,
                                                 int world_size, int device,
                                                 std::chrono::milliseconds timeout) {
  ncclUniqueId id;
  if (unique_id.size() != sizeof(id.internal)) {
    throw DistributedError(absl::StrCat("NCCL init on rank ", rank, ": the unique id has ",
                                        unique_id.size(), " bytes, not ", sizeof(id.internal)));
  }
  std::memcpy(id.internal, unique_id.data(), sizeof(id.internal));
  auto state = std::make_unique<State>();
  state->device = device;
  state->check_cuda(cudaSetDevice(device), "NCCL init", rank, world_size);
  state->check_cuda(cudaStreamCreateWithFlags(&state->stream, cudaStreamNonBlocking), "NCCL init",
                    rank, world_size);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  ncclResult_t rc = ncclCommInitRankConfig(&comm, world_size, id, rank, &config);
  if (rc != ncclSuccess && rc != ncclInProgress) {
    throw DistributedError(absl::StrCat("NCCL init failed on rank ", rank, " of ", world_size,
                                        ": ", ncclGetErrorString(rc)));
  }
  wait_created(comm, "NCCL init", rank, world_size, timeout);
  state->comm = comm;
  return std::unique_ptr<NcclBackend>(new NcclBackend(std::move(state), rank, world_size));
}

NcclBackend::NcclBackend(std::unique_ptr<State> state, int rank, int size)
    : state_(std::move(state)), rank_(rank), size_(size) {}

NcclBackend::~NcclBackend() {
  cudaSetDevice(state_->device);
  if (state_->comm != nullptr) {
    // Flush, then destroy; a communicator that cannot finish in time is aborted.
    ncclResult_t state = ncclCommFinalize(state_->comm);
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    Backoff backoff;
    while (state == ncclInProgress && Clock::now() < deadline) {
      if (ncclCommGetAsyncError(state_->comm, &state) != ncclSuccess) break;
      backoff.pause();
    }
    if (state == ncclSuccess) {
      ncclCommDestroy(state_->comm);
    } else {
      ncclCommAbort(state_->comm);
    }
  }
  if (state_->buffer != nullptr) cudaFree(state_->buffer);
  if (state_->stream != nullptr) cudaStreamDestroy(state_->stream);
}

void NcclBackend::all_reduce(void* data, size_t count, DataType type, ReduceOp op,
                             std::chrono::milliseconds timeout) {
  const std::string name = "all_reduce";
  state_->check_usable(name, rank_, size_);
  const auto deadline = Clock::now() + timeout;
  const size_t item = data_type_size(type);
  const size_t chunk = kChunkBytes / item;
  state_->check_cuda(cudaSetDevice(state_->device), name, rank_, size_);
  state_->reserve(std::min(count, chunk) * item, name, rank_, size_);
  char* host = static_cast<char*>(data);
  for (size_t done = 0; done < count; done += chunk) {
    const size_t n = std::min(chunk, count - done);
    state_->check_cuda(cudaMemcpyAsync(state_->buffer, host + done * item, n * item,
                                       cudaMemcpyHostToDevice, state_->stream), name, rank_, size_);
    state_->check_nccl(ncclAllReduce(state_->buffer, state_->buffer, n, nccl_type(type),
                                     nccl_op(op), state_->comm, state_->stream), name, rank_, size_);
    state_->wait_enqueued(name, rank_, size_, deadline, timeout);
    state_->wait_stream(name, rank_, size_, deadline, timeout);
    state_->check_cuda(cudaMemcpy(host + done * item, state_->buffer, n * item,
                                  cudaMemcpyDeviceToHost), name, rank_, size_);
  }
}

void NcclBackend::broadcast(void* data, size_t bytes, int root, std::chrono::milliseconds timeout) {
  const std::string name = "broadcast";
  state_->check_usable(name, rank_, size_);
  const auto deadline = Clock::now() + timeout;
  state_->check_cuda(cudaSetDevice(state_->device), name, rank_, size_);
  state_->reserve(std::min(bytes, kChunkBytes), name, rank_, size_);
  char* host = static_cast<char*>(data);
  for (size_t done = 0; done < bytes; done += kChunkBytes) {
    const size_t n = std::min(kChunkBytes, bytes - done);
    if (rank_ == root) {
      state_->check_cuda(cudaMemcpyAsync(state_->buffer, host + done, n, cudaMemcpyHostToDevice,
                                         state_->stream), name, rank_, size_);
    }
    state_->check_nccl(ncclBroadcast(state_->buffer, state_->buffer, n, ncclUint8, root,
                                     state_->comm, state_->stream), name, rank_, size_);
    state_->wait_enqueued(name, rank_, size_, deadline, timeout);
    state_->wait_stream(name, rank_, size_, deadline, timeout);
    if (rank_ != root) {
      state_->check_cuda(cudaMemcpy(host + done, state_->buffer, n, cudaMemcpyDeviceToHost), name,
                         rank_, size_);
    }
  }
}

void NcclBackend::all_gather(const void* in, void* out, size_t bytes,
                             std::chrono::milliseconds timeout) {
  const std::string name = "all_gather";
  state_->check_usable(name, rank_, size_);
  const auto deadline = Clock::now() + timeout;
  const size_t chunk = std::max<size_t>(1, kChunkBytes / size_);
  state_->check_cuda(cudaSetDevice(state_->device), name, rank_, size_);
  const size_t step = std::min(bytes, chunk);
  state_->reserve(step * (size_ + 1), name, rank_, size_);
  char* send = static_cast<char*>(state_->buffer);
  char* recv = send + step;
  std::vector<char> staged(step * size_);
  for (size_t done = 0; done < bytes; done += chunk) {
    const size_t n = std::min(chunk, bytes - done);
    state_->check_cuda(cudaMemcpyAsync(send, static_cast<const char*>(in) + done, n,
                                       cudaMemcpyHostToDevice, state_->stream), name, rank_, size_);
    state_->check_nccl(ncclAllGather(send, recv, n, ncclUint8, state_->comm, state_->stream), name,
                       rank_, size_);
    state_->wait_enqueued(name, rank_, size_, deadline, timeout);
    state_->wait_stream(name, rank_, size_, deadline, timeout);
    state_->check_cuda(cudaMemcpy(staged.data(), recv, n * size_, cudaMemcpyDeviceToHost), name,
                       rank_, size_);
    for (int r = 0; r < size_; ++r) {
      std::memcpy(static_cast<char*>(out) + r * bytes + done, staged.data() + r * n, n);
    }
  }
}

void NcclBackend::all_to_all(const std::vector<SendBuffer>& send, const std::vector<ReceiveBuffer>& receive,
                             std::chrono::milliseconds timeout) {
  const std::string name = "all_to_all";
  state_->check_usable(name, rank_, size_);
  const auto deadline = Clock::now() + timeout;
  size_t sent = 0;
  size_t received = 0;
  for (int r = 0; r < size_; ++r) {
    sent += send[r].bytes;
    received += receive[r].bytes;
  }
  if (sent == 0 && received == 0) return;
  state_->check_cuda(cudaSetDevice(state_->device), name, rank_, size_);
  state_->reserve(sent + received, name, rank_, size_);
  char* device_send = static_cast<char*>(state_->buffer);
  char* device_receive = device_send + sent;
  size_t at = 0;
  for (int r = 0; r < size_; ++r) {
    if (send[r].bytes == 0) continue;
    state_->check_cuda(cudaMemcpyAsync(device_send + at, send[r].data, send[r].bytes, cudaMemcpyHostToDevice,
                                       state_->stream), name, rank_, size_);
    at += send[r].bytes;
  }
  state_->check_nccl(ncclGroupStart(), name, rank_, size_);
  size_t send_at = 0;
  size_t receive_at = 0;
  for (int r = 0; r < size_; ++r) {
    if (send[r].bytes > 0) {
      state_->check_nccl(ncclSend(device_send + send_at, send[r].bytes, ncclUint8, r, state_->comm, state_->stream),
                         name, rank_, size_);
      send_at += send[r].bytes;
    }
    if (receive[r].bytes > 0) {
      state_->check_nccl(ncclRecv(device_receive + receive_at, receive[r].bytes, ncclUint8, r, state_->comm,
                                  state_->stream), name, rank_, size_);
      receive_at += receive[r].bytes;
    }
  }
  state_->check_nccl(ncclGroupEnd(), name, rank_, size_);
  state_->wait_enqueued(name, rank_, size_, deadline, timeout);
  state_->wait_stream(name, rank_, size_, deadline, timeout);
  receive_at = 0;
  for (int r = 0; r < size_; ++r) {
    if (receive[r].bytes == 0) continue;
    state_->check_cuda(cudaMemcpy(receive[r].data, device_receive + receive_at, receive[r].bytes,
                                  cudaMemcpyDeviceToHost), name, rank_, size_);
    receive_at += receive[r].bytes;
  }
}

bool NcclBackend::broken() const { return !state_->broken_reason.empty(); }

void NcclBackend::barrier(std::chrono::milliseconds timeout) {
  int32_t token = 1;
  all_reduce(&token, 1, DataType::kInt32, ReduceOp::kSum, timeout);
}

std::unique_ptr<Backend> NcclBackend::split(int color, int key, std::chrono::milliseconds timeout) {
  const std::string name = "split";
  state_->check_usable(name, rank_, size_);
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  state_->check_nccl(ncclCommSplit(state_->comm, color < 0 ? NCCL_SPLIT_NOCOLOR : color, key,
                                   &comm, &config), name, rank_, size_);
  state_->wait_enqueued(name, rank_, size_, Clock::now() + timeout, timeout);
  if (comm == nullptr) return nullptr;
  wait_created(comm, "split", rank_, size_, timeout);
  int rank = 0;
  int size = 0;
  ncclCommUserRank(comm, &rank);
  ncclCommCount(comm, &size);
  auto state = std::make_unique<State>();
  state->device = state_->device;
  state->comm = comm;
  state->check_cuda(cudaStreamCreateWithFlags(&state->stream, cudaStreamNonBlocking), name, rank, size);
  return std::unique_ptr<Backend>(new NcclBackend(std::move(state), rank, size));
}

}  // namespace mto
