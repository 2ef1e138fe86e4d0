// pycodec CUDA helpers shared by the kernel files: CUDA errors as Status, and the pointer check.
#pragma once

#include <cuda_runtime.h>

#include "../codec/status.h"

namespace pycodec {
namespace cuda {

// The last CUDA error a Status::CudaError stands for, per thread (one definition: inline).
inline cudaError_t& last_cuda_error() {
  thread_local cudaError_t err = cudaSuccess;
  return err;
}

inline Status from_cuda(cudaError_t err) {
  if (err == cudaSuccess) return Status::Ok;
  last_cuda_error() = err;
  (void)cudaGetLastError();  // clear a non-sticky error so later calls start clean
  return Status::CudaError;
}

// A host pointer or one on another device would fault asynchronously and poison the
// context; catch it while it is still a plain argument error.
inline Status check_device_pointers(const void* const* ptrs, int n) {
  int device = 0;
  Status st = from_cuda(cudaGetDevice(&device));
  if (st != Status::Ok) return st;
  for (int i = 0; i < n; ++i) {
    if (!ptrs[i]) continue;
    cudaPointerAttributes attr;
    if ((st = from_cuda(cudaPointerGetAttributes(&attr, ptrs[i]))) != Status::Ok) return st;
    if ((attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) || attr.device != device)
      return Status::BadArgument;
  }
  return Status::Ok;
}

}  // namespace cuda
}  // namespace pycodec
