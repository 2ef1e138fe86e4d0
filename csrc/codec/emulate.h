// pycodec codec core: the CPU emulation of the windowed GEMV kernels (windowed_emulate.h) as
// whole-stream calls, and the value table the lossless GEMV uploads. Host only, torch-free.
#pragma once

#include <cstddef>
#include <cstdint>

#include "status.h"
#include "windowed_gemv.h"
#include "windowed_tile.h"
#include "fixed12.h"

namespace pycodec {

// The decode kernel's result for a format-v2 stream (out: n_symbols bytes). It reads and writes
// only inside its buffers whatever the payload (corruption shows as CorruptPayload, or as wrong
// symbols that the caller's checksum catches); it does not verify the symbol checksum itself.
Status emulate_decode(const uint8_t* blob, size_t len, uint8_t* out, uint64_t out_len);

// y = x W^T as the CUDA kernel computes it, for a format-v2 stream of affine symbols [n_rows, k]
// (a.y receives [batch][n_rows]); batch 1..8 or 16. staged: the route the kernel takes with its
// affine_gemv_staged setting on (the staged GEMV where windowed::affine_gemv_stages allows, else
// the fused one); the two add in different orders.
Status emulate_gemv_affine(const uint8_t* blob, size_t len, const windowed::AffineArgs& a, uint32_t batch,
                           bool staged);

// The same for a lossless split bf16 weight: symbols stream + values (n_values) + raw bits.
// staged: the route the kernel takes with its split_gemv_staged setting on (the staged GEMV where
// windowed::split_gemv_stages allows, else the fused one); the two add in different orders.
Status emulate_gemv_split(const uint8_t* blob, size_t len, const uint32_t* values, uint32_t n_values,
                          const windowed::SplitArgs& a, uint32_t batch, bool staged);

// Symbol values of a lossless split weight for value entries: values[s] << low (16 bits each).
Status split_values(const uint32_t* values, uint32_t n_values, uint32_t low, uint16_t value[256]);

// The 4096 value entries (windowed.h) of a multi-symbol table and its code lengths, given each
// symbol's 16-bit value
// (windowed::affine_values, split_values): what the fused GEMV kernels decode through.
void build_value_table(const uint32_t* entries, const uint8_t* lengths, const uint16_t value[256], uint64_t* out);

// The CUDA entry points' twins on host memory (decode_cuda.h has the same signatures, minus the
// stream): the same argument checks (windowed_gemv.h: check_*) and the kernels' emulation behind
// the very arguments the Python ops build, so their glue (layouts, addresses, padding, escapes)
// is tested without a GPU. The payload and raw bits need windowed::kSlackWords readable words
// past them, as for the kernels. One difference: a corrupt chunk makes the GEMV twins return
// CorruptPayload, where a kernel has no way to report it (streams are verified before upload).
namespace host {
Status windowed_decode(const windowed::StreamView& s, const uint32_t* table, uint8_t* out, uint32_t* status);
Status windowed_decode_split(const windowed::StreamView& s, const uint32_t* table, const windowed::SplitDecodeArgs& a,
                             uint32_t* status);
Status windowed_gemv_affine(const windowed::StreamView& s, const uint64_t* value_table, const uint32_t* table,
                            const windowed::AffineArgs& a, uint32_t batch, bool staged);
Status windowed_gemv_split(const windowed::StreamView& s, const uint64_t* value_table, const uint32_t* table,
                           const windowed::SplitArgs& a, uint32_t batch, bool staged);
Status split_merge(const uint8_t* symbols, uint64_t n, const uint16_t* values, const uint32_t* raw, uint64_t raw_words,
                   uint32_t low, uint16_t* out);
Status windowed_tile_affine(const windowed::StreamView& s, const uint32_t* table, const windowed::TileArgs& a,
                            uint32_t batch);
// The fixed-width lossless layout (fixed12.h): its decode kernel (out: 8 * pieces bf16 bits, code
// 0's value at escapes) and its GEMV (batch_pad: the kernel instance, 1..8 or 16; x, bias and y bf16 or fp32).
Status fixed12_decode(const uint32_t* codes, const uint32_t* low, uint64_t pieces, uint32_t base4, uint16_t* out);
// tensor_cores: the route the kernel takes with its setting on (bf16 x: the tensor-core kernel, its
// MMA emulated in k order, which a tensor core need not match bit for bit).
Status fixed12_gemv(const fixed12::GemvArgs& a, uint32_t batch_pad, bool tensor_cores);
}  // namespace host

}  // namespace pycodec
