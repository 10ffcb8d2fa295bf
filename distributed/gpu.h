#pragma once

namespace mto {

// Number of GPUs the CUDA runtime sees on this machine; 0 when there is no driver or no
// device (the CPU-only machines mto is built and tested on).
int visible_gpu_count();

}  // namespace mto
