// The text corpus (the Debian package fortunes): splitting the fortunes into training and
// validation, cutting a stream into windows, and the byte-bigram baseline, on small corpus
// directories written here; and, when the package is installed, on the real corpus.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <stdlib.h>

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/testing/temp_dir.h"
#include "tools/data/bigram.h"
#include "tools/data/text_corpus.h"

namespace mto {
namespace data {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  ASSERT_TRUE(out) << path;
  out << text;
  ASSERT_TRUE(out) << path;
}

std::string to_string(const at::Tensor& bytes) {
  EXPECT_EQ(bytes.scalar_type(), at::kByte);
  EXPECT_EQ(bytes.dim(), 1);
  const at::Tensor contiguous = bytes.contiguous();
  return std::string(reinterpret_cast<const char*>(contiguous.data_ptr<uint8_t>()), contiguous.numel());
}

at::Tensor to_tensor(const std::string& text) {
  at::Tensor out = at::empty({static_cast<int64_t>(text.size())}, at::kByte);
  std::copy(text.begin(), text.end(), reinterpret_cast<char*>(out.data_ptr<uint8_t>()));
  return out;
}

// Fortune `i`: two lines, distinct from every other, the last without its newline (as it
// stands before the "\n%\n" that ends it).
std::string fortune(int i) {
  return "Fortune number " + std::to_string(i) + " says hello.\n\tSecond line of " + std::to_string(i) + ".";
}

// The message of the error that loading `root` throws.
std::string load_error(const std::string& root) {
  try {
    load_text_corpus(root);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  ADD_FAILURE() << "loaded " << root;
  return "";
}

// A fake corpus of 45 fortunes over two files, written out of name order, beside the things
// the loader must skip: strfile indexes, .u8 links, another link and a subdirectory.
class TextCorpusFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // "beta": fortunes 25..44, the last ending the file without "%" and without newline.
    std::string beta;
    for (int i = 25; i < 45; ++i) beta += fortune(i) + (i < 44 ? "\n%\n" : "");
    write_file(dir + "/beta", beta);
    // "alpha": opens with a "%" line, holds an empty fortune (two "%" lines in a row) after
    // fortune 10, and ends with "%".
    std::string alpha = "%\n";
    for (int i = 0; i < 25; ++i) alpha += fortune(i) + "\n%\n" + (i == 10 ? "%\n" : "");
    write_file(dir + "/alpha", alpha);
    // What must be skipped: were any read, the text or the count of fortunes would change.
    constexpr char kIndex[] = "\0\0\0\2%\nDAT INDEX\n%\n";
    write_file(dir + "/alpha.dat", std::string(kIndex, sizeof kIndex - 1));
    write_file(dir + "/beta.dat", "%\nANOTHER DAT INDEX\n%\n");
    fs::create_symlink("alpha", dir + "/alpha.u8");
    fs::create_symlink("beta", dir + "/beta.u8");
    fs::create_symlink(dir + "/beta", dir + "/gamma");
    fs::create_directory(dir + "/delta");
    write_file(dir + "/delta/inner", "INNER FILE\n%\n");
  }

  const std::string dir = test::make_temp_dir();
};

TEST_F(TextCorpusFilesTest, EveryTwentiethFortuneAcrossTheFilesIsValidation) {
  ASSERT_EQ(kValidationEvery, 20);
  const TextCorpus corpus = load_text_corpus(dir);
  std::string train, validation;
  for (int i = 0; i < 45; ++i) (i == 19 || i == 39 ? validation : train) += fortune(i) + "\n\n";
  EXPECT_EQ(to_string(corpus.train), train);
  EXPECT_EQ(to_string(corpus.validation), validation);
  EXPECT_EQ(corpus.train_documents, 43);
  EXPECT_EQ(corpus.validation_documents, 2);
}

TEST_F(TextCorpusFilesTest, SkipsIndexesLinksAndDirectories) {
  const TextCorpus corpus = load_text_corpus(dir);
  const std::string all = to_string(corpus.train) + to_string(corpus.validation);
  EXPECT_THAT(all, Not(HasSubstr("DAT INDEX")));
  EXPECT_THAT(all, Not(HasSubstr("INNER FILE")));
  // Each fortune once: not again through a link.
  for (int i : {0, 24, 25, 44}) {
    const std::string text = fortune(i) + "\n";
    const size_t first = all.find(text);
    ASSERT_NE(first, std::string::npos) << i;
    EXPECT_EQ(all.find(text, first + 1), std::string::npos) << i;
  }
  EXPECT_EQ(corpus.train_documents + corpus.validation_documents, 45);
}

TEST_F(TextCorpusFilesTest, IsDeterministic) {
  const TextCorpus first = load_text_corpus(dir);
  const TextCorpus second = load_text_corpus(dir);
  EXPECT_TRUE(first.train.equal(second.train));
  EXPECT_TRUE(first.validation.equal(second.validation));
  EXPECT_EQ(first.train_documents, second.train_documents);
  EXPECT_EQ(first.validation_documents, second.validation_documents);
}

TEST(TextCorpusTest, ReadsAFileThatOpensWithAPercentLine) {
  const std::string dir = test::make_temp_dir();
  write_file(dir + "/only", "%\nfirst\n%\nsecond\n%\n");
  const TextCorpus corpus = load_text_corpus(dir);
  EXPECT_EQ(to_string(corpus.train), "first\n\nsecond\n\n");
  EXPECT_EQ(corpus.train_documents, 2);
  EXPECT_EQ(corpus.validation.numel(), 0);
  EXPECT_EQ(corpus.validation.scalar_type(), at::kByte);
  EXPECT_EQ(corpus.validation_documents, 0);
}

// Five files of the package (computers, law, people, pratchett, wisdom) end their last
// fortune with a newline but no "%" line: that fortune should be followed by one blank line
// like every other, not by two.
TEST(TextCorpusTest, ALastFortuneWithoutPercentIsFollowedByOneBlankLine) {
  const std::string dir = test::make_temp_dir();
  write_file(dir + "/ends_with_percent", "one\n%\ntwo\n%\n");
  write_file(dir + "/ends_without_percent", "three\n%\nfour\n");
  const TextCorpus corpus = load_text_corpus(dir);
  EXPECT_EQ(to_string(corpus.train), "one\n\ntwo\n\nthree\n\nfour\n\n");
  EXPECT_EQ(corpus.train_documents, 4);
}

TEST(TextCorpusTest, AnEmptyOrMissingDirectoryNamesThePackage) {
  const std::string empty = test::make_temp_dir();
  const std::string only_skipped = test::make_temp_dir();
  write_file(only_skipped + "/art.dat", "%\nindex\n%\n");
  fs::create_symlink(only_skipped + "/art.dat", only_skipped + "/art.u8");
  const std::string missing = test::make_temp_dir() + "/no-such-dir";
  for (const std::string& root : {empty, only_skipped, missing}) {
    const std::string message = load_error(root);
    EXPECT_THAT(message, HasSubstr(root));
    EXPECT_THAT(message, HasSubstr("sudo apt-get install fortunes"));
  }
}

// Sets MTO_TEXT_CORPUS_DIR for the test, and puts back what was there.
class TextCorpusEnvironmentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const char* value = std::getenv(kVariable)) saved_ = value;
  }
  void TearDown() override {
    if (saved_) {
      ::setenv(kVariable, saved_->c_str(), 1);
    } else {
      ::unsetenv(kVariable);
    }
  }

  static constexpr char kVariable[] = "MTO_TEXT_CORPUS_DIR";
  std::optional<std::string> saved_;
};

TEST_F(TextCorpusEnvironmentTest, TheVariableOverridesThePackageDirectory) {
  const std::string dir = test::make_temp_dir();
  write_file(dir + "/mine", "from the variable\n%\n");
  ASSERT_EQ(::setenv(kVariable, dir.c_str(), 1), 0);
  EXPECT_EQ(default_text_corpus_root(), dir);
  EXPECT_EQ(to_string(load_text_corpus().train), "from the variable\n\n");

  ASSERT_EQ(::setenv(kVariable, "", 1), 0);
  EXPECT_EQ(default_text_corpus_root(), std::string(kTextCorpusPackageDir));
  ASSERT_EQ(::unsetenv(kVariable), 0);
  EXPECT_EQ(default_text_corpus_root(), std::string(kTextCorpusPackageDir));
  EXPECT_EQ(std::string(kTextCorpusPackageDir), "/usr/share/games/fortunes");
}

TEST(TokenWindowsTest, CutsWindowsThatShareOneByteAndDropsTheTail) {
  const at::Tensor stream = at::arange(10, at::kByte);
  const at::Tensor windows = token_windows(stream, 3);
  EXPECT_EQ(windows.scalar_type(), at::kByte);
  ASSERT_EQ(windows.sizes(), (std::vector<int64_t>{3, 4}));
  const at::Tensor expected = at::tensor({0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9}, at::kByte).view({3, 4});
  EXPECT_TRUE(windows.equal(expected)) << windows;

  // Every byte after the first is a target exactly once.
  EXPECT_TRUE(windows.narrow(1, 1, 3).reshape({-1}).equal(stream.narrow(0, 1, 9)));

  // Two more bytes are a tail shorter than a window: dropped.
  const at::Tensor longer = token_windows(at::arange(12, at::kByte), 3);
  EXPECT_TRUE(longer.equal(expected)) << longer;
  // One more makes a fourth window.
  const at::Tensor four = token_windows(at::arange(13, at::kByte), 3);
  ASSERT_EQ(four.size(0), 4);
  EXPECT_TRUE(four[3].equal(at::tensor({9, 10, 11, 12}, at::kByte)));
}

TEST(TokenWindowsTest, LimitKeepsTheFirstWindows) {
  const at::Tensor stream = at::arange(10, at::kByte);
  const at::Tensor all = token_windows(stream, 3);
  EXPECT_TRUE(token_windows(stream, 3, 2).equal(all.narrow(0, 0, 2)));
  EXPECT_TRUE(token_windows(stream, 3, 1).equal(all.narrow(0, 0, 1)));
  EXPECT_TRUE(token_windows(stream, 3, 3).equal(all));
  EXPECT_TRUE(token_windows(stream, 3, 100).equal(all));
  EXPECT_TRUE(token_windows(stream, 3, -1).equal(all));
  EXPECT_EQ(token_windows(stream, 3, 0).sizes(), (std::vector<int64_t>{0, 4}));
}

TEST(TokenWindowsTest, ReturnsACopy) {
  for (int64_t size : {10, 4}) {  // three windows; exactly one window
    for (int64_t limit : {-1, 1}) {
      const at::Tensor stream = at::arange(size, at::kByte);
      at::Tensor windows = token_windows(stream, 3, limit);
      ASSERT_GT(windows.size(0), 0);
      EXPECT_TRUE(windows.is_contiguous());
      windows.fill_(200);
      EXPECT_TRUE(stream.equal(at::arange(size, at::kByte))) << "size " << size << ", limit " << limit;
    }
  }
}

TEST(TokenWindowsTest, RejectsALengthThatIsNotPositive) {
  const at::Tensor stream = at::arange(10, at::kByte);
  EXPECT_THROW(token_windows(stream, 0), std::invalid_argument);
  EXPECT_THROW(token_windows(stream, -3), std::invalid_argument);
}

TEST(TokenWindowsTest, AStreamShorterThanAWindowGivesNoWindows) {
  for (int64_t size : {0, 1, 3}) {
    const at::Tensor windows = token_windows(at::arange(size, at::kByte), 3);
    EXPECT_EQ(windows.sizes(), (std::vector<int64_t>{0, 4})) << size;
    EXPECT_EQ(windows.scalar_type(), at::kByte);
  }
  EXPECT_EQ(token_windows(at::arange(4, at::kByte), 3).size(0), 1);
}

TEST(BigramModelTest, BitsPerByteAreTheSmoothedBigramLoss) {
  // Pairs of "abab": (a,b) twice, (b,a) once; so c(a) = 2, c(b) = 1.
  const BigramModel model(to_tensor("abab"));
  const at::Tensor windows = to_tensor("abab" "bbc!").view({2, 4});
  // Predicted: (a,b) (b,a) (a,b) of the first window, (b,b) (b,c) (c,!) of the second.
  const double p_ab = (2.0 + 1) / (2 + 256);
  const double p_ba = (1.0 + 1) / (1 + 256);
  const double p_bb = 1.0 / (1 + 256);
  const double p_bc = 1.0 / (1 + 256);
  const double p_c_bang = 1.0 / (0 + 256);
  const double expected =
      -(2 * std::log2(p_ab) + std::log2(p_ba) + std::log2(p_bb) + std::log2(p_bc) + std::log2(p_c_bang)) / 6;
  EXPECT_NEAR(model.bits_per_byte(windows), expected, 1e-12);
  // The first byte of a window is never predicted: a window of one pair.
  EXPECT_NEAR(model.bits_per_byte(to_tensor("ab").view({1, 2})), -std::log2(p_ab), 1e-12);
}

TEST(BigramModelTest, AnEmptyTrainingStreamIsUniform) {
  const BigramModel model(to_tensor(""));
  EXPECT_NEAR(model.bits_per_byte(token_windows(at::arange(100, at::kByte), 9)), 8.0, 1e-12);
}

TEST(BigramModelTest, TextLikeTheTrainingTextCostsFewerBits) {
  std::string train, held_out;
  for (int i = 0; i < 200; ++i) {
    (i % 10 == 9 ? held_out : train) +=
        "The quick brown fox number " + std::to_string(i) + " jumps over the lazy dog.\n";
  }
  const BigramModel model(to_tensor(train));
  const at::Tensor text = to_tensor(held_out);
  // The same bytes in another order, and bytes from a fixed pseudo-random sequence.
  std::string shuffled = held_out, random(held_out.size(), '\0');
  uint32_t state = 12345;
  for (size_t i = shuffled.size() - 1; i > 0; --i) {
    state = state * 1664525u + 1013904223u;
    std::swap(shuffled[i], shuffled[(state >> 8) % (i + 1)]);
  }
  for (char& byte : random) {
    state = state * 1664525u + 1013904223u;
    byte = static_cast<char>(state >> 24);
  }
  const double text_bits = model.bits_per_byte(token_windows(text, 16));
  const double shuffled_bits = model.bits_per_byte(token_windows(to_tensor(shuffled), 16));
  const double random_bits = model.bits_per_byte(token_windows(to_tensor(random), 16));
  EXPECT_GT(text_bits, 0);
  EXPECT_LT(text_bits, 3.0);
  // (Shuffled text can cost more than random bytes: its unseen pairs start with common
  // bytes, whose smoothed probabilities are spread over more counts.)
  EXPECT_LT(text_bits + 1, shuffled_bits);
  EXPECT_LT(text_bits + 1, random_bits);
  EXPECT_GT(random_bits, 7.5);
}

TEST(BigramModelTest, NoWindowsCostNothing) {
  const BigramModel model(to_tensor("some training text"));
  EXPECT_EQ(model.bits_per_byte(at::empty({0, 65}, at::kByte)), 0.0);
  EXPECT_EQ(model.bits_per_byte(token_windows(to_tensor("short"), 64)), 0.0);
}

TEST(RealTextCorpusTest, LoadsThePackageAndTheBigramBaselineIsSensible) {
  if (!fs::is_directory(kTextCorpusPackageDir)) {
    GTEST_SKIP() << kTextCorpusPackageDir << " is missing (sudo apt-get install fortunes)";
  }
  const TextCorpus corpus = load_text_corpus(kTextCorpusPackageDir);
  const double train = corpus.train.numel(), validation = corpus.validation.numel();
  EXPECT_GT(train, 2'000'000);
  EXPECT_GT(validation / (train + validation), 0.04);
  EXPECT_LT(validation / (train + validation), 0.06);
  EXPECT_EQ(corpus.validation_documents, (corpus.train_documents + corpus.validation_documents) / kValidationEvery);

  const BigramModel model(corpus.train);
  const double bits = model.bits_per_byte(token_windows(corpus.validation, 64));
  EXPECT_GT(bits, 3.0);
  EXPECT_LT(bits, 4.5);
}

}  // namespace
}  // namespace data
}  // namespace mto
