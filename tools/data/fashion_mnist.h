#pragma once

#include <cstdint>
#include <string>

#include "tools/data/dataset.h"

namespace mto {
namespace data {

// Which part of Fashion-MNIST to load.
enum class Split {
  kTrain,  // 60,000 images: train-{images-idx3,labels-idx1}-ubyte.gz
  kTest,   // 10,000 images: t10k-{images-idx3,labels-idx1}-ubyte.gz
};

// Per-pixel mean and standard deviation of the training images scaled to [0, 1].
constexpr float kFashionMnistMean = 0.2860f;
constexpr float kFashionMnistStd = 0.3530f;

// Where the Debian package dataset-fashion-mnist installs the files.
constexpr char kFashionMnistPackageDir[] = "/usr/share/datasets/fashion-mnist";

// The directory to read Fashion-MNIST from: $MTO_FASHION_MNIST_DIR if it is set and not
// empty, else kFashionMnistPackageDir.
std::string default_fashion_mnist_root();

// Reads a split of Fashion-MNIST from the gzip-compressed IDX files in `root`, keeping the
// first `limit` examples (all of them if `limit` is negative or exceeds the count).
// Returns images as float [N, 1, 28, 28], scaled to [0, 1] and then normalized with
// kFashionMnistMean and kFashionMnistStd, and labels as int64 [N] in 0..9.
//
// Throws std::runtime_error naming the file when a file is missing ("Fashion-MNIST not
// found in <root>; install it with: sudo apt-get install dataset-fashion-mnist"), is not a
// valid gzip stream, has a wrong magic number or image size, is truncated (with the byte
// offset), holds a label outside 0..9, or when the images and labels files disagree on
// the count.
Dataset load_fashion_mnist(Split split, const std::string& root = default_fashion_mnist_root(),
                           int64_t limit = -1);

}  // namespace data
}  // namespace mto
