// pycodec CUDA entry points: torch-free, raw device pointers and a caller-owned stream.
//
// The extension links the CUDA runtime statically and never links libtorch, so one
// wheel serves every torch version; torch hands us data_ptr()s and its current stream.
// When the build has no nvcc, decode_cuda_stub.cpp supplies the same symbols and
// compiled() returns false.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../codec/fixed12.h"
#include "../codec/status.h"
#include "../codec/windowed_gemv.h"
#include "../codec/windowed_tile.h"

namespace pycodec {
namespace cuda {

// ---- format v1 (legacy streams: interleaved Huffman and rANS, csrc/cuda/decode_cuda.cu)
//
// Where one stream's pieces live in device memory. The decode table is the host-built
// 4096 x uint32 table of either coder (codec.h: build_decode_table), uploaded once per
// tensor, so kernels never rebuild it.
struct DeviceStream {
  uint8_t coder;               // 1 = huffman, 2 = rans (format.h)
  uint64_t n_symbols;
  uint32_t chunk_symbols;
  uint64_t n_chunks;
  const uint32_t* index_dev;   // n_chunks word offsets into payload_dev
  const uint32_t* payload_dev; // payload_words words
  uint64_t payload_words;
  const uint32_t* table_dev;   // 4096 entries
};

bool compiled();
int device_count();

// Decodes all symbols into out_dev (n_symbols bytes) on `stream` (a cudaStream_t).
// Returns CorruptPayload-free Ok or an argument error; corrupt payloads are detected
// on the CPU path (the GPU path decodes streams already verified at load time) and
// never make the kernel read outside its chunk.
Status decode_symbols(const DeviceStream& s, uint8_t* out_dev, uintptr_t stream);

// ---- format v2 (windowed-lane Huffman, csrc/cuda/windowed_cuda.cu)
//
// table_dev: the stream's tables as build_decode_table writes them: 4096 uint32 multi-symbol
// entries, the 256 code lengths as bytes, the 4096-byte count table (5184 words, 16-byte aligned).
// value_table_dev: its 4096 value entries (emulate.h: build_value_table), 16-byte aligned.
// The payload (and the raw bits of split weights) must be followed by windowed::kSlackWords
// readable words: the kernels read without per-load bounds tests (windowed_cuda.cu).

// Message of the CUDA error behind the last Status::CudaError of this thread.
const char* last_error_string();

// Decodes all symbols into out_dev (n_symbols bytes). *status_dev gets bit 0 set when a
// chunk's last lane overran its window (a corrupt stream; streams are verified on the CPU
// before they reach a GPU, so this is a second line of defence). Pointers are checked to be
// device pointers of the current device.
Status windowed_decode(const windowed::StreamView& s, const uint32_t* table_dev, uint8_t* out_dev,
                       uint32_t* status_dev, uintptr_t stream);

// The 16-bit float bits of a lossless split weight (a.out: n_symbols of them), decoded from its
// stream and raw bits in one kernel (windowed_gemv.h: SplitDecodeArgs): what windowed_decode +
// split_merge compute, without the symbols crossing global memory. Each warp stages its chunk in
// shared memory: TooLarge when one chunk does not fit this device's (split_decode_max_chunk).
// *status_dev as for windowed_decode.
Status windowed_decode_split(const windowed::StreamView& s, const uint32_t* table_dev,
                             const windowed::SplitDecodeArgs& a, uint32_t* status_dev, uintptr_t stream);
// The longest chunk (symbols) windowed_decode_split stages on the current device (0 without CUDA).
uint32_t split_decode_max_chunk();

// y[b, n] = sum_k x[b, k] (q[n, k] - zero[n, g]) scale[n, g] (windowed_gemv.h: AffineArgs; the
// value entries hold bf16(q - a.zero_in_values)), batch 1..8 or 16. Decoded weights never reach
// global memory.
Status windowed_gemv_affine(const windowed::StreamView& s, const uint64_t* value_table_dev, const uint32_t* table_dev,
                            const windowed::AffineArgs& a, uint32_t batch, uintptr_t stream);

// Launch settings of windowed_decode and the GEMVs, read at each launch: for tuning and
// side-by-side timings. Results are the same bits with any value of the first three; the last
// picks between two lossless GEMVs that add in different orders. Each setter clamps its
// value to the bounds below and returns the previous one; this build's kernels or stubs (no
// CUDA) keep them alike.
//   warps per block: one chunk a warp, 1..16, default 4 (fewer where shared memory or the chunk
//     count calls for it);
//   gemv x shared bytes: the largest x ((K + 3) x batch fp32) the GEMVs copy into each block's
//     shared memory rather than read from global memory (default and most 64 KiB; 0: never);
//   decode stage symbols: the longest chunk windowed_decode stages in shared memory and writes
//     out whole (default and most 16384; 0: never).
constexpr uint32_t kDefaultWarpsPerBlock = 4, kMaxWarpsPerBlock = 16;
constexpr uint32_t kMaxGemvXSharedBytes = 64 * 1024;
constexpr uint32_t kMaxDecodeStageSymbols = 16384;
inline uint32_t clamp_setting(uint32_t value, uint32_t lo, uint32_t hi) {
  return value < lo ? lo : value > hi ? hi : value;
}
uint32_t set_warps_per_block(uint32_t warps);
uint32_t warps_per_block();
uint32_t set_gemv_x_shared_bytes(uint32_t bytes);
uint32_t gemv_x_shared_bytes();
uint32_t set_decode_stage_symbols(uint32_t symbols);
uint32_t decode_stage_symbols_limit();
// split gemv staged: 1 (default) sends lossless GEMVs to the staged kernel where
//   windowed::split_gemv_stages allows (K % 8 == 0, chunks <= 16384 symbols), 0 always to the
//   fused one. The two add in different orders; the host twins take the setting as an argument.
uint32_t set_split_gemv_staged(uint32_t on);
uint32_t split_gemv_staged();
// affine gemv staged: 1 (default) sends batch-1 affine GEMVs whose zero point lies whole in the values
//   (rate mode) to the staged kernel where windowed::affine_gemv_stages allows, 0 always to the fused one.
//   The two add in different orders; the host twins take the setting as an argument.
uint32_t set_affine_gemv_staged(uint32_t on);
uint32_t affine_gemv_staged();
// stream shared: 1 (default) has each warp of the v2 decodes and GEMVs (not the tile kernel)
//   copy its chunk's words into shared memory with whole-line loads before its lanes read them
//   (where a block of one warp fits with it), 0 lanes read their windows from global memory. The
//   same output either way for a valid stream (a corrupt one may decode differently past its
//   chunk's words; the CPU emulation reads a copy, as the default).
uint32_t set_stream_shared(uint32_t on);
uint32_t stream_shared();
// stage word stores: 1 (default) has the staged decodes (decode to symbols or to a split weight's
//   floats, the staged lossless GEMV) store each lane's symbols into the warp's stage a 32-bit word
//   at a time (windowed.h: WordRunSink), 0 byte by byte. The same stage either way.
uint32_t set_stage_word_stores(uint32_t on);
uint32_t stage_word_stores();

// y = x W^T for a lossless split bf16 weight (value entries hold values[s] << low).
Status windowed_gemv_split(const windowed::StreamView& s, const uint64_t* value_table_dev, const uint32_t* table_dev,
                           const windowed::SplitArgs& a, uint32_t batch, uintptr_t stream);

// out[i] = value[symbols[i]] | raw field i (low bits each; split.h), bf16 bits: rebuilds an exact
// weight on the GPU for callers that want cuBLAS's own output bits (exact_outputs).
Status split_merge(const uint8_t* symbols_dev, uint64_t n, const uint16_t* values_dev, const uint32_t* raw_dev,
                   uint64_t raw_words, uint32_t low, uint16_t* out_dev, uintptr_t stream);

// y = x W^T for an affine weight at batch 1..128 (windowed_tile.h: TileArgs; x in bf16 or fp16,
// padded to a.batch_pad rows): each block decodes 16 rows into shared memory through the
// multi-symbol table (table_dev) and multiplies them on tensor cores. sm_80 or newer.
Status windowed_tile_affine(const windowed::StreamView& s, const uint32_t* table_dev, const windowed::TileArgs& a,
                            uint32_t batch, uintptr_t stream);

// ---- the fixed-width lossless layout (csrc/codec/fixed12.h, csrc/cuda/fixed12_cuda.cu)
//
// y = x W^T + bias for a fixed12 bf16 weight, batch 1..16, x, bias and y bf16 or fp32 (fixed12.h:
// GemvArgs); batch_pad: the instance, 1..8 or 16 (batches 9..15 read only their rows); escapes
// added in the epilogue (their CSR lists checked by the caller).
// bf16 x takes the tensor-core kernel when the setting is on (the default), else the CUDA-core one.
Status fixed12_gemv(const fixed12::GemvArgs& a, uint32_t batch_pad, uintptr_t stream);
// fixed12 tensor cores: 1 (default) sends bf16 fixed12 GEMVs to the tensor-core kernel, 0 to the
//   CUDA-core one; the two add in different orders. The host twin takes the setting as an argument.
uint32_t set_fixed12_tensor_cores(uint32_t on);
uint32_t fixed12_tensor_cores();
// The weight's bf16 bits, 8 * pieces of them (16-byte aligned out_dev), escapes as code 0's value.
Status fixed12_decode(const uint32_t* codes_dev, const uint32_t* low_dev, uint64_t pieces, uint32_t base4,
                      uint16_t* out_dev, uintptr_t stream);

}  // namespace cuda
}  // namespace pycodec
