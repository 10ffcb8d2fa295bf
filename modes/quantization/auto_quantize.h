#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "modes/quantization/calibrate.h"
#include "opt/mode.h"
#include "opt/runtime_context.h"

namespace mto {
namespace quantization {

// The scoring data of auto_quantize: `count` batches, numbered alike on every mesh.
// auto_quantize deals them out over the data-parallel ranks and adds their scores up in
// batch order, so the scores are the same bits on any number of ranks (with the same
// number of intra-op threads per rank).
struct ScoreBatches {
  int64_t count = 0;
  // Method kGradient: the loss of batch `index` on `model`, a scalar that requires grad.
  std::function<at::Tensor(torch::nn::Module& model, int64_t index)> loss;
  // Method kKlDiv: the logits of batch `index` on `model`, the vocabulary last.
  std::function<at::Tensor(torch::nn::Module& model, int64_t index)> logits;
  // Names the data (and the calibration data): a search checkpoint of other data is refused.
  std::string fingerprint;
};

// How a layer's loss of accuracy under a format is scored (Model Optimizer's `method`).
enum class ScoreMethod {
  // Sum over the batches of sum((dLoss/dY * (Y_format - Y))^2), Y the layer's output.
  kGradient,
  // Sum over the batches of KL(p_float || p_format) of the model's output distribution,
  // with only that layer in that format.
  kKlDiv,
};

// Options of auto_quantize (Model Optimizer's mtq.auto_quantize).
struct AutoQuantizeOptions {
  // Candidate formats: quantize presets calibrated with max (int8, fp8, int4_blockwise),
  // SmoothQuant (int8_smoothquant) or AWQ-lite (int4_awq); "not quantized" is always a
  // candidate.
  std::vector<std::string> formats;
  // The budget: the weights' bits averaged over the searched layers' parameters, in
  // [the fewest bits of a format, 16].
  double effective_bits = 4.8;
  ScoreMethod method = ScoreMethod::kGradient;
  ScoreBatches score;
  // The search checkpoint, a file that the search's first rank reads (and broadcasts) and
  // writes after calibration and after every round of batches, checksummed and atomically;
  // empty for none. A search interrupted on any number of ranks resumes from it on any
  // other, with the same result.
  std::string checkpoint;
  // Progress lines on rank 0.
  bool verbose = false;
  // kForwardLoop (this rank's share of the calibration data: it calibrates the candidates
  // and, at the end, the chosen quantizers) and the mesh, whose data-parallel group shares
  // the data and reduces the statistics and scores.
  RuntimeContext context;
};

// One searched layer: its parameters, each candidate's bits and score, and the choice.
struct AutoQuantizeLayer {
  std::string name;
  int64_t params = 0;
  // Per candidate, in the order of AutoQuantizeResult::formats.
  std::vector<double> scores;
  int chosen = 0;
};

// What auto_quantize found.
struct AutoQuantizeResult {
  // The candidates from fewest to most bits, "none" (16 bits) last, with their bits.
  std::vector<std::string> formats;
  std::vector<int> bits;
  std::vector<AutoQuantizeLayer> layers;
  // Layers left in floating point: linear ones that a candidate format leaves unquantized
  // (lm_head), and convolutions, which auto_quantize does not search.
  std::vector<std::string> excluded;
  double effective_bits = 0;
  // The quantize config the choice expands to (rules per layer), as applied.
  std::string config;
  // Scoring batches scored by this rank, and taken from the search checkpoint.
  int64_t batches_scored_here = 0;
  int64_t batches_resumed = 0;
  // The most memory any rank's resident set grew by while scoring (its peak over its
  // size when scoring began, e.g. the activations of one batch); -1 where Linux's peak
  // counter cannot be reset (/proc/self/clear_refs).
  int64_t peak_extra_bytes = -1;
};

// Picks one format per linear layer of the float `model` so that the weights' effective
// bits stay within the budget while the loss suffers least, then applies "quantize" with
// the per-layer config that choice expands to and "max_calibrate", so the modelopt state
// records it and restore needs no data. Each candidate is calibrated once on the
// calibration data (per-tensor input amax, max over the data-parallel group); a format that
// smooths (SmoothQuant, AWQ-lite) is calibrated by its own algorithm on all searched layers
// at once, as Model Optimizer calibrates each recipe, and scored with its smoothed weight and
// pre_quant_scale. Layers that choose it keep that calibration (smoothed weight,
// pre_quant_scale, amaxes), which the "max_calibrate" entry's metadata then records, so that
// Model Optimizer's single calibrated quantizer state is what restore rebuilds. A smoothing
// format is calibrated again when a search resumes (deterministic, so its candidates are
// the same); while it is calibrated, this rank holds a copy of its searched weights. Each
// layer's
// score for a format (options.method) is summed over the scoring batches, which are dealt
// out round-robin over the data-parallel ranks; each batch's scores travel in one
// collective per round (one round in all without a checkpoint) and are added in batch
// order. Scores are made non-increasing with more bits; the choice is the exact solution of
// the multiple-choice knapsack (multiple_choice_knapsack.h), the same on every rank.
//
// A model split over tensor-parallel ranks (the context's mesh) is searched split: each
// tensor-parallel layer is one decision; a row-parallel layer's ranks share its input and
// weight amaxes (max) and sum their parts of each candidate's output; a column-parallel
// layer's scores are the sum of its ranks' output features, reduced once per batch. The
// scores then agree with the unsplit model's up to the rounding of those sums.
//
// Collective over the context's data-parallel group (and tensor-parallel groups). Returns
// the converted model and what was found. Throws ConfigError for an unknown format, a budget out of range, missing scoring data, or a block format whose blocks a
// split layer's ranks cannot hold whole; ApplyModeError for a model that is quantized
// already or has no linear layer to search; CheckpointError for a search checkpoint that is
// damaged or was written for another model (its tensors, whatever their split), formats,
// method or data.
std::pair<ModulePtr, AutoQuantizeResult> auto_quantize(ModulePtr model, const AutoQuantizeOptions& options);

}  // namespace quantization
}  // namespace mto
