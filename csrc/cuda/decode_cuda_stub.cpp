// Built instead of the .cu sources when CMake finds no nvcc: same symbols, no GPU.
#include "decode_cuda.h"

namespace pycodec {
namespace cuda {
bool compiled() { return false; }
int device_count() { return 0; }
const char* last_error_string() { return "this build has no CUDA kernels"; }
// The launch settings, kept and clamped as the kernels' build keeps them (nothing reads them).
static uint32_t warps = kDefaultWarpsPerBlock, x_shared_bytes = kMaxGemvXSharedBytes,
                stage_symbols = kMaxDecodeStageSymbols;
static uint32_t exchange(uint32_t& setting, uint32_t value) {
  const uint32_t before = setting;
  setting = value;
  return before;
}
uint32_t set_warps_per_block(uint32_t value) { return exchange(warps, clamp_setting(value, 1, kMaxWarpsPerBlock)); }
uint32_t warps_per_block() { return warps; }
uint32_t set_gemv_x_shared_bytes(uint32_t bytes) {
  return exchange(x_shared_bytes, clamp_setting(bytes, 0, kMaxGemvXSharedBytes));
}
uint32_t gemv_x_shared_bytes() { return x_shared_bytes; }
uint32_t set_decode_stage_symbols(uint32_t symbols) {
  return exchange(stage_symbols, clamp_setting(symbols, 0, kMaxDecodeStageSymbols));
}
uint32_t decode_stage_symbols_limit() { return stage_symbols; }
static uint32_t staged_gemv = 1;
uint32_t set_split_gemv_staged(uint32_t on) { return exchange(staged_gemv, clamp_setting(on, 0, 1)); }
uint32_t split_gemv_staged() { return staged_gemv; }
static uint32_t affine_staged = 1;
uint32_t set_affine_gemv_staged(uint32_t on) { return exchange(affine_staged, clamp_setting(on, 0, 1)); }
uint32_t affine_gemv_staged() { return affine_staged; }
static uint32_t stream_shared_on = 1;
uint32_t set_stream_shared(uint32_t on) { return exchange(stream_shared_on, clamp_setting(on, 0, 1)); }
uint32_t stream_shared() { return stream_shared_on; }
static uint32_t word_stores_on = 1;
uint32_t set_stage_word_stores(uint32_t on) { return exchange(word_stores_on, clamp_setting(on, 0, 1)); }
uint32_t stage_word_stores() { return word_stores_on; }
Status decode_symbols(const DeviceStream&, uint8_t*, uintptr_t) { return Status::BadArgument; }
Status windowed_decode(const windowed::StreamView&, const uint32_t*, uint8_t*, uint32_t*, uintptr_t) {
  return Status::BadArgument;
}
Status windowed_decode_split(const windowed::StreamView&, const uint32_t*, const windowed::SplitDecodeArgs&, uint32_t*,
                             uintptr_t) {
  return Status::BadArgument;
}
uint32_t split_decode_max_chunk() { return 0; }
Status windowed_gemv_affine(const windowed::StreamView&, const uint64_t*, const uint32_t*, const windowed::AffineArgs&,
                            uint32_t, uintptr_t) {
  return Status::BadArgument;
}
Status windowed_gemv_split(const windowed::StreamView&, const uint64_t*, const uint32_t*, const windowed::SplitArgs&,
                           uint32_t, uintptr_t) {
  return Status::BadArgument;
}
Status split_merge(const uint8_t*, uint64_t, const uint16_t*, const uint32_t*, uint64_t, uint32_t, uint16_t*, uintptr_t) {
  return Status::BadArgument;
}
Status windowed_tile_affine(const windowed::StreamView&, const uint32_t*, const windowed::TileArgs&, uint32_t,
                            uintptr_t) {
  return Status::BadArgument;
}
Status fixed12_gemv(const fixed12::GemvArgs&, uint32_t, uintptr_t) { return Status::BadArgument; }
static uint32_t fixed12_tensor_cores_on = 1;
uint32_t set_fixed12_tensor_cores(uint32_t on) { return exchange(fixed12_tensor_cores_on, clamp_setting(on, 0, 1)); }
uint32_t fixed12_tensor_cores() { return fixed12_tensor_cores_on; }
Status fixed12_decode(const uint32_t*, const uint32_t*, uint64_t, uint32_t, uint16_t*, uintptr_t) {
  return Status::BadArgument;
}
}  // namespace cuda
}  // namespace pycodec
