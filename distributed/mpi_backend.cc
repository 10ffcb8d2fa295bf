#include "distributed/mpi_backend.h"

#include <mpi.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "distributed/distributed_error.h"

namespace mto {
namespace {

// MPI counts are ints: move at most this many bytes per call.
constexpr size_t kMaxChunkBytes = size_t{1} << 30;
// The tag of all_to_all's messages, the only point-to-point ones on mto's communicators.
constexpr int kAllToAllTag = 0x6d74;

MPI_Datatype mpi_type(DataType type) {
  switch (type) {
    case DataType::kUInt8:
      return MPI_UINT8_T;
    case DataType::kInt32:
      return MPI_INT32_T;
    case DataType::kInt64:
      return MPI_INT64_T;
    case DataType::kFloat32:
      return MPI_FLOAT;
    case DataType::kFloat64:
      return MPI_DOUBLE;
  }
  return MPI_BYTE;
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return MPI_SUM;
    case ReduceOp::kMax:
      return MPI_MAX;
    case ReduceOp::kMin:
      return MPI_MIN;
  }
  return MPI_SUM;
}

std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  return std::string(text, length);
}

std::string seconds(std::chrono::milliseconds timeout) {
  return absl::StrCat(static_cast<double>(timeout.count()) / 1000.0, " s");
}

}  // namespace

struct MpiBackend::Comm {
  MPI_Comm comm = MPI_COMM_NULL;
  bool owned = false;
};

std::unique_ptr<MpiBackend> MpiBackend::world() {
  auto comm = std::make_unique<Comm>();
  comm->comm = MPI_COMM_WORLD;
  return std::unique_ptr<MpiBackend>(new MpiBackend(std::move(comm)));
}

MpiBackend::MpiBackend(std::unique_ptr<Comm> comm) : comm_(std::move(comm)) {
  MPI_Comm_set_errhandler(comm_->comm, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_->comm, &rank_);
  MPI_Comm_size(comm_->comm, &size_);
  // A sub-group (a mesh axis) says which process of the job it is, too.
  int world_rank = 0, world_size = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  where_ = absl::StrCat("rank ", rank_, " of ", size_);
  if (world_rank != rank_ || world_size != size_) {
    absl::StrAppend(&where_, " (world rank ", world_rank, " of ", world_size, ")");
  }
}

MpiBackend::~MpiBackend() {
  // A broken communicator may have requests in flight; freeing it could block.
  if (comm_->owned && !broken()) MPI_Comm_free(&comm_->comm);
}

void MpiBackend::check_usable(const char* op) const {
  if (broken()) {
    throw DistributedError(absl::StrCat("cannot run ", op, " on ", where_, ": the communicator broke earlier (",
                                        broken_reason_, ")"));
  }
}

void MpiBackend::wait(void* requests, int count, const char* op, const std::string& what,
                      std::chrono::milliseconds timeout,
                      std::chrono::steady_clock::time_point deadline) {
  MPI_Request* req = static_cast<MPI_Request*>(requests);
  int spins = 0;
  auto sleep = std::chrono::microseconds(10);
  while (true) {
    int done = 0;
    int rc = MPI_Testall(count, req, &done, MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS) {
      set_broken(absl::StrCat(op, " failed: ", mpi_error_text(rc)));
      throw DistributedError(absl::StrCat(op, " (", what, ") failed on ", where_, ": MPI error: ", mpi_error_text(rc)));
    }
    if (done) return;
    if (std::chrono::steady_clock::now() > deadline) {
      set_broken(absl::StrCat(op, " timed out"));
      throw DistributedError(absl::StrCat(op, " (", what, ") timed out after ", seconds(timeout), " on ", where_,
                                          ": a peer did not join (it may have died or be stuck)"));
    }
    // Oversubscribed ranks share cores: yield first, then back off to short sleeps.
    if (++spins < 100) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(sleep);
      sleep = std::min(sleep * 2, std::chrono::microseconds(1000));
    }
  }
}

void MpiBackend::set_broken(std::string reason) {
  broken_reason_ = std::move(reason);
  note_broken();
}

void MpiBackend::start_failed(const char* op, const std::string& what, int rc) {
  set_broken(absl::StrCat(op, " failed: ", mpi_error_text(rc)));
  throw DistributedError(absl::StrCat(op, " (", what, ") failed on ", where_, ": MPI error: ", mpi_error_text(rc)));
}

void MpiBackend::all_reduce(void* data, size_t count, DataType type, ReduceOp op,
                            std::chrono::milliseconds timeout) {
  check_usable("all_reduce");
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const std::string what = absl::StrCat(reduce_op_name(op), " of ", count, " elements");
  const size_t item = data_type_size(type);
  const size_t chunk = kMaxChunkBytes / item;
  char* p = static_cast<char*>(data);
  for (size_t done = 0; done < count; done += chunk) {
    const int n = static_cast<int>(std::min(chunk, count - done));
    MPI_Request request;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, p + done * item, n, mpi_type(type), mpi_op(op),
                            comm_->comm, &request);
    if (rc != MPI_SUCCESS) start_failed("all_reduce", what, rc);
    wait(&request, 1, "all_reduce", what, timeout, deadline);
  }
}

void MpiBackend::broadcast(void* data, size_t bytes, int root, std::chrono::milliseconds timeout) {
  check_usable("broadcast");
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const std::string what = absl::StrCat(bytes, " bytes from rank ", root);
  char* p = static_cast<char*>(data);
  for (size_t done = 0; done < bytes; done += kMaxChunkBytes) {
    const int n = static_cast<int>(std::min(kMaxChunkBytes, bytes - done));
    MPI_Request request;
    int rc = MPI_Ibcast(p + done, n, MPI_BYTE, root, comm_->comm, &request);
    if (rc != MPI_SUCCESS) start_failed("broadcast", what, rc);
    wait(&request, 1, "broadcast", what, timeout, deadline);
  }
}

void MpiBackend::all_gather(const void* in, void* out, size_t bytes,
                            std::chrono::milliseconds timeout) {
  check_usable("all_gather");
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const std::string what = absl::StrCat(bytes, " bytes per rank");
  if (bytes * static_cast<size_t>(size_) <= kMaxChunkBytes) {
    MPI_Request request;
    int rc = MPI_Iallgather(in, static_cast<int>(bytes), MPI_BYTE, out, static_cast<int>(bytes),
                            MPI_BYTE, comm_->comm, &request);
    if (rc != MPI_SUCCESS) start_failed("all_gather", what, rc);
    wait(&request, 1, "all_gather", what, timeout, deadline);
    return;
  }
  // Large gathers: one broadcast per rank keeps every count within an int.
  char* o = static_cast<char*>(out);
  std::copy_n(static_cast<const char*>(in), bytes, o + bytes * rank_);
  for (int r = 0; r < size_; ++r) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    broadcast(o + bytes * r, bytes, r, std::max(left, std::chrono::milliseconds(0)));
  }
}

void MpiBackend::all_to_all(const std::vector<SendBuffer>& send, const std::vector<ReceiveBuffer>& receive,
                            std::chrono::milliseconds timeout) {
  check_usable("all_to_all");
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  size_t moved = 0;
  std::vector<MPI_Request> requests;
  // Messages of at most kMaxChunkBytes keep every count within an int; MPI delivers the
  // pieces between two ranks in order.
  auto post = [&](bool sending, int peer, char* data, size_t bytes) {
    for (size_t done = 0; done < bytes; done += kMaxChunkBytes) {
      const int n = static_cast<int>(std::min(kMaxChunkBytes, bytes - done));
      MPI_Request& request = requests.emplace_back();
      const int rc = sending ? MPI_Isend(data + done, n, MPI_BYTE, peer, kAllToAllTag, comm_->comm, &request)
                             : MPI_Irecv(data + done, n, MPI_BYTE, peer, kAllToAllTag, comm_->comm, &request);
      if (rc != MPI_SUCCESS) start_failed("all_to_all", absl::StrCat(bytes, " bytes with rank ", peer), rc);
    }
    moved += bytes;
  };
  for (int r = 0; r < size_; ++r) {
    if (r != rank_ && receive[r].bytes > 0) post(false, r, static_cast<char*>(receive[r].data), receive[r].bytes);
  }
  for (int r = 0; r < size_; ++r) {
    if (r != rank_ && send[r].bytes > 0) {
      post(true, r, const_cast<char*>(static_cast<const char*>(send[r].data)), send[r].bytes);
    }
  }
  if (send[rank_].bytes > 0 && send[rank_].data != receive[rank_].data) {
    std::memmove(receive[rank_].data, send[rank_].data, send[rank_].bytes);
  }
  if (requests.empty()) return;
  wait(requests.data(), static_cast<int>(requests.size()), "all_to_all", absl::StrCat(moved, " bytes"), timeout,
       deadline);
}

void MpiBackend::barrier(std::chrono::milliseconds timeout) {
  check_usable("barrier");
  MPI_Request request;
  int rc = MPI_Ibarrier(comm_->comm, &request);
  if (rc != MPI_SUCCESS) start_failed("barrier", "all ranks", rc);
  wait(&request, 1, "barrier", "all ranks", timeout, std::chrono::steady_clock::now() + timeout);
}

std::unique_ptr<Backend> MpiBackend::split(int color, int key, std::chrono::milliseconds timeout) {
  check_usable("split");
  // MPI_Comm_split blocks without a timeout: a barrier with one first, so that a rank that
  // never comes (failed before, or stuck) fails the others in time instead of hanging them.
  barrier(timeout);
  auto comm = std::make_unique<Comm>();
  int rc = MPI_Comm_split(comm_->comm, color < 0 ? MPI_UNDEFINED : color, key, &comm->comm);
  if (rc != MPI_SUCCESS) start_failed("split", absl::StrCat("color ", color), rc);
  if (comm->comm == MPI_COMM_NULL) return nullptr;
  comm->owned = true;
  return std::unique_ptr<Backend>(new MpiBackend(std::move(comm)));
}

}  // namespace mto
