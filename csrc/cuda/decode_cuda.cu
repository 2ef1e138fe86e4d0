// pycodec CUDA decoders: one warp per chunk, for both coders.
//
// Read me first
// - Mapping: warp w of block b decodes chunk b * kWarpsPerBlock + w. The 32 lanes of a
//   warp are the 32 interleaved lanes of the format (huffman.h / rans.h), so each lane
//   decodes its own symbols and the only cross-lane step per round is "who reads the
//   next stream word": one __ballot_sync plus a __popc of the lanes below.
// - The stream layout is normative in huffman.h / rans.h; this file follows their CPU
//   careful paths exactly (same refill schedule, same tail rules) and reuses their
//   PYCODEC_HD helpers, so any divergence from the CPU decoder is a bug here.
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
//   writes outside the chunk's output. Detecting corruption is the CPU path's job
//   (streams are verified at load time); the GPU just stays in bounds.
// - All control flow that reaches a __shfl_sync / __ballot_sync is warp-uniform (chunk
//   length, round count, stream position), so the full mask is always correct.
// - Occupancy: 256 threads per block and a 16 KiB shared table, so 8 blocks (64 warps,
//   the H100/A100 maximum of 2048 threads) need 128 KiB of shared memory, inside the
//   227 KiB (H100) / 163 KiB (A100) an SM offers; __launch_bounds__(256, 8) asks the
//   compiler for <= 32 registers per thread so registers do not cap residency either.
//   Table lookups are random, so the many resident warps are what hides their latency.
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
  uint32_t n;  // symbols
  uint8_t* out;
};

// Chunk c's words and symbols, clamped to the payload so a bad index cannot push reads out.
__device__ __forceinline__ ChunkSpan chunk_span(uint64_t c, const DeviceStream& s, uint8_t* out) {
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
  span.out = out + first;
  return span;
}

__global__ void __launch_bounds__(kThreadsPerBlock, kMinBlocksPerSm)
    huffman_kernel(const DeviceStream s, uint8_t* __restrict__ out) {
  __shared__ uint32_t table[kTableEntries];
  load_table(table, s.table_dev);

  const uint64_t c = uint64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x / kLanes);
  if (c >= s.n_chunks) return;  // whole warp: c is warp-uniform
  const uint32_t lane = threadIdx.x % kLanes;
  const uint32_t below = (1u << lane) - 1u;
  const ChunkSpan span = chunk_span(c, s, out);
  // A 16-bit store needs an even address; chunk starts are multiples of 32 bytes, so
  // only the caller's base pointer decides.
  const bool even = (reinterpret_cast<uintptr_t>(out) & 1u) == 0;

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
    if (!active) continue;  // no shuffles below: lanes may diverge until the next round
    const uint32_t e = table[bits >> kShift];
    uint8_t* o = span.out + huffman::lane_position(j0, lane);
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
      if (even) {
        *reinterpret_cast<uint16_t*>(o) = uint16_t(pair);
      } else {
        o[0] = uint8_t(pair);
        o[1] = uint8_t(pair >> 8);
      }
    } else {  // a lane's last, odd symbol
      bits <<= huffman::entry_length(e);
      count -= int(huffman::entry_length(e));
      o[0] = uint8_t(huffman::entry_symbol(e));
    }
  }
}

__global__ void __launch_bounds__(kThreadsPerBlock, kMinBlocksPerSm)
    rans_kernel(const DeviceStream s, uint8_t* __restrict__ out) {
  __shared__ uint32_t table[kTableEntries];
  load_table(table, s.table_dev);

  const uint64_t c = uint64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x / kLanes);
  if (c >= s.n_chunks) return;  // whole warp
  const uint32_t lane = threadIdx.x % kLanes;
  const uint32_t below = (1u << lane) - 1u;
  const ChunkSpan span = chunk_span(c, s, out);
  if (span.n_words < uint32_t(kLanes)) return;  // corrupt: no room for the lane states

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
      span.out[size_t(r) * kLanes + lane] = uint8_t(e);
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
  }
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

Status decode_symbols(const DeviceStream& s, uint8_t* out_dev, uintptr_t stream) {
  if (s.coder != uint8_t(Coder::Huffman) && s.coder != uint8_t(Coder::Rans)) return Status::BadArgument;
  if (s.chunk_symbols < kChunkAlign || s.chunk_symbols > kMaxChunkSymbols || s.chunk_symbols % kChunkAlign)
    return Status::BadArgument;
  const uint64_t n_chunks = s.n_symbols / s.chunk_symbols + (s.n_symbols % s.chunk_symbols != 0);
  if (s.n_chunks != n_chunks) return Status::BadArgument;
  if (n_chunks == 0) return Status::Ok;  // empty tensor: nothing to launch
  if (!s.index_dev || !s.table_dev || !out_dev || (s.payload_words && !s.payload_dev)) return Status::BadArgument;
  // The kernels index the payload with uint32 offsets (as the format's index does).
  if (s.payload_words > 0xFFFFFFFFull) return Status::TooLarge;
  const uint64_t blocks = (n_chunks + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > 0x7FFFFFFFull) return Status::TooLarge;

  // A host pointer or one on another device would fault asynchronously and poison the
  // context; catch it here where it is still a plain argument error.
  int device = 0;
  Status st = from_cuda(cudaGetDevice(&device));
  if (st != Status::Ok) return st;
  const void* ptrs[3] = {out_dev, s.table_dev, s.payload_words ? static_cast<const void*>(s.payload_dev) : nullptr};
  for (const void* p : ptrs) {
    if (!p) continue;
    cudaPointerAttributes attr;
    if ((st = from_cuda(cudaPointerGetAttributes(&attr, p))) != Status::Ok) return st;
    if ((attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) || attr.device != device)
      return Status::BadArgument;
  }

  cudaStream_t cs = reinterpret_cast<cudaStream_t>(stream);
  if (s.coder == uint8_t(Coder::Huffman))
    huffman_kernel<<<unsigned(blocks), kThreadsPerBlock, 0, cs>>>(s, out_dev);
  else
    rans_kernel<<<unsigned(blocks), kThreadsPerBlock, 0, cs>>>(s, out_dev);
  return from_cuda(cudaGetLastError());
}

}  // namespace cuda
}  // namespace pycodec
