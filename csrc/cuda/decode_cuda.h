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

}  // namespace cuda
}  // namespace pycodec
