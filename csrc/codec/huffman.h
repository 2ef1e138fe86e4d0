// pycodec codec core: lane-interleaved, length-limited canonical Huffman.
//
// Read me first
// - Alphabet: uint8 symbols (up to 256). Codes are canonical and at most
//   kMaxCodeLength bits, so one kTableSize-entry table resolves any code from a
//   12-bit window: 4096 entries x 2 bytes = 8 KiB, which stays in L1 on a CPU and
//   lets about 28 copies sit in an H100 SM's 227 KiB of shared memory (one per
//   resident block). Longer caps double the table per bit and win < 0.1% on
//   weight-like distributions (alphabet <= 256, tails rarely below 2^-12).
// - A chunk holds up to chunk_symbols symbols, dealt to kLanes = 32 lanes (one CUDA
//   warp) in pairs: symbols 2l and 2l+1 of every 64 go to lane l. A lane's round of
//   G = 2 codes fills two adjacent bytes, so the CPU stores 16 bits per round, a warp
//   writes 64 contiguous bytes, and a GEMV lane holds a (k, k+1) weight pair (bf16x2).
//   Every lane owns a fixed, known set of output positions.
// - All lanes of a chunk share ONE stream of 32-bit words. Who reads the next word is
//   fixed by a schedule that the encoder simulates exactly:
//     for round r = 0, 1, ...:
//       for lane l = 0..31 that still has symbols:
//         if bit_count[l] < kRefillThreshold: bit_buffer[l] gets the next word
//         lane l decodes its symbols r*G .. r*G+G-1 (G = kSymbolsPerRound, fewer at its end)
//   A GPU warp does the refill with one ballot + popc; a CPU walks the lanes in order.
//   The schedule depends only on code lengths, never on how a decoder resolves the
//   G symbols of a round (one lookup each, or a multi-symbol table), so any decoder
//   strategy reads the same format.
// - Bits are MSB-first inside each word; each lane's bit buffer is 64 bits wide and
//   left-aligned. A lane's last word is zero-padded; the decoder may read one word
//   past a lane's last code (the encoder emits a zero word there) because the refill
//   test cannot know how short the remaining codes are.
// - A chunk must consume exactly its words and leave only zero padding bits: anything
//   else means corruption.
// - One distinct symbol ("constant" table) codes every symbol in zero bits.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "status.h"

namespace pycodec {

constexpr int kLanes = 32;  // one per CUDA warp lane; also the CPU interleave width

namespace huffman {

constexpr int kAlphabet = 256;
constexpr int kMaxCodeLength = 12;                     // see "Read me first"
constexpr int kTableBits = kMaxCodeLength;
constexpr uint32_t kTableSize = 1u << kTableBits;
constexpr int kWordBits = 32;                          // refill unit: one coalesced 32-bit load
constexpr int kSymbolsPerRound = 2;                    // codes decoded between refill tests
constexpr int kRefillThreshold = kSymbolsPerRound * kMaxCodeLength;  // 24: enough bits for a round
constexpr int kBitBufferBits = 64;

static_assert(kRefillThreshold <= kWordBits, "one refill must restore a full round of bits");
static_assert(kRefillThreshold - 1 + kWordBits <= kBitBufferBits, "refilled buffer must fit 64 bits");
static_assert(kAlphabet <= (1 << kMaxCodeLength), "every symbol needs a code within the cap");
static_assert(kMaxCodeLength < 16, "decode entries keep a code length in 4 bits");
static_assert(2 * kMaxCodeLength < 32, "decode entries keep a pair length in 5 bits");

// Decode table entry, 32 bits, indexed by the next 12 bits of a lane:
//   [31] pair  [27:24] length of the first code  [23:16] bits to consume
//   [15:8] second symbol (valid if pair)  [7:0] first symbol
// "pair": both codes of the round lie inside the 12-bit window, so one lookup yields
// the round's two symbols in output byte order and "bits to consume" covers both;
// otherwise it covers the first code only. Fields sit on byte boundaries so that
// extracting one is a single shift or zero-extending move.
constexpr uint32_t kPairBit = 1u << 31;
PYCODEC_HD uint32_t entry_symbol(uint32_t e) { return e & 0xFFu; }
PYCODEC_HD uint32_t entry_length(uint32_t e) { return (e >> 24) & 15u; }
PYCODEC_HD uint32_t entry_consume(uint32_t e) { return (e >> 16) & 0xFFu; }

// Serialized table:
//   byte 0 = kTableLengths:  then 128 bytes, code length of symbol 2k in the low nibble of
//                            byte k+1 and of symbol 2k+1 in its high nibble (0 = absent).
//   byte 0 = kTableConstant: then 1 byte, the only symbol (coded in zero bits).
constexpr uint8_t kTableLengths = 0;
constexpr uint8_t kTableConstant = 1;
constexpr uint32_t kLengthsTableBytes = 1 + kAlphabet / 2;
constexpr uint32_t kConstantTableBytes = 2;

struct Code {
  uint8_t length[kAlphabet];  // 0 = symbol absent (or constant table)
  uint16_t code[kAlphabet];   // canonical code, right-aligned, MSB-first when emitted
  bool constant;
  uint8_t constant_symbol;
};

// Optimal length-limited code lengths by package-merge (Larmore & Hirschberg).
// Items of one level are the leaves (lightest first) merged with the pairs ("packages") of the
// level below, a leaf first on a tie; the first 2n-2 items of the top level are selected, and
// a selected package selects its pair below. A leaf's code length is the number of levels in
// which it is selected. Packages are taken in order, so the selected items of every level are a
// prefix of it: the first p packages of a level select the first 2p items below, and the
// leaves among a level's first k items are the lightest ones. The selection is therefore
// counted level by level, with no walk (about 5x faster than walking it: a lossless tensor's
// planning builds six codes, 2026-11-30). n <= 256 and L = 12: a few thousand items.
inline void build_code_lengths(const uint64_t counts[kAlphabet], uint8_t lengths[kAlphabet]) {
  std::memset(lengths, 0, kAlphabet);
  int present[kAlphabet];
  int n = 0;
  for (int s = 0; s < kAlphabet; ++s)
    if (counts[s]) present[n++] = s;
  if (n < 2) return;  // caller uses a constant table
  std::stable_sort(present, present + n, [&](int a, int b) { return counts[a] < counts[b]; });
  uint64_t leaf_weight[kAlphabet];
  for (int i = 0; i < n; ++i) leaf_weight[i] = counts[present[i]];
  // is_leaf[d][j]: item j of level d is a leaf (else the next package); weights roll per level.
  uint8_t is_leaf[kMaxCodeLength][2 * kAlphabet];
  uint64_t weight[2][2 * kAlphabet];
  int items_below = 0;  // items of level d + 1
  for (int depth = kMaxCodeLength - 1; depth >= 0; --depth) {
    const uint64_t* below = weight[(depth + 1) & 1];
    uint64_t* cur = weight[depth & 1];
    const int n_pkg = items_below / 2;
    int leaf = 0, pkg = 0, j = 0;
    while (leaf < n || pkg < n_pkg) {
      const bool take_leaf = pkg == n_pkg || (leaf < n && leaf_weight[leaf] <= below[2 * pkg] + below[2 * pkg + 1]);
      is_leaf[depth][j] = take_leaf;
      cur[j++] = take_leaf ? leaf_weight[leaf++] : below[2 * pkg] + below[2 * pkg + 1];
      pkg += !take_leaf;
    }
    items_below = j;
  }
  int selected = 2 * n - 2;
  for (int depth = 0; depth < kMaxCodeLength && selected > 0; ++depth) {
    int leaves = 0;
    for (int j = 0; j < selected; ++j) leaves += is_leaf[depth][j];
    for (int i = 0; i < leaves; ++i) ++lengths[present[i]];
    selected = 2 * (selected - leaves);
  }
}

// Canonical codes: sorted by (length, symbol), consecutive integers within a length.
inline Status assign_canonical(Code& c) {
  if (c.constant) {
    std::memset(c.code, 0, sizeof(c.code));
    return Status::Ok;
  }
  uint32_t kraft = 0;  // in units of 2^-kMaxCodeLength
  int n_present = 0;
  for (int s = 0; s < kAlphabet; ++s) {
    if (c.length[s] > kMaxCodeLength) return Status::BadTable;
    if (c.length[s]) {
      kraft += 1u << (kMaxCodeLength - c.length[s]);
      ++n_present;
    }
  }
  // A complete code is what makes every table slot decodable, so decoding of corrupt
  // data stays in bounds without per-symbol checks.
  if (n_present < 2 || kraft != kTableSize) return Status::BadTable;
  uint32_t next = 0;
  for (int len = 1; len <= kMaxCodeLength; ++len) {
    for (int s = 0; s < kAlphabet; ++s)
      if (c.length[s] == len) c.code[s] = uint16_t(next++);
    next <<= 1;
  }
  return Status::Ok;
}

inline Status build_code(const uint64_t counts[kAlphabet], Code& c) {
  std::memset(&c, 0, sizeof(c));
  int n_present = 0, last = 0;
  for (int s = 0; s < kAlphabet; ++s)
    if (counts[s]) ++n_present, last = s;
  if (n_present <= 1) {
    c.constant = true;
    c.constant_symbol = uint8_t(last);
    return assign_canonical(c);
  }
  build_code_lengths(counts, c.length);
  return assign_canonical(c);
}

inline void write_table(const Code& c, std::vector<uint8_t>& out) {
  if (c.constant) {
    out.push_back(kTableConstant);
    out.push_back(c.constant_symbol);
    return;
  }
  out.push_back(kTableLengths);
  for (int k = 0; k < kAlphabet / 2; ++k)
    out.push_back(uint8_t(c.length[2 * k] | (c.length[2 * k + 1] << 4)));
}

inline Status read_table(const uint8_t* p, uint32_t n_bytes, Code& c) {
  std::memset(&c, 0, sizeof(c));
  if (n_bytes == kConstantTableBytes && p[0] == kTableConstant) {
    c.constant = true;
    c.constant_symbol = p[1];
    return assign_canonical(c);
  }
  if (n_bytes != kLengthsTableBytes || p[0] != kTableLengths) return Status::BadTable;
  for (int k = 0; k < kAlphabet / 2; ++k) {
    c.length[2 * k] = p[1 + k] & 15;
    c.length[2 * k + 1] = p[1 + k] >> 4;
  }
  return assign_canonical(c);
}

inline void build_decode_table(const Code& c, uint32_t table[kTableSize]) {
  uint32_t single[kTableSize];  // (symbol, length) of the first code in each window
  if (c.constant) {
    for (uint32_t i = 0; i < kTableSize; ++i) single[i] = c.constant_symbol;
  } else {
    for (int s = 0; s < kAlphabet; ++s) {
      const uint32_t len = c.length[s];
      if (!len) continue;
      const uint32_t first = uint32_t(c.code[s]) << (kMaxCodeLength - len);
      for (uint32_t i = 0; i < (1u << (kMaxCodeLength - len)); ++i) single[first + i] = (len << 24) | (len << 16) | s;
    }
  }
  for (uint32_t w = 0; w < kTableSize; ++w) {
    const uint32_t e0 = single[w];
    const uint32_t len0 = entry_length(e0);
    // Bits after the first code, zero-filled: the second code is known only if it ends
    // inside the window, i.e. its length fits the bits that remain.
    const uint32_t rest = (w << len0) & (kTableSize - 1);
    const uint32_t e1 = single[rest];
    const uint32_t len1 = entry_length(e1);
    table[w] = len0 + len1 <= kMaxCodeLength
                   ? kPairBit | (len0 << 24) | ((len0 + len1) << 16) | (entry_symbol(e1) << 8) | entry_symbol(e0)
                   : e0;
  }
}

// Symbols of lane `lane` in a chunk of n symbols, and where a lane's j-th symbol lives.
PYCODEC_HD uint32_t lane_symbol_count(uint32_t n, uint32_t lane) {
  const uint32_t per_round = kLanes * kSymbolsPerRound;
  const uint32_t rem = n % per_round, in_last = rem > lane * kSymbolsPerRound ? rem - lane * kSymbolsPerRound : 0;
  return (n / per_round) * kSymbolsPerRound + (in_last < kSymbolsPerRound ? in_last : kSymbolsPerRound);
}
PYCODEC_HD size_t lane_position(uint32_t j, uint32_t lane) {
  return size_t(j / kSymbolsPerRound) * (kLanes * kSymbolsPerRound) + lane * kSymbolsPerRound + j % kSymbolsPerRound;
}

// Encodes one chunk and appends its words to `out`. Returns the number of words.
inline size_t encode_chunk(const uint8_t* sym, uint32_t n, const Code& c, std::vector<uint32_t>& out) {
  const size_t start = out.size();
  std::vector<uint32_t> lane_words[kLanes];
  for (uint32_t l = 0; l < kLanes; ++l) {
    uint64_t acc = 0;
    int pending = 0;
    std::vector<uint32_t>& w = lane_words[l];
    w.reserve(lane_symbol_count(n, l) * kMaxCodeLength / kWordBits + 1);
    for (uint32_t j = 0, m = lane_symbol_count(n, l); j < m; ++j) {
      const uint8_t x = sym[lane_position(j, l)];
      const uint32_t len = c.length[x];
      acc = (acc << len) | c.code[x];
      pending += len;
      if (pending >= kWordBits) {
        pending -= kWordBits;
        w.push_back(uint32_t(acc >> pending));
      }
    }
    if (pending > 0) w.push_back(uint32_t(acc << (kWordBits - pending)));
  }
  // Replay the decoder's refill schedule to lay the lanes' words out in read order.
  int bit_count[kLanes] = {0};
  size_t next_word[kLanes] = {0};
  const uint32_t rounds = (lane_symbol_count(n, 0) + kSymbolsPerRound - 1) / kSymbolsPerRound;
  for (uint32_t r = 0; r < rounds; ++r) {
    for (uint32_t l = 0; l < kLanes; ++l) {
      const uint32_t m = lane_symbol_count(n, l);
      const uint32_t j0 = r * kSymbolsPerRound;
      if (j0 >= m) continue;
      if (bit_count[l] < kRefillThreshold) {
        const std::vector<uint32_t>& w = lane_words[l];
        out.push_back(next_word[l] < w.size() ? w[next_word[l]] : 0u);
        ++next_word[l];
        bit_count[l] += kWordBits;
      }
      const uint32_t j1 = std::min<uint32_t>(j0 + kSymbolsPerRound, m);
      for (uint32_t j = j0; j < j1; ++j) bit_count[l] -= c.length[sym[lane_position(j, l)]];
    }
  }
  return out.size() - start;
}

// Decodes one chunk of n symbols from exactly n_words words.
// Never reads outside words[0, n_words) nor writes outside out[0, n).
inline Status decode_chunk(const uint32_t* table, const uint32_t* words, size_t n_words, uint8_t* out,
                           uint32_t n) {
  uint64_t bits[kLanes] = {0};
  int count[kLanes] = {0};
  size_t pos = 0;
  const uint32_t full_rounds = n / (kLanes * kSymbolsPerRound);  // every lane decodes G symbols
  uint32_t r = 0;
  // Fast path: a round reads at most kLanes words, so one bounds test covers it.
  // Two passes per round: the refill pass carries the only cross-lane dependency (the
  // word position, a chain of adds); the decode pass is then independent per lane, so
  // the out-of-order core overlaps the table lookups of many lanes.
  for (; r < full_rounds && n_words - pos >= kLanes; ++r) {
    for (int l = 0; l < kLanes; ++l) {
      // Branch-free: whether a lane refills is as predictable as a coin toss.
      const uint32_t need = uint32_t(count[l] < kRefillThreshold);
      bits[l] |= ((uint64_t(words[pos]) << 32) >> count[l]) & (uint64_t(0) - need);
      pos += need;
      count[l] += int(need * kWordBits);
    }
    uint8_t* o = out + size_t(r) * kSymbolsPerRound * kLanes;
    for (int l = 0; l < kLanes; ++l) {
      uint64_t b = bits[l];
      const uint32_t e = table[b >> (kBitBufferBits - kTableBits)];
      b <<= entry_consume(e);
      int used = int(entry_consume(e));
      uint16_t pair = uint16_t(e);
      if (!(e & kPairBit)) {  // rare on weight-like data: the second code is long
        const uint32_t e1 = table[b >> (kBitBufferBits - kTableBits)];
        b <<= entry_length(e1);
        used += int(entry_length(e1));
        pair = uint16_t(entry_symbol(e) | (entry_symbol(e1) << 8));
      }
      std::memcpy(o + 2 * l, &pair, 2);
      bits[l] = b;
      count[l] -= used;
    }
  }
  // Careful path: end of the chunk, partial rounds, or a payload too short to trust.
  const uint32_t rounds = (lane_symbol_count(n, 0) + kSymbolsPerRound - 1) / kSymbolsPerRound;
  for (; r < rounds; ++r) {
    for (uint32_t l = 0; l < kLanes; ++l) {
      const uint32_t m = lane_symbol_count(n, l);
      const uint32_t j0 = r * kSymbolsPerRound;
      if (j0 >= m) continue;
      if (count[l] < kRefillThreshold) {
        if (pos >= n_words) return Status::CorruptPayload;
        bits[l] |= (uint64_t(words[pos++]) << 32) >> count[l];
        count[l] += kWordBits;
      }
      const uint32_t j1 = j0 + kSymbolsPerRound < m ? j0 + kSymbolsPerRound : m;
      for (uint32_t j = j0; j < j1; ++j) {
        const uint32_t e = table[bits[l] >> (kBitBufferBits - kTableBits)];
        bits[l] <<= entry_length(e);
        count[l] -= int(entry_length(e));
        out[lane_position(j, l)] = uint8_t(entry_symbol(e));
      }
    }
  }
  // Every bit left in a lane is padding and must be zero, so a flipped padding bit is
  // caught even though it would decode to the same symbols.
  uint64_t leftover = 0;
  for (int l = 0; l < kLanes; ++l) leftover |= bits[l];
  return pos == n_words && leftover == 0 ? Status::Ok : Status::CorruptPayload;
}

}  // namespace huffman
}  // namespace pycodec
