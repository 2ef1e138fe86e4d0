// pycodec codec core: a CPU emulation of the windowed GEMV kernels (csrc/cuda/windowed_cuda.cu).
//
// The kernels' lane code lives in windowed_gemv.h; this header replaces only their warp glue:
// pass 1 (window counts) for every lane, the prefix sum a warp takes with shuffles, pass 2 per
// lane into its sink, and the butterfly reduction of the per-warp slots. Lanes run one after
// another; nothing they do depends on another lane except through those steps, so the
// emulation computes what the GPU computes, bit for bit (fmaf is IEEE on both). Its buffers
// need the same kSlackWords of readable slack as the kernels'.
// Host only: tests and the reference for GPU runs.
#pragma once

#include <type_traits>
#include <vector>

#include "windowed.h"
#include "windowed_gemv.h"
#include "windowed_tile.h"

namespace pycodec {
namespace windowed {

// The warp glue of one chunk: every lane's range (from the lane starts, or pass 1 for every
// lane and the scan, a running sum), then lane(l, reader at its window, its range) for each of
// the stream's lanes. Reader: StageReader reads a copy of the chunk's words, as the decode and
// GEMV kernels' stream stage does (their default: stream_shared), FastReader the words in place
// (the tile kernel). Returns false if a lane overran its window (corrupt chunk).
template <class Reader = StageReader, class Entry, class LaneFn>
inline bool emulate_chunk_lanes(const StreamView& s, const ChunkView& v, const uint8_t* count, const Entry* table,
                                const uint8_t* lengths, LaneFn lane) {
  std::vector<uint32_t> stage;
  if constexpr (std::is_same<Reader, StageReader>::value)
    stage.assign(v.words, v.words + chunk_stage_words(v, stream_stage_words(s)));
  uint32_t counts[kMaxLanes] = {0};
  const uint8_t* starts = s.lane_starts ? s.lane_starts + v.index * s.lanes : nullptr;
  bool escaped = false;  // the kernel's vote: a chunk whose bytes escape is counted
  for (uint32_t l = 0; starts && l < s.lanes; ++l) escaped |= start_byte_escapes(starts[l], l, s.lanes);
  if (escaped) starts = nullptr;
  if (!starts)
    for (uint32_t l = 0; l < s.lanes; ++l) counts[l] = lane_window_count(v, s, count, table, lengths, l);
  const uint64_t window = lane_window_bits(v.n_words, s.lanes);
  bool ok = true;
  uint32_t before = 0;
  for (uint32_t l = 0; l < s.lanes; ++l) {
    LaneRange r;
    if (starts) {  // the kernel's prefix sum of the bytes' counts
      const uint32_t n = lane_count_from_start_byte(starts[l], l, s.lanes, v.m);
      r = lane_range_from_starts(v, s, count, table, lengths, l, before, before + n);
      before += n;
    } else {
      const uint32_t through = before + (l + 1 < s.lanes ? counts[l] : 0);
      r = lane_range(l, s.lanes, v.m, counts[l], before, through);
      before = through;
    }
    ok &= !r.overrun;
    Reader reader;
    if constexpr (std::is_same<Reader, StageReader>::value)
      reader.init(stage.data(), uint32_t(stage.size()), l * window);
    else
      reader.init(v.words, 0, l * window);
    lane(l, reader, r);
  }
  return ok;
}

// A chunk's symbols decoded into a stage as the staged kernels do (decode_chunk_symbols): zeros
// where a lane refused to decode. Returns false if a lane overran its window.
// kWordStores (the kernels' default, _C.stage_word_stores): each lane's WordRunSink, finished
// after every lane has decoded (the kernels' __syncwarp); else RunByteSink. The same stage either way.
template <bool kWordStores = true>
inline bool emulate_stage_chunk(const StreamView& s, const ChunkView& v, const uint8_t* count, const uint32_t* table,
                                const uint8_t* lengths, std::vector<uint8_t>& stage) {
  stage.assign(v.m, 0);  // WordRunSink stores only words inside [0, m)
  WordRunSink sinks[kMaxLanes];
  const bool ok = emulate_chunk_lanes(s, v, count, table, lengths, [&](uint32_t l, StageReader& reader, LaneRange r) {
    if constexpr (kWordStores) {
      sinks[l].init(stage.data(), r.start);
      decode_count(table, lengths, reader, r.count, sinks[l]);
    } else {
      RunByteSink sink{stage.data() + r.start};
      decode_count(table, lengths, reader, r.count, sink);
    }
  });
  if constexpr (kWordStores)
    for (uint32_t l = 0; l < s.lanes; ++l) sinks[l].finish();
  return ok;
}

// A warp's slots[row][b][lane] summed over the lanes by the kernels' butterfly, into y with the
// row's escapes.
template <int B, class Args>
inline void emulate_warp_sums(const Args& a, const float* slots, uint32_t rows, uint32_t first_row) {
  for (uint32_t row = 0; row < rows; ++row)
    for (int b = 0; b < B; ++b) {
      float lane_values[32];
      for (int l = 0; l < 32; ++l) lane_values[l] = slots[(row * B + b) * 32 + l];
      a.y[size_t(b) * a.n_rows + first_row + row] = with_escapes<B>(a, first_row + row, b, butterfly_sum(lane_values));
    }
}

// The warp of one chunk, lane after lane: pass 1, the scan (a running sum), pass 2 into sinks,
// the butterfly over the slots. Returns false if a lane overran its window (corrupt chunk).
template <int B, template <int, class> class Sink, class Args, class Entry>
inline bool emulate_chunk(const StreamView& s, uint64_t c, const uint8_t* count, const Entry* table,
                          const uint8_t* lengths, const Args& a, std::vector<float>& slots) {
  const ChunkView v = chunk_view(s, c);
  const uint32_t rows = v.m / a.k;
  slots.assign(size_t(rows) * B * 32, 0.f);
  const bool ok = emulate_chunk_lanes(s, v, count, table, lengths, [&](uint32_t l, StageReader& reader, LaneRange r) {
    Sink<B, XGlobal> sink;
    sink.begin(a, slots.data(), l, v, r.start);
    gemv_lane(table, lengths, reader, r.count, sink);
  });
  emulate_warp_sums<B>(a, slots.data(), rows, uint32_t(v.first / a.k));
  return ok;
}

// The staged lossless GEMV's warp for one chunk: symbols into a stage (zeros where a lane
// refused, as the kernel clears it), every lane's pieces (staged_split_lane), the butterfly.
template <int B>
inline bool emulate_staged_split_chunk(const StreamView& s, uint64_t c, const uint8_t* count, const uint32_t* table,
                                       const uint8_t* lengths, const SplitArgs& a, const uint16_t* value, bool bytes,
                                       std::vector<uint8_t>& stage, std::vector<float>& slots) {
  const ChunkView v = chunk_view(s, c);
  const uint32_t rows = v.m / a.k;
  const bool ok = emulate_stage_chunk(s, v, count, table, lengths, stage);
  slots.assign(size_t(rows) * B * 32, 0.f);
  const bool vec = (reinterpret_cast<uintptr_t>(a.x) & 15u) == 0;
  bytes = staged_lane_bytes(bytes, v.first);
  for (uint32_t lane = 0; lane < 32; ++lane) {
    if (bytes && vec)
      staged_split_lane<B, XGlobal, true, true>(a, value, stage.data(), a.x, v.first, rows, slots.data(), lane);
    else if (bytes)
      staged_split_lane<B, XGlobal, false, true>(a, value, stage.data(), a.x, v.first, rows, slots.data(), lane);
    else if (vec)
      staged_split_lane<B, XGlobal, true, false>(a, value, stage.data(), a.x, v.first, rows, slots.data(), lane);
    else
      staged_split_lane<B, XGlobal, false, false>(a, value, stage.data(), a.x, v.first, rows, slots.data(), lane);
  }
  emulate_warp_sums<B>(a, slots.data(), rows, uint32_t(v.first / a.k));
  return ok;
}

// The decode kernel's warp for one chunk: symbols into out (the tensor's first symbol), through
// the multi-symbol table. Returns false if a lane overran its window.
inline bool emulate_decode_chunk(const StreamView& s, uint64_t c, const uint8_t* count, const uint32_t* table,
                                 const uint8_t* lengths, uint8_t* out) {
  const ChunkView v = chunk_view(s, c);
  return emulate_chunk_lanes(s, v, count, table, lengths, [&](uint32_t, StageReader& reader, LaneRange r) {
    RunByteSink sink{out + v.first + r.start};
    decode_count(table, lengths, reader, r.count, sink);
  });
}

// The split decode kernel's warp for one chunk: symbols into a stage through the multi-symbol
// table (zeros where a lane refused to decode, as the kernel clears a stage when a lane
// overran), then every lane's share of the output (write_split_chunk; bytes as the kernel votes:
// split_decode_bytes). Returns false if a lane overran its window.
inline bool emulate_split_decode_chunk(const StreamView& s, uint64_t c, const uint8_t* count, const uint32_t* table,
                                       const uint8_t* lengths, const SplitDecodeArgs& a, const uint16_t* value,
                                       bool bytes, std::vector<uint8_t>& stage) {
  const ChunkView v = chunk_view(s, c);
  const bool ok = emulate_stage_chunk(s, v, count, table, lengths, stage);
  for (uint32_t lane = 0; lane < 32; ++lane) write_split_chunk(a, value, stage.data(), v.first, v.m, lane, bytes);
  return ok;
}


// mma.sync.m16n8k16 with fp32 accumulators as the PTX ISA lays out its fragments (a[lane][4]:
// bf16x2 or f16x2, b[lane][2], c[lane][4]); products are added in k order with fmaf, which a
// tensor core need not match bit for bit: callers compare within a tolerance.
template <bool kHalf>
inline void mma_m16n8k16(const uint32_t a[32][4], const uint32_t b[32][2], float c[32][4]) {
  auto value = [](uint32_t bits16) {
    return kHalf ? half_to_float(uint16_t(bits16)) : bits_float(bits16 << 16);
  };
  float A[16][16], Bm[16][8];
  for (uint32_t lane = 0; lane < 32; ++lane) {
    const uint32_t g = lane / 4, t = lane % 4;
    for (int h = 0; h < 2; ++h) {  // h: the register's low / high element
      A[g][2 * t + h] = value((a[lane][0] >> (16 * h)) & 0xFFFFu);
      A[g + 8][2 * t + h] = value((a[lane][1] >> (16 * h)) & 0xFFFFu);
      A[g][2 * t + 8 + h] = value((a[lane][2] >> (16 * h)) & 0xFFFFu);
      A[g + 8][2 * t + 8 + h] = value((a[lane][3] >> (16 * h)) & 0xFFFFu);
      Bm[2 * t + h][g] = value((b[lane][0] >> (16 * h)) & 0xFFFFu);
      Bm[2 * t + 8 + h][g] = value((b[lane][1] >> (16 * h)) & 0xFFFFu);
    }
  }
  for (uint32_t lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      const uint32_t r = tile_c_row(lane, i), n = tile_c_col(0, lane, i);
      float d = c[lane][i];
      for (int k = 0; k < 16; ++k) d = fmaf(A[r][k], Bm[k][n], d);
      c[lane][i] = d;
    }
}

// One block of the tile kernel (row tile `tile`: rows 16 tile ..): phase 1 chunk by chunk,
// phase 2 warp by warp with every lane's fragments, phase 3 in split order. Returns false if a
// lane overran its window.
template <bool kHalf>
inline bool emulate_tile_block(const StreamView& s, uint64_t tile, const uint8_t* count, const uint32_t* table,
                               const uint8_t* lengths, const TileArgs& a, uint32_t batch_tiles) {
  const uint32_t stride = a.k + kTileRowPad, rows_per_chunk = s.chunk_symbols / a.k;
  const uint64_t row0 = tile * kTileRows;
  std::vector<uint8_t> symbols(size_t(kTileRows) * stride, 0);
  bool ok = true;
  for (uint32_t ci = 0; ci < kTileRows / rows_per_chunk; ++ci) {
    const uint64_t c = row0 / rows_per_chunk + ci;
    if (c >= s.n_chunks) break;
    const ChunkView v = chunk_view(s, c);
    ok &= emulate_chunk_lanes<FastReader>(s, v, count, table, lengths, [&](uint32_t, FastReader& reader, LaneRange r) {
      TileSink sink;
      sink.begin(symbols.data(), a.k, ci * rows_per_chunk, r.start);
      gemv_lane(table, lengths, reader, r.count, sink);
    });
  }
  std::vector<float> partial(size_t(tile_splits(batch_tiles)) * kTileRows * a.batch_pad, 0.f);
  for (uint32_t warp = 0; warp < kTileWarps; ++warp) {
    const TileWork w = tile_work(warp, batch_tiles, a.k);
    float p[kTileTilesPerWarp][32][4] = {}, acc[kTileTilesPerWarp][32][4] = {};
    uint32_t frag_a[32][4], frag_b[32][2];
    for (uint32_t k_begin = w.step_begin * 16; k_begin < w.step_end * 16;) {
      const uint32_t k_end = tile_segment_end(k_begin, w.step_end * 16, a.group_size);
      for (uint32_t k0 = k_begin; k0 < k_end; k0 += 16) {
        for (uint32_t lane = 0; lane < 32; ++lane)
          tile_a_fragment<kHalf>(symbols.data(), stride, k0, lane, a.zero_in_values, frag_a[lane]);
        for (uint32_t j = 0; j < w.tiles; ++j) {
          for (uint32_t lane = 0; lane < 32; ++lane)
            tile_b_fragment(a.x, a.k, k0, w.first_tile + j, lane, frag_b[lane]);
          mma_m16n8k16<kHalf>(frag_a, frag_b, p[j]);
        }
      }
      for (uint32_t j = 0; j < w.tiles; ++j)
        for (uint32_t lane = 0; lane < 32; ++lane)
          tile_fold(a, uint32_t(row0), k_begin / a.group_size, k_begin, k_end, w.first_tile + j, lane, p[j][lane],
                    acc[j][lane]);
      k_begin = k_end;
    }
    for (uint32_t j = 0; j < w.tiles; ++j)
      for (uint32_t lane = 0; lane < 32; ++lane)
        for (int i = 0; i < 4; ++i)
          partial[tile_partial_index(w.split, tile_c_row(lane, i), tile_c_col(w.first_tile + j, lane, i),
                                     a.batch_pad)] = acc[j][lane][i];
  }
  for (uint32_t r = 0; r < kTileRows; ++r) {
    const uint64_t row = row0 + r;
    if (row >= a.n_rows) break;
    for (uint32_t b = 0; b < a.batch_pad; ++b) {
      float sum = 0.f;
      for (uint32_t sp = 0; sp < tile_splits(batch_tiles); ++sp) sum += partial[tile_partial_index(sp, r, b, a.batch_pad)];
      a.y[size_t(b) * a.n_rows + row] = tile_with_escapes(a, uint32_t(row), b, sum);
    }
  }
  return ok;
}

// The staged lossless GEMV over a stream: `multi` the multi-symbol table, `values` its value
// entries (for each symbol's 16 bits, as the kernel builds them). Returns false if a lane overran.
template <int B>
inline bool emulate_staged_split_gemv(const StreamView& s, const uint8_t* count, const uint32_t* multi,
                                      const uint64_t* values, const uint8_t* lengths, const SplitArgs& a) {
  uint16_t value[256] = {0};
  bool bytes = a.low == 8;
  for (uint32_t i = 0; i < kTableSize; ++i) {
    split_value_of_entry(multi, values, i, value);
    bytes = bytes && entry_is_byte_split(multi, values, i);
  }
  std::vector<uint8_t> stage;
  std::vector<float> slots;
  bool ok = true;
  for (uint64_t c = 0; c < s.n_chunks; ++c)
    ok &= emulate_staged_split_chunk<B>(s, c, count, multi, lengths, a, value, bytes, stage, slots);
  return ok;
}

// The staged affine GEMV (affine_gemv_stages) over a stream: each chunk's symbols into a stage
// through the multi-symbol table, every lane's pieces (staged_affine_lane), the butterfly and escapes.
template <int B>
inline bool emulate_staged_affine_gemv(const StreamView& s, const uint8_t* count, const uint32_t* multi,
                                       const uint8_t* lengths, const AffineArgs& a) {
  std::vector<uint8_t> stage;
  std::vector<float> slots;
  bool ok = true;
  const bool vec = (reinterpret_cast<uintptr_t>(a.x) & 15u) == 0;
  for (uint64_t c = 0; c < s.n_chunks; ++c) {
    const ChunkView v = chunk_view(s, c);
    const uint32_t rows = v.m / a.k;
    ok &= emulate_stage_chunk(s, v, count, multi, lengths, stage);
    slots.assign(size_t(rows) * B * 32, 0.f);
    for (uint32_t lane = 0; lane < 32; ++lane) {
      if (vec)
        staged_affine_lane<B, XGlobal, true>(a, stage.data(), a.x, v.first, rows, slots.data(), lane);
      else
        staged_affine_lane<B, XGlobal, false>(a, stage.data(), a.x, v.first, rows, slots.data(), lane);
    }
    emulate_warp_sums<B>(a, slots.data(), rows, uint32_t(v.first / a.k));
  }
  return ok;
}

template <int B, template <int, class> class Sink, class Args, class Entry>
inline bool emulate_gemv(const StreamView& s, const uint8_t* count, const Entry* table, const uint8_t* lengths,
                         const Args& a) {
  std::vector<float> slots;
  bool ok = true;
  for (uint64_t c = 0; c < s.n_chunks; ++c) ok &= emulate_chunk<B, Sink>(s, c, count, table, lengths, a, slots);
  return ok;
}

}  // namespace windowed
}  // namespace pycodec
