#include "tools/bench/measure.h"

#include <algorithm>
#include <fstream>

#include "opt/state_dict.h"
#include "serialization/checksum.h"
#include "serialization/file.h"

namespace mto {
namespace bench {

int64_t status_bytes(const std::string& key) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::stoll(line.substr(key.size() + 1)) * 1024;
  }
  return 0;
}

void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }

std::string load_average() {
  std::ifstream file("/proc/loadavg");
  std::string one, five, fifteen;
  file >> one >> five >> fifteen;
  return one + " " + five + " " + fifteen;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

uint64_t digest(const torch::nn::Module& model) {
  uint64_t h = 0;
  for (const auto& t : model_state_dict(model)) h = h * 1000003 ^ xxh3_64(t.tensor.data_ptr(), t.tensor.nbytes());
  return h;
}

void write_direct(const std::vector<at::Tensor>& tensors, const std::string& path) {
  File file = File::create(path);
  for (const auto& t : tensors) file.write(t.data_ptr(), t.nbytes());
  file.sync();
  file.close();
}

void read_into(const std::string& path, const std::vector<at::Tensor>& destinations) {
  File file = File::open(path);
  uint64_t offset = 0;
  for (const auto& d : destinations) {
    file.read_at(d.data_ptr(), d.nbytes(), offset);
    offset += d.nbytes();
  }
}

}  // namespace bench
}  // namespace mto
