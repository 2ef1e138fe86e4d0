// pycodec codec core: windowed-lane Huffman, the chunk layout of stream format version 2.
//
// Read me first
// - Why this layout: a GPU is fast only with many short, independent decode chains, and
//   a weight tensor must be cut into ~100k of them (4096 rows x 32 lanes for a 4096 x 4096
//   layer). Any per-chain bookkeeping is then paid 100k times: v1's per-lane tail words
//   cost ~31 bits per chain, rANS lane states 32. This layout pays < 12 bits of padding per
//   lane and stores no per-lane offsets or counts at all.
// - A chunk holds m consecutive symbols in W 32-bit words (a bit string, MSB-first per
//   word, words in order). It is split between G lanes (1 <= G <= 32): lane window
//   L = floor(32 W / G) bits, lane l owns bits [l L, (l + 1) L). The last 32 W - G L bits
//   are zero.
// - Lane l holds consecutive symbols: lane 0 the first n_0, lane 1 the next n_1, ..., as
//   canonical Huffman codes (huffman.h) back to back. Lanes 0..G-2 hold every whole code
//   that fits; their p < 12 leftover bits repeat the first p bits of the next lane's window,
//   i.e. a proper prefix of the next code. Since the code is prefix-free no codeword can
//   end inside such padding, so a decoder of lane l takes codes "while the next one ends
//   inside the window" and learns n_l by decoding: counts cost no bits.
// - The last lane holds the remaining n_{G-1} = m - (n_0 + ... + n_{G-2}) symbols. Whatever
//   follows the chunk's last code is zero: the last lane's tail, and every later lane when
//   the symbols run out early (a short chunk with many lanes). Such lanes may count phantom
//   codes in their zeros; lane starts are running sums clamped to m, which gives them none.
// - Positions: lane l's first symbol is chunk position n_0 + ... + n_{l-1}. A GPU warp counts
//   every lane's codes (pass 1, cheap: no output), takes a warp prefix sum of the counts,
//   then decodes again with positions known (pass 2) straight into its consumer (a GEMV
//   accumulator, bytes). A CPU window-decodes every lane (eight in lockstep, from several
//   chunks when a chunk has fewer) into scratch and places them by the running sums: one
//   pass, no count pass.
// - Decoding is table driven: one 4096-entry table resolves up to kMaxPerEntry whole codes
//   from the next 12 bits (MultiTable). Entry layout (32 bits):
//       [31:28] bits consumed by the entry's codes   [27:24] codes in the entry (1..3)
//       [23:16] third symbol  [15:8] second symbol  [7:0] first symbol   (absent = 0)
//   Absent symbols read as 0, so a consumer that multiplies every slot by its weight
//   (the fused GEMV) needs no branch on the count. lengths[s] gives one code's length for
//   the last few codes of a lane, where a whole entry may not fit.
// - A stream with a single distinct symbol ("constant" code, zero bits per symbol) has
//   G = 1 and W = 0 in every chunk.
// - Lane starts (not part of the stream: derived from it). Lane l's first symbol within its
//   chunk is n_0 + ... + n_{l-1} clamped to m; it is kept as one byte per lane ([n_chunks][G]):
//   lane l < G - 1 holds its clamped count's distance from m / G, biased by kLaneCountBias
//   (lane_count_byte), and the last lane's byte is unused. A chunk whose counts stray further
//   (rare: lanes past a short chunk's last symbol) holds kLaneCountEscape, and the kernels count
//   it (pass 1). The CPU decoder gets the counts for free as it places the lanes
//   (ChunkJob::lane_starts); a stream bound for a GPU keeps the bytes beside its tables, and the
//   kernels then skip pass 1 (a third of the rate GEMV's instructions) for 8 bits of device
//   memory a lane: each lane's byte and a warp prefix sum (windowed_gemv.h:
//   lane_range_from_starts).
// - Every function that a GPU kernel shares is PYCODEC_HD and reads words through
//   LaneReader, which returns 0 past the chunk's last word, so corrupt input can never
//   read outside its chunk nor loop without end (window decoding always consumes >= 1 bit
//   per step; count decoding does exactly `count` steps).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_vbmi.h"
#include "huffman.h"
#include "status.h"

#if defined(__CUDA_ARCH__)
#define PYCODEC_LOAD_WORD(p) __ldg(p)
#else
#define PYCODEC_LOAD_WORD(p) (*(p))
#endif

namespace pycodec {
namespace windowed {

constexpr int kMaxLanes = kLanes;                      // 32: one CUDA warp
constexpr int kPeekBits = huffman::kMaxCodeLength;     // 12: every code ends inside one peek
constexpr uint32_t kTableSize = 1u << kPeekBits;       // 4096 entries x 4 B = 16 KiB
constexpr int kMaxPerEntry = 3;                        // 3 symbol bytes + count + bits = 32 bits
constexpr uint32_t kMaxChunkSymbols = 1u << 17;        // W < 2^16 words even at 12 bits/symbol
constexpr uint32_t kChunkSizeBits = 16;                // per-chunk word count, stored as u16
constexpr uint32_t kSuperChunks = 16;                  // one absolute u32 offset per 16 chunks
constexpr uint32_t kLaneCountBias = 128;               // a lane start byte: count - m / G + bias
constexpr uint8_t kLaneCountEscape = 255;              // a chunk whose counts no byte holds

// A lane's clamped count as its lane start byte (kLaneCountEscape if it strays too far).
inline uint8_t lane_count_byte(uint32_t count, uint32_t m, uint32_t lanes) {
  const int64_t b = int64_t(count) - int64_t(m / lanes) + int64_t(kLaneCountBias);
  return b >= 0 && b < int64_t(kLaneCountEscape) ? uint8_t(b) : kLaneCountEscape;
}
// The count a lane start byte (not the escape) says, never negative.
PYCODEC_HD uint32_t lane_count_of_byte(uint8_t b, uint32_t m, uint32_t lanes) {
  const uint32_t expected = m / lanes;
  return expected + b > kLaneCountBias ? expected + b - kLaneCountBias : 0u;
}

static_assert(uint64_t(kMaxChunkSymbols) * kPeekBits / 32 < (1u << kChunkSizeBits),
              "a chunk's word count must fit its u16 size field");
static_assert(kPeekBits <= 16 && 3 * 8 + 4 + 4 == 32, "entry = 3 symbols + count + bits in 32 bits");
static_assert(kSuperChunks == 16, "GPU offset recovery sums at most 15 sizes with 4 shuffle steps");

PYCODEC_HD uint32_t entry_bits(uint32_t e) { return e >> 28; }
PYCODEC_HD uint32_t entry_count(uint32_t e) { return (e >> 24) & 15u; }
PYCODEC_HD uint32_t entry_symbol(uint32_t e, int i) { return (e >> (8 * i)) & 0xFFu; }
PYCODEC_HD uint32_t make_entry(uint32_t bits, uint32_t count, uint32_t symbols) {
  return (bits << 28) | (count << 24) | symbols;
}

// Value entry (64 bits), for a consumer that wants each symbol's value rather than its number
// (the fused GEMVs: a weight's bf16 bits): the same codes as the entry it is built from, each
// symbol's value in 16 bits, the count as a whole byte (one byte permute extracts it) and the
// first code's length, so the last codes of a lane need no other table.
//   [63:60] bits consumed  [59:56] first code's length  [55:48] count  [47:32] [31:16] [15:0] values
// Absent values are 0.
PYCODEC_HD uint32_t entry_bits(uint64_t e) { return uint32_t(e >> 60); }
PYCODEC_HD uint32_t entry_count(uint64_t e) {
#if defined(__CUDA_ARCH__)
  return __byte_perm(uint32_t(e >> 32), 0, 0x4442u);  // one byte permute
#else
  return uint32_t(e >> 48) & 0xFFu;
#endif
}
PYCODEC_HD uint32_t entry_value(uint64_t e, int i) { return uint32_t(e >> (16 * i)) & 0xFFFFu; }
PYCODEC_HD uint64_t make_value_entry(uint32_t e, const uint16_t* value, const uint8_t* length) {
  uint64_t v = 0;
  for (uint32_t i = 0; i < entry_count(e); ++i) v |= uint64_t(value[entry_symbol(e, int(i))]) << (16 * i);
  return (uint64_t(entry_bits(e)) << 60) | (uint64_t(length[entry_symbol(e, 0)] & 15u) << 56) |
         (uint64_t(entry_count(e)) << 48) | v;
}

// Count table (4096 bytes), for counting codes without decoding them (pass 1 of the kernels):
// every whole code inside the 12 bits, however many (1-bit codes: 12), as bits << 4 | count.
PYCODEC_HD uint32_t count_bits(uint8_t c) { return uint32_t(c) >> 4; }

// The decode tables of one stream, built on the host (and uploaded once for a GPU).
struct MultiTable {
  uint32_t entry[kTableSize];
  // The CPU decoder's last steps of a lane, with w < kPeekBits bits of window left: the codes
  // inside the top w bits (greedy, up to kMaxPerEntry) at tail[2^w - 1 + top w bits], so a
  // step never takes a code past the window and needs no other check. w = 0 takes nothing.
  uint32_t tail[kTableSize - 1];
  // The CPU decoder's lane steps (decode_lanes_lockstep): entry[v] with its top byte recast as
  // count << 6 | bits (count <= 3, bits <= 12), so one add moves a lane's output pointer and its
  // bit offset held in one register (output << 6 | bits taken).
  uint32_t step[kTableSize];
  uint8_t length[huffman::kAlphabet];  // code length by symbol (0 for absent symbols)
  bool constant;
};

PYCODEC_HD uint32_t make_step(uint32_t e) { return (e & 0xFFFFFFu) | (((entry_count(e) << 6) | entry_bits(e)) << 24); }
static_assert(kMaxPerEntry <= 3 && kPeekBits < 64, "a step's top byte holds count << 6 | bits");

inline void build_multi_table(const huffman::Code& c, MultiTable& t) {
  std::memset(t.length, 0, sizeof(t.length));
  t.constant = c.constant;
  if (c.constant) {
    const uint32_t s = c.constant_symbol;
    for (uint32_t v = 0; v < kTableSize; ++v) t.entry[v] = make_entry(0, kMaxPerEntry, s | (s << 8) | (s << 16));
    std::memset(t.tail, 0, sizeof(t.tail));  // never read: a constant stream has no windows
    std::memset(t.step, 0, sizeof(t.step));
    return;
  }
  std::memcpy(t.length, c.length, sizeof(t.length));
  // single[v]: the first code inside a 12-bit window (length << 8 | symbol).
  std::vector<uint16_t> single(kTableSize);
  for (int s = 0; s < huffman::kAlphabet; ++s) {
    const uint32_t len = c.length[s];
    if (!len) continue;
    const uint32_t first = uint32_t(c.code[s]) << (kPeekBits - len);
    for (uint32_t i = 0; i < (1u << (kPeekBits - len)); ++i) single[first + i] = uint16_t((len << 8) | s);
  }
  // Greedy: each further code is taken only if it ends inside the `width` bits actually
  // peeked (the zero bits shifted in below them are never trusted).
  const auto codes_within = [&](uint32_t v, uint32_t width) {
    uint32_t window = v, used = 0, count = 0, symbols = 0;
    while (count < uint32_t(kMaxPerEntry)) {
      const uint32_t first = single[window & (kTableSize - 1)];
      const uint32_t len = first >> 8;
      if (used + len > width) break;
      symbols |= (first & 0xFFu) << (8 * count);
      ++count;
      used += len;
      window <<= len;
    }
    return make_entry(used, count, symbols);
  };
  for (uint32_t v = 0; v < kTableSize; ++v) {
    t.entry[v] = codes_within(v, kPeekBits);
    t.step[v] = make_step(t.entry[v]);
  }
  // The codes inside the top w bits are the first codes of the full entry of those bits (the
  // same greedy walk, stopped earlier): its entry with the codes that end past w dropped. Half
  // of the table's build, which a CPU forward pays per layer, without a second walk.
  for (uint32_t w = 0; w < uint32_t(kPeekBits); ++w)
    for (uint32_t u = 0; u < (1u << w); ++u) {
      const uint32_t e = t.entry[u << (kPeekBits - w)];
      uint32_t count = entry_count(e), used = entry_bits(e), symbols = e & 0xFFFFFFu;
      while (used > w) {
        --count;
        used -= c.length[entry_symbol(e, int(count))];
        symbols &= ~(0xFFu << (8 * count));
      }
      t.tail[(1u << w) - 1 + u] = make_entry(used, count, symbols);
    }
}

inline void build_count_table(const huffman::Code& c, uint8_t out[kTableSize]) {
  if (c.constant) {  // no windows to count (one lane, zero-bit codes)
    std::memset(out, 0, kTableSize);
    return;
  }
  std::vector<uint8_t> first_length(kTableSize);
  for (int s = 0; s < huffman::kAlphabet; ++s) {
    const uint32_t len = c.length[s];
    if (!len) continue;
    const uint32_t first = uint32_t(c.code[s]) << (kPeekBits - len);
    for (uint32_t i = 0; i < (1u << (kPeekBits - len)); ++i) first_length[first + i] = uint8_t(len);
  }
  for (uint32_t v = 0; v < kTableSize; ++v) {
    uint32_t window = v, used = 0, count = 0;
    for (;;) {
      const uint32_t len = first_length[window & (kTableSize - 1)];
      if (used + len > uint32_t(kPeekBits)) break;
      ++count;
      used += len;
      window <<= len;
    }
    out[v] = uint8_t((used << 4) | count);
  }
}

// A lane's bits, read forward from any bit offset. buf holds the next bits left-aligned,
// avail >= 32 of them are valid between steps, and `pending` is the word after those: loaded
// one refill ahead, so its memory latency hides behind the lookups in between instead of
// stalling the refill. How loads treat the words' end (`end`):
//   kChecked    every load is tested against the chunk's end (reads there and past it give 0):
//               the CPU decoder's policy, which must take any blob;
//   kUnchecked  the kernels' policy for global memory: they read from buffers with kSlackWords
//               readable words past their end and bound each lane's reads before it starts (a
//               window read never runs past its chunk by more than 3 words);
//   kClamped    loads past the end read its last word: a warp's copy of its chunk in shared
//               memory (the decode and GEMV kernels' stream stage, windowed_cuda.cu;
//               StageReader), which no range, however wrong, can read outside. The warp copies
//               its chunk with whole-line loads, where lanes reading their own windows from
//               global memory touch ~32 lines a load (ncu on an H200: the fused GEMV's stalls
//               were mostly such waits).
constexpr uint32_t kSlackWords = 4;

enum class Reads { kChecked, kUnchecked, kClamped };

template <Reads kReads>
struct BitReader {
  const uint32_t* next;  // the word after `pending`
  const uint32_t* end;   // the words' end (kChecked, kClamped)
  uint32_t pending;
  int32_t avail;
  uint64_t buf;

  PYCODEC_HD uint32_t load(const uint32_t* p) const {
    if (kReads == Reads::kChecked) return p < end ? PYCODEC_LOAD_WORD(p) : 0u;
    if (kReads == Reads::kClamped) return *(p < end ? p : end - 1);
    return PYCODEC_LOAD_WORD(p);
  }
  // kClamped: n_words >= 1.
  PYCODEC_HD void init(const uint32_t* w, uint32_t n_words, uint64_t bit) {
    end = w + n_words;
    uint64_t i = bit >> 5;
    const int off = int(bit & 31u);
    if (kReads == Reads::kChecked && i > n_words) i = n_words;
    const uint32_t* p = w + i;
    buf = ((uint64_t(load(p)) << 32) | load(p + 1)) << off;
    avail = 64 - off;
    pending = load(p + 2);
    next = p + 3;
  }
  PYCODEC_HD uint32_t peek() const { return uint32_t(buf >> (64 - kPeekBits)); }
  PYCODEC_HD void shift(uint32_t bits) {  // no refill: the caller keeps avail >= kPeekBits for its next peek
    buf <<= bits;
    avail -= int32_t(bits);
  }
  PYCODEC_HD void refill() {  // restores avail >= 32 after shifts of at most 32 bits in all
    if (avail < 32) {
      buf |= uint64_t(pending) << (32 - avail);
      avail += 32;
      pending = load(next++);
    }
  }
  PYCODEC_HD void skip(uint32_t bits) {  // bits <= 32
    shift(bits);
    refill();
  }
};
using LaneReader = BitReader<Reads::kChecked>;
using FastReader = BitReader<Reads::kUnchecked>;
using StageReader = BitReader<Reads::kClamped>;

// A single code as an entry, for the last codes of a lane where a whole entry may not fit.
PYCODEC_HD uint32_t first_code_entry(uint32_t e, const uint8_t* length) {
  const uint32_t s = entry_symbol(e, 0);
  return make_entry(length[s], 1, s);
}
PYCODEC_HD uint64_t first_code_entry(uint64_t e, const uint8_t*) {
  const uint64_t len = (e >> 56) & 15u;
  return (len << 60) | (len << 56) | (uint64_t(1) << 48) | (e & 0xFFFFu);
}

// After the whole-entry steps, the last few codes of a window: an entry if it fits whole,
// else its first code if that fits, else stop (the padding: a code that cannot end here).
template <class Entry, class Reader, class Sink>
PYCODEC_HD uint32_t window_tail(const Entry* table, const uint8_t* length, Reader& r, uint32_t left, Sink& sink,
                                uint32_t n, uint32_t* tail_bits) {
  uint32_t used = 0;
  for (;;) {
    Entry e = table[r.peek()];
    if (entry_bits(e) == 0) break;  // a constant code's entry: no window to fill (never valid here)
    if (entry_bits(e) > left - used) {
      e = first_code_entry(e, length);
      if (entry_bits(e) > left - used) break;
    }
    sink.put(e, n);
    n += entry_count(e);
    used += entry_bits(e);
    r.skip(entry_bits(e));
  }
  *tail_bits = used;
  return n;
}

// Window decoding of a lane that is not the chunk's last: takes codes while the next one
// ends inside `window` bits and hands each entry to sink.put(entry, index of its first
// symbol). Returns the number of symbols; *used gets the bits they occupy. The table must not
// be constant (windows hold no zero-bit codes). The rule written plainly, one code reader and
// one lane: the CPU decoder's ByteLane and the kernels' count_window implement it faster, and
// csrc/tests checks the format against it.
template <class Entry, class Reader, class Sink>
PYCODEC_HD uint32_t decode_window(const Entry* table, const uint8_t* length, Reader& r, uint32_t window,
                                  Sink& sink, uint32_t* used) {
  uint32_t left = window, n = 0;
  while (left >= uint32_t(kPeekBits)) {  // all of an entry's codes end inside the window
    const Entry e = table[r.peek()];
    sink.put(e, n);
    n += entry_count(e);
    left -= entry_bits(e);
    r.skip(entry_bits(e));
  }
  uint32_t tail = 0;
  n = window_tail(table, length, r, left, sink, n, &tail);
  *used = window - left + tail;
  return n;
}

struct NullSink {
  template <class Entry>
  PYCODEC_HD void put(Entry, uint32_t) {}
};

// A lane's symbols into out (out[0]: the lane's first), through multi-symbol entries: what the
// decode kernels write (to global memory, or to a shared-memory stage) and their emulation.
// put writes an entry's symbols. put_run, which decode_count takes instead while at least
// 2 * kMaxPerEntry symbols are left, writes all kMaxPerEntry slots without testing the count
// (4 fewer instructions per two entries in the decode loop, bench/sass_count.py): the slots past
// the entry's symbols hold its absent symbols (0) until the next entry, which starts at the
// first of them, overwrites them; and they stay inside the lane's range (two entries taken with
// >= 6 symbols left end their slots at least one symbol before the range's end).
struct RunByteSink {
  uint8_t* out;
  PYCODEC_HD void put(uint32_t e, uint32_t at) {  // predicated stores, no loop
    const uint32_t n = entry_count(e);
    uint8_t* o = out + at;
    o[0] = uint8_t(e);
    if (n > 1) o[1] = uint8_t(e >> 8);
    if (n > 2) o[2] = uint8_t(e >> 16);
  }
  PYCODEC_HD void put_run(uint32_t e, uint32_t at) {
    uint8_t* o = out + at;
    o[0] = uint8_t(e);
    o[1] = uint8_t(e >> 8);
    o[2] = uint8_t(e >> 16);
  }
};

// A lane's symbols into a warp's stage in shared memory a 32-bit word at a time, where
// RunByteSink stores each entry's three bytes: a warp's byte stores land at ~random banks (lane
// runs lie ~m/32 apart), ~3.5 shared-memory wavefronts each, so three an entry cost more than an
// entry's instructions issue (an estimate; bench/gpu_suite.py times both: _C.stage_word_stores).
// Here the entry's bytes join the pending word, and only a word the lane has filled is stored:
// ~0.3-0.4 stores an entry. The bytes of the word the lane's range starts in that lie before it
// are stored as 0 with its first full word; they are the previous lanes' last bytes, which those
// lanes store byte by byte in finish(), after the warp's __syncwarp, as each lane does its own
// last partial word (and, if it never filled a word, its bytes after its start). No two lanes
// store the same word in the loop: a lane stores only words that end inside its range. The
// stage (16-byte aligned) then holds exactly what RunByteSink leaves there.
struct WordRunSink {
  uint32_t* at;     // the word the pending bytes fill
  uint32_t* first;  // the word the lane's range starts in
  uint32_t head;    // bytes of that word before the range
  uint32_t fill;    // bits of *at pending: 8 x (bytes before the range there + symbols put), < 32
  uint32_t lo;      // *at's pending bytes
  PYCODEC_HD void init(uint8_t* stage, uint32_t start) {
    at = first = reinterpret_cast<uint32_t*>(stage) + (start >> 2);
    head = start & 3u;
    fill = 8 * head;
    lo = 0;
  }
  PYCODEC_HD void put(uint32_t e, uint32_t) {
    const uint32_t symbols = e & 0xFFFFFFu;  // absent slots are 0
    lo |= symbols << fill;
#if defined(__CUDA_ARCH__)
    const uint32_t spill = __funnelshift_l(symbols, 0u, fill);  // what passes the word: symbols >> (32 - fill)
#else
    const uint32_t spill = fill ? symbols >> (32 - fill) : 0u;
#endif
    fill += 8 * entry_count(e);
    if (fill >= 32) {  // the word is whole (fill <= 31 + 24: one word at most an entry)
#if defined(__CUDA_ARCH__)
      *at++ = lo;
#else
      std::memcpy(at++, &lo, 4);  // the emulation's stage is a byte vector
#endif
      lo = spill;
      fill -= 32;
    }
  }
  PYCODEC_HD void put_run(uint32_t e, uint32_t at_symbol) { put(e, at_symbol); }
  // After every lane of the warp has put its symbols (__syncwarp between).
  PYCODEC_HD void finish() {
    uint8_t* bytes = reinterpret_cast<uint8_t*>(at);
    for (uint32_t b = at == first ? head : 0u; b < fill / 8; ++b) bytes[b] = uint8_t(lo >> (8 * b));
  }
};

// Whether a sink has put_run (decode_count's unconditional writes).
template <class Sink, class = void>
struct HasPutRun {
  static constexpr bool value = false;
};
template <class Sink>
struct HasPutRun<Sink, decltype(void(&Sink::put_run))> {
  static constexpr bool value = true;
};

// Pass 1 of the kernels: decode_window's count without a consumer, through the count table,
// two lookups per refill. count[] bytes are bits << 4 | codes, so summing them gives
// 16 * bits + codes. The last codes go through `table` (window_tail).
template <class Entry, class Reader>
PYCODEC_HD uint32_t count_window(const uint8_t* count, const Entry* table, const uint8_t* length, Reader& r,
                                 uint32_t window, uint32_t* used) {
  uint32_t left = window, packed = 0;
  while (left >= 2u * kPeekBits) {
    const uint32_t c1 = count[r.peek()];
    r.shift(count_bits(c1));
    const uint32_t c2 = count[r.peek()];
    r.shift(count_bits(c2));
    r.refill();
    packed += c1 + c2;
    left -= count_bits(c1) + count_bits(c2);
  }
  while (left >= uint32_t(kPeekBits)) {
    const uint32_t c = count[r.peek()];
    r.skip(count_bits(c));
    packed += c;
    left -= count_bits(c);
  }
  NullSink null;
  uint32_t tail = 0;
  const uint32_t n = window_tail(table, length, r, left, null, packed - 16u * (window - left), &tail);
  *used = window - left + tail;
  return n;
}

// Count decoding (pass 2, and the last lane): exactly `count` symbols, two entries per refill.
// Returns the bits read.
template <class Entry, class Reader, class Sink>
PYCODEC_HD uint64_t decode_count(const Entry* table, const uint8_t* length, Reader& r, uint32_t count, Sink& sink) {
  uint32_t left = count;
  uint64_t bits = 0;
  while (left >= 2u * kMaxPerEntry) {
    const Entry e1 = table[r.peek()];
    r.shift(entry_bits(e1));
    const Entry e2 = table[r.peek()];
    r.shift(entry_bits(e2));
    r.refill();
    if constexpr (HasPutRun<Sink>::value) {
      sink.put_run(e1, count - left);
      sink.put_run(e2, count - left + entry_count(e1));
    } else {
      sink.put(e1, count - left);
      sink.put(e2, count - left + entry_count(e1));
    }
    left -= entry_count(e1) + entry_count(e2);
    bits += entry_bits(e1) + entry_bits(e2);
  }
  while (left > 0) {
    Entry e = table[r.peek()];
    if (entry_count(e) > left) e = first_code_entry(e, length);
    sink.put(e, count - left);
    left -= entry_count(e);
    bits += entry_bits(e);
    r.skip(entry_bits(e));
  }
  return bits;
}

// ---------------------------------------------------------------------------- chunk layout

PYCODEC_HD uint64_t lane_window_bits(uint32_t n_words, uint32_t lanes) { return (uint64_t(n_words) * 32u) / lanes; }

// The top k (<= 32) bits at bit offset `bit` of a bit string of n_words 32-bit words (MSB first
// per word), zeros past its end: a chunk's payload, or a lossless split weight's raw bits.
inline uint32_t chunk_bits(const uint32_t* w, uint64_t n_words, uint64_t bit, int k) {
  if (k == 0) return 0;
  const uint64_t i = bit >> 5;
  const uint64_t hi = i < n_words ? w[i] : 0, lo = i + 1 < n_words ? w[i + 1] : 0;
  return uint32_t((((hi << 32) | lo) << (bit & 31u)) >> (64 - k));
}

// The CPU encoder and decoder are built again for x86-64-v3, chosen per CPU at load: BMI2
// shifts by any register instead of only by cl, which frees registers in their bit loops
// (2026-11-30, the 2-core AMD EPYC: decode 9%, encode 6%). Not when the whole build already
// targets BMI2 (-march=native, x86-64-v3 or v4): a v3 clone of a v4 build cannot inline the
// v4 helpers below, and the lane loops then ran as calls (decode 2.07 -> 1.17 G symbols/s).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__) && !defined(__BMI2__)
#define PYCODEC_X86_V3_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define PYCODEC_X86_V3_CLONES
#endif

// Helpers inlined into a PYCODEC_X86_V3_CLONES function (the lane loops into decode_chunk,
// chunk_words into the encoder's), so that each of its builds compiles them for its own
// instruction set.
#if defined(__GNUC__) || defined(__clang__)
#define PYCODEC_CPU_INLINE inline __attribute__((always_inline))
#define PYCODEC_CPU_INLINE_LAMBDA __attribute__((always_inline))  // after a lambda's parameter list
#else
#define PYCODEC_CPU_INLINE inline
#define PYCODEC_CPU_INLINE_LAMBDA
#endif

// The chunk's codes joined four at a time (cpu_vbmi.h, join_codes4) where the CPU has VBMI:
// quad[q] holds the codes of symbols 4q .. 4q + 3 in bits[q] bits; null quad otherwise. Per
// thread, valid until the thread's next call.
struct JoinedCodes {
  const uint64_t* quad = nullptr;
  const uint8_t* bits = nullptr;
};

inline JoinedCodes join_codes(const uint8_t* sym, uint32_t m, const huffman::Code& c) {
  JoinedCodes joined;
#ifdef PYCODEC_HAVE_VBMI
  if (vbmi::use_vbmi()) {
    thread_local std::vector<uint64_t> quad;
    thread_local std::vector<uint8_t> bits;
    thread_local vbmi::CodeBytes table;
    if (quad.size() < m / 4 + 1) quad.resize(m / 4 + 1), bits.resize(m / 4 + 1);
    vbmi::make_code_bytes(c.code, c.length, &table);
    vbmi::join_codes4(sym, m, table, quad.data(), bits.data());
    joined.quad = quad.data();
    joined.bits = bits.data();
  }
#endif
  return joined;
}

// MSB-first bits as big-endian bytes at p, with no branch per code: a branch on "is a word
// full" every ~7 codes is one the CPU mispredicts, and it cost ~20% of the encode (2026-11-30,
// the 2-core AMD EPYC). acc holds the unfinished bits left-aligned (`pending` of them);
// put() adds a code below them; settle() stores acc's 8 bytes whole (its bits so far, zeros
// after) and moves p past the whole bytes, leaving < 8 pending: four codes of <= 12 bits fit
// between settles (7 + 48 <= 64), where 32-bit words fitted two. flush() stores the last bits.
// Every store may write up to 8 bytes past the bits: the caller leaves that room, and turns
// the bytes into the stream's 32-bit words (byteswap_words).
struct ByteWriter {
  uint8_t* p;
  uint64_t acc = 0;
  uint32_t pending = 0;
  void put(uint64_t value, uint32_t bits) {  // 1 <= bits <= 48 (four codes), value < 2^bits
    acc |= value << (64 - pending - bits);
    pending += bits;
  }
  void settle() {
    const uint64_t be = __builtin_bswap64(acc);
    std::memcpy(p, &be, 8);
    p += pending >> 3;
    acc <<= pending & 56u;
    pending &= 7u;
  }
  void flush() {
    if (pending) settle();
  }
};

// Big-endian byte quadruples into the stream's little-endian 32-bit words, in place.
inline void byteswap_words(uint32_t* w, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i) w[i] = __builtin_bswap32(w[i]);
}

// The largest j in [from, to] with prefix[j] <= limit (prefix non-decreasing, prefix[from] <=
// limit), walked to from `guess`: a lane's end usually lies within a few symbols of where the
// chunk's mean code length puts it, which costs fewer mispredicted branches than a binary
// search. A walk of more than kWalk steps (a chunk of very uneven codes) ends in one.
inline uint32_t last_at_most(const uint32_t* prefix, uint32_t from, uint32_t to, uint64_t limit, uint32_t guess) {
  constexpr uint32_t kWalk = 16;
  uint32_t j = std::min(std::max(guess, from), to);
  for (uint32_t step = 0; prefix[j] > limit; --j)
    if (++step > kWalk) return uint32_t(std::upper_bound(prefix + from, prefix + j, limit) - prefix - 1);
  for (uint32_t step = 0; j < to && prefix[j + 1] <= limit; ++j)
    if (++step > kWalk) return uint32_t(std::upper_bound(prefix + j, prefix + to + 1, limit) - prefix - 1);
  return j;
}

// The words W of one chunk of m >= 1 symbols with G lanes: the smallest W for which greedy
// filling leaves the last lane no more than a window. end[l] gets one past lane l's last
// symbol; prefix (m + 1 entries, the caller's) the bits of symbols 0..i-1. An encoder's search
// over a step size needs only this: the stream's size without its bits (chunk_size).
PYCODEC_CPU_INLINE uint64_t chunk_words(const uint8_t* sym, uint32_t m, const huffman::Code& c, uint32_t lanes,
                                        uint32_t* prefix, uint32_t end[kMaxLanes]) {
#ifdef PYCODEC_HAVE_VBMI
  if (vbmi::use_vbmi()) {
    vbmi::prefix_code_bits(sym, m, c.length, prefix);
  } else
#endif
  {
    prefix[0] = 0;
    for (uint32_t i = 0; i < m; ++i) prefix[i + 1] = prefix[i] + c.length[sym[i]];
  }
  const uint64_t total = prefix[m];
  const uint64_t least = std::max<uint64_t>(1, (total + 31) / 32);
  // Greedy filling with window w places every lane's end no earlier than with a shorter one
  // (by induction over the lanes: its start is no earlier and its limit no lower), so the last
  // lane's share only falls as w grows: whether W words fit is monotone in W, and the least W
  // that fits is found by stepping from any start. The start is the words of the codes plus
  // three quarters of the expected padding (half a code a lane boundary), so that most chunks
  // take two placements: one short, one that fits. The first placement walks to each end from
  // where the mean code length puts it, later ones from the last one's ends (a window changes
  // by 32 / lanes bits a step: most ends move by a symbol or none).
  const auto place = [&](uint64_t words, bool first) PYCODEC_CPU_INLINE_LAMBDA {
    const uint64_t window = lane_window_bits(uint32_t(words), lanes);
    uint32_t i = 0;
    for (uint32_t l = 0; l + 1 < lanes; ++l) {
      const uint64_t limit = prefix[i] + window;
      if (first) {
        i = last_at_most(prefix, i, m, limit, i + uint32_t(window * m / std::max<uint64_t>(total, 1)));
      } else {
        uint32_t j = std::max(i, end[l]);
        while (j > i && prefix[j] > limit) --j;
        while (j < m && prefix[j + 1] <= limit) ++j;
        i = j;
      }
      end[l] = i;
    }
    end[lanes - 1] = m;
    return total - prefix[i] <= window;
  };
  uint64_t words = least + (uint64_t(lanes - 1) * total * 3 / (8 * uint64_t(m))) / 32;
  if (place(words, true)) {
    bool placed = true;  // end[] holds the placement of `words`
    while (words > least && (placed = place(words - 1, false))) --words;
    if (!placed) place(words, false);
    return words;
  }
  while (!place(++words, false)) {
  }
  return words;
}

inline Status check_chunk(uint32_t m, uint32_t lanes) {
  if (m > kMaxChunkSymbols || lanes == 0 || lanes > uint32_t(kMaxLanes)) return Status::BadArgument;
  return Status::Ok;
}

// Per thread, m + 1 entries: prefix[i], the bits of symbols 0..i-1 (< 2^17 symbols of <= 12
// bits: 32 bits suffice).
inline uint32_t* prefix_scratch(uint32_t m) {
  thread_local std::vector<uint32_t> scratch;
  if (scratch.size() < size_t(m) + 1) scratch.resize(size_t(m) + 1);
  return scratch.data();
}

// The words encode_chunk would write for these symbols, without writing them.
PYCODEC_X86_V3_CLONES inline Status chunk_size(const uint8_t* sym, uint32_t m, const huffman::Code& c,
                                               uint32_t lanes, uint64_t* words) {
  if (c.constant) {
    *words = 0;
    return lanes == 1 ? Status::Ok : Status::BadArgument;
  }
  const Status st = check_chunk(m, lanes);
  if (st != Status::Ok) return st;
  uint32_t end[kMaxLanes];
  *words = chunk_words(sym, m, c, lanes, prefix_scratch(m), end);
  return Status::Ok;
}

// Encodes one chunk of m >= 1 symbols with G lanes (chunk_words) and appends its words to `out`.
PYCODEC_X86_V3_CLONES inline Status encode_chunk(const uint8_t* sym, uint32_t m, const huffman::Code& c,
                                                 uint32_t lanes, std::vector<uint32_t>& out) {
  if (c.constant) return lanes == 1 ? Status::Ok : Status::BadArgument;  // zero words
  const Status st = check_chunk(m, lanes);
  if (st != Status::Ok) return st;
  uint32_t* const prefix = prefix_scratch(m);
  uint32_t end[kMaxLanes];  // one past lane l's last symbol
  const uint64_t words = chunk_words(sym, m, c, lanes, prefix, end);
  // Lane l writes exactly `window` bits (its codes, then the next code's first bits) and the
  // lane holding the last symbol no more: lanes * window <= 32 W bits, all inside the words.
  const size_t start = out.size();
  out.resize(start + words + 2, 0u);  // + the writer's 8 bytes of room
  const uint64_t window = lane_window_bits(uint32_t(words), lanes);
  ByteWriter bw{reinterpret_cast<uint8_t*>(out.data() + start)};
  const JoinedCodes joined = join_codes(sym, m, c);
  uint32_t i = 0;
  for (uint32_t l = 0; l < lanes && i < m; ++l) {
    const uint32_t lane_start = i;
    if (joined.quad) {  // four codes joined (cpu_vbmi.h) from the lane's first multiple of 4
      for (; i % 4 && i < end[l]; ++i) bw.put(c.code[sym[i]], c.length[sym[i]]);
      bw.settle();
      for (; i + 4 <= end[l]; i += 4) {
        bw.put(joined.quad[i / 4], joined.bits[i / 4]);
        bw.settle();
      }
    } else {
      for (; i + 4 <= end[l]; i += 4) {
        bw.put(c.code[sym[i]], c.length[sym[i]]);
        bw.put(c.code[sym[i + 1]], c.length[sym[i + 1]]);
        bw.put(c.code[sym[i + 2]], c.length[sym[i + 2]]);
        bw.put(c.code[sym[i + 3]], c.length[sym[i + 3]]);
        bw.settle();
      }
    }
    for (; i < end[l]; ++i) bw.put(c.code[sym[i]], c.length[sym[i]]);
    if (i < m) {  // the next code's first `pad` bits (pad < its length); l + 1 < lanes here
      const uint32_t pad = uint32_t(window - (prefix[i] - prefix[lane_start]));
      const uint32_t len = c.length[sym[i]];
      if (pad) bw.put(uint32_t(c.code[sym[i]]) >> (len - pad), pad);
    }
    bw.settle();
  }
  bw.flush();  // every symbol placed: the rest of the chunk stays zero
  out.resize(start + words);
  byteswap_words(out.data() + start, words);
  return Status::Ok;
}

// Lane l's first symbol, given the window counts of the lanes before it: the running sum,
// clamped to the chunk (lanes after the one holding the chunk's last symbol are zeros and
// may count phantom codes there; the clamp gives them none).
PYCODEC_HD uint32_t next_lane_start(uint32_t start, uint32_t count, uint32_t m) {
  return count < m - start ? start + count : m;
}

// The CPU decoder reads a chunk as bytes: the words byte-swapped once into a big-endian copy,
// so any bit position's next 64 bits are one unaligned load and one byte swap away. A lane then
// carries only its bit position and output pointer, and peeks afresh every few steps.
inline uint64_t peek64(const uint8_t* be, uint64_t pos) {
  uint64_t v;
  std::memcpy(&v, be + (pos >> 3), 8);
  return __builtin_bswap64(v) << (pos & 7);
}

struct ByteLane {
  uint64_t pos;  // bit position in the chunk
  uint8_t* out;  // the next symbol's byte in the lane's scratch region
};

// Table steps that one 64-bit peek serves: it holds >= 57 bits past pos, a step takes <= 12.
constexpr int kStepsPerPeek = 4;
static_assert(kStepsPerPeek * kPeekBits <= 64 - 7, "a peek's bits must cover its steps");

// The CPU decoder writes each lane into its own region of a scratch buffer, 4 bytes per
// entry (the entry's symbols and one byte past them, overwritten by the next entry), and
// copies the regions into place once the lanes' counts are known. A lane holds at most one
// symbol per window bit; its last steps may run past its window (decode_lanes_lockstep), at
// most kOverrunSteps of them, each writing <= 4 bytes and moving <= kMaxPerEntry, so a region
// of window + kStoreSlack bytes always suffices. The scratch also holds the chunk's big-endian
// copy (decode_chunk), kBeSlack bytes readable past its end: a peek 8 bytes on from a position
// up to kOverrunSteps steps of kPeekBits past the last lane's window.
constexpr int kOverrunRounds = 3;
constexpr uint32_t kOverrunSteps = kOverrunRounds * kStepsPerPeek;
constexpr uint32_t kStoreSlack = kPeekBits + kOverrunSteps * kMaxPerEntry + 4;
constexpr uint32_t kBeSlack = (kOverrunSteps * kPeekBits + 7) / 8 + 8;

// Window decoding (decode_window) of N lanes of `window` bits each, in lockstep: N independent
// chains the core overlaps. Every lane starts `window` bits after the one before. Each lane
// peeks once per kStepsPerPeek steps, so a step's chain is a register shift and a table load,
// not a memory load of the stream as well (bench/cpu_lane_loop.cpp: 4.6 -> 3.2 cycles a
// lane-step with 4 lanes, 2.8 with 8). Steps run unchecked while every lane has >= 48 bits
// left. Then the lanes run on, still unchecked, past their windows' ends (into the next lane's
// bits or the zeros after the chunk) until every lane has crossed its end, each step's
// position and output recorded: a lane's count is then fixed from the step that crossed its
// end, by the table of the window bits that step had left (MultiTable::tail), which takes
// the codes of that step's entry that end inside the window. Lanes that need more than
// kOverrunRounds rounds for that (a very uneven chunk) go back to where the overrun began
// and finish with a tail-table lookup on every step.
// Lane j's window is bits [w.start(j), w.end(j)) of be (Windows: OneChunk or ChunkGroup
// below). dst: each lane's scratch region; n, used: decode_window's results. be: the chunks'
// bytes, big-endian, kBeSlack readable bytes past each chunk's last window.
template <int N, class Windows>
PYCODEC_CPU_INLINE void decode_lanes_lockstep(const MultiTable& t, const uint8_t* be, const Windows& w,
                                              uint8_t* const dst[], uint32_t n[], uint32_t used[]) {
  uint64_t start[N], end[N];  // locals: the lanes' byte stores could alias a caller's arrays
  ByteLane lane[N];
  for (int j = 0; j < N; ++j) {
    start[j] = w.start(j);
    end[j] = w.end(j);
    lane[j] = {start[j], dst[j]};
  }
  const uint32_t* table = t.entry;
  // Four steps of every lane from the table alone; record(k, j, pos, out) sees each step's start.
  // A lane's state in a round is one register, at = output << 6 | bits taken (< 64: a round
  // takes <= 48; a user-space address is below 2^57, so output << 6 fits), moved by one add of
  // the step entry's top byte (count << 6 | bits); the peeked bits shift by `at` itself (a
  // 64-bit shift reads only its count's low 6 bits). Two registers a lane, not three: eight
  // lanes' state no longer spills to the stack (symbols of MiniLM's bf16 weights, one core of
  // the 2-core EPYC: 2.40 -> 2.50 G/s; 2026-11-30).
  static_assert(kStepsPerPeek * kPeekBits < 64, "a round's bits taken must fit at's low 6 bits");
  const uint32_t* step = t.step;
  const auto round = [&](auto record) PYCODEC_CPU_INLINE_LAMBDA {
    uint64_t bits[N], at[N];
    for (int j = 0; j < N; ++j) {
      bits[j] = peek64(be, lane[j].pos);
      at[j] = uint64_t(reinterpret_cast<uintptr_t>(lane[j].out)) << 6;
    }
    for (int k = 0; k < kStepsPerPeek; ++k)
      for (int j = 0; j < N; ++j) {
        uint8_t* const out = reinterpret_cast<uint8_t*>(uintptr_t(at[j] >> 6));
        record(k, j, lane[j].pos + (at[j] & 63), out);
        const uint32_t e = step[(bits[j] << (at[j] & 63)) >> (64 - kPeekBits)];
        std::memcpy(out, &e, 4);
        at[j] += e >> 24;
      }
    for (int j = 0; j < N; ++j) {
      lane[j].pos += at[j] & 63;
      lane[j].out = reinterpret_cast<uint8_t*>(uintptr_t(at[j] >> 6));
    }
  };
  // The shortest remainder (every lane is inside its window here).
  const auto least_left = [&] { return w.least_left(lane); };
  const auto unrecorded = [](int, int, uint64_t, uint8_t*) {};
  for (uint64_t least; (least = least_left()) >= uint64_t(kStepsPerPeek * kPeekBits);)
    for (uint64_t rounds = least / (kStepsPerPeek * kPeekBits); rounds; --rounds) round(unrecorded);

  // The overrun: every lane is inside its window (pos <= end) here. crossing[j]: the start of
  // lane j's last step that began inside its window; positions only grow, so that is the step
  // that crossed its end. Kept by a select a step, not looked up in a record of every step.
  ByteLane saved[N], crossing[N];
  std::copy(lane, lane + N, saved);
  std::copy(lane, lane + N, crossing);
  uint32_t steps = 0;
  const auto all_crossed = [&] {
    bool crossed = true;
    for (int j = 0; j < N; ++j) crossed &= lane[j].pos > end[j];
    return crossed;
  };
  while (!all_crossed() && steps < kOverrunSteps) {
    round([&](int, int j, uint64_t pos, uint8_t* out) {
      const bool inside = pos <= end[j];
      crossing[j].pos = inside ? pos : crossing[j].pos;
      crossing[j].out = inside ? out : crossing[j].out;
    });
    steps += kStepsPerPeek;
  }
  if (all_crossed()) {
    for (int j = 0; j < N; ++j) {
      const uint64_t pos = crossing[j].pos;
      const uint32_t w = uint32_t(end[j] - pos);  // < kPeekBits: that step ended past end
      const uint32_t v = uint32_t(peek64(be, pos) >> (64 - kPeekBits));
      const uint32_t e = t.tail[(1u << w) - 1 + (v >> (kPeekBits - w))];
      // Its codes are the first entry_count(e) of the step's own entry, already written.
      lane[j] = {pos + entry_bits(e), crossing[j].out + entry_count(e)};
    }
  } else {
    std::copy(saved, saved + N, lane);
    // Lockstep still, each step from the table of the window bits left: a lane takes every
    // code that ends inside its window and, once done, nothing more.
    for (bool going = true; going;) {
      uint64_t bits[N];
      uint32_t taken[N], stopped[N];
      for (int j = 0; j < N; ++j) {
        bits[j] = peek64(be, lane[j].pos);
        taken[j] = 0;
        stopped[j] = 0;
      }
      for (int k = 0; k < kStepsPerPeek; ++k)
        for (int j = 0; j < N; ++j) {
          const uint32_t v = uint32_t((bits[j] << taken[j]) >> (64 - kPeekBits));
          const uint32_t w = uint32_t(std::min<uint64_t>(end[j] - lane[j].pos - taken[j], kPeekBits));
          const uint32_t* codes = w == uint32_t(kPeekBits) ? table : t.tail + ((1u << w) - 1);
          const uint32_t e = codes[v >> (kPeekBits - w)];
          std::memcpy(lane[j].out, &e, 4);
          lane[j].out += entry_count(e);
          taken[j] += entry_bits(e);
          stopped[j] |= e == 0;  // the next code does not fit: this lane is done
        }
      going = false;
      for (int j = 0; j < N; ++j) {
        lane[j].pos += taken[j];
        going |= !stopped[j];
      }
    }
  }
  for (int j = 0; j < N; ++j) {
    n[j] = uint32_t(lane[j].out - dst[j]);
    used[j] = uint32_t(lane[j].pos - start[j]);
  }
}

// A chunk's lanes: lane j of N from lane `first`, windows `window` bits apart.
struct OneChunk {
  uint64_t first, window;
  uint64_t start(int j) const { return first + uint64_t(j) * window; }
  uint64_t end(int j) const { return start(j) + window; }
  OneChunk from(uint32_t l) const { return {first + l * window, window}; }
  // The shortest remainder, from the most any lane has done: the windows are equal, so this
  // keeps the loop's registers free of the ends (3% over ChunkGroup's form here).
  template <int N>
  uint64_t least_left(const ByteLane (&lane)[N]) const {
    uint64_t done = 0;
    for (int j = 0; j < N; ++j) done = std::max(done, lane[j].pos - start(j));
    return window - done;
  }
};

// The lanes of several chunks (decode_chunk_group): windows anywhere, of any lengths.
struct ChunkGroup {
  const uint64_t* starts;
  const uint64_t* ends;
  uint64_t start(int j) const { return starts[j]; }
  uint64_t end(int j) const { return ends[j]; }
  ChunkGroup from(uint32_t l) const { return {starts + l, ends + l}; }
  template <int N>
  uint64_t least_left(const ByteLane (&lane)[N]) const {
    uint64_t least = end(0) - lane[0].pos;
    for (int j = 1; j < N; ++j) least = std::min(least, end(j) - lane[j].pos);
    return least;
  }
};

// Every lane, 8 in lockstep while that many are left, then 4, 2, 1: no lane decodes anything
// but its own window.
template <class Windows>
PYCODEC_CPU_INLINE void decode_lanes(const MultiTable& t, const uint8_t* be, const Windows& w, uint32_t lanes,
                                     uint8_t* const dst[], uint32_t n[], uint32_t used[]) {
  uint32_t l = 0;
  for (; l + 8 <= lanes; l += 8) decode_lanes_lockstep<8>(t, be, w.from(l), dst + l, n + l, used + l);
  if (l + 4 <= lanes) decode_lanes_lockstep<4>(t, be, w.from(l), dst + l, n + l, used + l), l += 4;
  if (l + 2 <= lanes) decode_lanes_lockstep<2>(t, be, w.from(l), dst + l, n + l, used + l), l += 2;
  if (l < lanes) decode_lanes_lockstep<1>(t, be, w.from(l), dst + l, n + l, used + l);
}

// A lane's symbols into place, in 16-byte moves while they stay inside the chunk's `room`
// bytes: what such a move writes past the lane, the next lanes overwrite. The source may be
// read up to 15 bytes past the lane's region (scratch holds the chunk's bytes after them).
inline void copy_lane(uint8_t* to, const uint8_t* from, uint32_t n, uint32_t room) {
  constexpr uint32_t kMove = 16;
  uint32_t i = 0;
  if (room >= kMove) {
    for (; i < n && i <= room - kMove; i += kMove) std::memcpy(to + i, from + i, kMove);
  }
  if (i < n) std::memcpy(to + i, from + i, n - i);
}

// One chunk of a stream to decode: its words, and where its m >= 1 symbols go.
struct ChunkJob {
  const uint32_t* words;
  uint32_t n_words;
  uint8_t* out;
  uint32_t m;
  uint8_t* lane_starts = nullptr;  // if set: the chunk's lane start bytes (lane_count_byte), once placed
};

// A chunk's window-decoded lanes (decode_lanes: dst, n, used) into place, checking every rule
// of docs/FORMAT.md §9.4 (codes, padding that repeats the next code's prefix, zeros after the
// last code), so every bit of the chunk is accounted for. W itself need not be the smallest an
// encoder would choose.
// Every lane, the last included, is window-decoded the same way: the last lane's symbols are
// the first (m - symbols before it) of its window, and the lane holding the chunk's last
// symbol ends where those symbols' code lengths sum to; zeros must follow.
PYCODEC_CPU_INLINE Status place_lanes(const MultiTable& t, const ChunkJob& job, uint32_t lanes, uint64_t window,
                                      uint8_t* const dst[], const uint32_t n[], const uint32_t used[]) {
  const uint32_t* const words = job.words;  // locals: stores to out could alias job's fields
  uint8_t* const out = job.out;
  const uint32_t n_words = job.n_words, m = job.m;
  uint8_t* const lane_starts = job.lane_starts;
  if (lane_starts) {  // each lane's clamped count (next_lane_start), the last lane's byte unused
    uint32_t at = 0;
    bool escape = false;
    for (uint32_t l = 0; l + 1 < lanes; ++l) {
      const uint32_t next = next_lane_start(at, n[l], m);
      lane_starts[l] = lane_count_byte(next - at, m, lanes);
      escape |= lane_starts[l] == kLaneCountEscape;
      at = next;
    }
    lane_starts[lanes - 1] = uint8_t(kLaneCountBias);
    if (escape) std::fill(lane_starts, lane_starts + lanes, kLaneCountEscape);
  }
  uint32_t start = 0;
  uint64_t zero_from = 32ull * n_words;  // bits from here to the chunk's end must be zero
  for (uint32_t l = 0; l < lanes; ++l) {
    const uint64_t base = l * window;
    if (n[l] >= m - start) {  // this lane holds the chunk's last symbol: zeros follow it
      const uint32_t take = m - start;
      // Its codes end where the window's decode ended less the codes after the chunk's last
      // symbol (few: the encoder leaves the last lane < one code of zeros, unless the chunk
      // is short for its lanes).
      uint64_t bits = used[l];
      for (uint32_t i = take; i < n[l]; ++i) bits -= t.length[dst[l][i]];
      std::memcpy(out + start, dst[l], take);
      zero_from = base + bits;
      start = m;
      break;
    }
    if (l + 1 == lanes) return Status::CorruptPayload;  // the last lane's window holds too few codes
    const int pad = int(window - used[l]);  // < 12: decoding stopped at a code longer than it
    if (chunk_bits(words, n_words, base + used[l], pad) != chunk_bits(words, n_words, base + window, pad))
      return Status::CorruptPayload;
    copy_lane(out + start, dst[l], n[l], m - start);
    start += n[l];
  }
  for (uint64_t b = zero_from; b < 32ull * n_words; b += 32)
    if (chunk_bits(words, n_words, b, int(std::min<uint64_t>(32, 32ull * n_words - b)))) return Status::CorruptPayload;
  return Status::Ok;
}

// Chunks decoded together: with fewer than 8 lanes a chunk leaves the lockstep decoder's
// chains idle, so up to 8 / lanes chunks of a stream run their lanes in one lockstep. Symbols
// of a 1536 x 576 layer in 1152-symbol chunks, one thread of the 2-core EPYC, G symbols/s alone
// -> grouped: 1 lane 1.0 -> 3.0, 2 lanes 1.5 -> 2.9, 4 lanes 2.3 -> 2.8 (8 lanes: 2.4-2.6).
inline uint32_t chunks_per_group(uint32_t lanes) { return lanes && lanes < 8 ? 8 / lanes : 1; }

// Decodes `count` chunks of one stream, each with `lanes` lanes (count * lanes <= kMaxLanes),
// all their lanes in lockstep; status[i] gets chunk i's outcome (place_lanes' checks).
// scratch: grown to the lanes' regions and the chunks' big-endian copies (a few times their
// bytes).
PYCODEC_CPU_INLINE void decode_chunk_group_inline(const MultiTable& t, const ChunkJob jobs[], uint32_t count,
                                                  uint32_t lanes, Status status[], std::vector<uint8_t>& scratch) {
  if (t.constant) {
    for (uint32_t i = 0; i < count; ++i) {
      status[i] = jobs[i].n_words == 0 && lanes == 1 ? Status::Ok : Status::CorruptPayload;
      if (status[i] == Status::Ok) std::memset(jobs[i].out, int(entry_symbol(t.entry[0], 0)), jobs[i].m);
      if (status[i] == Status::Ok && jobs[i].lane_starts) jobs[i].lane_starts[0] = uint8_t(kLaneCountBias);
    }
    return;
  }
  // Scratch: every lane's region, then every chunk's big-endian copy with kBeSlack after it.
  uint64_t window[kMaxLanes];
  size_t regions = 0, copies = 0;
  for (uint32_t i = 0; i < count; ++i) {
    const bool ok = jobs[i].n_words != 0 && lanes != 0 && count * lanes <= uint32_t(kMaxLanes);
    status[i] = ok ? Status::Ok : Status::CorruptPayload;
    window[i] = ok ? lane_window_bits(jobs[i].n_words, lanes) : 0;
    if (ok) regions += lanes * (size_t(window[i]) + kStoreSlack), copies += 4 * size_t(jobs[i].n_words) + kBeSlack;
  }
  if (scratch.size() < regions + copies) scratch.resize(regions + copies);
  uint8_t* const be = scratch.data() + regions;
  uint8_t* dst[kMaxLanes];
  uint32_t n[kMaxLanes], used[kMaxLanes];
  uint64_t lane_start[kMaxLanes], lane_end[kMaxLanes];
  uint32_t total = 0;
  size_t region_at = 0, be_at = 0;
  for (uint32_t i = 0; i < count; ++i) {
    if (status[i] != Status::Ok) continue;
    const uint32_t* words = jobs[i].words;
    const size_t n_words = jobs[i].n_words;
    for (size_t w = 0; w < n_words; ++w) {
      const uint32_t x = __builtin_bswap32(words[w]);
      std::memcpy(be + be_at + 4 * w, &x, 4);
    }
    std::memset(be + be_at + 4 * n_words, 0, kBeSlack);
    for (uint32_t l = 0; l < lanes; ++l, ++total) {
      dst[total] = scratch.data() + region_at;
      region_at += size_t(window[i]) + kStoreSlack;
      lane_start[total] = 8 * be_at + l * window[i];
      lane_end[total] = lane_start[total] + window[i];
    }
    be_at += 4 * n_words + kBeSlack;
  }
  // Chunks lie one after another: start fetching the next one (about as long) now, or its
  // copy waits on memory one cache line at a time.
  const ChunkJob& last = jobs[count - 1];
  for (size_t w = 0; w < last.n_words; w += 16) __builtin_prefetch(last.words + last.n_words + w);
  if (total == lanes && total)  // one chunk (or one valid one): its lanes from be's first bit
    decode_lanes(t, be, OneChunk{lane_start[0], lane_end[0] - lane_start[0]}, total, dst, n, used);
  else if (total)
    decode_lanes(t, be, ChunkGroup{lane_start, lane_end}, total, dst, n, used);
  for (uint32_t i = 0, first = 0; i < count; ++i) {
    if (status[i] != Status::Ok) continue;
    status[i] = place_lanes(t, jobs[i], lanes, window[i], dst + first, n + first, used + first);
    first += lanes;
  }
}

PYCODEC_X86_V3_CLONES inline void decode_chunk_group(const MultiTable& t, const ChunkJob jobs[], uint32_t count,
                                                     uint32_t lanes, Status status[], std::vector<uint8_t>& scratch) {
  decode_chunk_group_inline(t, jobs, count, lanes, status, scratch);
}

// One chunk: a group of one.
PYCODEC_X86_V3_CLONES inline Status decode_chunk(const MultiTable& t, const uint32_t* words, uint32_t n_words,
                                                 uint32_t lanes, uint8_t* out, uint32_t m,
                                                 std::vector<uint8_t>& scratch, uint8_t* lane_starts = nullptr) {
  if (lanes == 0 || lanes > uint32_t(kMaxLanes)) return Status::CorruptPayload;
  const ChunkJob job{words, n_words, out, m, lane_starts};
  Status status;
  decode_chunk_group_inline(t, &job, 1, lanes, &status, scratch);
  return status;
}

// ---------------------------------------------------------------------------- layout policy

// How an encoder cuts a tensor when the caller leaves it open. Not part of the format.
// Goals, in order: (1) side information (index, lane padding, chunk slack) at most
// kSideTarget of the coded bits; (2) at least kMinChunks independent chunks, so every SM
// of a GPU gets work even for a 576 x 576 layer; (3) the shortest decode chain per warp,
// modelled as waves of kWarpsPerWave chunks, each as long as its lanes' symbol counts.
// Chunks hold whole rows (the last dimension) so a fused GEMV never splits a row, and at most
// kMaxRowsPerChunk of them so it keeps batch 16 fused.
struct Layout {
  uint32_t chunk_symbols;
  uint32_t lanes;
  double side_fraction;  // the model's estimate
};

constexpr double kSideTarget = 0.012;   // the budget is 1.5%: keep a margin for the estimate
constexpr uint64_t kMinChunks = 264;    // 2 per SM of a 132-SM H100
constexpr uint64_t kWarpsPerWave = 132 * 32;  // 32 resident warps per SM
constexpr uint32_t kMinLaneBits = 64;   // shorter windows leave lanes empty and waste lookups
constexpr uint64_t kMaxRowsPerChunk = 4;  // a fused GEMV warp holds rows x batch <= 64 partial sums

// Side bits of one chunk: u16 size, 1/16 of a u32 super offset, ~16 bits of word slack,
// and per lane the expected padding (the mean residual of a code sequence cut at a
// fixed bit position, E[len^2] / (2 E[len]) - 1/2).
inline double chunk_side_bits(uint32_t lanes, double pad) { return 16.0 + 2.0 + 16.0 + (lanes - 1) * pad; }
// Side bits of a stream whatever its chunks: header, shape, checksum and a lengths table
// (48 + 8 ndim + 132 bytes), which a small tensor must also fit into its budget.
inline double stream_side_bits(int ndim) { return 8.0 * (48 + 8 * ndim + 132); }

inline Layout choose_layout(const uint64_t* shape, int ndim, uint64_t n, const uint64_t counts[256],
                            const uint8_t length[256], uint32_t fixed_chunk, uint32_t fixed_lanes) {
  double bits = 0, bits2 = 0;
  for (int s = 0; s < 256; ++s) bits += double(counts[s]) * length[s], bits2 += double(counts[s]) * length[s] * length[s];
  if (n == 0 || bits == 0)  // empty or constant: one lane, any chunk
    return {fixed_chunk ? fixed_chunk : uint32_t(std::min<uint64_t>(std::max<uint64_t>(n, 1), kMaxChunkSymbols)), 1, 0.0};
  const double mean = bits / double(n), pad = std::max(0.0, bits2 / (2 * bits) - 0.5);
  std::vector<uint32_t> chunks;
  if (fixed_chunk) {
    chunks.push_back(fixed_chunk);
  } else {
    const uint64_t row = ndim >= 2 ? shape[ndim - 1] : 0;
    if (row >= 1 && row <= kMaxChunkSymbols) {
      for (uint64_t r = 1; r <= kMaxRowsPerChunk && r * row <= kMaxChunkSymbols; ++r) {
        chunks.push_back(uint32_t(r * row));
        if (r * row >= n) break;
      }
    } else {
      for (uint64_t c = 1024; c <= kMaxChunkSymbols; c *= 2) {
        chunks.push_back(uint32_t(c));
        if (c >= n) break;
      }
    }
  }
  struct Candidate {
    Layout layout;
    uint64_t n_chunks, latency;
  };
  std::vector<Candidate> all;
  for (uint32_t chunk : chunks) {
    const uint64_t m = std::min<uint64_t>(chunk, n), n_chunks = (n + chunk - 1) / chunk;
    for (uint32_t lanes = kMaxLanes; lanes >= 1; lanes /= 2) {
      if (fixed_lanes && lanes != fixed_lanes) continue;
      if (lanes > 1 && double(m) * mean / lanes < kMinLaneBits) continue;
      const double side =
          (stream_side_bits(ndim) + double(n_chunks) * chunk_side_bits(lanes, pad)) / (double(n) * mean);
      const uint64_t latency = ((n_chunks + kWarpsPerWave - 1) / kWarpsPerWave) * ((m + lanes - 1) / lanes);
      all.push_back({{chunk, lanes, side}, n_chunks, latency});
    }
  }
  if (all.empty()) return {chunks.back(), fixed_lanes ? fixed_lanes : 1, 1.0};
  uint64_t most_chunks = 0;
  for (const Candidate& c : all)
    if (c.layout.side_fraction <= kSideTarget) most_chunks = std::max(most_chunks, c.n_chunks);
  const Candidate* best = nullptr;
  for (const Candidate& c : all) {
    if (c.layout.side_fraction > kSideTarget || c.n_chunks < std::min(kMinChunks, most_chunks)) continue;
    if (!best || c.latency < best->latency ||
        (c.latency == best->latency && c.layout.side_fraction < best->layout.side_fraction))
      best = &c;
  }
  if (!best)  // nothing meets the side budget: the cheapest layout
    for (const Candidate& c : all)
      if (!best || c.layout.side_fraction < best->layout.side_fraction) best = &c;
  return best->layout;
}

}  // namespace windowed
}  // namespace pycodec
