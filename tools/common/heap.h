#pragma once

namespace mto {
namespace tools {

// Keeps freed memory of up to 32 MiB blocks in the process heap instead of returning it to
// the kernel. By default glibc maps and unmaps batch-sized tensor buffers on every batch,
// and the page faults of the fresh pages cost these VMs more than the computation (6x on
// the Fashion-MNIST CNN). For programs, not libraries: it sets process-wide malloc options.
void keep_freed_memory_in_heap();

}  // namespace tools
}  // namespace mto
