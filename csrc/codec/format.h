// pycodec codec core: the container ("PYCD" stream, versions 1 and 2). docs/FORMAT.md is
// the normative description; this header is its one implementation.
//
//  offset  size      field
//  ------  --------  -------------------------------------------------------------
//       0  4         magic "PYCD"
//       4  2         version (u16): 1 or 2
//       6  1         coder: 1 = huffman, 2 = rans (v1); 1 = huffman, windowed lanes (v2)
//       7  1         ndim (0..8)
//       8  8         n_symbols (u64) = product of shape
//      16  4         chunk_symbols (u32): v1 a multiple of 32 in [32, 2^20]; v2 in [1, 2^17]
//      20  4         v1: table_bytes (u32)
//      20  2         v2: table_bytes (u16)
//      22  1         v2: lanes (1..32), bit windows per chunk (windowed.h)
//      23  1         v2: reserved, 0
//      24  8         payload_words (u64): payload length in 32-bit words
//      32  8         symbols_hash (u64): hash64 of the per-chunk hash64s (hash.h)
//      40  8*ndim    shape (u64 each)
//    40+8d 8         meta_hash (u64): hash64 of bytes [0, 40+8d), the table and the index
//    48+8d T         table (T = table_bytes), then zero padding to a multiple of 4
//       ..           chunk index, C = ceil(n_symbols / chunk_symbols) chunks:
//                      v1: C u32 word offsets; chunk i spans payload words [index[i], index[i+1])
//                      v2: ceil(C/16) u32 word offsets of chunks 0, 16, 32, ... ("super"), then
//                          C u16 chunk sizes in words, then zero padding to a multiple of 4
//       .. 4*P       payload: P = payload_words 32-bit words
//
// All integers little-endian. The blob length must equal the sum exactly, which bounds
// every size a header can claim by the bytes actually present (no unbounded allocation:
// n_symbols <= chunk_symbols * chunks <= 2^20 * blob_bytes / 2).
#pragma once

#include <algorithm>
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
constexpr uint16_t kFormatVersion = 2;                // the newest version this build reads and writes
constexpr uint16_t kLegacyFormatVersion = 1;          // still read; written only for rANS
constexpr int kMaxDims = 8;
constexpr uint32_t kChunkAlign = 32;                  // v1: = kLanes, whole rounds per lane
constexpr uint32_t kMaxChunkSymbols = 1u << 20;       // v1; v2 caps at windowed::kMaxChunkSymbols
constexpr uint32_t kMaxTableBytes = 1024;             // both coders' tables are < 600 bytes
constexpr uint32_t kMaxChunkSymbolsV2 = 1u << 17;     // = windowed::kMaxChunkSymbols (static_assert in codec.cpp)
constexpr uint32_t kSuperChunksV2 = 16;               // = windowed::kSuperChunks
constexpr size_t kFixedHeaderBytes = 40;
constexpr size_t kMetaHashBytes = 8;

struct StreamInfo {
  uint16_t version;
  Coder coder;
  int ndim;
  uint64_t shape[kMaxDims];
  uint64_t n_symbols;
  uint32_t chunk_symbols;
  uint64_t n_chunks;
  uint32_t table_bytes;
  uint32_t lanes;         // v2: bit windows per chunk; v1: kLanes
  uint64_t payload_words;
  uint64_t symbols_hash;
  size_t table_offset;    // byte offsets inside the blob
  size_t index_offset;    // v1: u32 offsets; v2: u32 super offsets
  size_t sizes_offset;    // v2: u16 chunk sizes (= index_offset for v1)
  size_t payload_offset;
  size_t total_bytes;
};

inline size_t header_bytes(int ndim) { return kFixedHeaderBytes + 8 * size_t(ndim); }
inline size_t table_offset_of(int ndim) { return header_bytes(ndim) + kMetaHashBytes; }
inline size_t padded4(size_t n) { return (n + 3) & ~size_t(3); }
inline uint64_t super_count(uint64_t n_chunks) { return (n_chunks + kSuperChunksV2 - 1) / kSuperChunksV2; }
// Bytes of the chunk index, from the chunk count alone.
inline uint64_t index_bytes(uint16_t version, uint64_t n_chunks) {
  return version == 1 ? 4 * n_chunks : 4 * super_count(n_chunks) + padded4(2 * n_chunks);
}

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
  const uint64_t h0 = hash64(blob, header_bytes(info.ndim));
  return hash64(blob + info.table_offset, info.payload_offset - info.table_offset, h0);
}

inline uint64_t chunk_size_v2(const uint8_t* blob, const StreamInfo& s, uint64_t c) {
  return get_le(blob + s.sizes_offset + 2 * c, 2);
}

// Checks the chunk index: v1 offsets start at 0, never decrease and stay inside the payload;
// v2 sizes add up to the payload and every 16th chunk's stored offset equals that sum.
inline Status check_index(const uint8_t* blob, const StreamInfo& s) {
  if (s.version == 1) {
    uint64_t prev = 0;
    for (uint64_t c = 0; c < s.n_chunks; ++c) {
      const uint64_t off = get_le(blob + s.index_offset + 4 * c, 4);
      if ((c == 0 && off != 0) || off < prev || off > s.payload_words) return Status::BadIndex;
      prev = off;
    }
  } else {
    uint64_t sum = 0;
    for (uint64_t c = 0; c < s.n_chunks; ++c) {
      if (c % kSuperChunksV2 == 0 && get_le(blob + s.index_offset + 4 * (c / kSuperChunksV2), 4) != sum)
        return Status::BadIndex;
      sum += chunk_size_v2(blob, s, c);
    }
    if (sum != s.payload_words) return Status::BadIndex;
    for (size_t p = s.sizes_offset + 2 * s.n_chunks; p < s.payload_offset; ++p)
      if (blob[p] != 0) return Status::BadIndex;
  }
  if (s.n_chunks == 0 && s.payload_words != 0) return Status::BadIndex;
  return Status::Ok;
}

// Validates everything except the table's contents and the payload, and fills `info`.
inline Status parse_header(const uint8_t* blob, size_t len, StreamInfo* info) {
  StreamInfo s{};
  if (len < 8) return Status::Truncated;
  if (std::memcmp(blob, kMagic, 4) != 0) return Status::BadMagic;
  s.version = uint16_t(get_le(blob + 4, 2));
  if (s.version != 1 && s.version != 2) return Status::BadVersion;
  if (len < kFixedHeaderBytes) return Status::Truncated;
  const uint8_t coder = blob[6];
  s.ndim = blob[7];
  s.n_symbols = get_le(blob + 8, 8);
  s.chunk_symbols = uint32_t(get_le(blob + 16, 4));
  s.payload_words = get_le(blob + 24, 8);
  s.symbols_hash = get_le(blob + 32, 8);
  if (s.ndim > kMaxDims) return Status::BadHeader;
  if (s.version == 1) {
    if (coder != uint8_t(Coder::Huffman) && coder != uint8_t(Coder::Rans)) return Status::BadHeader;
    s.table_bytes = uint32_t(get_le(blob + 20, 4));
    s.lanes = 32;
    if (s.chunk_symbols < kChunkAlign || s.chunk_symbols > kMaxChunkSymbols || s.chunk_symbols % kChunkAlign)
      return Status::BadHeader;
  } else {
    if (coder != uint8_t(Coder::Huffman)) return Status::BadHeader;
    s.table_bytes = uint32_t(get_le(blob + 20, 2));
    s.lanes = blob[22];
    if (s.lanes < 1 || s.lanes > 32 || blob[23] != 0) return Status::BadHeader;
    if (s.chunk_symbols < 1 || s.chunk_symbols > kMaxChunkSymbolsV2) return Status::BadHeader;
  }
  s.coder = Coder(coder);
  if (s.table_bytes == 0 || s.table_bytes > kMaxTableBytes) return Status::BadHeader;
  if (len < table_offset_of(s.ndim)) return Status::Truncated;
  for (int d = 0; d < s.ndim; ++d) s.shape[d] = get_le(blob + kFixedHeaderBytes + 8 * d, 8);
  s.n_chunks = s.n_symbols / s.chunk_symbols + (s.n_symbols % s.chunk_symbols != 0);
  // Sizes compared in a way that cannot overflow: every term is checked against len first.
  s.table_offset = table_offset_of(s.ndim);
  s.index_offset = s.table_offset + padded4(s.table_bytes);
  if (s.index_offset > len) return Status::Truncated;
  if (s.n_chunks > (len - s.index_offset) / 2) return Status::Truncated;  // >= 2 index bytes a chunk
  const uint64_t idx = index_bytes(s.version, s.n_chunks);
  if (idx > len - s.index_offset) return Status::Truncated;
  s.sizes_offset = s.index_offset + (s.version == 1 ? 0 : 4 * size_t(super_count(s.n_chunks)));
  s.payload_offset = s.index_offset + size_t(idx);
  if (s.payload_words > (len - s.payload_offset) / 4) return Status::Truncated;
  s.total_bytes = s.payload_offset + 4 * size_t(s.payload_words);
  if (s.total_bytes != len) return len < s.total_bytes ? Status::Truncated : Status::TrailingBytes;
  if (get_le(blob + header_bytes(s.ndim), 8) != meta_hash(blob, s)) return Status::HeaderChecksum;
  // Shape product must equal n_symbols; overflow-checked.
  uint64_t prod = 1;
  for (int d = 0; d < s.ndim; ++d) {
    if (s.shape[d] != 0 && prod > UINT64_MAX / s.shape[d]) return Status::BadHeader;
    prod *= s.shape[d];
  }
  if (prod != s.n_symbols) return Status::BadHeader;
  for (size_t p = s.table_offset + s.table_bytes; p < s.index_offset; ++p)
    if (blob[p] != 0) return Status::BadHeader;
  const Status st = check_index(blob, s);
  if (st != Status::Ok) return st;
  *info = s;
  return Status::Ok;
}

// The most words any chunk of a v2 stream holds (0 for v1, whose index holds offsets): the size of
// the GPU kernels' per-warp copy of a chunk (windowed_gemv.h: stream_stage_words).
inline uint32_t max_chunk_words(const uint8_t* blob, const StreamInfo& s) {
  uint32_t most = 0;
  if (s.version == 2)
    for (uint64_t c = 0; c < s.n_chunks; ++c) most = std::max<uint32_t>(most, uint32_t(chunk_size_v2(blob, s, c)));
  return most;
}

// Word offset of every chunk inside the payload, plus the payload's end (n_chunks + 1
// values), for a stream that passed parse_header.
inline std::vector<uint64_t> chunk_offsets(const uint8_t* blob, const StreamInfo& s) {
  std::vector<uint64_t> off(s.n_chunks + 1);
  for (uint64_t c = 0; c < s.n_chunks; ++c)
    off[c + 1] = s.version == 1 ? (c + 1 < s.n_chunks ? get_le(blob + s.index_offset + 4 * (c + 1), 4) : s.payload_words)
                                : off[c] + chunk_size_v2(blob, s, c);
  return off;
}

}  // namespace pycodec
