#pragma once

#include <cstdint>

#include <torch/nn/module.h>

#include "distributed/communicator.h"
#include "tools/data/dataset.h"

namespace mto {
namespace cli {

// Accuracy and mean cross-entropy loss of a classifier over a data set.
struct Evaluation {
  double accuracy = 0;
  double loss = 0;
  int64_t samples = 0;
};

// Evaluates the zoo classifier `model` on `dataset` split over the ranks of `communicator`:
// each rank runs its contiguous share in batches of `batch_size`, then one all-reduce sums
// the counts. Collective; every rank returns the same result. Shows progress when
// `show_progress`.
Evaluation evaluate(torch::nn::Module& model, const data::Dataset& dataset,
                    Communicator& communicator, int64_t batch_size, bool show_progress);

}  // namespace cli
}  // namespace mto
