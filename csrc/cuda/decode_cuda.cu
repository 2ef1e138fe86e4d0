// pycodec CUDA decoders: one warp per chunk, for both coders, and the fused
// decode + dequant + GEMV kernel built on the same per-warp loops.
//
// Read me first
// - Mapping: warp w of block b decodes chunk b * (warps per block) + w. The 32 lanes of a
//   warp are the 32 interleaved lanes of the format (huffman.h / rans.h), so each lane
//   decodes its own symbols and the only cross-lane step per round is "who reads the
//   next stream word": one __ballot_sync plus a __popc of the lanes below.
// - The stream layout is normative in huffman.h / rans.h; this file follows their CPU
//   careful paths exactly (same refill schedule, same tail rules) and reuses their
//   PYCODEC_HD helpers, so any divergence from the CPU decoder is a bug here.
// - One decode loop per coder (huffman_chunk / rans_chunk), templated over a "sink" that
//   receives every decoded symbol with its chunk position: a warp-uniform round index r
//   and the lane. Symbol position in the chunk = (r * 32 + lane) * P + i, P = symbols a
//   lane decodes per round (Huffman 2, rANS 1), i < P. Sink interface:
//     put2(r, lane, pair)  Huffman: symbols (low byte, high byte) at positions p, p + 1
//     put1(r, lane, sym)   one symbol at position p (rANS; Huffman's odd last symbol)
//     end_round(r)         called by ALL lanes after every round (warp-uniform point:
//                          the only place a sink may use shuffles)
//   ByteSink writes the symbols to global memory (decode_symbols, the historical
//   behaviour bit for bit); GemvSink dequantizes and multiplies them into registers.
// - Payload words reach lanes through a 64-word sliding window held in registers (two
//   coalesced 128-byte loads of 32 words, one word per lane) and __shfl_sync, not through
//   per-lane global loads: the word a lane needs depends on the ballot of the round, so a
//   direct load would put a full L2/DRAM round trip on every round's critical path. The
//   window's upper half is fetched several rounds before it is needed.
// - Invariants: window covers words [base, base + 64), base a multiple of 32, and
//   (next word to read) - base < 32 at the start of every round. A round reads at most
//   32 words (Huffman) or 32 uint16 = 16 words (rANS), so every word of a round is in the
//   window and one shift of 32 words after the round restores the invariant.
// - Bounds: a round whose reads would pass the chunk's last word stops the warp before
//   reading (warp-uniform test), so corrupt input never reads outside the chunk and never
//   writes outside the chunk's output (GEMV: outputs of the chunk's rows not yet finished
//   stay unwritten). Detecting corruption is the CPU path's job (streams are verified at
//   load time); the GPU just stays in bounds.
// - All control flow that reaches a __shfl_sync / __ballot_sync is warp-uniform (chunk
//   length, round count, stream position, row ends), so the full mask is always correct.
// - Occupancy (decode): 256 threads per block and a 16 KiB shared table, so 8 blocks (64
//   warps, the H100/A100 maximum of 2048 threads) need 128 KiB of shared memory, inside the
//   227 KiB (H100) / 163 KiB (A100) an SM offers; __launch_bounds__(256, 8) asks the
//   compiler for <= 32 registers per thread so registers do not cap residency either.
//   Table lookups are random, so the many resident warps are what hides their latency.
// - Fused GEMV (gemv_affine): y[b, n] = sum_k x[b, k] * (q[n, k] - zero[n, g]) * scale[n, g],
//   g = k / group_size, for batch B = 1..8, decoded weights never leave registers.
//   Requirements (else the host refuses and Python keeps the decode + Triton path):
//   chunk_symbols % K == 0 (a chunk is whole rows) and K % 64 == 0, so a round (64
//   Huffman / 32 rANS consecutive symbols) never straddles a row and a row change is
//   warp-uniform: each lane keeps fp32 partials acc[B] for the current row, and at a row
//   end a butterfly shuffle reduction gives every lane the sums and lane b writes y[b, n].
//   group_size >= 64 and even: a lane's column pair shares a group, and a lane's group
//   advances at most once per round (tracked incrementally, no division). Scale/zero of
//   the next round are loaded at the end of the current one (warp-wide broadcast loads of
//   <= 2 addresses, L1 hits), x through __ldg (B*K*2 bytes stays in L1/L2; a round's x
//   reads are 128 (Huffman, bf16x2 per lane) or 64 (rANS) contiguous bytes per b).
//   Blocks of 4 warps: a matrix has few chunks (N*K / chunk_symbols, often < 1000), so
//   smaller blocks spread them over more SMs; __launch_bounds__(128, 8) allows 64
//   registers per thread for acc[8] without spilling, still 32 warps per SM at full load.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../codec/codec.h"
#include "../codec/format.h"
#include "../codec/huffman.h"
#include "../codec/rans.h"
#include "decode_cuda.h"

namespace pycodec {
namespace cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kThreadsPerBlock = kWarpsPerBlock * kLanes;
constexpr int kMinBlocksPerSm = 8;
constexpr uint32_t kFullMask = 0xFFFFFFFFu;
constexpr uint32_t kTableEntries = kDecodeTableEntries;
constexpr int kGemvWarpsPerBlock = 4;
constexpr int kGemvThreadsPerBlock = kGemvWarpsPerBlock * kLanes;
constexpr int kGemvMinBlocksPerSm = 8;
constexpr uint32_t kGemvMaxBatch = 8;
constexpr uint32_t kGemvAlign = 64;  // K and group_size: one Huffman round = 64 symbols

static_assert(kLanes == 32, "one format lane per CUDA warp lane");
static_assert(huffman::kWordBits == 32, "the Huffman window moves 32-bit words");
static_assert(rans::kWordBits == 16, "the rANS window splits 32-bit words into two uint16");
static_assert(huffman::kTableBits == 12 && rans::kProbBits == 12, "one 4096-entry shared table");

// rANS slot fields, the inverse of rans::make_slot.
__device__ __forceinline__ uint32_t slot_freq(uint32_t e) { return ((e >> 8) & (rans::kProbScale - 1)) + 1; }
__device__ __forceinline__ uint32_t slot_bias(uint32_t e) { return e >> 20; }

// 64 consecutive words of a chunk's stream, spread over the warp: lane l holds words
// base + l (lo) and base + 32 + l (hi). Words past the end read as 0 and are never used
// (the caller's bounds test stops first).
struct WordWindow {
  const uint32_t* __restrict__ words;
  uint32_t n_words;
  uint32_t lane;
  uint32_t base;
  uint32_t lo, hi;

  __device__ __forceinline__ uint32_t load(uint32_t i) const { return i < n_words ? __ldg(words + i) : 0u; }

  __device__ __forceinline__ void init(const uint32_t* w, uint32_t n, uint32_t l) {
    words = w;
    n_words = n;
    lane = l;
    base = 0;
    lo = load(l);
    hi = load(kLanes + l);
  }

  // Word i (base <= i < base + 64) for this lane. Every lane must call it (shuffles).
  __device__ __forceinline__ uint32_t get(uint32_t i) const {
    const uint32_t off = i - base;
    const uint32_t a = __shfl_sync(kFullMask, lo, off & 31);
    const uint32_t b = __shfl_sync(kFullMask, hi, off & 31);
    return off < 32 ? a : b;
  }

  // next = first word the next round may read; keeps next - base < 32. Issuing the new
  // upper half here gives its load several rounds to land before get() consumes it.
  __device__ __forceinline__ void advance(uint32_t next) {
    if (next - base >= 32) {
      base += 32;
      lo = hi;
      hi = load(base + kLanes + lane);
    }
  }
};

// Loads the host-built table once per block; every warp of the block then looks up in
// shared memory (random 4-byte reads that would thrash L1 if left in global memory).
__device__ __forceinline__ void load_table(uint32_t* smem, const uint32_t* __restrict__ table) {
  for (uint32_t i = threadIdx.x; i < kTableEntries; i += blockDim.x) smem[i] = __ldg(table + i);
  __syncthreads();
}

struct ChunkSpan {
  const uint32_t* words;
  uint32_t n_words;
  uint32_t n;       // symbols
  uint64_t first;   // index of the chunk's first symbol in the tensor
};

// Chunk c's words and symbols, clamped to the payload so a bad index cannot push reads out.
__device__ __forceinline__ ChunkSpan chunk_span(uint64_t c, const DeviceStream& s) {
  const uint64_t begin_raw = __ldg(s.index_dev + c);
  const uint64_t end_raw = c + 1 < s.n_chunks ? uint64_t(__ldg(s.index_dev + c + 1)) : s.payload_words;
  const uint64_t begin = begin_raw < s.payload_words ? begin_raw : s.payload_words;
  uint64_t end = end_raw < s.payload_words ? end_raw : s.payload_words;
  if (end < begin) end = begin;
  const uint64_t first = c * s.chunk_symbols;
  const uint64_t left = s.n_symbols - first;
  ChunkSpan span;
  span.words = s.payload_dev + begin;
  span.n_words = uint32_t(end - begin < 0xFFFFFFFFull ? end - begin : 0xFFFFFFFFull);
  span.n = uint32_t(left < s.chunk_symbols ? left : s.chunk_symbols);
  span.first = first;
  return span;
}

// ------------------------------------------------------------------ per-warp decode loops

// Decodes one Huffman chunk; lane `lane` of a full warp. Every lane runs every round (the
// ballot needs them), lanes past their symbols just skip the lookup.
template <class Sink>
__device__ __forceinline__ void huffman_chunk(const uint32_t* table, const ChunkSpan& span, uint32_t lane,
                                              Sink& sink) {
  const uint32_t below = (1u << lane) - 1u;
  constexpr int G = huffman::kSymbolsPerRound;
  constexpr int kShift = huffman::kBitBufferBits - huffman::kTableBits;
  const uint32_t m = huffman::lane_symbol_count(span.n, lane);
  const uint32_t rounds = (huffman::lane_symbol_count(span.n, 0) + G - 1) / G;

  WordWindow win;
  win.init(span.words, span.n_words, lane);
  uint64_t bits = 0;
  int count = 0;
  uint32_t pos = 0;
  for (uint32_t r = 0; r < rounds; ++r) {
    const uint32_t j0 = r * G;
    const bool active = j0 < m;
    const bool need = active && count < huffman::kRefillThreshold;
    const uint32_t ballot = __ballot_sync(kFullMask, need);
    const uint32_t total = __popc(ballot);
    if (uint64_t(pos) + total > span.n_words) return;  // corrupt: would read past the chunk
    const uint32_t word = win.get(pos + __popc(ballot & below));
    if (need) {
      bits |= (uint64_t(word) << 32) >> count;
      count += huffman::kWordBits;
    }
    pos += total;
    win.advance(pos);
    if (active) {  // no shuffles in here: lanes may diverge until end_round
      const uint32_t e = table[bits >> kShift];
      if (j0 + 1 < m) {
        uint32_t used, pair;
        if (e & huffman::kPairBit) {
          used = huffman::entry_consume(e);
          pair = e & 0xFFFFu;
        } else {  // second code too long to share the 12-bit window: second lookup
          const uint32_t e1 = table[(bits << huffman::entry_length(e)) >> kShift];
          used = huffman::entry_length(e) + huffman::entry_length(e1);
          pair = huffman::entry_symbol(e) | (huffman::entry_symbol(e1) << 8);
        }
        bits <<= used;
        count -= int(used);
        sink.put2(r, lane, pair);
      } else {  // a lane's last, odd symbol
        bits <<= huffman::entry_length(e);
        count -= int(huffman::entry_length(e));
        sink.put1(r, lane, huffman::entry_symbol(e));
      }
    }
    sink.end_round(r);  // all lanes, warp-uniform
  }
}

// Decodes one rANS chunk (span.n_words >= kLanes checked by the caller).
template <class Sink>
__device__ __forceinline__ void rans_chunk(const uint32_t* table, const ChunkSpan& span, uint32_t lane, Sink& sink) {
  const uint32_t below = (1u << lane) - 1u;
  uint32_t x = __ldg(span.words + lane);
  const uint64_t n16 = uint64_t(span.n_words - kLanes) * 2u;  // uint16 words after the states
  const uint32_t rounds = rans::rounds_of(span.n);
  const uint32_t my_rounds = rans::rounds_of_lane(span.n, lane);

  WordWindow win;
  win.init(span.words + kLanes, span.n_words - kLanes, lane);
  uint32_t pos = 0;  // uint16 index into the stream after the states
  for (uint32_t r = 0; r < rounds; ++r) {
    const bool active = r < my_rounds;
    if (active) {
      const uint32_t e = table[x & (rans::kProbScale - 1)];
      x = slot_freq(e) * (x >> rans::kProbBits) + slot_bias(e);
      sink.put1(r, lane, e & 0xFFu);  // its work overlaps the refill below
    }
    const bool need = active && x < rans::kStateLow;
    const uint32_t ballot = __ballot_sync(kFullMask, need);
    const uint32_t total = __popc(ballot);
    if (uint64_t(pos) + total > n16) return;  // corrupt: would read past the chunk
    const uint32_t k = pos + __popc(ballot & below);
    const uint32_t word = win.get(k >> 1);  // uint16 2i is the low half of word i
    if (need) x = (x << rans::kWordBits) | ((k & 1u) ? word >> 16 : word & 0xFFFFu);
    pos += total;
    win.advance(pos >> 1);
    sink.end_round(r);  // all lanes, warp-uniform
  }
}

// ------------------------------------------------------------------ sinks

// P = symbols per lane per round (Huffman 2, rANS 1). Writes the chunk's bytes.
template <int P>
struct ByteSink {
  uint8_t* out;  // the chunk's first output byte
  bool even;     // 16-bit stores allowed (out is even; chunk starts are multiples of 32)

  __device__ __forceinline__ size_t position(uint32_t r, uint32_t lane) const {
    if constexpr (P == huffman::kSymbolsPerRound) return huffman::lane_position(r * P, lane);
    else return size_t(r) * kLanes + lane;
  }
  __device__ __forceinline__ void put2(uint32_t r, uint32_t lane, uint32_t pair) {
    uint8_t* o = out + position(r, lane);
    if (even) {
      *reinterpret_cast<uint16_t*>(o) = uint16_t(pair);
    } else {
      o[0] = uint8_t(pair);
      o[1] = uint8_t(pair >> 8);
    }
  }
  __device__ __forceinline__ void put1(uint32_t r, uint32_t lane, uint32_t sym) { out[position(r, lane)] = uint8_t(sym); }
  __device__ __forceinline__ void end_round(uint32_t) {}
};

struct GemvArgs {
  const uint16_t* scale;  // fp16 [n_rows, n_groups]
  const uint16_t* zero;   // fp16 [n_rows, n_groups], or [1, 1] when zero_broadcast
  const uint16_t* x;      // bf16 [B, k], 4-byte aligned
  float* y;               // fp32 [B, n_rows]
  uint32_t n_rows, k, group_size, n_groups;
  bool zero_broadcast;
};

__device__ __forceinline__ float half_bits_to_float(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ float bf16_lo(uint32_t v) { return __uint_as_float(v << 16); }  // bf16 = fp32 high half
__device__ __forceinline__ float bf16_hi(uint32_t v) { return __uint_as_float(v & 0xFFFF0000u); }

// Dequantizes each symbol and accumulates x[b, col] * w into acc[b] for the chunk's current
// row. Chunks are whole rows and K % (32 * P) == 0, so the round -> (row, column) map
// needs no division: rounds advance the columns by 32 * P, a row ends every K / (32 * P)
// rounds, and both are warp-uniform.
template <int B, int P>
struct GemvSink {
  GemvArgs a;
  uint32_t lane;
  uint32_t row;          // current row (warp-uniform)
  uint32_t row_end;      // one past the chunk's last row
  uint32_t round_in_row, rounds_per_row;
  uint32_t col;          // this lane's first column in the current round
  uint32_t group, group_next_col;  // this lane's group and the first column of the next one
  float s, z;            // scale and zero of (row, group)
  float acc[B];

  __device__ __forceinline__ void init(const GemvArgs& args, uint32_t first_row, uint32_t n_rows_in_chunk,
                                       uint32_t l) {
    a = args;
    lane = l;
    row = first_row;
    row_end = first_row + n_rows_in_chunk;
    round_in_row = 0;
    rounds_per_row = a.k / (kLanes * P);
    col = lane * P;
    group = 0;
    group_next_col = a.group_size;  // col = lane * P <= 62 < 64 <= group_size
    if (a.zero_broadcast) z = half_bits_to_float(__ldg(a.zero));
#pragma unroll
    for (int b = 0; b < B; ++b) acc[b] = 0.f;
    load_group();
  }

  __device__ __forceinline__ void load_group() {
    if (row >= row_end) return;  // past the chunk (and maybe the tensor): nothing to load
    const size_t i = size_t(row) * a.n_groups + group;
    s = half_bits_to_float(__ldg(a.scale + i));
    if (!a.zero_broadcast) z = half_bits_to_float(__ldg(a.zero + i));
  }

  __device__ __forceinline__ void put2(uint32_t, uint32_t, uint32_t pair) {
    // Same arithmetic as the reference dequantize_affine: (float(q) - z) * s in fp32.
    const float w0 = (float(pair & 0xFFu) - z) * s;
    const float w1 = (float((pair >> 8) & 0xFFu) - z) * s;
    const uint16_t* xp = a.x + col;  // col even and K even: 4-byte aligned bf16 pair
#pragma unroll
    for (int b = 0; b < B; ++b) {
      const uint32_t xv = __ldg(reinterpret_cast<const unsigned int*>(xp + size_t(b) * a.k));
      acc[b] = fmaf(bf16_lo(xv), w0, acc[b]);
      acc[b] = fmaf(bf16_hi(xv), w1, acc[b]);
    }
  }

  __device__ __forceinline__ void put1(uint32_t, uint32_t, uint32_t sym) {
    const float w = (float(sym) - z) * s;
    const uint16_t* xp = a.x + col;
#pragma unroll
    for (int b = 0; b < B; ++b) {
      const uint32_t xv = __ldg(reinterpret_cast<const unsigned short*>(xp + size_t(b) * a.k));
      acc[b] = fmaf(bf16_lo(xv), w, acc[b]);
    }
  }

  __device__ __forceinline__ void end_round(uint32_t) {
    if (++round_in_row == rounds_per_row) {  // warp-uniform: the row is complete
#pragma unroll
      for (int b = 0; b < B; ++b) {
        float v = acc[b];
#pragma unroll
        for (int off = kLanes / 2; off > 0; off /= 2) v += __shfl_xor_sync(kFullMask, v, off);
        if (lane == uint32_t(b)) a.y[size_t(b) * a.n_rows + row] = v;  // B lanes, one store each
        acc[b] = 0.f;
      }
      ++row;
      round_in_row = 0;
      col = lane * P;
      group = 0;
      group_next_col = a.group_size;
    } else {
      col += kLanes * P;
      if (col >= group_next_col) {  // group_size >= 64 >= 32 * P: at most one step
        ++group;
        group_next_col += a.group_size;
      }
    }
    load_group();
  }
};

// ------------------------------------------------------------------ kernels

__global__ void __launch_bounds__(kThreadsPerBlock, kMinBlocksPerSm)
    huffman_kernel(const DeviceStream s, uint8_t* __restrict__ out) {
  __shared__ uint32_t table[kTableEntries];
  load_table(table, s.table_dev);

  const uint64_t c = uint64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x / kLanes);
  if (c >= s.n_chunks) return;  // whole warp: c is warp-uniform
  const ChunkSpan span = chunk_span(c, s);
  // A 16-bit store needs an even address; chunk starts are multiples of 32 bytes, so
  // only the caller's base pointer decides.
  ByteSink<huffman::kSymbolsPerRound> sink{out + span.first, (reinterpret_cast<uintptr_t>(out) & 1u) == 0};
  huffman_chunk(table, span, threadIdx.x % kLanes, sink);
}

__global__ void __launch_bounds__(kThreadsPerBlock, kMinBlocksPerSm)
    rans_kernel(const DeviceStream s, uint8_t* __restrict__ out) {
  __shared__ uint32_t table[kTableEntries];
  load_table(table, s.table_dev);

  const uint64_t c = uint64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x / kLanes);
  if (c >= s.n_chunks) return;  // whole warp
  const ChunkSpan span = chunk_span(c, s);
  if (span.n_words < uint32_t(kLanes)) return;  // corrupt: no room for the lane states
  ByteSink<1> sink{out + span.first, true};
  rans_chunk(table, span, threadIdx.x % kLanes, sink);
}

// Fused decode + dequant + GEMV, one warp per chunk (= whole rows); see "Read me first".
template <int B, bool kHuffman>
__global__ void __launch_bounds__(kGemvThreadsPerBlock, kGemvMinBlocksPerSm)
    gemv_kernel(const DeviceStream s, const GemvArgs a) {
  __shared__ uint32_t table[kTableEntries];
  load_table(table, s.table_dev);

  const uint64_t c = uint64_t(blockIdx.x) * kGemvWarpsPerBlock + (threadIdx.x / kLanes);
  if (c >= s.n_chunks) return;  // whole warp
  const ChunkSpan span = chunk_span(c, s);
  if (!kHuffman && span.n_words < uint32_t(kLanes)) return;  // corrupt: no lane states
  constexpr int P = kHuffman ? huffman::kSymbolsPerRound : 1;
  GemvSink<B, P> sink;
  sink.init(a, uint32_t(span.first / a.k), span.n / a.k, threadIdx.x % kLanes);
  if constexpr (kHuffman) huffman_chunk(table, span, threadIdx.x % kLanes, sink);
  else rans_chunk(table, span, threadIdx.x % kLanes, sink);
}

Status from_cuda(cudaError_t err) {
  if (err == cudaSuccess) return Status::Ok;
  (void)cudaGetLastError();  // clear a non-sticky error so later calls start clean
  return err == cudaErrorMemoryAllocation ? Status::TooLarge : Status::BadArgument;
}

}  // namespace

bool compiled() { return true; }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // "no driver" is not an error for callers asking
    return 0;
  }
  return n;
}

namespace {

// Header-level checks shared by both entry points; sets *blocks for `warps` per block.
Status check_stream(const DeviceStream& s, int warps, uint64_t* blocks) {
  if (s.coder != uint8_t(Coder::Huffman) && s.coder != uint8_t(Coder::Rans)) return Status::BadArgument;
  if (s.chunk_symbols < kChunkAlign || s.chunk_symbols > kMaxChunkSymbols || s.chunk_symbols % kChunkAlign)
    return Status::BadArgument;
  const uint64_t n_chunks = s.n_symbols / s.chunk_symbols + (s.n_symbols % s.chunk_symbols != 0);
  if (s.n_chunks != n_chunks) return Status::BadArgument;
  if (n_chunks && (!s.index_dev || !s.table_dev || (s.payload_words && !s.payload_dev))) return Status::BadArgument;
  // The kernels index the payload with uint32 offsets (as the format's index does).
  if (s.payload_words > 0xFFFFFFFFull) return Status::TooLarge;
  *blocks = (n_chunks + warps - 1) / warps;
  if (*blocks > 0x7FFFFFFFull) return Status::TooLarge;
  return Status::Ok;
}

// A host pointer or one on another device would fault asynchronously and poison the
// context; catch it here where it is still a plain argument error.
Status check_device_pointers(const void* const* ptrs, int n) {
  int device = 0;
  Status st = from_cuda(cudaGetDevice(&device));
  if (st != Status::Ok) return st;
  for (int i = 0; i < n; ++i) {
    if (!ptrs[i]) continue;
    cudaPointerAttributes attr;
    if ((st = from_cuda(cudaPointerGetAttributes(&attr, ptrs[i]))) != Status::Ok) return st;
    if ((attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) || attr.device != device)
      return Status::BadArgument;
  }
  return Status::Ok;
}

template <int B>
void launch_gemv(const DeviceStream& s, const GemvArgs& a, unsigned blocks, cudaStream_t cs) {
  if (s.coder == uint8_t(Coder::Huffman))
    gemv_kernel<B, true><<<blocks, kGemvThreadsPerBlock, 0, cs>>>(s, a);
  else
    gemv_kernel<B, false><<<blocks, kGemvThreadsPerBlock, 0, cs>>>(s, a);
}

}  // namespace

Status decode_symbols(const DeviceStream& s, uint8_t* out_dev, uintptr_t stream) {
  uint64_t blocks = 0;
  Status st = check_stream(s, kWarpsPerBlock, &blocks);
  if (st != Status::Ok) return st;
  if (s.n_chunks == 0) return Status::Ok;  // empty tensor: nothing to launch
  if (!out_dev) return Status::BadArgument;
  const void* ptrs[3] = {out_dev, s.table_dev, s.payload_words ? static_cast<const void*>(s.payload_dev) : nullptr};
  if ((st = check_device_pointers(ptrs, 3)) != Status::Ok) return st;

  cudaStream_t cs = reinterpret_cast<cudaStream_t>(stream);
  if (s.coder == uint8_t(Coder::Huffman))
    huffman_kernel<<<unsigned(blocks), kThreadsPerBlock, 0, cs>>>(s, out_dev);
  else
    rans_kernel<<<unsigned(blocks), kThreadsPerBlock, 0, cs>>>(s, out_dev);
  return from_cuda(cudaGetLastError());
}

bool gemv_affine_supported(uint64_t n_symbols, uint32_t chunk_symbols, uint32_t group_size, uint32_t n_rows,
                           uint32_t k, uint32_t batch) {
  return k >= kGemvAlign && k % kGemvAlign == 0 && chunk_symbols % k == 0 && n_symbols == uint64_t(n_rows) * k &&
         batch >= 1 && batch <= kGemvMaxBatch && group_size >= kGemvAlign && group_size % 2 == 0;
}

Status gemv_affine(const DeviceStream& s, const uint16_t* scale_dev, const uint16_t* zero_dev, bool zero_broadcast,
                   uint32_t group_size, uint32_t n_rows, uint32_t k, const uint16_t* x_bf16_dev, uint32_t batch,
                   float* y_dev, uintptr_t stream) {
  uint64_t blocks = 0;
  Status st = check_stream(s, kGemvWarpsPerBlock, &blocks);
  if (st != Status::Ok) return st;
  if (!gemv_affine_supported(s.n_symbols, s.chunk_symbols, group_size, n_rows, k, batch)) return Status::BadArgument;
  if (s.n_chunks == 0) return Status::Ok;  // n_rows == 0: y is empty
  if (!scale_dev || !zero_dev || !x_bf16_dev || !y_dev) return Status::BadArgument;
  // bf16 pairs are read as 32-bit words; fp32 outputs need 4-byte alignment too.
  if ((reinterpret_cast<uintptr_t>(x_bf16_dev) | reinterpret_cast<uintptr_t>(y_dev)) & 3u) return Status::BadArgument;
  const void* ptrs[6] = {y_dev, x_bf16_dev, scale_dev, zero_dev, s.table_dev,
                         s.payload_words ? static_cast<const void*>(s.payload_dev) : nullptr};
  if ((st = check_device_pointers(ptrs, 6)) != Status::Ok) return st;

  GemvArgs a;
  a.scale = scale_dev;
  a.zero = zero_dev;
  a.x = x_bf16_dev;
  a.y = y_dev;
  a.n_rows = n_rows;
  a.k = k;
  a.group_size = group_size;
  a.n_groups = (k + group_size - 1) / group_size;
  a.zero_broadcast = zero_broadcast;
  cudaStream_t cs = reinterpret_cast<cudaStream_t>(stream);
  // The one list of batch instantiations (B = 1..kGemvMaxBatch), each for both coders.
  switch (batch) {
    case 1: launch_gemv<1>(s, a, unsigned(blocks), cs); break;
    case 2: launch_gemv<2>(s, a, unsigned(blocks), cs); break;
    case 3: launch_gemv<3>(s, a, unsigned(blocks), cs); break;
    case 4: launch_gemv<4>(s, a, unsigned(blocks), cs); break;
    case 5: launch_gemv<5>(s, a, unsigned(blocks), cs); break;
    case 6: launch_gemv<6>(s, a, unsigned(blocks), cs); break;
    case 7: launch_gemv<7>(s, a, unsigned(blocks), cs); break;
    case 8: launch_gemv<8>(s, a, unsigned(blocks), cs); break;
    default: return Status::BadArgument;
  }
  static_assert(kGemvMaxBatch == 8, "the switch above lists every batch size");
  return from_cuda(cudaGetLastError());
}

}  // namespace cuda
}  // namespace pycodec
