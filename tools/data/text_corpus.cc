#include "tools/data/text_corpus.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <vector>

#include <ATen/ATen.h>

namespace mto {
namespace data {
namespace {

namespace fs = std::filesystem;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string() + ": " + std::strerror(errno));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw std::runtime_error("cannot read " + path.string() + ": " + std::strerror(errno));
  return text;
}

// The corpus files of `root` in name order: regular files that are neither strfile indexes
// nor the package's .u8 links.
std::vector<fs::path> corpus_files(const std::string& root) {
  std::vector<fs::path> files;
  std::error_code error;
  for (fs::directory_iterator it(root, error), end; !error && it != end; it.increment(error)) {
    const fs::path& path = it->path();
    if (it->is_symlink() || !it->is_regular_file() || path.extension() == ".dat") continue;
    files.push_back(path);
  }
  if (files.empty()) {
    throw std::runtime_error("the text corpus (Debian package fortunes) is not in " + root +
                             "; install it with: sudo apt-get install fortunes");
  }
  std::sort(files.begin(), files.end());
  return files;
}

at::Tensor to_tensor(const std::string& bytes) {
  at::Tensor out = at::empty({static_cast<int64_t>(bytes.size())}, at::kByte);
  std::memcpy(out.data_ptr<uint8_t>(), bytes.data(), bytes.size());
  return out;
}

}  // namespace

std::string default_text_corpus_root() {
  const char* dir = std::getenv("MTO_TEXT_CORPUS_DIR");
  return dir != nullptr && dir[0] != '\0' ? dir : kTextCorpusPackageDir;
}

TextCorpus load_text_corpus(const std::string& root) {
  std::string train, validation;
  TextCorpus out;
  int64_t index = 0;
  for (const fs::path& path : corpus_files(root)) {
    const std::string text = read_file(path);
    size_t begin = 0;
    while (begin < text.size()) {
      // A fortune ends at the next line that holds "%" alone (or at the end of the file).
      size_t end = text.find("\n%\n", begin);
      const size_t next = end == std::string::npos ? text.size() : end + 3;
      if (end == std::string::npos) {
        // The last fortune of a file without a closing "%": its own final newline goes too.
        end = text.size();
        if (end > begin && text[end - 1] == '\n') --end;
      }
      if (text.compare(begin, 2, "%\n") == 0) begin += 2;  // a file that opens with "%"
      if (end > begin) {
        const bool held_out = index % kValidationEvery == kValidationEvery - 1;
        std::string& into = held_out ? validation : train;
        into.append(text, begin, end - begin);
        into.append("\n\n");
        ++(held_out ? out.validation_documents : out.train_documents);
        ++index;
      }
      begin = next;
    }
  }
  out.train = to_tensor(train);
  out.validation = to_tensor(validation);
  return out;
}

at::Tensor token_windows(const at::Tensor& stream, int64_t length, int64_t limit) {
  if (length <= 0) throw std::invalid_argument("token_windows: length must be positive, got " + std::to_string(length));
  int64_t count = stream.numel() > length ? (stream.numel() - 1) / length : 0;
  if (limit >= 0) count = std::min(count, limit);
  if (count == 0) return at::empty({0, length + 1}, at::kByte);
  // clone, not contiguous: one window is contiguous already and would share the stream.
  return stream.narrow(0, 0, count * length + 1).unfold(0, length + 1, length).clone(at::MemoryFormat::Contiguous);
}

at::Tensor corpus_windows(const at::Tensor& stream, const std::string& part, int64_t length, int64_t limit) {
  at::Tensor windows = token_windows(stream, length, limit);
  if (windows.size(0) == 0 && limit != 0) {
    throw std::invalid_argument("the model's context of " + std::to_string(length) +
                                " bytes is longer than the text corpus's " + part + " text (" +
                                std::to_string(stream.numel()) +
                                " bytes): not one sequence fits; use a GPT with a shorter \"context\"");
  }
  return windows;
}

}  // namespace data
}  // namespace mto
