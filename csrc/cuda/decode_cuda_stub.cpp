// Built instead of the .cu sources when CMake finds no nvcc: same symbols, no GPU.
#include "decode_cuda.h"

namespace pycodec {
namespace cuda {
bool compiled() { return false; }
int device_count() { return 0; }
Status decode_symbols(const DeviceStream&, uint8_t*, uintptr_t) { return Status::BadArgument; }
bool gemv_affine_supported(uint64_t, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t) { return false; }
Status gemv_affine(const DeviceStream&, const uint16_t*, const uint16_t*, bool, uint32_t, uint32_t, uint32_t,
                   const uint16_t*, uint32_t, float*, uintptr_t) {
  return Status::BadArgument;
}
}  // namespace cuda
}  // namespace pycodec
