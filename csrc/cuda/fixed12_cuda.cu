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
// - Tensor-core GEMV (bf16 x, fixed12_tensor_cores on: the default): a block of 8 warps per 16
//   rows, its K split among them, mma.m16n8k16 on the decoded pairs (fixed12.h: the tile section).
//   The MMA adds in its own order, so its outputs match the emulation within fp32 rounding, not
//   bit for bit.
// - Decode: one thread a piece, a 16-byte store of its 8 bf16s; escapes are patched afterwards by
//   the caller (an index_put on the output), so the kernel has no branch.
#include <cuda_runtime.h>

#include <atomic>
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

__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%0,%1,%2,%3};\n"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// One 64-column block: the lane's A fragments, then per n-tile its B fragments and four MMAs.
template <bool kTail, int NT>
__device__ __forceinline__ void tile_step(const fixed12::TileLane& l, int32_t pieces_left, uint32_t base4,
                                          float c[NT][4]) {
  uint32_t fa[4][4];
  fixed12::tile_a_fragments<kTail>(l, pieces_left, base4, fa);
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    uint32_t fb[4][2];
    fixed12::tile_b_fragments<kTail>(l, j, pieces_left, fb);
#pragma unroll
    for (int s = 0; s < 4; ++s) mma_bf16(c[j], fa[s], fb[s]);
  }
}

// NT n-tiles of 8 batch rows: 1 (batch <= 8) or 2.
template <int NT>
__global__ void __launch_bounds__(fixed12::kTileWarps * 32) fixed12_tile_kernel(const fixed12::GemvArgs a) {
  __shared__ float partial[fixed12::kTilePartials];
  const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32, r0 = blockIdx.x * fixed12::kTileRows;
  float c[NT][4];
#pragma unroll
  for (int j = 0; j < NT; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.f;
  const uint32_t begin = fixed12::tile_block_begin(a, warp), end = fixed12::tile_block_begin(a, warp + 1);
  const uint32_t whole = a.k / fixed12::kTileCols, stop = end < whole ? end : whole;
  fixed12::TileLane l = fixed12::tile_lane(a, r0, lane);
  fixed12::tile_advance(l, begin);
#pragma unroll 2
  for (uint32_t blk = begin; blk < stop; ++blk, fixed12::tile_advance(l, 1)) tile_step<false, NT>(l, 0, a.base4, c);
  if (whole >= begin && whole < end)  // K % 64 != 0: the tail block, l already there
    tile_step<true, NT>(l, fixed12::tile_tail_pieces(a, whole, lane), a.base4, c);
#pragma unroll
  for (int j = 0; j < NT; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) partial[fixed12::tile_partial_slot(warp, j, lane, i)] = c[j][i];
  __syncthreads();
  fixed12::tile_output<fixed12::XBf16>(a, r0, threadIdx.x, partial);  // 256 threads: 16 rows x 16 batch rows
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

std::atomic<uint32_t> tensor_cores_setting{1};

template <int NT>
Status launch_tile(const fixed12::GemvArgs& a, cudaStream_t cs) {
  const unsigned blocks = unsigned((a.n_rows + fixed12::kTileRows - 1) / fixed12::kTileRows);
  fixed12_tile_kernel<NT><<<blocks, fixed12::kTileWarps * 32, 0, cs>>>(a);
  return from_cuda(cudaGetLastError());
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
  if (fixed12::tile_route(a, tensor_cores_setting.load(std::memory_order_relaxed) != 0))
    return a.batch <= 8 ? launch_tile<1>(a, cs) : launch_tile<2>(a, cs);
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

uint32_t set_fixed12_tensor_cores(uint32_t on) { return tensor_cores_setting.exchange(clamp_setting(on, 0, 1)); }
uint32_t fixed12_tensor_cores() { return tensor_cores_setting.load(std::memory_order_relaxed); }

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
