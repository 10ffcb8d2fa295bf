// A main() for a fuzz target built with the ordinary compiler, for `bazel test //...`: runs
// LLVMFuzzerTestOneInput on every seed of a corpus and on deterministic mutations of each (bit
// flips, random bytes, truncations, repeated and inserted runs) for a few seconds. It explores
// less than libFuzzer (no coverage guidance, no sanitizers), and exists for the target whose
// clang build would compile the whole tree a second time; tools/fuzz.sh runs the real fuzzer.
// On a crash it prints the seed and mutation and keeps the input in the test's outputs.
// Usage: mutation_test CORPUS_DIR SECONDS
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);

namespace {

// What runs now, for the crash handler (which may only make async-signal-safe calls).
char current_name[512];
std::string current_input;
std::string crash_path;

void on_crash(int signal) {
  const char head[] = "mutation_test: crashed on ";
  ssize_t ignored = ::write(2, head, sizeof(head) - 1);
  ignored = ::write(2, current_name, std::strlen(current_name));
  ignored = ::write(2, "\n", 1);
  const int fd = ::open(crash_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) {
    ignored = ::write(fd, current_input.data(), current_input.size());
    ::close(fd);
  }
  (void)ignored;
  std::signal(signal, SIG_DFL);
  std::raise(signal);
}

void run(const std::string& name, const std::string& input) {
  std::snprintf(current_name, sizeof(current_name), "%s", name.c_str());
  current_input = input;
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(current_input.data()), current_input.size());
}

// One random change of `input`.
std::string mutate(const std::string& input, std::mt19937_64& random) {
  std::string out = input;
  auto at = [&](size_t size) { return size == 0 ? 0 : static_cast<size_t>(random() % size); };
  switch (random() % 6) {
    case 0:  // flip one bit
      if (!out.empty()) out[at(out.size())] ^= static_cast<char>(1 << (random() % 8));
      break;
    case 1:  // a random byte
      if (!out.empty()) out[at(out.size())] = static_cast<char>(random());
      break;
    case 2:  // truncate
      out.resize(at(out.size() + 1));
      break;
    case 3: {  // repeat a run
      const size_t begin = at(out.size()), length = std::min<size_t>(at(out.size() - begin + 1), 64);
      out.insert(begin, out.substr(begin, length));
      break;
    }
    case 4: {  // insert random bytes
      std::string bytes(1 + random() % 8, '\0');
      for (char& c : bytes) c = static_cast<char>(random());
      out.insert(at(out.size() + 1), bytes);
      break;
    }
    default:  // an interesting value over 1, 2, 4 or 8 bytes
      if (!out.empty()) {
        static const uint64_t kValues[] = {0, 1, 0x7f, 0x80, 0xff, 0x7fffffff, 0xffffffff, ~uint64_t{0}};
        const uint64_t value = kValues[random() % 8];
        const size_t width = size_t{1} << (random() % 4), begin = at(out.size());
        std::memcpy(out.data() + begin, &value, std::min(width, out.size() - begin));
      }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: " << argv[0] << " CORPUS_DIR SECONDS\n";
    return 2;
  }
  const std::filesystem::path corpus = argv[1];
  const double seconds = std::atof(argv[2]);
  const char* outputs = std::getenv("TEST_UNDECLARED_OUTPUTS_DIR");
  crash_path = std::string(outputs ? outputs : ".") + "/crash-input";
  for (int signal : {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL}) std::signal(signal, on_crash);
  if (LLVMFuzzerInitialize != nullptr) LLVMFuzzerInitialize(&argc, &argv);

  std::vector<std::pair<std::string, std::string>> seeds;
  for (const auto& entry : std::filesystem::directory_iterator(corpus)) {
    std::ifstream in(entry.path(), std::ios::binary);
    seeds.emplace_back(entry.path().filename().string(),
                       std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()));
  }
  std::sort(seeds.begin(), seeds.end());
  if (seeds.empty()) {
    std::cerr << "mutation_test: no seeds in " << corpus << "\n";
    return 1;
  }
  for (const auto& [name, input] : seeds) run(name, input);

  const auto start = std::chrono::steady_clock::now();
  std::mt19937_64 random(20261129);
  int64_t runs = 0;
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < seconds) {
    const auto& [name, input] = seeds[runs % seeds.size()];
    std::string mutated = input;
    const int changes = 1 + static_cast<int>(random() % 4);
    for (int c = 0; c < changes; ++c) mutated = mutate(mutated, random);
    run(name + " mutation " + std::to_string(runs), mutated);
    ++runs;
  }
  std::cout << "mutation_test: " << seeds.size() << " seeds and " << runs << " mutations in " << seconds
            << " s, 0 crashes\n";
  return 0;
}
