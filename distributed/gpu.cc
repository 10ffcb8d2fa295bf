#include "distributed/gpu.h"

#include <cuda_runtime_api.h>

namespace mto {

int visible_gpu_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error of a machine without a driver
    return 0;
  }
  return count;
}

}  // namespace mto
