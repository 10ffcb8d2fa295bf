// The README's "Using it from C++" example as a whole program, on as many ranks as mpirun
// starts (one process without mpirun): build the zoo's fashion_cnn from its model-like, make
// every rank hold rank 0's weights by wrapping it in mto::DataParallel, quantize it to int8
// with each rank calibrating on its own share of the Fashion-MNIST images, save it as one
// checkpoint, restore it from the model-like recorded there, and check on every rank that the
// restored model's outputs are bit-identical to the quantized model's.
//
//   mpirun -np 2 bazel-bin/tools/examples/quantize_save_restore CHECKPOINT_DIR [CALIB_SAMPLES]
//
// CALIB_SAMPLES: how many training images to calibrate on, split over the ranks (1024 by
// default). CHECKPOINT_DIR must be the same path on every rank, and new or an mto checkpoint
// (which the save replaces). The text between the ANCHOR lines is the README's, word for word
// (tests/tools:readme_cpp_examples_test checks it).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <cstdio>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>

// ANCHOR: readme
#include "distributed/data_parallel.h"
#include "distributed/world.h"
#include "modes/quantization/quantize.h"
#include "opt/checkpoint.h"
#include "opt/model_like.h"
#include "tools/data/fashion_mnist.h"
#include "tools/zoo/forward.h"
// ANCHOR_END: readme

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::cerr << "usage: quantize_save_restore CHECKPOINT_DIR [CALIB_SAMPLES]\n";
    return 2;
  }
  try {
    at::set_num_threads(1);  // ranks share the machine's cores
    const std::string dir = argv[1];
    const int64_t calib_samples = argc > 2 ? std::stoll(argv[2]) : 1024;

    // ANCHOR: readme
    // A model from a registered factory, so the checkpoint can rebuild it with no user code.
    // Each rank builds it with its own random weights: wrapping it in mto::DataParallel
    // (collective) copies rank 0's to every rank, as save needs. Train through the wrapper
    // (tools/examples/data_parallel_round_trip.cc); modes apply to the unwrapped model.
    mto::DataParallel trained(mto::ModelLike("fashion_cnn", {{"hidden", 64}}).build());
    mto::ModulePtr model = trained->module();

    // This rank's share of the calibration images.
    const std::shared_ptr<mto::Communicator> world = mto::world();
    const mto::data::Dataset my_slice = mto::data::shard(
        mto::data::load_fashion_mnist(mto::data::Split::kTrain, mto::data::default_fashion_mnist_root(), calib_samples),
        world->rank(), world->world_size());

    // Quantize (the "quantize" mode, then "max_calibrate" over this rank's data; every
    // amax is synced over the ranks in one collective). Any mode chain: mto::apply_mode.
    model = mto::quantization::quantize(model, "int8", [&](torch::nn::Module& m) {
      for (const at::Tensor& batch : my_slice.images.split(64)) mto::zoo::forward(m, batch);
    });

    // Collective save: rank 0 writes the Protobuf modelopt state, every rank its shard.
    mto::save(*model, dir);

    // Restore on any world size, from the recorded model-like; every byte is verified.
    mto::ModulePtr restored = mto::restore(dir);
    mto::DataParallel wrapped(restored);  // wrap after restoring; save unwraps
    // ANCHOR_END: readme

    // The same probe images on every rank: the restored model, wrapped again, must give the
    // quantized model's outputs bit for bit.
    const at::Tensor probe =
        mto::data::load_fashion_mnist(mto::data::Split::kTest, mto::data::default_fashion_mnist_root(), 32).images;
    at::NoGradGuard no_grad;
    const bool identical = mto::zoo::forward(*wrapped, probe).equal(mto::zoo::forward(*model, probe));
    at::Tensor identical_ranks = at::tensor({identical ? 1 : 0}, at::kInt);
    world->all_reduce(identical_ranks, mto::ReduceOp::kSum);
    const int count = identical_ranks.item<int>();
    if (world->rank() == 0) {
      std::printf("%d rank(s): quantized fashion_cnn to int8 (calibrated on %lld images), saved %s, restored it: "
                  "outputs bit-identical on %d/%d ranks\n",
                  world->world_size(), static_cast<long long>(calib_samples), dir.c_str(), count,
                  world->world_size());
    }
    return count == world->world_size() ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "quantize_save_restore: " << e.what() << "\n";
    return 1;
  }
}
