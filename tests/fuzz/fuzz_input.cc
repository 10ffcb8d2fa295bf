#include "tests/fuzz/fuzz_input.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

namespace mto {
namespace fuzz {
namespace {

[[noreturn]] void die(const std::string& message) {
  std::fprintf(stderr, "fuzz: %s\n", message.c_str());
  std::abort();
}

}  // namespace

const std::string& input_dir() {
  static const std::string dir = [] {
    const char* base = std::getenv("TEST_TMPDIR");
    std::string templ = std::string(base ? base : "/tmp") + "/mto-fuzz-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr) die("mkdtemp failed: " + templ);
    return templ;
  }();
  return dir;
}

std::string write_input(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = input_dir() + "/" + name;
  // A new file each time: truncating one that holds data makes ext4 flush it on close
  // (auto_da_alloc), which slows the fuzzer 20x.
  ::unlink(path.c_str());
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) die("cannot create " + path);
  for (size_t done = 0; done < size;) {
    ssize_t n = ::write(fd, data + done, size - done);
    if (n <= 0) die("cannot write " + path);
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return path;
}

void fail(const std::string& what, const std::exception& error) {
  die(what + ": " + error.what());
}

void check(bool condition, const std::string& what) {
  if (!condition) die(what);
}

void check_names(const std::exception& error, const std::string& name) {
  if (std::string(error.what()).find(name) == std::string::npos) {
    die("the error does not name " + name + ": " + error.what());
  }
}

}  // namespace fuzz
}  // namespace mto
