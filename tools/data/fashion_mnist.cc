#include "tools/data/fashion_mnist.h"

#include <sys/mman.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

namespace mto {
namespace data {
namespace {

constexpr uint32_t kImagesMagic = 2051;  // IDX: unsigned bytes, 3 dimensions
constexpr uint32_t kLabelsMagic = 2049;  // IDX: unsigned bytes, 1 dimension
constexpr int64_t kSide = 28;
constexpr int64_t kNumClasses = 10;

// A gzip file read front to back, which counts the uncompressed bytes read so that errors
// can name the offset. Not thread-safe.
class GzipReader {
 public:
  explicit GzipReader(std::string path) : path_(std::move(path)) {
    file_ = gzopen(path_.c_str(), "rb");
    if (file_ == nullptr) {
      throw std::runtime_error("cannot open " + path_ + ": " + std::strerror(errno));
    }
    gzbuffer(file_, 1 << 20);
  }
  GzipReader(const GzipReader&) = delete;
  GzipReader& operator=(const GzipReader&) = delete;
  ~GzipReader() { gzclose(file_); }

  const std::string& path() const { return path_; }

  // Reads exactly `size` bytes of `what` into `out`; throws if the file ends first or the
  // stream is corrupt.
  void read(uint8_t* out, int64_t size, const char* what) {
    int64_t done = 0;
    while (done < size) {
      const unsigned chunk = static_cast<unsigned>(std::min<int64_t>(size - done, 1 << 30));
      const int n = gzread(file_, out + done, chunk);
      if (n <= 0) {
        int code = Z_OK;
        std::string reason = gzerror(file_, &code);
        // zlib prefixes its message with the path, which ours names already.
        if (reason.rfind(path_ + ": ", 0) == 0) reason.erase(0, path_.size() + 2);
        reason = code == Z_OK ? "" : " (" + reason + ")";
        throw std::runtime_error(path_ + " is truncated or corrupt: expected " +
                                 std::to_string(size) + " bytes of " + what + " at offset " +
                                 std::to_string(offset_) + ", got " + std::to_string(done) +
                                 reason);
      }
      done += n;
    }
    offset_ += size;
  }

  // Reads a big-endian 32-bit integer.
  uint32_t read_u32(const char* what) {
    uint8_t bytes[4];
    read(bytes, 4, what);
    return uint32_t{bytes[0]} << 24 | uint32_t{bytes[1]} << 16 | uint32_t{bytes[2]} << 8 |
           uint32_t{bytes[3]};
  }

 private:
  std::string path_;
  gzFile file_ = nullptr;
  int64_t offset_ = 0;
};

void expect_magic(GzipReader& reader, uint32_t expected) {
  const uint32_t magic = reader.read_u32("magic number");
  if (magic != expected) {
    throw std::runtime_error(reader.path() + ": bad magic number " + std::to_string(magic) +
                             " at offset 0, expected " + std::to_string(expected));
  }
}

// Reads `count` items of `item_size` bytes in chunks, so that a forged count in a header
// fails as a truncated file instead of one huge allocation.
std::vector<uint8_t> read_items(GzipReader& reader, int64_t count, int64_t item_size,
                                const char* what) {
  constexpr int64_t kChunkItems = 4096;
  constexpr int64_t kMaxReserve = int64_t{64} << 20;
  std::vector<uint8_t> bytes;
  bytes.reserve(std::min(count * item_size, kMaxReserve));
  for (int64_t first = 0; first < count; first += kChunkItems) {
    const int64_t items = std::min(kChunkItems, count - first);
    bytes.resize((first + items) * item_size);
    reader.read(bytes.data() + first * item_size, items * item_size, what);
  }
  return bytes;
}

// Asks the kernel to back the 2 MiB-aligned interior of [data, data + bytes) with huge
// pages: faulting in fresh memory 4 KiB at a time costs more than decoding the images.
void advise_huge_pages(void* data, size_t bytes) {
  constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHugePage - 1);
  if (begin < end) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

}  // namespace

std::string default_fashion_mnist_root() {
  const char* dir = std::getenv("MTO_FASHION_MNIST_DIR");
  return dir != nullptr && *dir != '\0' ? dir : kFashionMnistPackageDir;
}

Dataset load_fashion_mnist(Split split, const std::string& root, int64_t limit) {
  const std::string prefix = split == Split::kTrain ? "train" : "t10k";
  const std::string images_path = root + "/" + prefix + "-images-idx3-ubyte.gz";
  const std::string labels_path = root + "/" + prefix + "-labels-idx1-ubyte.gz";
  for (const std::string& path : {images_path, labels_path}) {
    std::error_code error;
    if (!std::filesystem::is_regular_file(path, error)) {
      throw std::runtime_error("Fashion-MNIST not found in " + root +
                               "; install it with: sudo apt-get install dataset-fashion-mnist");
    }
  }

  GzipReader images(images_path);
  expect_magic(images, kImagesMagic);
  const int64_t image_count = images.read_u32("image count");
  const uint32_t rows = images.read_u32("row count");
  const uint32_t cols = images.read_u32("column count");
  if (rows != kSide || cols != kSide) {
    throw std::runtime_error(images_path + ": images are " + std::to_string(rows) + "x" +
                             std::to_string(cols) + " at offset 8, expected 28x28");
  }
  GzipReader labels(labels_path);
  expect_magic(labels, kLabelsMagic);
  const int64_t label_count = labels.read_u32("label count");
  if (image_count != label_count) {
    throw std::runtime_error(images_path + " holds " + std::to_string(image_count) +
                             " images but " + labels_path + " holds " +
                             std::to_string(label_count) + " labels");
  }

  const int64_t count = limit < 0 ? image_count : std::min(limit, image_count);
  std::vector<uint8_t> pixels = read_items(images, count, kSide * kSide, "pixels");
  std::vector<uint8_t> classes = read_items(labels, count, 1, "labels");
  for (int64_t i = 0; i < count; ++i) {
    if (classes[i] >= kNumClasses) {
      throw std::runtime_error(labels_path + ": label " + std::to_string(classes[i]) +
                               " of example " + std::to_string(i) + " at offset " +
                               std::to_string(8 + i) + " is not in 0..9");
    }
  }

  // One pass over the pixels through a table of the 256 normalized values.
  float normalized[256];
  for (int value = 0; value < 256; ++value) {
    normalized[value] = (value / 255.0f - kFashionMnistMean) / kFashionMnistStd;
  }
  Dataset dataset;
  dataset.images = at::empty({count, 1, kSide, kSide}, at::kFloat);
  float* out = dataset.images.data_ptr<float>();
  advise_huge_pages(out, pixels.size() * sizeof(float));
  for (size_t i = 0; i < pixels.size(); ++i) out[i] = normalized[pixels[i]];
  dataset.labels = at::from_blob(classes.data(), {count}, at::kByte).to(at::kLong);
  return dataset;
}

}  // namespace data
}  // namespace mto
