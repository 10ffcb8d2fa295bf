#pragma once

#include <stdexcept>
#include <string>

namespace mto {

// Thrown when a collective cannot complete: a peer stopped responding within the timeout, a
// backend reported an error, or a rank failed a step that every rank takes together. The
// message names the operation and the rank. After a timeout the communicator is broken:
// every later collective on it throws at once.
class DistributedError : public std::runtime_error {
 public:
  explicit DistributedError(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace mto
