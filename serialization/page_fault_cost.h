#pragma once

namespace mto {

// What the first write to a fresh page of memory costs on this machine, in microseconds:
// measured once per process, the first time it is asked for, on 256 pages of an anonymous
// mapping without huge pages (0.25 ms where a fault costs 1 us, 5 ms where it costs 20);
// the least of 8 rounds of 32 pages, so that preemption on a loaded machine does not count.
// On the VMs mto was measured on, it ranges from under 1 us to about 20 us (a guest whose
// page tables the host shadows), and the fastest way to write a column slice follows it
// (block_io.h).
double page_fault_microseconds();

}  // namespace mto
