// pycodec CUDA kernels for the fixed-width lossless layout (csrc/codec/fixed12.h): the batch 1..16
// GEMV and the decode to bf16.
//
// Read me first
// - The lane code is fixed12.h's, which the CPU emulation runs too (emulate.cpp,
//   tests/test_fixed12.py); only the warp glue below is GPU-only.
// - GEMV: one warp a row, kFixed12Warps warps a block. Every load is contiguous across a warp
//   (fixed12.h: pieces j, j + 32, ... of a row to lane j) and read once, so nothing is staged in
//   shared memory; x (at most 16 rows of K floats) stays in L1 / L2 for all the rows of an SM.
//   No atomics: the warp's xor butterfly makes every output deterministic and the emulation's.
// - Decode: one thread a piece, a 16-byte store of its 8 bf16s; escapes are patched afterwards by
//   the caller (an index_put on the output), so the kernel has no branch.
#include <cuda_runtime.h>

#include <cstdint>

#include "../codec/fixed12.h"
#include "cuda_status.cuh"
#include "decode_cuda.h"

namespace pycodec {
namespace cuda {
namespace {

constexpr unsigned kFixed12Warps = 8;  // rows a block: 256 threads, ~40 registers each at batch 1
constexpr unsigned kDecodeThreads = 256;

template <int B, class X>
__global__ void __launch_bounds__(kFixed12Warps * 32) fixed12_gemv_kernel(const fixed12::GemvArgs a) {
  const uint32_t row = blockIdx.x * kFixed12Warps + threadIdx.x / 32, lane = threadIdx.x % 32;
  if (row >= a.n_rows) return;  // whole warps: the butterfly below has every lane of the warp
  float acc[B];
#pragma unroll
  for (int b = 0; b < B; ++b) acc[b] = 0.f;
  fixed12::gemv_lane<B, X>(a, row, lane, acc);
  fixed12::escape_lane<B, X>(a, row, lane, acc);
#pragma unroll
  for (int b = 0; b < B; ++b) {
    float v = acc[b];
#pragma unroll
    for (uint32_t off = 16; off; off >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, off);
    if (lane == 0 && uint32_t(b) < a.batch) fixed12::store_output<X>(a, row, b, v);
  }
}

__global__ void fixed12_decode_kernel(const uint32_t* __restrict__ codes, const uint32_t* __restrict__ low,
                                      uint64_t pieces, uint32_t base4, uint4* __restrict__ out) {
  const uint64_t p = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= pieces) return;
  uint32_t lo, hi, pair[4];
  fixed12::load_low8(low, p, lo, hi);
  fixed12::piece_pairs(__ldg(codes + p), lo, hi, base4, pair);
  out[p] = make_uint4(pair[0], pair[1], pair[2], pair[3]);
}

template <int B>
Status launch_gemv(const fixed12::GemvArgs& a, cudaStream_t cs) {
  const unsigned blocks = unsigned((a.n_rows + kFixed12Warps - 1) / kFixed12Warps);
  if (a.x_bf16)
    fixed12_gemv_kernel<B, fixed12::XBf16><<<blocks, kFixed12Warps * 32, 0, cs>>>(a);
  else
    fixed12_gemv_kernel<B, fixed12::XFloat><<<blocks, kFixed12Warps * 32, 0, cs>>>(a);
  return from_cuda(cudaGetLastError());
}

}  // namespace

Status fixed12_gemv(const fixed12::GemvArgs& a, uint32_t batch_pad, uintptr_t stream) {
  Status st = fixed12::check_gemv(a, batch_pad);
  if (st != Status::Ok) return st;
  const void* ptrs[8] = {a.codes, a.low, a.x, a.y, a.bias, a.escape_row, a.escape_col, a.escape_value};
  if ((st = check_device_pointers(ptrs, a.n_escapes ? 8 : 5)) != Status::Ok) return st;
  const cudaStream_t cs = reinterpret_cast<cudaStream_t>(stream);
  switch (batch_pad) {  // the instances that exist: batches 9..15 take 16's, reading only their rows
    case 1: return launch_gemv<1>(a, cs);
    case 2: return launch_gemv<2>(a, cs);
    case 3: return launch_gemv<3>(a, cs);
    case 4: return launch_gemv<4>(a, cs);
    case 5: return launch_gemv<5>(a, cs);
    case 6: return launch_gemv<6>(a, cs);
    case 7: return launch_gemv<7>(a, cs);
    case 8: return launch_gemv<8>(a, cs);
    case 16: return launch_gemv<16>(a, cs);
    default: return Status::BadArgument;
  }
}

Status fixed12_decode(const uint32_t* codes_dev, const uint32_t* low_dev, uint64_t pieces, uint32_t base4,
                      uint16_t* out_dev, uintptr_t stream) {
  Status st = fixed12::check_decode(codes_dev, low_dev, pieces, base4, out_dev);
  if (st != Status::Ok || pieces == 0) return st;
  const void* ptrs[3] = {codes_dev, low_dev, out_dev};
  if ((st = check_device_pointers(ptrs, 3)) != Status::Ok) return st;
  const uint64_t blocks = (pieces + kDecodeThreads - 1) / kDecodeThreads;
  if (blocks > 0x7FFFFFFFull) return Status::TooLarge;
  fixed12_decode_kernel<<<unsigned(blocks), kDecodeThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      codes_dev, low_dev, pieces, base4, reinterpret_cast<uint4*>(out_dev));
  return from_cuda(cudaGetLastError());
}

}  // namespace cuda
}  // namespace pycodec
