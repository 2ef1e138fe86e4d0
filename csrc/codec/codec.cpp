// pycodec codec core: whole-stream encode / decode over independent chunks.
#include "codec.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <atomic>
#include <memory>
#include <thread>

#include "hash.h"
#include "huffman.h"
#include "rans.h"

namespace pycodec {
namespace {

int resolve_threads(int threads, uint64_t n_chunks) {
  if (threads <= 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
  return int(std::min<uint64_t>(uint64_t(threads), std::max<uint64_t>(1, n_chunks)));
}

// Runs fn(worker, chunk) for every chunk on `threads` threads (worker in [0, threads));
// returns the first failure seen.
template <class Fn>
Status for_each_chunk(uint64_t n_chunks, int threads, Fn fn) {
  std::atomic<uint64_t> next{0};
  std::atomic<int> failure{int(Status::Ok)};
  auto worker = [&](int id) {
    for (uint64_t c; (c = next.fetch_add(1)) < n_chunks;) {
      if (failure.load(std::memory_order_relaxed) != int(Status::Ok)) return;
      const Status st = fn(id, c);
      if (st != Status::Ok) {
        int expected = int(Status::Ok);
        failure.compare_exchange_strong(expected, int(st));
      }
    }
  };
  const int t = resolve_threads(threads, n_chunks);
  std::vector<std::thread> pool;
  for (int i = 1; i < t; ++i) pool.emplace_back(worker, i);
  worker(0);
  for (auto& th : pool) th.join();
  return Status(failure.load());
}

void count_symbols(const uint8_t* p, uint64_t n, uint64_t counts[256]) {
  // Four sub-histograms break the store-to-load dependency on runs of equal symbols.
  std::vector<uint64_t> sub(4 * 256, 0);
  uint64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    ++sub[p[i]];
    ++sub[256 + p[i + 1]];
    ++sub[512 + p[i + 2]];
    ++sub[768 + p[i + 3]];
  }
  for (; i < n; ++i) ++sub[p[i]];
  for (int s = 0; s < 256; ++s) counts[s] = sub[s] + sub[256 + s] + sub[512 + s] + sub[768 + s];
}

uint64_t combine_chunk_hashes(const std::vector<uint64_t>& h) {
  return hash64(reinterpret_cast<const uint8_t*>(h.data()), h.size() * sizeof(uint64_t));
}

// Decode tables for one stream, built once and shared read-only by all threads.
struct DecodeTables {
  Coder coder;
  std::unique_ptr<uint32_t[]> huffman;
  std::unique_ptr<uint32_t[]> rans;

  Status build(const uint8_t* blob, const StreamInfo& s) {
    coder = s.coder;
    const uint8_t* t = blob + s.table_offset;
    if (coder == Coder::Huffman) {
      huffman::Code code;
      const Status st = huffman::read_table(t, s.table_bytes, code);
      if (st != Status::Ok) return st;
      huffman.reset(new uint32_t[huffman::kTableSize]);
      huffman::build_decode_table(code, huffman.get());
    } else {
      rans::Model model;
      const Status st = rans::read_table(t, s.table_bytes, model);
      if (st != Status::Ok) return st;
      rans.reset(new uint32_t[rans::kProbScale]);
      rans::build_decode_table(model, rans.get());
    }
    return Status::Ok;
  }

  Status decode_chunk(const uint8_t* blob, const StreamInfo& s, uint64_t c, uint8_t* out) const {
    const uint64_t begin = chunk_begin(blob, s, c), end = chunk_end(blob, s, c);
    const uint32_t* words = reinterpret_cast<const uint32_t*>(blob + s.payload_offset) + begin;
    const uint32_t n = uint32_t(std::min<uint64_t>(s.chunk_symbols, s.n_symbols - c * s.chunk_symbols));
    return coder == Coder::Huffman ? huffman::decode_chunk(huffman.get(), words, end - begin, out, n)
                                   : rans::decode_chunk(rans.get(), words, end - begin, out, n);
  }
};

// The payload is read as uint32 words; a blob from Python (bytes) is only byte-aligned.
struct AlignedBlob {
  std::vector<uint32_t> copy;
  const uint8_t* data;
  AlignedBlob(const uint8_t* blob, size_t len) : data(blob) {
    if (reinterpret_cast<uintptr_t>(blob) % alignof(uint32_t) != 0) {
      copy.resize((len + 3) / 4);
      std::memcpy(copy.data(), blob, len);
      data = reinterpret_cast<const uint8_t*>(copy.data());
    }
  }
};

}  // namespace

Status encode(const uint8_t* symbols, const uint64_t* shape, int ndim, const EncodeOptions& opt,
              std::vector<uint8_t>* blob) {
  if (ndim < 0 || ndim > kMaxDims) return Status::BadArgument;
  if (opt.coder != Coder::Huffman && opt.coder != Coder::Rans) return Status::BadArgument;
  uint64_t n = 1;
  for (int d = 0; d < ndim; ++d) {
    if (shape[d] != 0 && n > UINT64_MAX / shape[d]) return Status::TooLarge;
    n *= shape[d];
  }
  const uint32_t chunk = opt.chunk_symbols ? opt.chunk_symbols
                         : opt.coder == Coder::Huffman ? kDefaultHuffmanChunk : kDefaultRansChunk;
  if (chunk < kChunkAlign || chunk > kMaxChunkSymbols || chunk % kChunkAlign) return Status::BadArgument;
  const uint64_t n_chunks = n / chunk + (n % chunk != 0);

  uint64_t counts[256];
  count_symbols(symbols, n, counts);
  std::vector<uint8_t> table;
  huffman::Code code;
  rans::Model model;
  if (opt.coder == Coder::Huffman) {
    const Status st = huffman::build_code(counts, code);
    if (st != Status::Ok) return st;
    huffman::write_table(code, table);
  } else {
    rans::normalize(counts, model);
    rans::write_table(model, table);
  }

  std::vector<std::vector<uint32_t>> chunk_words(n_chunks);
  std::vector<uint64_t> chunk_hash(n_chunks);
  for_each_chunk(n_chunks, opt.threads, [&](int, uint64_t c) {
    const uint8_t* p = symbols + c * chunk;
    const uint32_t m = uint32_t(std::min<uint64_t>(chunk, n - c * chunk));
    if (opt.coder == Coder::Huffman) huffman::encode_chunk(p, m, code, chunk_words[c]);
    else rans::encode_chunk(p, m, model, chunk_words[c]);
    chunk_hash[c] = hash64(p, m);
    return Status::Ok;
  });

  uint64_t payload_words = 0;
  for (const auto& w : chunk_words) payload_words += w.size();
  if (payload_words > UINT32_MAX) return Status::TooLarge;  // index entries are u32 word offsets

  StreamInfo s{};
  s.ndim = ndim;
  s.n_chunks = n_chunks;
  s.table_offset = header_bytes(ndim);
  s.index_offset = s.table_offset + padded4(table.size());
  s.payload_offset = s.index_offset + 4 * n_chunks;
  s.total_bytes = s.payload_offset + 4 * payload_words;

  std::vector<uint8_t>& out = *blob;
  out.assign(s.total_bytes, 0);
  uint8_t* h = out.data();
  std::memcpy(h, kMagic, 4);
  put_le(h + 4, kFormatVersion, 2);
  h[6] = uint8_t(opt.coder);
  h[7] = uint8_t(ndim);
  put_le(h + 8, n, 8);
  put_le(h + 16, chunk, 4);
  put_le(h + 20, table.size(), 4);
  put_le(h + 24, payload_words, 8);
  put_le(h + 32, combine_chunk_hashes(chunk_hash), 8);
  for (int d = 0; d < ndim; ++d) put_le(h + kFixedHeaderBytes + 8 * d, shape[d], 8);
  std::memcpy(h + s.table_offset, table.data(), table.size());
  uint64_t offset = 0;
  uint8_t* payload = h + s.payload_offset;
  for (uint64_t c = 0; c < n_chunks; ++c) {
    put_le(h + s.index_offset + 4 * c, offset, 4);
    std::memcpy(payload + 4 * offset, chunk_words[c].data(), 4 * chunk_words[c].size());
    offset += chunk_words[c].size();
  }
  put_le(h + kFixedHeaderBytes + 8 * ndim, meta_hash(h, s), 8);
  return Status::Ok;
}

Status decode(const uint8_t* blob_in, size_t len, uint8_t* out, uint64_t out_len, int threads) {
  const AlignedBlob aligned(blob_in, len);
  const uint8_t* blob = aligned.data;
  StreamInfo s;
  Status st = parse_header(blob, len, &s);
  if (st != Status::Ok) return st;
  if (out_len != s.n_symbols) return Status::OutputSize;
  DecodeTables tables;
  if ((st = tables.build(blob, s)) != Status::Ok) return st;
  std::vector<uint64_t> chunk_hash(s.n_chunks);
  st = for_each_chunk(s.n_chunks, threads, [&](int, uint64_t c) {
    uint8_t* o = out + c * s.chunk_symbols;
    const Status cs = tables.decode_chunk(blob, s, c, o);
    const uint32_t n = uint32_t(std::min<uint64_t>(s.chunk_symbols, s.n_symbols - c * s.chunk_symbols));
    chunk_hash[c] = hash64(o, n);
    return cs;
  });
  if (st != Status::Ok) return st;
  return combine_chunk_hashes(chunk_hash) == s.symbols_hash ? Status::Ok : Status::ChecksumMismatch;
}

static_assert(huffman::kTableSize == kDecodeTableEntries && rans::kProbScale == kDecodeTableEntries,
              "the GPU path uploads one 4096-entry table for either coder");

Status build_decode_table(const uint8_t* blob_in, size_t len, uint32_t table[kDecodeTableEntries]) {
  const AlignedBlob aligned(blob_in, len);
  StreamInfo s;
  Status st = parse_header(aligned.data, len, &s);
  if (st != Status::Ok) return st;
  DecodeTables tables;
  if ((st = tables.build(aligned.data, s)) != Status::Ok) return st;
  std::memcpy(table, s.coder == Coder::Huffman ? tables.huffman.get() : tables.rans.get(),
              kDecodeTableEntries * sizeof(uint32_t));
  return Status::Ok;
}

uint64_t side_bits(const uint8_t* blob, const StreamInfo& s) {
  (void)blob;
  uint64_t bytes = s.payload_offset;  // header, table, padding, index
  if (s.coder == Coder::Rans) bytes += uint64_t(s.n_chunks) * kLanes * sizeof(uint32_t);
  return 8 * bytes;
}

Status histogram(const uint8_t* blob_in, size_t len, uint64_t counts[256], int threads) {
  const AlignedBlob aligned(blob_in, len);
  const uint8_t* blob = aligned.data;
  StreamInfo s;
  Status st = parse_header(blob, len, &s);
  if (st != Status::Ok) return st;
  DecodeTables tables;
  if ((st = tables.build(blob, s)) != Status::Ok) return st;
  const int t = resolve_threads(threads, s.n_chunks);
  std::vector<std::vector<uint8_t>> scratch(t, std::vector<uint8_t>(s.chunk_symbols));
  std::vector<uint64_t> chunk_hash(s.n_chunks);
  std::vector<std::array<uint64_t, 256>> per_chunk(s.n_chunks);
  st = for_each_chunk(s.n_chunks, t, [&](int worker, uint64_t c) {
    uint8_t* o = scratch[worker].data();
    const uint32_t n = uint32_t(std::min<uint64_t>(s.chunk_symbols, s.n_symbols - c * s.chunk_symbols));
    const Status cs = tables.decode_chunk(blob, s, c, o);
    chunk_hash[c] = hash64(o, n);
    count_symbols(o, n, per_chunk[c].data());
    return cs;
  });
  if (st != Status::Ok) return st;
  if (combine_chunk_hashes(chunk_hash) != s.symbols_hash) return Status::ChecksumMismatch;
  for (int k = 0; k < 256; ++k) counts[k] = 0;
  for (const auto& h : per_chunk)
    for (int k = 0; k < 256; ++k) counts[k] += h[k];
  return Status::Ok;
}

}  // namespace pycodec
