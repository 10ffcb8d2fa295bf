#pragma once

#include <cstddef>

namespace mto {

// Size of the bounce buffer: small enough to stay in the L2 cache between the copy and the
// checksum, large enough for few system calls.
inline constexpr size_t kBounceBufferBytes = size_t{512} << 10;

// Buffer `index` (0 or 1: the second lets a write of one overlap the filling of the other) of
// kBounceBufferBytes owned by the calling thread.
//
// Tensor bytes move between files and tensor memory through it rather than with read() and
// write() on the tensors themselves: on the VMs mto runs on, the kernel's first access to a
// user page costs about as much as a first-touch page fault (2.4 s to write() 1 GiB from
// freshly initialized memory, 0.5 s through this buffer; see tools/bench), and the buffer is
// warm after its first use. The checksum is computed on the buffer while it is in cache.
char* bounce_buffer(int index = 0);

}  // namespace mto
