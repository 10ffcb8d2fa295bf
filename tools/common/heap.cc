#include "tools/common/heap.h"

#include <malloc.h>

namespace mto {
namespace tools {

void keep_freed_memory_in_heap() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace tools
}  // namespace mto
