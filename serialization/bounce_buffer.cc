#include "serialization/bounce_buffer.h"

#include <memory>

namespace mto {

char* bounce_buffer(int index) {
  thread_local std::unique_ptr<char[]> buffers(new char[2 * kBounceBufferBytes]);
  return buffers.get() + (index == 0 ? 0 : kBounceBufferBytes);
}

}  // namespace mto
