#include "serialization/read_ranges.h"

#include <liburing.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_cat.h"
#include "serialization/checkpoint_error.h"

namespace mto {
namespace {

// The calling thread's ring, set up on first use. A process forked from one that had a ring
// sets up its own: the inherited one is shared with the parent.
class ThreadRing {
 public:
  ~ThreadRing() { close(); }

  // The ring, or nullptr where the kernel refused io_uring or the ring failed.
  io_uring* get() {
    const pid_t pid = ::getpid();
    if (pid != pid_) {
      close();  // a parent's ring: this closes the child's copy only
      pid_ = pid;
      ready_ = io_uring_queue_init(kQueueDepth, &ring_, 0) == 0;
    }
    return ready_ ? &ring_ : nullptr;
  }

  // Gives the ring up: this thread of this process reads by pread from now on.
  void close() {
    if (ready_) io_uring_queue_exit(&ring_);
    ready_ = false;
  }

 private:
  io_uring ring_{};
  pid_t pid_ = -1;
  bool ready_ = false;
};

ThreadRing& thread_ring() {
  thread_local ThreadRing ring;
  return ring;
}

// Largest range read through the ring (one read of an io_uring takes at most 2^32 - 1 bytes).
constexpr size_t kMaxRingReadBytes = size_t{1} << 30;

// Reads `ranges` (at most kQueueDepth) through the thread's ring.
// Whatever the ring does not complete (a read interrupted or cut short, a submission refused)
// is read again by File::read_at, which retries or names the failure; a ring that failed is
// given up. A read that failed outright throws, once nothing is in flight.
void read_through_ring(io_uring* ring, const File& file, const std::vector<ReadRange>& ranges) {
  const size_t count = ranges.size();
  for (size_t i = 0; i < count; ++i) {
    io_uring_sqe* sqe = io_uring_get_sqe(ring);
    io_uring_prep_read(sqe, file.fd(), ranges[i].data, static_cast<unsigned>(ranges[i].size),
                       ranges[i].offset);
    io_uring_sqe_set_data64(sqe, i);
  }
  size_t submitted = 0;
  while (submitted < count) {
    const int rc = io_uring_submit(ring);
    if (rc <= 0) break;
    submitted += static_cast<size_t>(rc);
  }
  std::vector<size_t> again;
  int error = 0;
  size_t failed = 0;
  for (size_t done = 0; done < submitted;) {
    io_uring_cqe* cqe = nullptr;
    const int rc = io_uring_wait_cqe(ring, &cqe);
    if (rc == -EINTR) continue;
    if (rc < 0) {
      thread_ring().close();
      throw CheckpointError(io_error_message("cannot wait for reads of", file.path(), -rc));
    }
    const size_t i = static_cast<size_t>(io_uring_cqe_get_data64(cqe));
    const int res = cqe->res;
    io_uring_cqe_seen(ring, cqe);
    ++done;
    if (res == -EINTR || res == -EAGAIN || (res >= 0 && static_cast<size_t>(res) < ranges[i].size)) {
      again.push_back(i);
    } else if (res < 0 && error == 0) {
      error = -res;
      failed = i;
    }
  }
  if (submitted < count) {
    // The kernel took only part of the queue; what it left there must never run.
    thread_ring().close();
    for (size_t i = submitted; i < count; ++i) again.push_back(i);
  }
  if (error != 0) {
    throw CheckpointError(io_error_message(
        absl::StrCat("cannot read at offset ", ranges[failed].offset, " of"), file.path(), error));
  }
  for (size_t i : again) file.read_at(ranges[i].data, ranges[i].size, ranges[i].offset);
}

}  // namespace

bool ranges_use_io_uring() { return thread_ring().get() != nullptr; }

void read_ranges(const File& file, const std::vector<ReadRange>& ranges) {
  std::vector<ReadRange> queued;
  const auto flush = [&] {
    io_uring* ring = queued.size() > 1 ? thread_ring().get() : nullptr;
    if (ring != nullptr) {
      read_through_ring(ring, file, queued);
    } else {
      for (const ReadRange& r : queued) file.read_at(r.data, r.size, r.offset);
    }
    queued.clear();
  };
  for (const ReadRange& r : ranges) {
    if (r.size > kMaxRingReadBytes) {
      file.read_at(r.data, r.size, r.offset);
      continue;
    }
    queued.push_back(r);
    if (queued.size() == kQueueDepth) flush();
  }
  flush();
}

}  // namespace mto
