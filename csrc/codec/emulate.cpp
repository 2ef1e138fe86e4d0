// pycodec codec core: entry points of the CPU emulation of the windowed GEMV kernels.
#include "emulate.h"

#include <cstring>
#include <vector>

#include "codec.h"
#include "format.h"
#include "huffman.h"
#include "windowed_emulate.h"

namespace pycodec {
namespace {

// A validated v2 stream, word-aligned, with its multi-symbol tables.
struct HostStream {
  std::vector<uint32_t> aligned;
  StreamInfo info;
  windowed::MultiTable table;
  alignas(16) uint8_t count[windowed::kTableSize];  // passed where launches take the 16-byte aligned table
  windowed::StreamView view;

  Status open(const uint8_t* blob, size_t len) {
    aligned.assign((len + 3) / 4 + windowed::kSlackWords, 0);  // the kernels' readable slack
    if (len) std::memcpy(aligned.data(), blob, len);  // an empty blob may come as a null pointer
    const uint8_t* b = reinterpret_cast<const uint8_t*>(aligned.data());
    Status st = parse_header(b, len, &info);
    if (st != Status::Ok) return st;
    if (info.version != 2) return Status::BadArgument;
    huffman::Code code;
    if ((st = huffman::read_table(b + info.table_offset, info.table_bytes, code)) != Status::Ok) return st;
    if (code.constant && info.lanes != 1) return Status::BadTable;
    windowed::build_multi_table(code, table);
    windowed::build_count_table(code, count);
    view.super = reinterpret_cast<const uint32_t*>(b + info.index_offset);
    view.sizes = reinterpret_cast<const uint16_t*>(b + info.sizes_offset);
    view.payload = reinterpret_cast<const uint32_t*>(b + info.payload_offset);
    view.payload_words = info.payload_words;
    view.n_symbols = info.n_symbols;
    view.chunk_symbols = info.chunk_symbols;
    view.n_chunks = info.n_chunks;
    view.lanes = info.lanes;
    view.constant_code = code.constant;
    view.max_chunk_words = max_chunk_words(b, info);
    return Status::Ok;
  }
};

// The emulated GEMV over a view, once the arguments passed windowed::check_affine / check_split.
template <template <int, class> class Sink, class Args, class Entry>
Status run(const windowed::StreamView& s, const uint8_t* count, const Entry* table, const uint8_t* lengths,
           const Args& a, uint32_t batch) {
  return windowed::with_batch(batch, Status::BadArgument, [&](auto b) {
    return windowed::emulate_gemv<decltype(b)::value, Sink>(s, count, table, lengths, a) ? Status::Ok
                                                                                          : Status::CorruptPayload;
  });
}

// The staged lossless GEMV (windowed_gemv.h: split_gemv_stages) over a view, once the arguments
// passed windowed::check_split.
Status run_staged_split(const windowed::StreamView& s, const uint8_t* count, const uint32_t* multi,
                        const uint64_t* values, const uint8_t* lengths, const windowed::SplitArgs& a, uint32_t batch) {
  return windowed::with_batch(batch, Status::BadArgument, [&](auto b) {
    return windowed::emulate_staged_split_gemv<decltype(b)::value>(s, count, multi, values, lengths, a)
               ? Status::Ok
               : Status::CorruptPayload;
  });
}

// The staged affine GEMV (windowed_gemv.h: affine_gemv_stages) over a view, once the arguments
// passed windowed::check_affine.
Status run_staged_affine(const windowed::StreamView& s, const uint8_t* count, const uint32_t* multi,
                         const uint8_t* lengths, const windowed::AffineArgs& a, uint32_t batch) {
  if (batch != 1) return Status::BadArgument;  // affine_gemv_stages: batch 1 only, as the kernel's one instance
  return windowed::emulate_staged_affine_gemv<1>(s, count, multi, lengths, a) ? Status::Ok : Status::CorruptPayload;
}

}  // namespace

Status emulate_gemv_affine(const uint8_t* blob, size_t len, const windowed::AffineArgs& a, uint32_t batch,
                           bool staged) {
  HostStream hs;
  Status st = hs.open(blob, len);
  if (st != Status::Ok) return st;
  uint16_t value[256];
  windowed::affine_values(a.zero_in_values, value);
  std::vector<uint64_t> value_table(windowed::kTableSize);
  build_value_table(hs.table.entry, hs.table.length, value, value_table.data());
  if ((st = windowed::check_affine(hs.view, value_table.data(), hs.count, a, batch)) != Status::Ok) return st;
  if (staged && windowed::affine_gemv_stages(a, hs.view.chunk_symbols, batch))
    return run_staged_affine(hs.view, hs.count, hs.table.entry, hs.table.length, a, batch);
  return run<windowed::AffineSink>(hs.view, hs.count, value_table.data(), hs.table.length, a, batch);
}

Status emulate_decode(const uint8_t* blob, size_t len, uint8_t* out, uint64_t out_len) {
  HostStream hs;
  const Status st = hs.open(blob, len);
  if (st != Status::Ok) return st;
  if (out_len != hs.info.n_symbols) return Status::OutputSize;
  bool ok = true;
  for (uint64_t c = 0; c < hs.view.n_chunks; ++c)
    ok &= windowed::emulate_decode_chunk(hs.view, c, hs.count, hs.table.entry, hs.table.length, out);
  return ok ? Status::Ok : Status::CorruptPayload;
}

Status emulate_gemv_split(const uint8_t* blob, size_t len, const uint32_t* values, uint32_t n_values,
                          const windowed::SplitArgs& a, uint32_t batch, bool staged) {
  HostStream hs;
  Status st = hs.open(blob, len);
  if (st != Status::Ok) return st;
  uint16_t value[256];
  if ((st = split_values(values, n_values, a.low, value)) != Status::Ok) return st;
  for (uint32_t v = 0; v < windowed::kTableSize; ++v)
    for (uint32_t i = 0; i < windowed::entry_count(hs.table.entry[v]); ++i)
      if (windowed::entry_symbol(hs.table.entry[v], int(i)) >= n_values) return Status::BadTable;
  std::vector<uint64_t> value_table(windowed::kTableSize);
  build_value_table(hs.table.entry, hs.table.length, value, value_table.data());
  if ((st = windowed::check_split(hs.view, value_table.data(), hs.count, a, batch)) != Status::Ok) return st;
  if (staged && windowed::split_gemv_stages(a.k, hs.view.chunk_symbols))
    return run_staged_split(hs.view, hs.count, hs.table.entry, value_table.data(), hs.table.length, a, batch);
  return run<windowed::SplitSink>(hs.view, hs.count, value_table.data(), hs.table.length, a, batch);
}

Status split_values(const uint32_t* values, uint32_t n_values, uint32_t low, uint16_t value[256]) {
  if (n_values == 0 || n_values > 256 || low > 15) return Status::BadArgument;
  for (uint32_t s = 0; s < 256; ++s) value[s] = 0;
  for (uint32_t s = 0; s < n_values; ++s) {
    if ((uint64_t(values[s]) << low) > 0xFFFFu) return Status::BadArgument;
    value[s] = uint16_t(values[s] << low);
  }
  return Status::Ok;
}

void build_value_table(const uint32_t* entries, const uint8_t* lengths, const uint16_t value[256], uint64_t* out) {
  for (uint32_t v = 0; v < windowed::kTableSize; ++v) out[v] = windowed::make_value_entry(entries[v], value, lengths);
}

namespace host {
namespace {

const uint8_t* aux_of(const uint32_t* table) { return reinterpret_cast<const uint8_t*>(table + windowed::kTableSize); }

}  // namespace

Status windowed_decode(const windowed::StreamView& s, const uint32_t* table, uint8_t* out, uint32_t* status) {
  const Status st = windowed::check_decode(s, table, out, status);
  if (st != Status::Ok) return st;
  if (s.n_chunks && !windowed::tables_ok(table, aux_of(table) + 256)) return Status::BadTable;
  bool ok = true;
  for (uint64_t c = 0; c < s.n_chunks; ++c)
    ok &= windowed::emulate_decode_chunk(s, c, aux_of(table) + 256, table, aux_of(table), out);
  if (!ok) *status |= 1u;
  return Status::Ok;
}

Status windowed_decode_split(const windowed::StreamView& s, const uint32_t* table, const windowed::SplitDecodeArgs& a,
                             uint32_t* status) {
  const Status st = windowed::check_split_decode(s, table, a, status);
  if (st != Status::Ok) return st;
  if (s.n_chunks && !windowed::tables_ok(table, aux_of(table) + 256)) return Status::BadTable;
  std::vector<uint8_t> stage;
  bool ok = true;
  const bool bytes = s.n_chunks && windowed::split_decode_bytes(a, a.value);
  for (uint64_t c = 0; c < s.n_chunks; ++c)
    ok &= windowed::emulate_split_decode_chunk(s, c, aux_of(table) + 256, table, aux_of(table), a, a.value, bytes,
                                               stage);
  if (!ok) *status |= 1u;
  return Status::Ok;
}

Status windowed_gemv_affine(const windowed::StreamView& s, const uint64_t* value_table, const uint32_t* table,
                            const windowed::AffineArgs& a, uint32_t batch, bool staged) {
  const Status st = windowed::check_affine(s, value_table, table, a, batch);
  if (st != Status::Ok) return st;
  if (s.n_chunks && !windowed::tables_ok(value_table, aux_of(table) + 256)) return Status::BadTable;
  if (staged && windowed::affine_gemv_stages(a, s.chunk_symbols, batch)) {
    if (s.n_chunks && !windowed::tables_ok(table, aux_of(table) + 256)) return Status::BadTable;
    return run_staged_affine(s, aux_of(table) + 256, table, aux_of(table), a, batch);
  }
  return run<windowed::AffineSink>(s, aux_of(table) + 256, value_table, aux_of(table), a, batch);
}

Status windowed_gemv_split(const windowed::StreamView& s, const uint64_t* value_table, const uint32_t* table,
                           const windowed::SplitArgs& a, uint32_t batch, bool staged) {
  const Status st = windowed::check_split(s, value_table, table, a, batch);
  if (st != Status::Ok) return st;
  if (s.n_chunks && !windowed::tables_ok(value_table, aux_of(table) + 256)) return Status::BadTable;
  if (staged && windowed::split_gemv_stages(a.k, s.chunk_symbols)) {
    if (s.n_chunks && !windowed::tables_ok(table, aux_of(table) + 256)) return Status::BadTable;
    return run_staged_split(s, aux_of(table) + 256, table, value_table, aux_of(table), a, batch);
  }
  return run<windowed::SplitSink>(s, aux_of(table) + 256, value_table, aux_of(table), a, batch);
}

Status split_merge(const uint8_t* symbols, uint64_t n, const uint16_t* values, const uint32_t* raw, uint64_t raw_words,
                   uint32_t low, uint16_t* out) {
  const Status st = windowed::check_merge(symbols, n, values, raw, raw_words, low, out);
  if (st != Status::Ok) return st;
  for (uint64_t i = 0; i < n; ++i) {
    uint32_t field = 0;
    if (low) {
      const uint64_t bit = i * low, w = bit >> 5;
      const uint64_t hi = w < raw_words ? raw[w] : 0, lo = w + 1 < raw_words ? raw[w + 1] : 0;
      field = uint32_t((((hi << 32) | lo) << (bit & 31)) >> (64 - low));
    }
    out[i] = uint16_t(values[symbols[i]] | field);
  }
  return Status::Ok;
}

Status windowed_tile_affine(const windowed::StreamView& s, const uint32_t* table, const windowed::TileArgs& a,
                            uint32_t batch) {
  const Status st = windowed::check_tile(s, table, a, batch);
  if (st != Status::Ok) return st;
  if (s.n_chunks && !windowed::tables_ok(table, aux_of(table) + 256)) return Status::BadTable;
  const uint32_t tiles = windowed::tile_batch_tiles(batch);
  bool ok = true;
  for (uint64_t t = 0; t < (uint64_t(a.n_rows) + windowed::kTileRows - 1) / windowed::kTileRows; ++t)
    ok &= a.x_half ? windowed::emulate_tile_block<true>(s, t, aux_of(table) + 256, table, aux_of(table), a, tiles)
                   : windowed::emulate_tile_block<false>(s, t, aux_of(table) + 256, table, aux_of(table), a, tiles);
  return ok ? Status::Ok : Status::CorruptPayload;
}

Status fixed12_decode(const uint32_t* codes, const uint32_t* low, uint64_t pieces, uint32_t base4, uint16_t* out) {
  const Status st = fixed12::check_decode(codes, low, pieces, base4, out);
  if (st != Status::Ok) return st;
  for (uint64_t p = 0; p < pieces; ++p) {
    uint32_t lo, hi, pair[4];
    fixed12::load_low8(low, p, lo, hi);
    fixed12::piece_pairs(codes[p], lo, hi, base4, pair);
    std::memcpy(out + fixed12::kPieceWeights * p, pair, sizeof pair);
  }
  return Status::Ok;
}

namespace {
template <int B, class X>
Status run_fixed12_gemv(const fixed12::GemvArgs& a) {
  float lanes[fixed12::kWarpLanes][B];
  for (uint32_t row = 0; row < a.n_rows; ++row) {
    for (uint32_t lane = 0; lane < fixed12::kWarpLanes; ++lane) {
      for (int b = 0; b < B; ++b) lanes[lane][b] = 0.f;
      fixed12::gemv_lane<B, X>(a, row, lane, lanes[lane]);
      fixed12::escape_lane<B, X>(a, row, lane, lanes[lane]);
    }
    for (int b = 0; b < B; ++b) {  // the kernel's xor butterfly (__shfl_xor_sync), lane by lane
      float v[fixed12::kWarpLanes];
      for (uint32_t lane = 0; lane < fixed12::kWarpLanes; ++lane) v[lane] = lanes[lane][b];
      for (uint32_t off = fixed12::kWarpLanes / 2; off; off >>= 1) {
        float next[fixed12::kWarpLanes];
        for (uint32_t lane = 0; lane < fixed12::kWarpLanes; ++lane) next[lane] = v[lane] + v[lane ^ off];
        std::memcpy(v, next, sizeof v);
      }
      if (uint32_t(b) < a.batch) fixed12::store_output<X>(a, row, b, v[0]);
    }
  }
  return Status::Ok;
}

// The tensor-core kernel block by block: every warp's lanes' fragments, the MMA in the PTX fragment
// layout (windowed_emulate.h), the warps' sums in shared-memory order, then each thread's output.
Status run_fixed12_tile(const fixed12::GemvArgs& a, uint32_t n_tiles) {
  using namespace fixed12;
  std::vector<float> partial(kTilePartials);
  for (uint32_t r0 = 0; r0 < a.n_rows; r0 += kTileRows) {
    for (uint32_t warp = 0; warp < kTileWarps; ++warp) {
      float c[2][32][4] = {};
      const uint32_t whole = a.k / kTileCols;
      for (uint32_t blk = tile_block_begin(a, warp); blk < tile_block_begin(a, warp + 1); ++blk) {
        uint32_t fa[32][4][4], fb[2][32][4][2];
        for (uint32_t lane = 0; lane < 32; ++lane) {
          TileLane l = tile_lane(a, r0, lane);
          tile_advance(l, blk);
          if (blk < whole) {
            tile_a_fragments<false>(l, 0, a.base4, fa[lane]);
            for (uint32_t j = 0; j < n_tiles; ++j) tile_b_fragments<false>(l, j, 0, fb[j][lane]);
          } else {
            const int32_t left = tile_tail_pieces(a, whole, lane);
            tile_a_fragments<true>(l, left, a.base4, fa[lane]);
            for (uint32_t j = 0; j < n_tiles; ++j) tile_b_fragments<true>(l, j, left, fb[j][lane]);
          }
        }
        for (uint32_t j = 0; j < n_tiles; ++j)
          for (int s = 0; s < 4; ++s) {
            uint32_t am[32][4], bm[32][2];
            for (uint32_t lane = 0; lane < 32; ++lane) {
              std::memcpy(am[lane], fa[lane][s], sizeof am[lane]);
              std::memcpy(bm[lane], fb[j][lane][s], sizeof bm[lane]);
            }
            windowed::mma_m16n8k16<false>(am, bm, c[j]);
          }
      }
      for (uint32_t j = 0; j < n_tiles; ++j)
        for (uint32_t lane = 0; lane < 32; ++lane)
          for (int i = 0; i < 4; ++i) partial[tile_partial_slot(warp, j, lane, i)] = c[j][lane][i];
    }
    for (uint32_t tid = 0; tid < kTileWarps * kWarpLanes; ++tid) tile_output<XBf16>(a, r0, tid, partial.data());
  }
  return Status::Ok;
}

template <int B>
Status run_fixed12_gemv_of(const fixed12::GemvArgs& a) {
  return a.x_bf16 ? run_fixed12_gemv<B, fixed12::XBf16>(a) : run_fixed12_gemv<B, fixed12::XFloat>(a);
}
}  // namespace

Status fixed12_gemv(const fixed12::GemvArgs& a, uint32_t batch_pad, bool tensor_cores) {
  const Status st = fixed12::check_gemv(a, batch_pad);
  if (st != Status::Ok) return st;
  if (!fixed12::escapes_ok(a)) return Status::BadArgument;
  if (fixed12::tile_route(a, tensor_cores)) return run_fixed12_tile(a, a.batch <= 8 ? 1 : 2);
  switch (batch_pad) {
    case 1: return run_fixed12_gemv_of<1>(a);
    case 2: return run_fixed12_gemv_of<2>(a);
    case 3: return run_fixed12_gemv_of<3>(a);
    case 4: return run_fixed12_gemv_of<4>(a);
    case 5: return run_fixed12_gemv_of<5>(a);
    case 6: return run_fixed12_gemv_of<6>(a);
    case 7: return run_fixed12_gemv_of<7>(a);
    case 8: return run_fixed12_gemv_of<8>(a);
    case 16: return run_fixed12_gemv_of<16>(a);
    default: return Status::BadArgument;
  }
}

}  // namespace host
}  // namespace pycodec
