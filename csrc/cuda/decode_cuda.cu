// pycodec CUDA decoder for format-v1 (legacy) streams: one warp per chunk, for both v1 coders.
// Checkpoints written before format v2 still run on a GPU through it (decode, then a Triton
// matmul); new streams take windowed_cuda.cu's kernels.
//
// Read me first
// - Mapping: warp w of block b decodes chunk b * (warps per block) + w. The 32 lanes of a
//   warp are the 32 interleaved lanes of the format (huffman.h / rans.h), so each lane
//   decodes its own symbols and the only cross-lane step per round is "who reads the
//   next stream word": one __ballot_sync plus a __popc of the lanes below.
// - The stream layout is normative in huffman.h / rans.h; this file follows their CPU
//   careful paths exactly (same refill schedule, same tail rules) and reuses their
//   PYCODEC_HD helpers, so any divergence from the CPU decoder is a bug here.
// - One decode loop per coder (huffman_chunk / rans_chunk), templated over a sink that
//   receives every decoded symbol with its chunk position (put2 / put1 / end_round).
// - Payload words reach lanes through a 64-word sliding window held in registers (two
//   coalesced 128-byte loads of 32 words, one word per lane) and __shfl_sync. Invariants:
//   the window covers words [base, base + 64), base a multiple of 32, and (next word to
//   read) - base < 32 at the start of every round; a round reads at most 32 words.
// - Bounds: a round whose reads would pass the chunk's last word stops the warp before
//   reading (warp-uniform test), so corrupt input never reads or writes out of bounds.
// - Occupancy: 256 threads per block and a 16 KiB shared table, so 8 blocks (64 warps)
//   need 128 KiB of shared memory; __launch_bounds__(256, 8) keeps registers <= 32.
#include <cuda_runtime.h>

#include <cstdint>

#include "../codec/codec.h"
#include "../codec/format.h"
#include "../codec/huffman.h"
#include "../codec/rans.h"
#include "cuda_status.cuh"
#include "decode_cuda.h"

namespace pycodec {
namespace cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kThreadsPerBlock = kWarpsPerBlock * kLanes;
constexpr int kMinBlocksPerSm = 8;
constexpr uint32_t kFullMask = 0xFFFFFFFFu;
constexpr uint32_t kTableEntries = kDecodeTableEntries;

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

}  // namespace cuda
}  // namespace pycodec
