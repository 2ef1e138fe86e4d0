// pycodec codec core: the CPU emulation of the windowed GEMV kernels (windowed_emulate.h) as
// whole-stream calls, and the value table the lossless GEMV uploads. Host only, torch-free.
#pragma once

#include <cstddef>
#include <cstdint>

#include "status.h"
#include "windowed_gemv.h"

namespace pycodec {

// The fused GEMV takes a weight whose chunks are whole rows.
bool windowed_gemv_shape_ok(uint64_t n_symbols, uint32_t chunk_symbols, uint32_t n_rows, uint32_t k);

// y = x W^T as the CUDA kernel computes it, for a format-v2 stream of affine symbols [n_rows, k]
// (a.y receives [batch][n_rows]); batch 1..8 or 16.
Status emulate_gemv_affine(const uint8_t* blob, size_t len, const windowed::AffineArgs& a, uint32_t batch);

// The same for a lossless split bf16 weight: symbols stream + values (n_values) + raw bits.
Status emulate_gemv_split(const uint8_t* blob, size_t len, const uint32_t* values, uint32_t n_values,
                          const windowed::SplitArgs& a, uint32_t batch);

// The 4096 value entries (windowed.h) of a multi-symbol table whose symbols number `values`,
// each shifted left by `low` into 16 bits. BadTable if an entry names a symbol >= n_values.
Status build_value_table(const uint32_t* entries, const uint32_t* values, uint32_t n_values, uint32_t low,
                         uint64_t* out);

}  // namespace pycodec
