// pycodec CUDA entry points: torch-free, raw device pointers and a caller-owned stream.
//
// The extension links the CUDA runtime statically and never links libtorch, so one
// wheel serves every torch version; torch hands us data_ptr()s and its current stream.
// When the build has no nvcc, decode_cuda_stub.cpp supplies the same symbols and
// compiled() returns false.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../codec/status.h"

namespace pycodec {
namespace cuda {

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

// Whether gemv_affine accepts this shape: K % 64 == 0, chunk_symbols % K == 0 (chunks
// are whole rows), n_symbols == n_rows * K, 1 <= batch <= 8, group_size >= 64 and even.
bool gemv_affine_supported(uint64_t n_symbols, uint32_t chunk_symbols, uint32_t group_size, uint32_t n_rows,
                           uint32_t k, uint32_t batch);

// Fused decode + dequant + GEMV of an affine-quantized weight whose symbols q [n_rows, k]
// are the stream s: y[b, n] = sum_k x[b, k] * (q[n, k] - zero[n, g]) * scale[n, g],
// g = k / group_size. scale_dev / zero_dev are fp16 bits [n_rows, ceil(k / group_size)]
// (zero_dev a single fp16 when zero_broadcast); x_bf16_dev is bf16 bits [batch, k]
// (4-byte aligned), y_dev fp32 [batch, n_rows], accumulated in fp32. Decoded symbols never
// reach global memory. Returns BadArgument when !gemv_affine_supported (the caller falls
// back to decode_symbols + a separate matmul) or a pointer is not on the current device.
Status gemv_affine(const DeviceStream& s, const uint16_t* scale_dev, const uint16_t* zero_dev, bool zero_broadcast,
                   uint32_t group_size, uint32_t n_rows, uint32_t k, const uint16_t* x_bf16_dev, uint32_t batch,
                   float* y_dev, uintptr_t stream);

}  // namespace cuda
}  // namespace pycodec
