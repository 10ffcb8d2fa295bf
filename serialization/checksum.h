#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace mto {

// XXH3-64 of `size` bytes, the checksum of every byte a checkpoint holds.
uint64_t xxh3_64(const void* data, size_t size);

// XXH3-64 computed over data that arrives in pieces; equal to xxh3_64 of the concatenation.
// Not safe to share between threads.
class Xxh3Stream {
 public:
  Xxh3Stream();
  ~Xxh3Stream();
  Xxh3Stream(const Xxh3Stream&) = delete;
  Xxh3Stream& operator=(const Xxh3Stream&) = delete;

  void update(const void* data, size_t size);
  uint64_t digest() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace mto
