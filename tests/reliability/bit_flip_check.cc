// Single-bit flips in every file of a checkpoint written by several ranks: 64 positions spread
// over the data of every shard (first and last byte included), and every byte of every
// header: the 8-byte length and JSON of each shard, MANIFEST, modelopt_state.pb and the index.
// Each flip must be caught with an error naming the file (and, for tensor data, the tensor
// and its byte range); a flip that the reader accepts counts as accepted only if the restored
// weights are still bit-identical, and as a failure otherwise.
//
//   bit_flip_check DIR GEN MB    (DIR holds generation GEN of the MB-megabyte model)
#include <ATen/Parallel.h>

#include <fstream>
#include <iostream>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "opt/checkpoint.h"
#include "serialization/checkpoint_error.h"
#include "serialization/checkpoint_layout.h"
#include "serialization/tensor_blocks.h"
#include "tests/reliability/reliability_model.h"

namespace mto {
namespace reliability {
namespace {

void flip_bit(const std::string& path, uint64_t offset, int bit) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c;
  f.read(&c, 1);
  c = static_cast<char>(c ^ (1 << bit));
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
}

struct Tally {
  int tried = 0;
  int detected = 0;
  int accepted_identical = 0;
};

class FlipChecker {
 public:
  FlipChecker(std::string dir, int64_t gen, int64_t megabytes)
      : dir_(std::move(dir)), expected_(make_model(gen, megabytes)), manifest_(read_checkpoint_contents(dir_).manifest) {}

  // Flips bit `bit` of `file` at `offset`, reads the checkpoint back (every 8th flip with a
  // full restore, the others with verify_checkpoint), restores the bit, and counts.
  // `must_mention` is a text the error must hold besides the file's path.
  void flip(const std::string& kind, const std::string& file, uint64_t offset, const std::string& must_mention) {
    const std::string path = path_in(dir_, file);
    const int bit = static_cast<int>(offset % 8);
    Tally& tally = tallies_[kind];
    const bool full = tally.tried++ % 8 == 0;
    flip_bit(path, offset, bit);
    try {
      if (full) {
        const std::string difference = weight_difference(*restore(dir_), *expected_);
        if (!difference.empty()) {
          failure(absl::StrCat("SILENT WRONG RESULT: a flip of bit ", bit, " at byte ", offset, " of ", path,
                               " restored with tensor ", difference, " changed"));
        } else {
          ++tally.accepted_identical;
        }
      } else {
        verify_checkpoint(dir_);
        // verify_checkpoint accepted it: the restore must still give the same weights.
        if (weight_difference(*restore(dir_), *expected_).empty()) {
          ++tally.accepted_identical;
        } else {
          failure(absl::StrCat("SILENT WRONG RESULT: a flip at byte ", offset, " of ", path, " passed verification"));
        }
      }
    } catch (const CheckpointError& e) {
      const std::string message = e.what();
      if (message.find(path) == std::string::npos || message.find(must_mention) == std::string::npos) {
        failure(absl::StrCat("the error for a flip at byte ", offset, " of ", path, " does not name the file and \"",
                             must_mention, "\": ", message));
      } else {
        ++tally.detected;
      }
    }
    flip_bit(path, offset, bit);
  }

  // The tensor and checksum block whose data holds `offset` of shard `shard`, as the error
  // names them.
  std::string tensor_at(uint32_t shard, uint64_t offset) const {
    for (const auto& t : manifest_.tensors()) {
      if (t.shard() != shard || offset < t.offset() || offset >= t.offset() + t.length()) continue;
      const mto::MatrixShape m = mto::matrix_shape({t.shape().begin(), t.shape().end()});
      const uint64_t element = (offset - t.offset()) / (t.length() / (m.rows * m.cols));
      const uint64_t row = element / m.cols, col = element % m.cols;
      for (const auto& b : mto::blocks_of(t)) {
        if (row >= b.row_begin() && row < b.row_end() && col >= b.col_begin() && col < b.col_end()) {
          return absl::StrCat("tensor ", t.name(), " rows [", b.row_begin(), ", ", b.row_end(), ") x columns [",
                              b.col_begin(), ", ", b.col_end(), ")");
        }
      }
    }
    return "?";
  }

  void run() {
    for (int s = 0; s < manifest_.shards_size(); ++s) {
      const ShardRecord& shard = manifest_.shards(s);
      // 64 positions spread over the data, the first and the last byte included.
      const uint64_t first = shard.data_begin(), last = shard.size() - 1;
      for (uint64_t k = 0; k < 64; ++k) {
        const uint64_t offset = first + (last - first) * k / 63;
        flip("shard data", shard.file(), offset, tensor_at(s, offset));
      }
      for (uint64_t offset = 0; offset < 8; ++offset) flip("safetensors length prefix", shard.file(), offset, "");
      for (uint64_t offset = 8; offset < shard.data_begin(); ++offset) {
        flip("safetensors JSON header", shard.file(), offset, "");
      }
    }
    for (const auto& [kind, file] : {std::pair<std::string, std::string>{"MANIFEST", kManifestFileName},
                                     {"modelopt_state.pb", manifest_.modelopt_state().file()},
                                     {"index json", manifest_.index().file()}}) {
      const uint64_t size = kind == "MANIFEST" ? manifest_size() : (kind == "index json" ? manifest_.index().size()
                                                                                          : manifest_.modelopt_state().size());
      for (uint64_t offset = 0; offset < size; ++offset) flip(kind, file, offset, "");
    }
  }

  int report() const {
    int tried = 0, detected = 0;
    for (const auto& [kind, t] : tallies_) {
      std::cout << "bit flips in " << kind << ": " << t.detected << " detected of " << t.tried << " tried"
                << (t.accepted_identical ? absl::StrCat(", ", t.accepted_identical, " accepted with identical weights") : "")
                << "\n";
      tried += t.tried;
      detected += t.detected;
    }
    std::cout << "== bit flips: " << detected << " detected of " << tried << " tried in " << manifest_.shards_size()
              << " shards; " << failures_ << " failures" << std::endl;
    return failures_ == 0 ? 0 : 1;
  }

 private:
  uint64_t manifest_size() const {
    std::ifstream in(path_in(dir_, kManifestFileName), std::ios::binary | std::ios::ate);
    return static_cast<uint64_t>(in.tellg());
  }

  void failure(const std::string& what) {
    ++failures_;
    std::cout << "FAIL: " << what << std::endl;
  }

  std::string dir_;
  ModulePtr expected_;
  Manifest manifest_;
  std::map<std::string, Tally> tallies_;
  int failures_ = 0;
};

}  // namespace
}  // namespace reliability
}  // namespace mto

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: bit_flip_check DIR GEN MB\n";
    return 64;
  }
  at::set_num_threads(1);
  mto::reliability::FlipChecker checker(argv[1], std::atoll(argv[2]), std::atoll(argv[3]));
  checker.run();
  return checker.report();
}
