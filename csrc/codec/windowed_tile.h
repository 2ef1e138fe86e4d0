// pycodec codec core: one lane's share of the tile kernel, decode into shared memory then
// tensor-core MMA, for format-v2 affine (int / rate) weights at batch 9..128. The CUDA kernel
// (csrc/cuda/windowed_cuda.cu: tile_kernel) and its CPU emulation (windowed_emulate.h) run this
// code; only the MMA instruction itself differs (the emulation follows the PTX fragment layout).
//
// Read me first
// - Why a second kernel: the GEMVs (windowed_gemv.h) spend one FMA per weight per batch row on
//   CUDA cores, which stops paying past ~16 rows. Here a block decodes the symbols of 16 weight
//   rows into shared memory once, and tensor cores multiply them by every batch row.
// - Why whole rows in shared memory: a v2 lane holds a run of consecutive symbols (windowed.h),
//   so the symbols of one k-range of 16 rows come from 16 different lanes' middles; only
//   decoding whole rows gives an MMA tile its k-columns. Shared memory holds 16 x (K + 16) bytes,
//   which bounds K (kTileMaxK). A layout with k-tiled chunks would lift that (FORMAT.md §9.7).
// - Block: kTileWarps warps, kTileRows rows = 16 / rows-per-chunk chunks. Phase 1: each warp
//   decodes whole chunks (pass 1, scan, pass 2 as the decode kernel) through TileSink into the
//   tile, row r at r * (K + kTileRowPad). Phase 2: warp w takes batch tiles [4 (w % G), +4) and a
//   k-range (split w / G of kTileWarps / G), G = ceil(batch tiles / 4), cut at group ends
//   (tile_segment_end); per 16 columns one A fragment (the 16 rows) and one mma.m16n8k16 per
//   batch tile of 8, a fold per segment. Phase 3: the splits' sums are added in split order
//   (deterministic) and the escapes added.
// - The MMA's k order is free: any permutation of the 16 columns of a step applied to both
//   operands gives the same sum. A thread's four A elements of a row (fragment columns 2t, 2t+1,
//   2t+8, 2t+9) are taken as tile columns 4t..4t+3, one 32-bit shared load, and its B elements as
//   x columns 4t..4t+3, one 64-bit global load. The row pad of 16 bytes makes the 8 rows of a
//   load land on distinct banks.
// - Dequant as in the GEMVs: A = q - zc exactly in bf16 or fp16 (|q - zc| <= 255), x in the
//   model's 16-bit type, products summed in fp32 by the MMA; per (row, group) the epilogue adds
//   s (P - (z - zc) sum x) with sum x from fp32 prefix sums. A k-range may start or end inside
//   a group: the epilogue runs at each group end and at the range's end.
#pragma once

#include <cstdint>
#include <cstring>

#include "windowed.h"
#include "windowed_gemv.h"

#if defined(__CUDACC__)
#include <cuda_fp16.h>
#endif

namespace pycodec {
namespace windowed {

constexpr uint32_t kTileRows = 16;         // weight rows per block: one MMA m16 tile
constexpr uint32_t kTileWarps = 16;        // one per chunk of a 1-row-chunk tile
constexpr uint32_t kTileRowPad = 16;       // bytes past each tile row: conflict-free A loads
constexpr uint32_t kTileMaxBatch = 128;    // 16 tiles of 8 batch rows
constexpr uint32_t kTileMaxK = 12288;      // 16 x (K + 16) bytes of symbols in shared memory (~192 KiB)
constexpr uint32_t kTileTilesPerWarp = 4;  // batch tiles one warp accumulates (32 columns)
constexpr uint32_t kTilePartialFloats = kTileWarps * kTileRows * kTileTilesPerWarp * 8;  // phase 3's sums

// Whether the tile kernel takes this weight and batch: chunks of 1, 2, 4, 8 or 16 whole rows,
// K and the group a multiple of 16 (an MMA step never straddles a group), K <= kTileMaxK.
inline bool tile_supported(uint64_t n_symbols, uint32_t chunk_symbols, uint32_t n_rows, uint32_t k,
                           uint32_t group_size, uint32_t batch) {
  if (k == 0 || k % 16 || k > kTileMaxK || group_size == 0 || group_size % 16) return false;
  if (n_symbols != uint64_t(n_rows) * k || chunk_symbols % k) return false;
  const uint32_t rows_per_chunk = chunk_symbols / k;
  return kTileRows % rows_per_chunk == 0 && batch >= 1 && batch <= kTileMaxBatch;
}

// Batch tiles of 8 the kernel is instantiated for: 2, 4, 8 or 16 (batch padded up to 16, 32, 64, 128).
PYCODEC_HD uint32_t tile_batch_tiles(uint32_t batch) {
  return batch <= 16 ? 2 : batch <= 32 ? 4 : batch <= 64 ? 8 : 16;
}

// Shared memory of one block: the 32-bit multi-symbol table, lengths and count table, then the
// symbol tile, whose space phase 3 reuses for the splits' partial sums.
inline size_t tile_smem_bytes(uint32_t k) {
  const size_t tile = size_t(kTileRows) * (k + kTileRowPad), partial = size_t(kTilePartialFloats) * 4;
  return kTableSize * 4 + 256 + kTableSize + (tile > partial ? tile : partial);
}

struct TileArgs {
  const uint16_t* x;      // [batch_pad][k] bf16 or fp16 bits (x_half), zero rows past the batch
  const float* prefix;    // [k + 1][batch_pad] fp32 prefix sums of x along k, or null (as AffineArgs)
  const uint16_t* scale;  // fp16 bits [n_rows][n_groups]
  const uint16_t* zero;   // fp16 bits [n_rows][n_groups], or a single value when zero_broadcast
  uint32_t n_rows, k, group_size, n_groups, batch_pad;
  bool zero_broadcast, x_half;
  float zero_in_values;   // zc: A holds q - zc
  const int32_t* escape_row;  // escapes as AffineArgs (null: none)
  const int32_t* escape_col;
  const float* escape_value;
  uint32_t n_escapes;
  float* y;               // [batch_pad][n_rows] fp32
};

// ---------------------------------------------------------------------------- phase 1

// Symbols of one lane into the tile, walked by gemv_lane (windowed_gemv.h) segment by segment,
// a segment being the lane's columns of one row: entries never straddle a row end, so put() is
// three predicated stores and the row pad is added once per row.
struct TileSink {
  uint8_t* dst;  // the current segment's first symbol
  uint32_t col, k;

  // start: the lane's first symbol within the chunk; tile_chunk_row: the chunk's first row in the tile.
  PYCODEC_HD void begin(uint8_t* tile, uint32_t k_cols, uint32_t tile_chunk_row, uint32_t start) {
    k = k_cols;
    const uint32_t row = start / k;
    col = start % k;
    dst = tile + size_t(tile_chunk_row + row) * (k + kTileRowPad) + col;
  }
  PYCODEC_HD uint32_t segment_left(uint32_t left) const { return k - col < left ? k - col : left; }
  PYCODEC_HD void put(uint32_t e, uint32_t i) {
    const uint32_t n = entry_count(e);
    dst[i] = uint8_t(e);
    if (n > 1) dst[i + 1] = uint8_t(e >> 8);
    if (n > 2) dst[i + 2] = uint8_t(e >> 16);
  }
  PYCODEC_HD void put_run(uint32_t e, uint32_t i) {  // all three slots (windowed.h: RunByteSink)
    dst[i] = uint8_t(e);
    dst[i + 1] = uint8_t(e >> 8);
    dst[i + 2] = uint8_t(e >> 16);
  }
  PYCODEC_HD void close_segment(uint32_t n) {
    dst += n;
    col += n;
    if (col == k) {
      col = 0;
      dst += kTileRowPad;
    }
  }
  PYCODEC_HD void finish() {}
};

// ---------------------------------------------------------------------------- phase 2

// q - zc for symbol i (0..3) of a 32-bit tile word (little-endian: column 4t first), exact.
// On a GPU one byte permute builds the float 2^23 + q and one add subtracts 2^23 + zc.
PYCODEC_HD float tile_value(uint32_t word, int i, float zc) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(__byte_perm(word, 0x4Bu, 0x4550u + uint32_t(i))) - (8388608.f + zc);
#else
  return float((word >> (8 * i)) & 0xFFu) - zc;
#endif
}

// Two integer-valued floats |v| <= 255 as a bf16x2 (kHalf false) or f16x2 register, low first:
// exact in both types.
template <bool kHalf>
PYCODEC_HD uint32_t pack_values(float lo, float hi) {
#if defined(__CUDA_ARCH__)
  if (kHalf) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&h);
  }
  return __byte_perm(__float_as_uint(lo), __float_as_uint(hi), 0x7632u);  // the two high halves
#else
  uint32_t u[2];
  const float f[2] = {lo, hi};
  std::memcpy(u, f, 8);
  if (!kHalf) return (u[0] >> 16) | (u[1] & 0xFFFF0000u);
  for (uint32_t& w : u) {  // fp16 bits of an integer |v| <= 2048: exponent rebiased, mantissa cut
    const uint32_t sign = (w >> 16) & 0x8000u, exp = (w >> 23) & 0xFFu;
    w = (w & 0x7FFFFFFFu) == 0 ? sign : sign | ((exp - 112u) << 10) | ((w >> 13) & 0x3FFu);
  }
  return u[0] | (u[1] << 16);
#endif
}

PYCODEC_HD uint32_t load_u32(const uint8_t* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const uint32_t*>(p);
#else
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
#endif
}

// A fragment of mma.m16n8k16 (PTX ISA, "Matrix Fragments for mma.m16n8k16"): registers
// {row g, cols 2t..2t+1}, {row g+8, 2t..}, {row g, 2t+8..}, {row g+8, 2t+8..}, g = lane / 4,
// t = lane % 4, taken as tile columns k0+4t, +1 | k0+4t+2, +3 (the k permutation above).
template <bool kHalf>
PYCODEC_HD void tile_a_fragment(const uint8_t* tile, uint32_t stride, uint32_t k0, uint32_t lane, float zc,
                                uint32_t a[4]) {
  const uint32_t g = lane / 4, t = lane % 4;
  const uint32_t lo = load_u32(tile + size_t(g) * stride + k0 + 4 * t);
  const uint32_t hi = load_u32(tile + size_t(g + 8) * stride + k0 + 4 * t);
  a[0] = pack_values<kHalf>(tile_value(lo, 0, zc), tile_value(lo, 1, zc));
  a[1] = pack_values<kHalf>(tile_value(hi, 0, zc), tile_value(hi, 1, zc));
  a[2] = pack_values<kHalf>(tile_value(lo, 2, zc), tile_value(lo, 3, zc));
  a[3] = pack_values<kHalf>(tile_value(hi, 2, zc), tile_value(hi, 3, zc));
}

// B fragment of batch tile j: registers {k 2t..2t+1, col g}, {k 2t+8.., col g} = x[8j + g][k0+4t ..
// k0+4t+3], one 8-byte load (k0 + 4t is a multiple of 4, rows are K % 16 == 0 values long).
PYCODEC_HD void tile_b_fragment(const uint16_t* x, uint32_t k, uint32_t k0, uint32_t j, uint32_t lane,
                                uint32_t b[2]) {
  const uint32_t g = lane / 4, t = lane % 4;
  const uint16_t* p = x + size_t(8 * j + g) * k + k0 + 4 * t;
#if defined(__CUDA_ARCH__)
  const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
  b[0] = v.x;
  b[1] = v.y;
#else
  std::memcpy(b, p, 8);
#endif
}

// A thread's 4 accumulator elements of a batch tile: c[i] is (row g + 8 (i / 2), column 8j + 2t + i % 2).
PYCODEC_HD uint32_t tile_c_row(uint32_t lane, int i) { return lane / 4 + 8 * uint32_t(i / 2); }
PYCODEC_HD uint32_t tile_c_col(uint32_t j, uint32_t lane, int i) { return 8 * j + 2 * (lane % 4) + uint32_t(i % 2); }

// acc += s (P - (z - zc) sum_{k in [k_begin, k_end)} x) for the rows and columns of a thread's
// elements of batch tile j, and P = 0: the group (of row-tile row0) that [k_begin, k_end) lies in.
PYCODEC_HD void tile_fold(const TileArgs& a, uint32_t row0, uint32_t group, uint32_t k_begin, uint32_t k_end,
                          uint32_t j, uint32_t lane, float p[4], float acc[4]) {
  for (int i = 0; i < 4; ++i) {
    const uint32_t row = row0 + tile_c_row(lane, i), col = tile_c_col(j, lane, i);
    const uint32_t r = row < a.n_rows ? row : a.n_rows - 1;  // rows past the weight: computed, never stored
    const size_t gi = size_t(r) * a.n_groups + group;
    const float s = half_to_float(PYCODEC_LOAD(a.scale + gi));
    if (a.prefix) {
      const float z = half_to_float(PYCODEC_LOAD(a.zero + (a.zero_broadcast ? 0 : gi))) - a.zero_in_values;
      const float sum_x = PYCODEC_LOAD(a.prefix + size_t(k_end) * a.batch_pad + col) -
                          PYCODEC_LOAD(a.prefix + size_t(k_begin) * a.batch_pad + col);
      acc[i] = fmaf(s, fmaf(-z, sum_x, p[i]), acc[i]);
    } else {  // the zero point is in the values (AffineArgs::prefix)
      acc[i] = fmaf(s, p[i], acc[i]);
    }
    p[i] = 0.f;
  }
}

// x[b][col] as a float (bf16 or fp16 bits).
PYCODEC_HD float tile_x(const TileArgs& a, uint32_t b, uint32_t col) {
  const uint16_t h = PYCODEC_LOAD(a.x + size_t(b) * a.k + col);
  return a.x_half ? half_to_float(h) : bits_float(uint32_t(h) << 16);
}

// y's final value for (row, b): the splits' sum plus the row's escapes in index order (clamped
// as with_escapes).
PYCODEC_HD float tile_with_escapes(const TileArgs& a, uint32_t row, uint32_t b, float sum) {
  if (!a.escape_row) return sum;
  const int64_t first = PYCODEC_LOAD(a.escape_row + row), last = PYCODEC_LOAD(a.escape_row + row + 1);
  const int64_t end = last < int64_t(a.n_escapes) ? last : int64_t(a.n_escapes);
  for (int64_t e = first > 0 ? first : 0; e < end; ++e) {
    const uint32_t col = uint32_t(PYCODEC_LOAD(a.escape_col + e));
    if (col < a.k) sum = fmaf(tile_x(a, b, col), PYCODEC_LOAD(a.escape_value + e), sum);
  }
  return sum;
}

// Phase 2's split of warp w: its batch tiles [first_tile, first_tile + tiles) and MMA steps
// [step_begin, step_end) of the K / 16.
struct TileWork {
  uint32_t first_tile, tiles, split, step_begin, step_end;
};

PYCODEC_HD TileWork tile_work(uint32_t warp, uint32_t batch_tiles, uint32_t k) {
  const uint32_t groups = (batch_tiles + kTileTilesPerWarp - 1) / kTileTilesPerWarp;
  const uint32_t splits = kTileWarps / groups, steps = k / 16;
  TileWork w;
  w.first_tile = (warp % groups) * kTileTilesPerWarp;
  w.tiles = batch_tiles - w.first_tile < kTileTilesPerWarp ? batch_tiles - w.first_tile : kTileTilesPerWarp;
  w.split = warp / groups;
  w.step_begin = uint32_t(uint64_t(steps) * w.split / splits);
  w.step_end = uint32_t(uint64_t(steps) * (w.split + 1) / splits);
  return w;
}

// The end of the segment of a k-range that starts at k_begin: the group's end or the range's.
PYCODEC_HD uint32_t tile_segment_end(uint32_t k_begin, uint32_t k_end, uint32_t group_size) {
  const uint32_t group_end = (k_begin / group_size + 1) * group_size;
  return group_end < k_end ? group_end : k_end;
}

// Where split `split`'s sum of (tile row r, batch column b) sits in phase 3's partials:
// [split][r][b], b over the batch_pad columns.
PYCODEC_HD size_t tile_partial_index(uint32_t split, uint32_t r, uint32_t b, uint32_t batch_pad) {
  return (size_t(split) * kTileRows + r) * batch_pad + b;
}

PYCODEC_HD uint32_t tile_splits(uint32_t batch_tiles) {
  return kTileWarps / ((batch_tiles + kTileTilesPerWarp - 1) / kTileTilesPerWarp);
}

// The tile kernel's argument checks, shared by the CUDA entry point and its host twin.
inline Status check_tile(const StreamView& s, const void* table, const TileArgs& a, uint32_t batch) {
  const Status st = check_view(s, table);
  if (st != Status::Ok) return st;
  if (!tile_supported(s.n_symbols, s.chunk_symbols, a.n_rows, a.k, a.group_size, batch) ||
      a.batch_pad != 8 * tile_batch_tiles(batch) || a.n_groups != (a.k + a.group_size - 1) / a.group_size)
    return Status::BadArgument;
  return affine_buffers_ok(s, a, 8) ? Status::Ok : Status::BadArgument;  // x: 8-byte fragment loads
}

// Every batch tile group gets whole splits, and the splits' partials (splits x 16 rows x
// batch_pad = kTileWarps / groups x 16 x 32 groups) fit kTilePartialFloats.
static_assert(kTileWarps % (kTileMaxBatch / 8 / kTileTilesPerWarp) == 0, "batch tile groups share the warps evenly");

}  // namespace windowed
}  // namespace pycodec
