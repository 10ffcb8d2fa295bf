#pragma once

#include <cstddef>
#include <functional>

namespace mto {

// Runs `work(i)` for every i below `count`, the i handed out in increasing order to
// `threads` threads (this one included; fewer if no more can be started). Rethrows the
// exception of the lowest failing i, as one thread running them in order would: once one
// fails no new i is handed out, and every i below it was handed out before it and runs to its
// end. For reads whose first error must not depend on the threads.
void run_in_order(size_t count, unsigned threads, const std::function<void(size_t)>& work);

}  // namespace mto
