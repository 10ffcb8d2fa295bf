#pragma once

#include <stdexcept>
#include <string>

namespace mto {

// Thrown when a checkpoint cannot be written or read: an I/O failure, a missing, truncated
// or corrupt file, or a file that does not match its manifest. The message names the file
// and, where it helps, the offset or the tensor.
class CheckpointError : public std::runtime_error {
 public:
  explicit CheckpointError(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace mto
