#include "serialization/bounce_buffer.h"

#include <memory>

namespace mto {

char* bounce_buffer() {
  thread_local std::unique_ptr<char[]> buffer(new char[kBounceBufferBytes]);
  return buffer.get();
}

}  // namespace mto
