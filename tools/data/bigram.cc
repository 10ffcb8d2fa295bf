#include "tools/data/bigram.h"

#include <ATen/ATen.h>

namespace mto {
namespace data {

BigramModel::BigramModel(const at::Tensor& train) {
  const at::Tensor bytes = train.to(at::kLong);
  at::Tensor counts = at::zeros({256 * 256}, at::kDouble);
  if (bytes.numel() > 1) {
    const at::Tensor pairs = bytes.narrow(0, 0, bytes.numel() - 1) * 256 + bytes.narrow(0, 1, bytes.numel() - 1);
    counts = at::bincount(pairs, {}, 256 * 256).to(at::kDouble);
  }
  counts = counts.view({256, 256}) + 1;
  log2_probability_ = at::log2(counts / counts.sum(1, /*keepdim=*/true));
}

double BigramModel::bits_per_byte(const at::Tensor& windows) const {
  if (windows.numel() == 0 || windows.size(1) < 2) return 0;
  const int64_t length = windows.size(1) - 1;
  const at::Tensor tokens = windows.to(at::kLong);
  const at::Tensor pairs = tokens.narrow(1, 0, length) * 256 + tokens.narrow(1, 1, length);
  return -log2_probability_.view({-1}).index_select(0, pairs.reshape({-1})).mean().item<double>();
}

}  // namespace data
}  // namespace mto
