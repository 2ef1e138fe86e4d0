// Built instead of the .cu sources when CMake finds no nvcc: same symbols, no GPU.
#include "decode_cuda.h"

namespace pycodec {
namespace cuda {
bool compiled() { return false; }
int device_count() { return 0; }
Status decode_symbols(const DeviceStream&, uint8_t*, uintptr_t) { return Status::BadArgument; }
}  // namespace cuda
}  // namespace pycodec
