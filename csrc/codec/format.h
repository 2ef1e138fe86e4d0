// pycodec codec core: the container ("PYCD" stream, version 1). docs/FORMAT.md is the
// normative description; this header is its one implementation.
//
//  offset  size      field
//  ------  --------  -------------------------------------------------------------
//       0  4         magic "PYCD"
//       4  2         version (u16) = 1
//       6  1         coder: 1 = huffman, 2 = rans
//       7  1         ndim (0..8)
//       8  8         n_symbols (u64) = product of shape
//      16  4         chunk_symbols (u32): multiple of 32, 32..2^20
//      20  4         table_bytes (u32)
//      24  8         payload_words (u64): payload length in 32-bit words
//      32  8         symbols_hash (u64): hash64 of the per-chunk hash64s (hash.h)
//      40  8*ndim    shape (u64 each)
//    40+8d 8         meta_hash (u64): hash64 of bytes [0, 40+8d), the table and the index
//    48+8d T         table (T = table_bytes), then zero padding to a multiple of 4
//       .. 4*C       chunk index: C = ceil(n_symbols / chunk_symbols) u32 word offsets;
//                    chunk i spans payload words [index[i], index[i+1]), index[C] = payload_words
//       .. 4*P       payload: P = payload_words 32-bit words
//
// All integers little-endian. The blob length must equal the sum exactly, which bounds
// every size a header can claim by the bytes actually present (no unbounded allocation:
// n_symbols <= chunk_symbols * index entries <= 2^20 * blob_bytes / 4).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "hash.h"
#include "status.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "pycodec streams are little-endian; this build assumes a little-endian host"
#endif

namespace pycodec {

enum class Coder : uint8_t { Huffman = 1, Rans = 2 };

constexpr uint8_t kMagic[4] = {'P', 'Y', 'C', 'D'};
constexpr uint16_t kFormatVersion = 1;
constexpr int kMaxDims = 8;
constexpr uint32_t kChunkAlign = 32;                  // = kLanes: whole rounds per lane
constexpr uint32_t kMaxChunkSymbols = 1u << 20;       // bounds header-claimed sizes (see above)
constexpr uint32_t kMaxTableBytes = 1024;             // both coders' tables are < 600 bytes
constexpr size_t kFixedHeaderBytes = 40;
constexpr size_t kMetaHashBytes = 8;

struct StreamInfo {
  Coder coder;
  int ndim;
  uint64_t shape[kMaxDims];
  uint64_t n_symbols;
  uint32_t chunk_symbols;
  uint64_t n_chunks;
  uint32_t table_bytes;
  uint64_t payload_words;
  uint64_t symbols_hash;
  size_t table_offset;    // byte offsets inside the blob
  size_t index_offset;
  size_t payload_offset;
  size_t total_bytes;
};

inline size_t header_bytes(int ndim) { return kFixedHeaderBytes + 8 * size_t(ndim) + kMetaHashBytes; }
inline size_t padded4(size_t n) { return (n + 3) & ~size_t(3); }

inline void put_le(uint8_t* p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = uint8_t(v >> (8 * i));
}
inline uint64_t get_le(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}

inline uint64_t meta_hash(const uint8_t* blob, const StreamInfo& info) {
  // Fixed header + shape, then table + padding + index: hashed as two spans joined by seed.
  const uint64_t h0 = hash64(blob, kFixedHeaderBytes + 8 * size_t(info.ndim));
  return hash64(blob + info.table_offset, info.payload_offset - info.table_offset, h0);
}

// Validates everything except the payload and fills `info`.
inline Status parse_header(const uint8_t* blob, size_t len, StreamInfo* info) {
  StreamInfo s{};
  if (len < 8) return Status::Truncated;
  if (std::memcmp(blob, kMagic, 4) != 0) return Status::BadMagic;
  if (get_le(blob + 4, 2) != kFormatVersion) return Status::BadVersion;
  if (len < kFixedHeaderBytes) return Status::Truncated;
  const uint8_t coder = blob[6];
  if (coder != uint8_t(Coder::Huffman) && coder != uint8_t(Coder::Rans)) return Status::BadHeader;
  s.coder = Coder(coder);
  s.ndim = blob[7];
  if (s.ndim > kMaxDims) return Status::BadHeader;
  s.n_symbols = get_le(blob + 8, 8);
  s.chunk_symbols = uint32_t(get_le(blob + 16, 4));
  s.table_bytes = uint32_t(get_le(blob + 20, 4));
  s.payload_words = get_le(blob + 24, 8);
  s.symbols_hash = get_le(blob + 32, 8);
  if (s.chunk_symbols < kChunkAlign || s.chunk_symbols > kMaxChunkSymbols || s.chunk_symbols % kChunkAlign)
    return Status::BadHeader;
  if (s.table_bytes == 0 || s.table_bytes > kMaxTableBytes) return Status::BadHeader;
  if (len < header_bytes(s.ndim)) return Status::Truncated;
  for (int d = 0; d < s.ndim; ++d) s.shape[d] = get_le(blob + kFixedHeaderBytes + 8 * d, 8);
  s.n_chunks = s.n_symbols / s.chunk_symbols + (s.n_symbols % s.chunk_symbols != 0);
  // Sizes compared in a way that cannot overflow: every term is checked against len first.
  s.table_offset = header_bytes(s.ndim);
  s.index_offset = s.table_offset + padded4(s.table_bytes);
  if (s.index_offset > len) return Status::Truncated;
  if (s.n_chunks > (len - s.index_offset) / 4) return Status::Truncated;
  s.payload_offset = s.index_offset + 4 * size_t(s.n_chunks);
  if (s.payload_words > (len - s.payload_offset) / 4) return Status::Truncated;
  s.total_bytes = s.payload_offset + 4 * size_t(s.payload_words);
  if (s.total_bytes != len) return len < s.total_bytes ? Status::Truncated : Status::TrailingBytes;
  if (get_le(blob + kFixedHeaderBytes + 8 * s.ndim, 8) != meta_hash(blob, s)) return Status::HeaderChecksum;
  // Shape product must equal n_symbols; overflow-checked.
  uint64_t prod = 1;
  for (int d = 0; d < s.ndim; ++d) {
    if (s.shape[d] != 0 && prod > UINT64_MAX / s.shape[d]) return Status::BadHeader;
    prod *= s.shape[d];
  }
  if (prod != s.n_symbols) return Status::BadHeader;
  for (size_t p = s.table_offset + s.table_bytes; p < s.index_offset; ++p)
    if (blob[p] != 0) return Status::BadHeader;
  // Index: starts at 0 (no unread words before the first chunk), monotone, inside the payload.
  uint64_t prev = 0;
  for (uint64_t c = 0; c < s.n_chunks; ++c) {
    const uint64_t off = get_le(blob + s.index_offset + 4 * c, 4);
    if ((c == 0 && off != 0) || off < prev || off > s.payload_words) return Status::BadIndex;
    prev = off;
  }
  if (s.n_chunks == 0 && s.payload_words != 0) return Status::BadIndex;
  *info = s;
  return Status::Ok;
}

inline uint64_t chunk_begin(const uint8_t* blob, const StreamInfo& s, uint64_t c) {
  return get_le(blob + s.index_offset + 4 * c, 4);
}
inline uint64_t chunk_end(const uint8_t* blob, const StreamInfo& s, uint64_t c) {
  return c + 1 < s.n_chunks ? chunk_begin(blob, s, c + 1) : s.payload_words;
}

}  // namespace pycodec
