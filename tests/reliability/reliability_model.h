// The model that the reliability tests save, kill, corrupt and restore: a registered
// model-like ("reliability_model") of several dtypes whose weights are a pure function of a
// generation number, so a checker can tell which save a directory holds, bit for bit.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <torch/nn/module.h>

namespace mto {
namespace reliability {

// Megabytes of F32 weights in the model the crash tests use: enough that one save spans
// several shard writes of a few milliseconds each, and the commit.
inline constexpr int64_t kDefaultMegabytes = 24;

// The model-like "reliability_model" with `megabytes` of F32 weights (in 4 MB matrices,
// split over the default mesh's tensor-parallel group: see use_split_model_from_env), plus a
// BF16, an I64 and a BOOL tensor. Every byte is a hash of `generation`, the tensor and the
// position in the global tensor (floats of any bit pattern, NaNs included; bools 0 or 1).
// mto::restore(dir) of a checkpoint of it builds it with its matrices uninitialized (the
// checkpoint fills every byte, as make_model does).
std::shared_ptr<torch::nn::Module> make_model(int64_t generation,
                                              int64_t megabytes = kDefaultMegabytes);

// When MTO_TEST_SPLIT=1, makes the default mesh (dp=1, tp=world size), so that the model's
// matrices are split over every rank. Collective under mpirun.
void use_split_model_from_env();

// Saves `model` at `dir` as the save loops of the crash tests do: with mto::save, or, when
// MTO_TEST_ASYNC=1, with mto::save_async, overwriting every tensor of `model` with other bits
// while the background save runs and putting the tensors back before waiting, so that a
// checkpoint that holds anything but `model` shows a snapshot that was not taken in time.
void save_generation(torch::nn::Module& model, const std::string& dir);

// "" if every tensor of `a` equals (bit for bit) the tensor of the same name in `b`; else
// names the first that differs or is missing.
std::string weight_difference(const torch::nn::Module& a, const torch::nn::Module& b);

}  // namespace reliability
}  // namespace mto
