// Reading Fashion-MNIST from the gzip IDX files of the Debian package, and every way a file
// can be wrong, on small files written here.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <stdlib.h>
#include <zlib.h>

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/testing/temp_dir.h"
#include "tools/data/fashion_mnist.h"

namespace mto {
namespace data {
namespace {

using Bytes = std::vector<uint8_t>;

constexpr int64_t kPixels = 28 * 28;

void append_u32(Bytes& bytes, uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) bytes.push_back(uint8_t(value >> shift));
}

Bytes images_file(uint32_t count, const Bytes& pixels, uint32_t magic = 2051, uint32_t rows = 28,
                  uint32_t cols = 28) {
  Bytes bytes;
  for (uint32_t value : {magic, count, rows, cols}) append_u32(bytes, value);
  bytes.insert(bytes.end(), pixels.begin(), pixels.end());
  return bytes;
}

Bytes labels_file(uint32_t count, const Bytes& labels, uint32_t magic = 2049) {
  Bytes bytes;
  for (uint32_t value : {magic, count}) append_u32(bytes, value);
  bytes.insert(bytes.end(), labels.begin(), labels.end());
  return bytes;
}

void write_gzip(const std::string& path, const Bytes& bytes) {
  gzFile file = gzopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr) << path;
  ASSERT_EQ(gzwrite(file, bytes.data(), unsigned(bytes.size())), int(bytes.size()));
  ASSERT_EQ(gzclose(file), Z_OK);
}

class FashionMnistFilesTest : public ::testing::Test {
 protected:
  // Writes the test split: three images whose pixels are all 0, 255 and 51, labels 0, 9, 4.
  void SetUp() override {
    Bytes pixels;
    for (uint8_t value : {0, 255, 51}) pixels.insert(pixels.end(), kPixels, value);
    write_gzip(images_path, images_file(3, pixels));
    write_gzip(labels_path, labels_file(3, {0, 9, 4}));
  }

  // The message of the error that loading the test split from `dir` throws.
  std::string load_error() {
    try {
      load_fashion_mnist(Split::kTest, dir);
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    ADD_FAILURE() << "loaded";
    return "";
  }

  const std::string dir = test::make_temp_dir();
  const std::string images_path = dir + "/t10k-images-idx3-ubyte.gz";
  const std::string labels_path = dir + "/t10k-labels-idx1-ubyte.gz";
};

TEST_F(FashionMnistFilesTest, ScalesAndNormalizesThePixels) {
  const Dataset dataset = load_fashion_mnist(Split::kTest, dir);
  ASSERT_EQ(dataset.images.sizes(), (std::vector<int64_t>{3, 1, 28, 28}));
  EXPECT_EQ(dataset.images.scalar_type(), at::kFloat);
  EXPECT_EQ(dataset.labels.scalar_type(), at::kLong);
  EXPECT_TRUE(dataset.labels.equal(at::tensor({0, 9, 4}, at::kLong)));
  int64_t i = 0;
  for (float value : {0.0f, 1.0f, 0.2f}) {
    const float expected = (value - kFashionMnistMean) / kFashionMnistStd;
    EXPECT_TRUE(dataset.images[i++].allclose(at::full({1, 28, 28}, expected))) << value;
  }
}

TEST_F(FashionMnistFilesTest, LimitKeepsTheFirstExamples) {
  EXPECT_TRUE(load_fashion_mnist(Split::kTest, dir, 2).labels.equal(at::tensor({0, 9}, at::kLong)));
  EXPECT_EQ(load_fashion_mnist(Split::kTest, dir, 0).images.sizes(),
            (std::vector<int64_t>{0, 1, 28, 28}));
  EXPECT_EQ(load_fashion_mnist(Split::kTest, dir, 100).size(), 3);
}

TEST_F(FashionMnistFilesTest, TrainSplitReadsTheTrainFiles) {
  EXPECT_EQ(load_fashion_mnist(Split::kTest, dir).size(), 3);
  std::filesystem::rename(images_path, dir + "/train-images-idx3-ubyte.gz");
  std::filesystem::rename(labels_path, dir + "/train-labels-idx1-ubyte.gz");
  EXPECT_EQ(load_fashion_mnist(Split::kTrain, dir).size(), 3);
}

TEST_F(FashionMnistFilesTest, EnvironmentVariableOverridesTheRoot) {
  ::setenv("MTO_FASHION_MNIST_DIR", dir.c_str(), 1);
  EXPECT_EQ(default_fashion_mnist_root(), dir);
  EXPECT_EQ(load_fashion_mnist(Split::kTest).size(), 3);
  ::setenv("MTO_FASHION_MNIST_DIR", "", 1);
  EXPECT_EQ(default_fashion_mnist_root(), "/usr/share/datasets/fashion-mnist");
  ::unsetenv("MTO_FASHION_MNIST_DIR");
  EXPECT_EQ(default_fashion_mnist_root(), "/usr/share/datasets/fashion-mnist");
}

TEST_F(FashionMnistFilesTest, MissingFilesNameTheInstallCommand) {
  std::filesystem::remove(labels_path);
  EXPECT_EQ(load_error(), "Fashion-MNIST not found in " + dir +
                              "; install it with: sudo apt-get install dataset-fashion-mnist");
  try {
    load_fashion_mnist(Split::kTrain, dir + "/missing");
    ADD_FAILURE() << "loaded";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()),
              "Fashion-MNIST not found in " + dir +
                  "/missing; install it with: sudo apt-get install dataset-fashion-mnist");
  }
}

TEST_F(FashionMnistFilesTest, RejectsABadMagicNumber) {
  write_gzip(images_path, images_file(3, Bytes(3 * kPixels), /*magic=*/2049));
  EXPECT_EQ(load_error(), images_path + ": bad magic number 2049 at offset 0, expected 2051");
  write_gzip(images_path, images_file(3, Bytes(3 * kPixels)));
  write_gzip(labels_path, labels_file(3, {1, 2, 3}, /*magic=*/2051));
  EXPECT_EQ(load_error(), labels_path + ": bad magic number 2051 at offset 0, expected 2049");
}

TEST_F(FashionMnistFilesTest, RejectsImagesOfAnotherSize) {
  write_gzip(images_path, images_file(3, Bytes(3 * 27 * 28), 2051, /*rows=*/27));
  EXPECT_EQ(load_error(), images_path + ": images are 27x28 at offset 8, expected 28x28");
}

TEST_F(FashionMnistFilesTest, RejectsCountsThatDisagree) {
  write_gzip(labels_path, labels_file(2, {1, 2}));
  EXPECT_EQ(load_error(), images_path + " holds 3 images but " + labels_path + " holds 2 labels");
}

TEST_F(FashionMnistFilesTest, RejectsALabelOutOfRange) {
  write_gzip(labels_path, labels_file(3, {1, 10, 3}));
  EXPECT_EQ(load_error(), labels_path + ": label 10 of example 1 at offset 9 is not in 0..9");
}

TEST_F(FashionMnistFilesTest, RejectsTruncatedContents) {
  write_gzip(images_path, images_file(3, Bytes(2 * kPixels)));
  EXPECT_EQ(load_error(), images_path +
                              " is truncated or corrupt: expected 2352 bytes of pixels at offset "
                              "16, got 1568");
  write_gzip(images_path, Bytes{0, 0, 8, 3, 0, 0});
  EXPECT_EQ(load_error(), images_path +
                              " is truncated or corrupt: expected 4 bytes of image count at "
                              "offset 4, got 2");
  write_gzip(images_path, images_file(3, Bytes(3 * kPixels)));
  write_gzip(labels_path, labels_file(3, {1}));
  EXPECT_EQ(load_error(), labels_path +
                              " is truncated or corrupt: expected 3 bytes of labels at offset 8, "
                              "got 1");
}

TEST_F(FashionMnistFilesTest, RejectsATruncatedGzipStream) {
  Bytes pixels(3 * kPixels);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = uint8_t(i * 2654435761u >> 13);
  write_gzip(images_path, images_file(3, pixels));
  std::filesystem::resize_file(images_path, std::filesystem::file_size(images_path) / 2);
  const std::string error = load_error();
  EXPECT_THAT(error,
              ::testing::StartsWith(images_path + " is truncated or corrupt: expected "
                                                  "2352 bytes of pixels at offset 16, got "));
  EXPECT_THAT(error, ::testing::EndsWith(" (unexpected end of file)"));
}

TEST(FashionMnistTest, LoadsTheTestSplitOfTheDebianPackage) {
  const Dataset dataset = load_fashion_mnist(Split::kTest, kFashionMnistPackageDir);
  ASSERT_EQ(dataset.images.sizes(), (std::vector<int64_t>{10000, 1, 28, 28}));
  ASSERT_EQ(dataset.labels.sizes(), (std::vector<int64_t>{10000}));
  EXPECT_NEAR(dataset.images.min().item<float>(), -kFashionMnistMean / kFashionMnistStd, 1e-5);
  EXPECT_NEAR(dataset.images.max().item<float>(), (1 - kFashionMnistMean) / kFashionMnistStd, 1e-5);
  // Normalized with the training set's statistics, the test images are close to N(0, 1).
  EXPECT_NEAR(dataset.images.mean().item<float>(), 0.0, 0.01);
  EXPECT_NEAR(dataset.images.std().item<float>(), 1.0, 0.01);
  // The test split holds 1000 images of each of the 10 classes.
  EXPECT_TRUE(dataset.labels.bincount().equal(at::full({10}, 1000, at::kLong)));

  const Dataset first = load_fashion_mnist(Split::kTest, kFashionMnistPackageDir, 100);
  EXPECT_TRUE(first.images.equal(dataset.images.slice(0, 0, 100)));
  EXPECT_TRUE(first.labels.equal(dataset.labels.slice(0, 0, 100)));
}

}  // namespace
}  // namespace data
}  // namespace mto
