#pragma once

#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>

namespace mto {
namespace data {

// Where the Debian package `fortunes` installs its text: about 2.5 MB of English (quotes,
// jokes, poems, definitions) in 44 files of fortunes separated by lines holding "%".
constexpr char kTextCorpusPackageDir[] = "/usr/share/games/fortunes";

// The directory to read the text corpus from: $MTO_TEXT_CORPUS_DIR if it is set and not
// empty, else kTextCorpusPackageDir.
std::string default_text_corpus_root();

// A byte-level text corpus split into training and validation streams.
struct TextCorpus {
  // The training and validation text as uint8 [bytes].
  at::Tensor train;
  at::Tensor validation;
  // How many fortunes (documents) each holds.
  int64_t train_documents = 0;
  int64_t validation_documents = 0;
};

// Every kValidationEvery-th fortune (counting across the files in name order) goes to
// validation, the others to training.
constexpr int64_t kValidationEvery = 20;

// Reads every regular file of `root` except the strfile indexes (*.dat) and the links
// (*.u8), in name order, splits each into fortunes at the lines holding "%", and deals the
// fortunes into training and validation (kValidationEvery), each fortune followed by a
// blank line. Deterministic: the same files give the same split on every rank.
//
// Throws std::runtime_error naming `root` when it holds no text file ("the text corpus
// (Debian package fortunes) is not in <root>; install it with: sudo apt-get install
// fortunes"), or naming the file when one cannot be read.
TextCorpus load_text_corpus(const std::string& root = default_text_corpus_root());

// Cuts `stream` (uint8 [bytes]) into windows of `length` + 1 bytes at a stride of `length`,
// so that every byte after the first is a prediction target exactly once; the tail shorter
// than a window is dropped. Keeps the first `limit` windows (all when negative or larger).
// Returns uint8 [windows, length + 1] (a copy). Throws std::invalid_argument if `length`
// is not positive.
at::Tensor token_windows(const at::Tensor& stream, int64_t length, int64_t limit = -1);

// token_windows of `stream`, the corpus's `part` ("training", "validation"), for a model
// whose context is `length` bytes. Throws std::invalid_argument naming both lengths when not
// one window fits, so that no command runs on an empty set.
at::Tensor corpus_windows(const at::Tensor& stream, const std::string& part, int64_t length, int64_t limit = -1);

}  // namespace data
}  // namespace mto
