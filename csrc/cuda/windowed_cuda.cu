// pycodec CUDA kernels for format-v2 (windowed-lane Huffman) streams: symbol decode, fused
// decode + dequant + GEMV for affine and lossless-split weights, staged GEMVs (each warp's chunk
// decoded into shared memory first: lossless weights, and rate weights at batch 1), and the split
// merge that rebuilds exact bf16 weights.
//
// Read me first
// - One warp per chunk; the 32 CUDA lanes are the format's lanes (windowed.h), lanes >= the
//   stream's lane count only join the warp-wide steps. Per chunk:
//     ranges  each lane's first symbol: from the lane start bytes that the stream's tables carry
//             (a byte a lane, its count, and a warp prefix sum; windowed.h), or, without them,
//             pass 1: every lane counts the codes of its window (count_window, no output; the last
//             lane too, so that its pass-2 count can be bounded by what its window holds) and a
//             warp prefix sum of the counts, clamped to the chunk (5 shuffles);
//     pass 2  every lane decodes exactly its symbols, with known positions, straight into its
//             consumer (decode_count + a sink of windowed_gemv.h), or into the warp's stage in
//             shared memory a word at a time (windowed.h: WordRunSink; stage_word_stores) for the
//             staged kernels, whose lanes then read the stage 8 contiguous symbols at a time.
//   The lane code is the torch-free windowed.h / windowed_gemv.h, which the CPU emulation runs
//   too (csrc/codec/windowed_emulate.h, tests/test_windowed_gemv.py): only the warp glue below is
//   GPU-only.
// - Why the lane starts are not in the stream: at 8 bits a lane they cost 0.06-0.11 bits a
//   weight (bench/results/layout_cpu.json), 0.6-2.5% of a stream, beyond the format's 1.5% side
//   budget for rate and int weights; pass 1 costs 4.4-7.4 lane-instructions per symbol
//   (bench/sass_count.py), a third of the rate GEMV's. So they are derived on the host when a
//   stream is bound for a GPU (the verifying decode gives them) and kept in device memory only:
//   cuda_ops.LANE_STARTS decides.
// - Memory: each warp first copies its chunk's words into shared memory (the stream stage,
//   stream_shared; not the tile kernel), and each lane reads its window there through a
//   StageReader, or in place through a FastReader; either loads its next word one refill ahead
//   (a refill never waits on a load issued in the same step), two table entries per refill.
//   The decode kernel uses the multi-symbol table (16 KiB), the GEMVs its value entries
//   (32 KiB: weights in bf16 beside the codes), pass 1 the count table (4 KiB); they sit in
//   shared memory with the code lengths, copied in 16-byte pieces by the whole block. x and the prefix sums are read through
//   the read-only cache (all warps of an SM read the same columns at about the same time).
// - GEMV results: each lane writes its partial sum of every row it touched into its own column
//   of a per-warp shared table (slots[row][b][lane]); a fixed butterfly of shuffles then sums
//   each (row, b) over the lanes. No atomics: results are deterministic and equal to the
//   emulation's, bit for bit.
// - Bounds: loads are not tested one by one. chunk_view clamps a chunk to the payload, a window
//   read runs at most 3 words past its chunk, every buffer has windowed::kSlackWords readable
//   words of slack (the host pads them), a lane's pass-2 count never exceeds what its window
//   holds (lane_range) or, from lane starts, what the payload's slack bounds
//   (lane_range_from_starts), and a stream stage's reads are clamped to it, so a corrupt stream
//   cannot make a kernel read or write out of bounds.
//   Corruption itself is detected on the CPU when a stream is loaded (pycodec verifies every
//   stream before it reaches a GPU); the decode kernel also flags a lane that overruns.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <type_traits>

#include "../codec/windowed.h"
#include "../codec/windowed_gemv.h"
#include "../codec/windowed_tile.h"
#include "cuda_status.cuh"
#include "decode_cuda.h"

namespace pycodec {
namespace cuda {
namespace {

using windowed::ChunkView;
using windowed::StreamView;

// Warps (chunks) per block of the decode and GEMV kernels, chosen at launch (warps_per_block):
// 4 by default, because chunks are few for small layers and small blocks reach more SMs; more
// warps share one copy of the tables (and of x) per block. Kernels read it as blockDim.x / 32.
// They carry no __launch_bounds__: with __launch_bounds__(512) nvcc 13.0 held some GEMV instances
// to 40 registers and spilled inside their loops. 16 warps (kMaxWarpsPerBlock) fit any kernel of
// up to 128 registers (these use 18-66: bench/results/sass_sm90.json).
constexpr uint32_t kFullMask = 0xFFFFFFFFu;
// After the 4096 entries of a stream's table (table_dev): the code lengths, then the count table.
constexpr size_t kLengthBytes = 256;
constexpr size_t kAuxBytes = kLengthBytes + windowed::kTableSize;  // lengths + count table
static_assert(kAuxBytes % 16 == 0, "tables are copied in 16-byte pieces");

template <class Entry>
constexpr size_t table_bytes() {
  return windowed::kTableSize * sizeof(Entry);
}

// Block-wide copy of the decode tables into shared memory, 16 bytes per thread per step:
// entries (multi-symbol or value), then lengths and count table (`aux`). Returns whether every
// entry lets the decoding loops progress (windowed_gemv.h: table_entry_ok, count_byte_ok), for
// the whole block. The check reads shared memory after the copy's barrier: checking each piece
// while in registers during the copy costs the GEMV loops 3 instructions and a stack frame (B=3,4)
// through register allocation, measured with bench/sass_count.py.
template <class Entry>
__device__ __forceinline__ bool load_tables(Entry* table_smem, uint8_t* aux_smem, const Entry* table,
                                            const uint8_t* aux) {
  const uint4* src = reinterpret_cast<const uint4*>(table);
  uint4* dst = reinterpret_cast<uint4*>(table_smem);
  for (uint32_t i = threadIdx.x; i < table_bytes<Entry>() / 16; i += blockDim.x) dst[i] = __ldg(src + i);
  const uint4* asrc = reinterpret_cast<const uint4*>(aux);
  uint4* adst = reinterpret_cast<uint4*>(aux_smem);
  for (uint32_t i = threadIdx.x; i < kAuxBytes / 16; i += blockDim.x) adst[i] = __ldg(asrc + i);
  __syncthreads();
  const bool constant = windowed::constant_table(table_smem);
  int bad = 0;
  for (uint32_t i = threadIdx.x; i < windowed::kTableSize; i += blockDim.x)
    bad |= !windowed::table_entry_ok(table_smem[i], constant) ||
           !windowed::count_byte_ok(aux_smem[kLengthBytes + i], constant);
  return __syncthreads_or(bad) == 0;
}

// Every lane's range for pass 2. With lane starts: a byte a lane, its count, and a warp prefix sum
// of the counts (windowed_gemv.h: lane_range_from_starts). Without them, or for a chunk whose
// bytes escape: pass 1 and the same prefix sum of its window counts (lanes before the last;
// lane_range). Called by all 32 lanes.
template <class Entry>
__device__ __forceinline__ windowed::LaneRange warp_lane_range(const ChunkView& v, const StreamView& s,
                                                               const Entry* table, const uint8_t* aux,
                                                               uint32_t lane) {
  const auto inclusive_sum = [lane](uint32_t x) {  // over the warp's lanes, 5 shuffles
#pragma unroll
    for (int off = 1; off < 32; off *= 2) {
      const uint32_t t = __shfl_up_sync(kFullMask, x, off);
      if (lane >= uint32_t(off)) x += t;
    }
    return x;
  };
  if (s.lane_starts) {  // warp-uniform; a chunk whose bytes escape is counted below
    const uint8_t b = lane < s.lanes ? __ldg(s.lane_starts + v.index * s.lanes + lane) : uint8_t(0);
    if (!__any_sync(kFullMask, windowed::start_byte_escapes(b, lane, s.lanes))) {
      const uint32_t count = lane < s.lanes ? windowed::lane_count_from_start_byte(b, lane, s.lanes, v.m) : 0u;
      const uint32_t through = inclusive_sum(count);
      return windowed::lane_range_from_starts(v, s, aux + kLengthBytes, table, aux, lane, through - count, through);
    }
  }
  const uint32_t count = windowed::lane_window_count(v, s, aux + kLengthBytes, table, aux, lane);
  const uint32_t scanned = lane + 1 < s.lanes ? count : 0;
  const uint32_t through = inclusive_sum(scanned);
  return windowed::lane_range(lane, s.lanes, v.m, count, through - scanned, through);
}

// ---------------------------------------------------------------------------- decode

// Pass 2 of a warp: every lane's range of the chunk's symbols into dst (the chunk's first symbol:
// a stage in shared memory, or the output), through the multi-symbol table; each lane writes
// [r.start, r.start + r.count), within [0, v.m) (lane_range). kClear: a chunk with a lane that
// overran is zeroed first, so that what the lane refuses reads as symbol 0 (as in an unstaged
// output, which starts as zeros).
// words: the warp's copy of the chunk's words (stage_chunk_words; staged_words of them), or null to
// read them in place. word_stores (kClear only, warp-uniform): dst is the warp's 16-byte aligned stage
// in shared memory, stored a word at a time (windowed.h: WordRunSink); else byte by byte.
template <bool kClear>
__device__ __forceinline__ void decode_chunk_symbols(uint8_t* dst, const ChunkView& v, const StreamView& s,
                                                     const windowed::LaneRange& r, const uint32_t* table,
                                                     const uint8_t* aux, uint32_t lane, const uint32_t* words,
                                                     uint32_t staged_words, bool word_stores = false) {
  if (kClear && __any_sync(kFullMask, r.overrun)) {
    for (uint32_t i = lane; i < v.m; i += 32) dst[i] = 0;
    __syncwarp();
  }
  const auto decode = [&](auto& sink) {
    if (lane >= s.lanes) return;
    const uint64_t first_bit = lane * windowed::lane_window_bits(v.n_words, s.lanes);
    if (words) {  // warp-uniform
      windowed::StageReader reader;
      reader.init(words, staged_words, first_bit);
      windowed::decode_count(table, aux, reader, r.count, sink);
    } else {
      windowed::FastReader reader;
      reader.init(v.words, 0, first_bit);
      windowed::decode_count(table, aux, reader, r.count, sink);
    }
  };
  if (kClear && word_stores) {
    windowed::WordRunSink sink;
    sink.init(dst, lane < s.lanes ? r.start : 0u);
    decode(sink);
    __syncwarp();  // every lane's whole words, before the last bytes (which share words with them)
    if (lane < s.lanes) sink.finish();
  } else {
    windowed::RunByteSink sink{dst + r.start};
    decode(sink);
  }
}

// A warp's stream stage (windowed_gemv.h: stream_stage_words): its chunk's words and the readable
// slack after them (chunk_view keeps both inside the payload's buffer), 32 consecutive words a
// load; returns how many (chunk_stage_words). The caller's __syncwarp orders the reads after it.
__device__ __forceinline__ uint32_t stage_chunk_words(uint32_t* stage, const ChunkView& v, uint32_t stage_words,
                                                      uint32_t lane) {
  const uint32_t n = windowed::chunk_stage_words(v, stage_words);
  for (uint32_t i = lane; i < n; i += 32) stage[i] = __ldg(v.words + i);
  return n;
}


// A warp's chunk decoded into shared memory (kStaged) is then written out whole: consecutive lanes
// store consecutive 16-byte pieces. Straight to global memory, each byte store of a warp lands in
// ~32 lines (lanes hold runs of the chunk ~m/32 bytes apart): partial-sector writes that L2
// handles one by one. On an H200 this decode ran at 57 G symbols/s with 8, 16 or 32 lanes alike
// (as if bound by the stores, not the lanes), where v1's decoder reached 376 on the same data.
__device__ __forceinline__ void write_chunk(uint8_t* __restrict__ out, const uint8_t* stage, uint32_t m, uint32_t lane) {
  const uint32_t head = uint32_t((16u - (reinterpret_cast<uintptr_t>(out) & 15u)) & 15u);
  const uint32_t first = head < m ? head : m;
  if (lane < first) out[lane] = stage[lane];
  const uint32_t pieces = (m - first) / 16;
  if (first == 0) {
    for (uint32_t i = lane; i < pieces; i += 32)
      reinterpret_cast<uint4*>(out)[i] = reinterpret_cast<const uint4*>(stage)[i];
  } else if ((first & 3u) == 0) {  // stage + first is 4-byte aligned: read it as words
    for (uint32_t i = lane; i < pieces; i += 32) {
      const uint32_t* src = reinterpret_cast<const uint32_t*>(stage + first + 16 * i);
      reinterpret_cast<uint4*>(out + first)[i] = make_uint4(src[0], src[1], src[2], src[3]);
    }
  } else {
    for (uint32_t i = lane; i < pieces * 16; i += 32) out[first + i] = stage[first + i];
  }
  for (uint32_t i = first + pieces * 16 + lane; i < m; i += 32) out[i] = stage[i];
}

// What the decode kernel writes: symbols byte by byte straight to global memory; symbols staged
// in shared memory and written out whole (write_chunk); or a lossless split weight's 16-bit
// floats, the staged symbols merged with their raw bits on the way out (windowed_gemv.h:
// write_split_chunk).
enum class DecodeTo { kSymbols, kStagedSymbols, kStagedSplit };

// Dynamic shared memory: per warp its symbol stage (kStaged: stage_bytes) and then, where
// stream_words > 0, its stream stage (stage_chunk_words).
template <DecodeTo kTo>
__global__ void decode_kernel(const StreamView s, const uint32_t* __restrict__ table, uint8_t* __restrict__ out,
                              uint32_t* __restrict__ status, uint32_t stage_bytes, uint32_t stream_words,
                              uint32_t word_stores, const windowed::SplitDecodeArgs split) {
  constexpr bool kStaged = kTo != DecodeTo::kSymbols;
  __shared__ __align__(16) uint32_t table_smem[windowed::kTableSize];
  __shared__ __align__(16) uint8_t aux_smem[kAuxBytes];
  __shared__ uint16_t value_smem[kTo == DecodeTo::kStagedSplit ? 256 : 1];
  extern __shared__ __align__(16) unsigned char stage_smem[];  // warps x (stage_bytes + 4 stream_words)
  bool bytes = false;  // kStagedSplit: a byte split's values (windowed_gemv.h: split_decode_bytes), by a block vote
  if constexpr (kTo == DecodeTo::kStagedSplit) {  // ordered before its reads by the vote's barrier
    bool mine = split.low == 8;
    for (uint32_t i = threadIdx.x; i < 256; i += blockDim.x) {
      const uint16_t value = __ldg(split.value + i);
      value_smem[i] = value;
      mine = mine && windowed::byte_split_value(i, value);
    }
    bytes = __syncthreads_and(mine);
  }
  if (!load_tables(table_smem, aux_smem, table, reinterpret_cast<const uint8_t*>(table + windowed::kTableSize))) {
    if (threadIdx.x == 0) atomicOr(status, 2u);  // tables that are not a code's: decode nothing
    return;
  }
  const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const uint64_t c = uint64_t(blockIdx.x) * (blockDim.x / 32) + warp;
  if (c >= s.n_chunks) return;  // the whole warp: c is warp-uniform
  const ChunkView v = windowed::chunk_view(s, c);
  const uint32_t stream = stream_words & ~3u;  // a multiple of 4 (stream_stage_words): stages stay 16-byte aligned
  uint8_t* stage = stage_smem + size_t(warp) * (stage_bytes + 4 * stream);
  uint32_t* words = stream ? reinterpret_cast<uint32_t*>(stage + stage_bytes) : nullptr;
  const uint32_t staged_words = words ? stage_chunk_words(words, v, stream, lane) : 0;
  const windowed::LaneRange r = warp_lane_range(v, s, table_smem, aux_smem, lane);
  if (r.overrun) atomicOr(status, 1u);
  __syncwarp();
  decode_chunk_symbols<kStaged>(kStaged ? stage : out + v.first, v, s, r, table_smem, aux_smem, lane, words,
                                staged_words, word_stores != 0);
  if constexpr (kStaged) {
    __syncwarp();
    if constexpr (kTo == DecodeTo::kStagedSplit)
      windowed::write_split_chunk(split, value_smem, stage, v.first, v.m, lane, bytes);
    else
      write_chunk(out + v.first, stage, v.m, lane);
  }
}

// ---------------------------------------------------------------------------- fused GEMV

// x ([k + kXPadRows][B] fp32) copied into the block's shared memory after the slots, by the whole
// block, 16 bytes a thread where x is 16-byte aligned. The caller's barrier (load_tables') orders it.
template <int B>
__device__ __forceinline__ void stage_x(float* x_smem, const float* __restrict__ x, uint32_t k) {
  const uint32_t n = (k + windowed::kXPadRows) * B;
  const uint32_t n_vec = (reinterpret_cast<uintptr_t>(x) & 15u) == 0 ? n / 4 : 0;
  for (uint32_t i = threadIdx.x; i < n_vec; i += blockDim.x)
    reinterpret_cast<float4*>(x_smem)[i] = __ldg(reinterpret_cast<const float4*>(x) + i);
  for (uint32_t i = n_vec * 4 + threadIdx.x; i < n; i += blockDim.x) x_smem[i] = __ldg(x + i);
}

// A GEMV warp's chunk (block x warps + warp), its rows and first row; false when the block has no
// chunk for this warp (c is warp-uniform), or when the tables are not a code's: then the rows
// say so (NaN) instead of a decoding loop hanging on them.
template <int B, class Args>
__device__ __forceinline__ bool gemv_warp_chunk(const StreamView& s, const Args& a, bool tables_ok, uint32_t lane,
                                                ChunkView* v, uint32_t* rows, uint32_t* first_row) {
  const uint64_t c = uint64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (c >= s.n_chunks) return false;
  *v = windowed::chunk_view(s, c);
  *rows = v->m / a.k;
  *first_row = uint32_t(v->first / a.k);
  if (!tables_ok) {
    for (uint32_t i = lane; i < *rows * B; i += 32)
      a.y[size_t(i % B) * a.n_rows + *first_row + i / B] = __int_as_float(0x7FC00000);
    return false;
  }
  return true;
}

// A warp's slots[row][b][lane] summed over the lanes with a fixed butterfly (the emulation's
// butterfly_sum), into y with the row's escapes: the GEMVs' epilogue.
template <int B, class Args>
__device__ __forceinline__ void warp_sums(const Args& a, const float* warp_slots, uint32_t rows, uint32_t first_row,
                                          uint32_t lane) {
  for (uint32_t row = 0; row < rows; ++row) {
#pragma unroll
    for (int b = 0; b < B; ++b) {
      float t = warp_slots[(row * B + b) * 32 + lane];
#pragma unroll
      for (int off = 16; off > 0; off /= 2) t += __shfl_xor_sync(kFullMask, t, off);
      if (lane == 0) a.y[size_t(b) * a.n_rows + first_row + row] = windowed::with_escapes<B>(a, first_row + row, b, t);
    }
  }
}

// kXShared: the sinks read x from the block's shared copy (stage_x) instead of global memory.
// Lanes hold runs of consecutive columns about K / 32 apart, so every load of x by a warp touches
// ~32 different cache lines: through L1 that is ~32 wavefronts an instruction, and on an H200 the
// batch-1 lossless GEMV spent 61% of its stall cycles waiting on L1 (ncu, 2026-11-30). In shared
// memory the same loads cost a few bank conflicts each.
// kStreamShared: each warp first copies its chunk's words (and the slack after them) into its
// stream stage, 32 consecutive words a load, and its lanes read their windows there (StageReader)
// instead of ~32 scattered lines a warp-wide load. stage_words: each warp's stage
// (windowed_gemv.h: stream_stage_words), 0 without.
template <int B, template <int, class> class Sink, class Args, class Entry, bool kXShared, bool kStreamShared>
__global__ void gemv_kernel(const StreamView s, const Args a, const Entry* __restrict__ table,
                            const uint8_t* __restrict__ aux, uint32_t max_rows, uint32_t stage_words) {
  extern __shared__ __align__(16) unsigned char smem[];
  Entry* table_smem = reinterpret_cast<Entry*>(smem);
  uint8_t* aux_smem = smem + table_bytes<Entry>();
  float* slots = reinterpret_cast<float*>(smem + table_bytes<Entry>() + kAuxBytes);
  uint32_t* stages = reinterpret_cast<uint32_t*>(slots + size_t(blockDim.x / 32) * max_rows * B * 32);
  Args shared_x_args;  // kXShared: a's copy whose x is the block's
  if constexpr (kXShared) {
    // stage_words is a multiple of 4 (stream_stage_words); masked, so that nvcc sees x 16-byte
    // aligned and loads a batch row's column in one LDS.128 (B = 4: 72 instructions a loop, not 90)
    float* x_smem = reinterpret_cast<float*>(stages + size_t(blockDim.x / 32) * (stage_words & ~3u));
    stage_x<B>(x_smem, a.x, a.k);
    shared_x_args = a;
    shared_x_args.x = x_smem;
  }
  const Args& sink_args = kXShared ? shared_x_args : a;
  const bool tables_ok = load_tables(table_smem, aux_smem, table, aux);

  const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  ChunkView v;
  uint32_t rows, first_row;
  if (!gemv_warp_chunk<B>(s, a, tables_ok, lane, &v, &rows, &first_row)) return;  // whole warp
  float* warp_slots = slots + size_t(warp) * max_rows * B * 32;
  for (uint32_t i = 0; i < rows * B; ++i) warp_slots[i * 32 + lane] = 0.f;
  uint32_t* stage = stages + size_t(warp) * stage_words;
  const uint32_t staged_words = kStreamShared ? stage_chunk_words(stage, v, stage_words, lane) : 0;

  const windowed::LaneRange r = warp_lane_range(v, s, table_smem, aux_smem, lane);
  if constexpr (kStreamShared) __syncwarp();
  if (lane < s.lanes) {
    Sink<B, std::conditional_t<kXShared, windowed::XShared, windowed::XGlobal>> sink;
    sink.begin(sink_args, warp_slots, lane, v, r.start);
    const uint64_t first_bit = lane * windowed::lane_window_bits(v.n_words, s.lanes);
    std::conditional_t<kStreamShared, windowed::StageReader, windowed::FastReader> reader;
    if constexpr (kStreamShared)
      reader.init(stage, staged_words, first_bit);
    else
      reader.init(v.words, 0, first_bit);
    windowed::gemv_lane(table_smem, aux_smem, reader, r.count, sink);
  }
  __syncwarp();
  warp_sums<B>(a, warp_slots, rows, first_row, lane);
}

// The staged GEMVs (windowed_gemv.h: staged_split_lane, lossless; staged_affine_lane, rate): each
// warp decodes its chunk into a stage in shared memory (as decode_kernel's staged pass 2), then its
// lanes multiply pieces of 8 columns, so that a warp's x loads (and raw-bit loads) are contiguous.
// Shared memory: the multi-symbol table and code lengths + count table, (lossless) each symbol's
// 16-bit value, the warps' slots, their stages, and x where it fits (kXShared). `values`: the value
// entries, read by the lossless route only (each symbol's value, and whether it is a byte split).
template <int B, bool kXShared, class Args>
__global__ void staged_gemv_kernel(const StreamView s, const Args a, const uint64_t* __restrict__ values,
                                   const uint32_t* __restrict__ table, uint32_t max_rows, uint32_t stage_bytes,
                                   uint32_t stream_words, uint32_t word_stores) {
  constexpr bool kSplit = std::is_same<Args, windowed::SplitArgs>::value;
  __shared__ __align__(16) uint32_t table_smem[windowed::kTableSize];
  __shared__ __align__(16) uint8_t aux_smem[kAuxBytes];
  __shared__ uint16_t value_smem[kSplit ? 256 : 1];
  // slots, stages (each warp's symbols, then its stream stage where stream_words > 0), then (kXShared) x
  extern __shared__ __align__(16) unsigned char smem[];
  const uint32_t warps = blockDim.x / 32;
  const uint32_t stream = stream_words & ~3u;  // a multiple of 4 (stream_stage_words): stages stay 16-byte aligned
  const size_t warp_stage = stage_bytes + 4 * size_t(stream);
  float* slots = reinterpret_cast<float*>(smem);
  uint8_t* stages = smem + size_t(warps) * max_rows * B * 32 * sizeof(float);
  const float* x = a.x;
  if constexpr (kXShared) {
    float* x_smem = reinterpret_cast<float*>(stages + size_t(warps) * warp_stage);
    stage_x<B>(x_smem, a.x, a.k);
    x = x_smem;
  }
  if constexpr (kSplit)
    for (uint32_t i = threadIdx.x; i < 256; i += blockDim.x) value_smem[i] = 0;  // symbols no entry names
  bool tables_ok = load_tables(table_smem, aux_smem, table, reinterpret_cast<const uint8_t*>(table + windowed::kTableSize));
  bool bytes = false;  // lossless: whether the weight is a byte split (windowed_gemv.h: entry_is_byte_split), by a vote
  if constexpr (kSplit) {
    // Entries that share a first symbol store the same value (the value entries are built from the
    // code: emulate.h, build_value_table), so which thread writes last does not matter.
    bool mine = a.low == 8;
    for (uint32_t i = threadIdx.x; i < windowed::kTableSize; i += blockDim.x) {
      windowed::split_value_of_entry(table_smem, values, i, value_smem);
      mine = mine && windowed::entry_is_byte_split(table_smem, values, i);
    }
    bytes = __syncthreads_and(mine);
  }

  const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  ChunkView v;
  uint32_t rows, first_row;
  if (!gemv_warp_chunk<B>(s, a, tables_ok, lane, &v, &rows, &first_row)) return;  // whole warp
  uint8_t* stage = stages + size_t(warp) * warp_stage;
  uint32_t* words = stream ? reinterpret_cast<uint32_t*>(stage + stage_bytes) : nullptr;
  const uint32_t staged_words = words ? stage_chunk_words(words, v, stream, lane) : 0;
  const windowed::LaneRange r = warp_lane_range(v, s, table_smem, aux_smem, lane);
  __syncwarp();
  decode_chunk_symbols<true>(stage, v, s, r, table_smem, aux_smem, lane, words, staged_words, word_stores != 0);
  __syncwarp();
  float* warp_slots = slots + size_t(warp) * max_rows * B * 32;
  using X = std::conditional_t<kXShared, windowed::XShared, windowed::XGlobal>;
  const bool vec = (reinterpret_cast<uintptr_t>(x) & 15u) == 0;
  if constexpr (kSplit) {
    const bool lane_bytes = windowed::staged_lane_bytes(bytes, v.first);
    if (lane_bytes && vec)
      windowed::staged_split_lane<B, X, true, true>(a, value_smem, stage, x, v.first, rows, warp_slots, lane);
    else if (lane_bytes)
      windowed::staged_split_lane<B, X, false, true>(a, value_smem, stage, x, v.first, rows, warp_slots, lane);
    else if (vec)
      windowed::staged_split_lane<B, X, true, false>(a, value_smem, stage, x, v.first, rows, warp_slots, lane);
    else
      windowed::staged_split_lane<B, X, false, false>(a, value_smem, stage, x, v.first, rows, warp_slots, lane);
  } else {
    if (vec)
      windowed::staged_affine_lane<B, X, true>(a, stage, x, v.first, rows, warp_slots, lane);
    else
      windowed::staged_affine_lane<B, X, false>(a, stage, x, v.first, rows, warp_slots, lane);
  }
  __syncwarp();
  warp_sums<B>(a, warp_slots, rows, first_row, lane);
}

// ---------------------------------------------------------------------------- tile: decode to shared memory + MMA

template <bool kHalf>
__device__ __forceinline__ void mma_m16n8k16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  if (kHalf)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

constexpr int kTileThreads = windowed::kTileWarps * 32;

// One block per 16 weight rows (windowed_tile.h: the three phases). NT: batch tiles of 8.
// Up to 4 tiles, decoding (phase 1) dominates and wants two blocks per SM, i.e. at most 64
// registers; above, the MMA loop dominates and keeps 96 registers (54 instead of 74 instructions
// per k-step at 64, bench/sass_count.py) at one block per SM.
template <int NT>
constexpr int kTileMinBlocks = NT <= 4 ? 2 : 1;

template <int NT, bool kHalf>
__global__ void __launch_bounds__(kTileThreads, kTileMinBlocks<NT>) tile_kernel(const StreamView s, const windowed::TileArgs a,
                                                            const uint32_t* __restrict__ table) {
  extern __shared__ __align__(16) unsigned char smem[];
  uint32_t* table_smem = reinterpret_cast<uint32_t*>(smem);
  uint8_t* aux_smem = smem + table_bytes<uint32_t>();
  uint8_t* symbols = aux_smem + kAuxBytes;
  float* partial = reinterpret_cast<float*>(symbols);  // phase 3, once phase 2 is done with the symbols
  const bool tables_ok = load_tables(table_smem, aux_smem, table, reinterpret_cast<const uint8_t*>(table + windowed::kTableSize));
  const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const uint32_t row0 = blockIdx.x * windowed::kTileRows, stride = a.k + windowed::kTileRowPad;
  if (!tables_ok) {  // tables that are not a code's: the rows say so (NaN) instead of hanging
    for (uint32_t i = threadIdx.x; i < windowed::kTileRows * a.batch_pad; i += kTileThreads) {
      const uint32_t row = row0 + i / a.batch_pad;
      if (row < a.n_rows) a.y[size_t(i % a.batch_pad) * a.n_rows + row] = __int_as_float(0x7FC00000);
    }
    return;
  }

  // Phase 1: whole chunks into the symbol tile, one warp per chunk.
  const uint32_t rows_per_chunk = s.chunk_symbols / a.k;
  for (uint32_t ci = warp; ci < windowed::kTileRows / rows_per_chunk; ci += windowed::kTileWarps) {
    const uint64_t c = uint64_t(row0 / rows_per_chunk) + ci;
    if (c >= s.n_chunks) break;  // warp-uniform
    const ChunkView v = windowed::chunk_view(s, c);
    const windowed::LaneRange r = warp_lane_range(v, s, table_smem, aux_smem, lane);
    if (lane < s.lanes) {
      windowed::FastReader reader;
      reader.init(v.words, 0, lane * windowed::lane_window_bits(v.n_words, s.lanes));
      windowed::TileSink sink;
      sink.begin(symbols, a.k, ci * rows_per_chunk, r.start);
      windowed::gemv_lane(table_smem, aux_smem, reader, r.count, sink);
    }
  }
  __syncthreads();

  // Phase 2: this warp's batch tiles over its k-range, segment by segment (one group's columns),
  // a fold after each.
  const windowed::TileWork w = windowed::tile_work(warp, NT, a.k);
  float p[windowed::kTileTilesPerWarp][4] = {}, acc[windowed::kTileTilesPerWarp][4] = {};
  for (uint32_t k_begin = w.step_begin * 16; k_begin < w.step_end * 16;) {
    const uint32_t k_end = windowed::tile_segment_end(k_begin, w.step_end * 16, a.group_size);
    for (uint32_t k0 = k_begin; k0 < k_end; k0 += 16) {
      uint32_t frag_a[4];
      windowed::tile_a_fragment<kHalf>(symbols, stride, k0, lane, a.zero_in_values, frag_a);
#pragma unroll
      for (uint32_t j = 0; j < windowed::kTileTilesPerWarp; ++j) {
        if (j < w.tiles) {
          uint32_t frag_b[2];
          windowed::tile_b_fragment(a.x, a.k, k0, w.first_tile + j, lane, frag_b);
          mma_m16n8k16<kHalf>(p[j], frag_a, frag_b);
        }
      }
    }
#pragma unroll
    for (uint32_t j = 0; j < windowed::kTileTilesPerWarp; ++j)
      if (j < w.tiles)
        windowed::tile_fold(a, row0, k_begin / a.group_size, k_begin, k_end, w.first_tile + j, lane, p[j], acc[j]);
    k_begin = k_end;
  }
  __syncthreads();  // every warp is done with the symbols: their space takes the partial sums

  // Phase 3: the splits' sums in split order, then the escapes.
#pragma unroll
  for (uint32_t j = 0; j < windowed::kTileTilesPerWarp; ++j)
    if (j < w.tiles)
#pragma unroll
      for (int i = 0; i < 4; ++i)
        partial[windowed::tile_partial_index(w.split, windowed::tile_c_row(lane, i),
                                             windowed::tile_c_col(w.first_tile + j, lane, i), a.batch_pad)] = acc[j][i];
  __syncthreads();
  const uint32_t splits = windowed::tile_splits(NT);
  for (uint32_t i = threadIdx.x; i < windowed::kTileRows * a.batch_pad; i += kTileThreads) {
    const uint32_t r = i / a.batch_pad, b = i % a.batch_pad, row = row0 + r;
    if (row >= a.n_rows) continue;
    float sum = 0.f;
    for (uint32_t sp = 0; sp < splits; ++sp) sum += partial[windowed::tile_partial_index(sp, r, b, a.batch_pad)];
    a.y[size_t(b) * a.n_rows + row] = windowed::tile_with_escapes(a, row, b, sum);
  }
}

// ---------------------------------------------------------------------------- split merge

__global__ void split_merge_kernel(const uint8_t* __restrict__ symbols, uint64_t n, const uint16_t* __restrict__ value,
                                   const uint32_t* __restrict__ raw, uint64_t raw_words, uint32_t low,
                                   uint16_t* __restrict__ out) {
  const uint64_t i = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  uint32_t field = 0;
  if (low) {
    const uint64_t bit = i * low, w = bit >> 5;
    const uint64_t hi = w < raw_words ? __ldg(raw + w) : 0, lo = w + 1 < raw_words ? __ldg(raw + w + 1) : 0;
    field = uint32_t((((hi << 32) | lo) << (bit & 31)) >> (64 - low));
  }
  out[i] = uint16_t(__ldg(value + symbols[i]) | field);
}

// ---------------------------------------------------------------------------- host side

// Beyond the shared argument checks (windowed_gemv.h), only a launch needs a grid that fits
// (checked for one warp a block, the most blocks any launch uses).
Status check_grid(const StreamView& s) { return s.n_chunks > 0x7FFFFFFFull ? Status::TooLarge : Status::Ok; }

unsigned grid_of(const StreamView& s, uint32_t warps) { return unsigned((s.n_chunks + warps - 1) / warps); }

std::atomic<uint32_t> warps_setting{kDefaultWarpsPerBlock};

// The warps a block gets: the setting, but no more than the chunks need, nor than fit `device_smem`
// at `per_warp` bytes each beside `fixed` bytes (0: not even one).
uint32_t block_warps(const StreamView& s, size_t fixed, size_t per_warp, size_t device_smem) {
  uint64_t warps = warps_setting.load(std::memory_order_relaxed);
  if (warps > s.n_chunks) warps = s.n_chunks ? s.n_chunks : 1;
  if (per_warp) {
    const uint64_t fit = device_smem > fixed ? (device_smem - fixed) / per_warp : 0;
    if (warps > fit) warps = fit;
  }
  return uint32_t(warps);
}

constexpr int kMaxDevices = 64;

// Dynamic shared memory above 48 KiB must be opted into, per kernel and device: once each.
template <auto kKernel>
Status opt_in_smem(size_t smem, size_t max_smem) {
  if (smem <= 48 * 1024) return Status::Ok;
  static std::once_flag opted_in[kMaxDevices];
  static cudaError_t opt_in_error[kMaxDevices];
  int device = 0;
  const Status st = from_cuda(cudaGetDevice(&device));
  if (st != Status::Ok) return st;
  if (device >= kMaxDevices) return Status::TooLarge;
  std::call_once(opted_in[device], [&] {
    opt_in_error[device] = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(max_smem));
  });
  return from_cuda(opt_in_error[device]);
}

// The longest chunk (symbols) the decode kernel stages in shared memory (kStaged); longer ones
// are written byte by byte to global memory. 0 turns staging off, for side-by-side timings.
constexpr size_t kStaticDecodeSmem = windowed::kTableSize * sizeof(uint32_t) + kAuxBytes;
constexpr size_t kSplitValueBytes = 256 * sizeof(uint16_t);  // the split decode's value[] in shared memory
std::atomic<uint32_t> decode_stage_symbols{kMaxDecodeStageSymbols};

// The largest x (bytes) a GEMV block copies into shared memory (kXShared); larger ones are read
// from global memory. 0 turns the copy off: a switch for side-by-side timings (bench/gpu_suite.py).
std::atomic<uint32_t> x_shared_bytes{kMaxGemvXSharedBytes};

// The most dynamic shared memory a block of the current device may opt into (99 KiB on sm_86 and
// sm_89, 163 on sm_80, 227 on sm_90), read once per device.
size_t max_block_smem() {
  static std::once_flag read[kMaxDevices];
  static int bytes[kMaxDevices];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device >= kMaxDevices) return 48 * 1024;
  std::call_once(read[device], [&] {
    if (cudaDeviceGetAttribute(&bytes[device], cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess)
      bytes[device] = 48 * 1024;
  });
  return size_t(bytes[device]);
}

// A GEMV launch whose x may go to shared memory: kShared (x after the warps' space) where x fits
// the setting and, with at least one warp, the block's `dynamic_max` bytes of dynamic shared
// memory; else kGlobal. `fixed`: dynamic bytes before the warps' (tables, when a kernel keeps them
// there), `per_warp` each warp's. Blocks of fewer warps than the setting's where they would not
// fit. The kernels take (s, args...).
template <auto kShared, auto kGlobal, class... KernelArgs>
Status launch_x_placed(const StreamView& s, size_t fixed, size_t per_warp, size_t x_bytes, size_t dynamic_max,
                       cudaStream_t cs, const KernelArgs&... args) {
  const uint32_t shared_warps = x_bytes <= x_shared_bytes.load(std::memory_order_relaxed)
                                    ? block_warps(s, fixed + x_bytes, per_warp, dynamic_max) : 0;
  if (shared_warps > 0) {
    const size_t smem = fixed + shared_warps * per_warp + x_bytes;
    const Status st = opt_in_smem<kShared>(smem, dynamic_max);
    if (st != Status::Ok) return st;
    kShared<<<grid_of(s, shared_warps), shared_warps * 32, smem, cs>>>(s, args...);
  } else {
    const uint32_t warps = block_warps(s, fixed, per_warp, dynamic_max);
    if (warps == 0) return Status::TooLarge;
    const size_t smem = fixed + warps * per_warp;
    const Status st = opt_in_smem<kGlobal>(smem, dynamic_max);
    if (st != Status::Ok) return st;
    kGlobal<<<grid_of(s, warps), warps * 32, smem, cs>>>(s, args...);
  }
  return from_cuda(cudaGetLastError());
}

std::atomic<uint32_t> stream_shared_setting{1};

// Whether the staged decodes store their stages a word at a time (windowed.h: WordRunSink).
std::atomic<uint32_t> stage_word_stores_setting{1};
uint32_t word_stores() { return stage_word_stores_setting.load(std::memory_order_relaxed); }

// The words of each warp's stream stage the setting asks for (0: lanes read in place); a launch
// still drops it where a block of one warp does not fit with it.
uint32_t wanted_stream_words(const StreamView& s) {
  return stream_shared_setting.load(std::memory_order_relaxed) ? windowed::stream_stage_words(s) : 0;
}

// Shared memory of a GEMV block: tables, then each warp's slots, then (kStreamShared) each warp's
// stream stage, then (kXShared) x. The stream stage where the setting allows and a block of one
// warp fits with it (x then placed as launch_x_placed decides), else lanes read global memory.
template <int B, template <int, class> class Sink, class Args, class Entry>
Status launch_gemv(const StreamView& s, const Args& a, const Entry* table, const uint8_t* aux, cudaStream_t cs) {
  const uint32_t max_rows = s.chunk_symbols / a.k;
  const size_t fixed = table_bytes<Entry>() + kAuxBytes, slots = size_t(max_rows) * B * 32 * sizeof(float);
  const size_t x_bytes = size_t(a.k + windowed::kXPadRows) * B * sizeof(float), device_smem = max_block_smem();
  const uint32_t stage_words = wanted_stream_words(s);
  const size_t staged = slots + size_t(stage_words) * sizeof(uint32_t);
  if (stage_words && block_warps(s, fixed, staged, device_smem) > 0)
    return launch_x_placed<gemv_kernel<B, Sink, Args, Entry, true, true>,
                           gemv_kernel<B, Sink, Args, Entry, false, true>>(s, fixed, staged, x_bytes, device_smem, cs, a,
                                                                          table, aux, max_rows, stage_words);
  return launch_x_placed<gemv_kernel<B, Sink, Args, Entry, true, false>, gemv_kernel<B, Sink, Args, Entry, false, false>>(
      s, fixed, slots, x_bytes, device_smem, cs, a, table, aux, max_rows, 0u);
}

// Batches 1..8 and 16 (the caller pads 9..15 to 16): windowed::with_batch's list.
template <template <int, class> class Sink, class Args, class Entry>
Status dispatch_gemv(uint32_t batch, const StreamView& s, const Args& a, const Entry* table, const uint8_t* aux,
                     cudaStream_t cs) {
  return windowed::with_batch(batch, Status::BadArgument, [&](auto b) {
    return launch_gemv<decltype(b)::value, Sink>(s, a, table, aux, cs);
  });
}

std::atomic<uint32_t> staged_gemv_setting{1};
std::atomic<uint32_t> affine_staged_setting{1};

constexpr size_t kStaticStagedSmem = windowed::kTableSize * sizeof(uint32_t) + kAuxBytes + 256 * sizeof(uint16_t);

// Shared memory of a staged GEMV block (its tables are static): per warp its slots and its stage,
// then (kXShared) x.
template <int B, class Args>
Status launch_staged(const StreamView& s, const Args& a, const uint64_t* values, const uint32_t* table,
                     cudaStream_t cs) {
  const uint32_t max_rows = s.chunk_symbols / a.k;
  const uint32_t stage_bytes = (s.chunk_symbols + 15u) & ~15u;
  const size_t device_smem = max_block_smem();
  const size_t dynamic_max = device_smem > kStaticStagedSmem ? device_smem - kStaticStagedSmem : 0;
  const size_t per_warp = size_t(max_rows) * B * 32 * sizeof(float) + stage_bytes;
  // Each warp's stream stage after its symbols where a block of one warp fits with it (the setting).
  uint32_t stream_words = wanted_stream_words(s);
  if (stream_words && block_warps(s, 0, per_warp + 4 * size_t(stream_words), dynamic_max) == 0) stream_words = 0;
  return launch_x_placed<staged_gemv_kernel<B, true, Args>, staged_gemv_kernel<B, false, Args>>(
      s, 0, per_warp + 4 * size_t(stream_words), size_t(a.k + windowed::kXPadRows) * B * sizeof(float), dynamic_max,
      cs, a, values, table, max_rows, stage_bytes, stream_words, word_stores());
}

template <class Args>
Status dispatch_staged(uint32_t batch, const StreamView& s, const Args& a, const uint64_t* values,
                       const uint32_t* table, cudaStream_t cs) {
  return windowed::with_batch(batch, Status::BadArgument, [&](auto b) {
    return launch_staged<decltype(b)::value>(s, a, values, table, cs);
  });
}

template <int NT, bool kHalf>
Status launch_tile(const StreamView& s, const windowed::TileArgs& a, const uint32_t* table, cudaStream_t cs) {
  const size_t smem = windowed::tile_smem_bytes(a.k);
  const Status st = opt_in_smem<tile_kernel<NT, kHalf>>(smem, windowed::tile_smem_bytes(windowed::kTileMaxK));
  if (st != Status::Ok) return st;
  const unsigned blocks = unsigned((uint64_t(a.n_rows) + windowed::kTileRows - 1) / windowed::kTileRows);
  tile_kernel<NT, kHalf><<<blocks, kTileThreads, smem, cs>>>(s, a, table);
  return from_cuda(cudaGetLastError());
}

template <bool kHalf>
Status dispatch_tile(uint32_t batch, const StreamView& s, const windowed::TileArgs& a, const uint32_t* table,
                     cudaStream_t cs) {
  switch (windowed::tile_batch_tiles(batch)) {
    case 2: return launch_tile<2, kHalf>(s, a, table, cs);
    case 4: return launch_tile<4, kHalf>(s, a, table, cs);
    case 8: return launch_tile<8, kHalf>(s, a, table, cs);
    case 16: return launch_tile<16, kHalf>(s, a, table, cs);
    default: return Status::BadArgument;
  }
}

}  // namespace

const char* last_error_string() { return cudaGetErrorString(last_cuda_error()); }

uint32_t set_warps_per_block(uint32_t warps) {
  return warps_setting.exchange(clamp_setting(warps, 1, kMaxWarpsPerBlock));
}
uint32_t warps_per_block() { return warps_setting.load(std::memory_order_relaxed); }

uint32_t set_gemv_x_shared_bytes(uint32_t bytes) {
  return x_shared_bytes.exchange(clamp_setting(bytes, 0, kMaxGemvXSharedBytes));
}
uint32_t gemv_x_shared_bytes() { return x_shared_bytes.load(std::memory_order_relaxed); }

uint32_t set_decode_stage_symbols(uint32_t symbols) {
  return decode_stage_symbols.exchange(clamp_setting(symbols, 0, kMaxDecodeStageSymbols));
}
uint32_t decode_stage_symbols_limit() { return decode_stage_symbols.load(std::memory_order_relaxed); }

uint32_t set_split_gemv_staged(uint32_t on) { return staged_gemv_setting.exchange(clamp_setting(on, 0, 1)); }
uint32_t split_gemv_staged() { return staged_gemv_setting.load(std::memory_order_relaxed); }
uint32_t set_affine_gemv_staged(uint32_t on) { return affine_staged_setting.exchange(clamp_setting(on, 0, 1)); }
uint32_t affine_gemv_staged() { return affine_staged_setting.load(std::memory_order_relaxed); }

uint32_t set_stream_shared(uint32_t on) { return stream_shared_setting.exchange(clamp_setting(on, 0, 1)); }
uint32_t stream_shared() { return stream_shared_setting.load(std::memory_order_relaxed); }

uint32_t set_stage_word_stores(uint32_t on) { return stage_word_stores_setting.exchange(clamp_setting(on, 0, 1)); }
uint32_t stage_word_stores() { return word_stores(); }

Status windowed_decode(const windowed::StreamView& s, const uint32_t* table_dev, uint8_t* out_dev,
                       uint32_t* status_dev, uintptr_t stream) {
  Status st = windowed::check_decode(s, table_dev, out_dev, status_dev);
  if (st == Status::Ok) st = check_grid(s);
  if (st != Status::Ok || s.n_chunks == 0) return st;
  const void* ptrs[6] = {out_dev, status_dev, table_dev, s.super, s.sizes, s.payload_words ? s.payload : nullptr};
  if ((st = check_device_pointers(ptrs, 6)) != Status::Ok) return st;
  const cudaStream_t cs = reinterpret_cast<cudaStream_t>(stream);
  const uint32_t stage_bytes = (s.chunk_symbols + 15u) & ~15u;
  const size_t device_smem = max_block_smem();
  const bool staged = s.chunk_symbols <= decode_stage_symbols.load(std::memory_order_relaxed);
  const windowed::SplitDecodeArgs none{};
  const auto launch = [&](auto kernel, uint32_t symbol_bytes, uint32_t stream_words) {
    const size_t per_warp = symbol_bytes + 4 * size_t(stream_words);
    const uint32_t warps = block_warps(s, kStaticDecodeSmem, per_warp, device_smem);
    if (warps == 0) return Status::TooLarge;
    const size_t smem = warps * per_warp;
    const Status opted = opt_in_smem<decltype(kernel)::value>(smem, device_smem - kStaticDecodeSmem);
    if (opted != Status::Ok) return opted;
    decltype(kernel)::value<<<grid_of(s, warps), warps * 32, smem, cs>>>(s, table_dev, out_dev, status_dev,
                                                                        symbol_bytes, stream_words, word_stores(),
                                                                        none);
    return from_cuda(cudaGetLastError());
  };
  using Staged = std::integral_constant<decltype(&decode_kernel<DecodeTo::kStagedSymbols>),
                                        &decode_kernel<DecodeTo::kStagedSymbols>>;
  using Unstaged =
      std::integral_constant<decltype(&decode_kernel<DecodeTo::kSymbols>), &decode_kernel<DecodeTo::kSymbols>>;
  // The first that fits: symbols staged (chunks within the setting) with the stream stage (its
  // setting), symbols staged alone, the stream stage alone, neither (no dynamic shared memory).
  const uint32_t stream_words = wanted_stream_words(s);
  if (staged) {
    if (stream_words && (st = launch(Staged{}, stage_bytes, stream_words)) != Status::TooLarge) return st;
    if ((st = launch(Staged{}, stage_bytes, 0)) != Status::TooLarge) return st;
  }
  if (stream_words && (st = launch(Unstaged{}, 0, stream_words)) != Status::TooLarge) return st;
  return launch(Unstaged{}, 0, 0);
}

uint32_t split_decode_max_chunk() {
  const size_t device_smem = max_block_smem();
  const size_t fixed = kStaticDecodeSmem + kSplitValueBytes;
  const size_t fit = device_smem > fixed ? (device_smem - fixed) & ~size_t(15) : 0;
  return uint32_t(std::min<size_t>(fit, windowed::kMaxChunkSymbols));
}

Status windowed_decode_split(const windowed::StreamView& s, const uint32_t* table_dev, const windowed::SplitDecodeArgs& a,
                             uint32_t* status_dev, uintptr_t stream) {
  Status st = windowed::check_split_decode(s, table_dev, a, status_dev);
  if (st == Status::Ok) st = check_grid(s);
  if (st != Status::Ok || s.n_chunks == 0) return st;
  const void* ptrs[8] = {a.out, status_dev, table_dev, s.super, s.sizes, s.payload_words ? s.payload : nullptr, a.value,
                         a.raw};
  if ((st = check_device_pointers(ptrs, 8)) != Status::Ok) return st;
  const uint32_t stage_bytes = (s.chunk_symbols + 15u) & ~15u;
  const size_t device_smem = max_block_smem(), fixed = kStaticDecodeSmem + kSplitValueBytes;
  // Each warp's stream stage beside its symbols where both fit (and the setting allows), else symbols only.
  uint32_t stream_words = wanted_stream_words(s);
  if (stream_words && block_warps(s, fixed, stage_bytes + 4 * size_t(stream_words), device_smem) == 0) stream_words = 0;
  const size_t per_warp = stage_bytes + 4 * size_t(stream_words);
  const uint32_t warps = block_warps(s, fixed, per_warp, device_smem);
  if (warps == 0) return Status::TooLarge;  // one chunk's stage does not fit (split_decode_max_chunk)
  constexpr auto kKernel = decode_kernel<DecodeTo::kStagedSplit>;
  const size_t smem = size_t(warps) * per_warp;
  st = opt_in_smem<kKernel>(smem, device_smem - fixed);
  if (st != Status::Ok) return st;
  kKernel<<<grid_of(s, warps), warps * 32, smem, reinterpret_cast<cudaStream_t>(stream)>>>(
      s, table_dev, reinterpret_cast<uint8_t*>(a.out), status_dev, stage_bytes, stream_words, word_stores(), a);
  return from_cuda(cudaGetLastError());
}

Status windowed_gemv_affine(const windowed::StreamView& s, const uint64_t* value_table_dev, const uint32_t* table_dev,
                            const windowed::AffineArgs& a, uint32_t batch, uintptr_t stream) {
  Status st = windowed::check_affine(s, value_table_dev, table_dev, a, batch);
  if (st == Status::Ok) st = check_grid(s);
  if (st != Status::Ok || s.n_chunks == 0) return st;
  const uint8_t* aux = reinterpret_cast<const uint8_t*>(table_dev + windowed::kTableSize);
  const cudaStream_t cs = reinterpret_cast<cudaStream_t>(stream);
  // batch 1 only (affine_gemv_stages), so only that instance is built
  if (affine_staged_setting.load(std::memory_order_relaxed) && windowed::affine_gemv_stages(a, s.chunk_symbols, batch))
    return launch_staged<1>(s, a, value_table_dev, table_dev, cs);
  return dispatch_gemv<windowed::AffineSink>(batch, s, a, value_table_dev, aux, cs);
}

Status windowed_gemv_split(const windowed::StreamView& s, const uint64_t* value_table_dev, const uint32_t* table_dev,
                           const windowed::SplitArgs& a, uint32_t batch, uintptr_t stream) {
  Status st = windowed::check_split(s, value_table_dev, table_dev, a, batch);
  if (st == Status::Ok) st = check_grid(s);
  if (st != Status::Ok || s.n_chunks == 0) return st;
  const uint8_t* aux = reinterpret_cast<const uint8_t*>(table_dev + windowed::kTableSize);
  const cudaStream_t cs = reinterpret_cast<cudaStream_t>(stream);
  if (staged_gemv_setting.load(std::memory_order_relaxed) && windowed::split_gemv_stages(a.k, s.chunk_symbols))
    return dispatch_staged(batch, s, a, value_table_dev, table_dev, cs);
  return dispatch_gemv<windowed::SplitSink>(batch, s, a, value_table_dev, aux, cs);
}

Status split_merge(const uint8_t* symbols_dev, uint64_t n, const uint16_t* values_dev, const uint32_t* raw_dev,
                   uint64_t raw_words, uint32_t low, uint16_t* out_dev, uintptr_t stream) {
  const Status st = windowed::check_merge(symbols_dev, n, values_dev, raw_dev, raw_words, low, out_dev);
  if (st != Status::Ok || n == 0) return st;
  constexpr unsigned kMergeThreads = 256;
  const uint64_t blocks = (n + kMergeThreads - 1) / kMergeThreads;
  if (blocks > 0x7FFFFFFFull) return Status::TooLarge;
  split_merge_kernel<<<unsigned(blocks), kMergeThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      symbols_dev, n, values_dev, raw_dev, raw_words, low, out_dev);
  return from_cuda(cudaGetLastError());
}

Status windowed_tile_affine(const windowed::StreamView& s, const uint32_t* table_dev, const windowed::TileArgs& a,
                            uint32_t batch, uintptr_t stream) {
  Status st = windowed::check_tile(s, table_dev, a, batch);
  if (st != Status::Ok || s.n_chunks == 0) return st;
  const void* ptrs[8] = {table_dev, s.super, s.sizes, s.payload_words ? s.payload : nullptr, a.x, a.prefix, a.y, a.scale};
  if ((st = check_device_pointers(ptrs, 8)) != Status::Ok) return st;
  const cudaStream_t cs = reinterpret_cast<cudaStream_t>(stream);
  return a.x_half ? dispatch_tile<true>(batch, s, a, table_dev, cs) : dispatch_tile<false>(batch, s, a, table_dev, cs);
}

}  // namespace cuda
}  // namespace pycodec
