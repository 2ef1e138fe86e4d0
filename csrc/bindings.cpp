// pycodec._C: the one place where C++ meets Python. Buffers in, buffers out; no torch.
// Every non-Ok Status becomes pycodec.CodecError (a ValueError) carrying the core's message.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "codec/codec.h"
#include "codec/dequant.h"
#include "codec/emulate.h"
#include "codec/format.h"
#include "codec/hash.h"
#include "codec/huffman.h"
#include "codec/quantize.h"
#include "codec/rans.h"
#include "codec/split.h"
#include "cuda/decode_cuda.h"

namespace py = pybind11;
using namespace pycodec;

namespace {

struct CodecException : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void check(Status st, const char* where) {
  if (st == Status::CudaError)
    throw CodecException(std::string(where) + ": " + status_message(st) + ": " + cuda::last_error_string());
  if (st != Status::Ok) throw CodecException(std::string(where) + ": " + status_message(st));
}

windowed::StreamView stream_view(const py::tuple& t) {
  if (t.size() != 11) throw CodecException("stream view: expected 11 fields");
  windowed::StreamView v;
  v.super = reinterpret_cast<const uint32_t*>(t[0].cast<uintptr_t>());
  v.sizes = reinterpret_cast<const uint16_t*>(t[1].cast<uintptr_t>());
  v.payload = reinterpret_cast<const uint32_t*>(t[2].cast<uintptr_t>());
  v.payload_words = t[3].cast<uint64_t>();
  v.n_symbols = t[4].cast<uint64_t>();
  v.chunk_symbols = t[5].cast<uint32_t>();
  v.n_chunks = t[6].cast<uint64_t>();
  v.lanes = t[7].cast<uint32_t>();
  v.constant_code = t[8].cast<bool>();
  v.lane_starts = reinterpret_cast<const uint8_t*>(t[9].cast<uintptr_t>());  // 0: none, pass 1 counts
  v.max_chunk_words = t[10].cast<uint32_t>();
  return v;
}

Coder parse_coder(const std::string& name) {
  if (name == "huffman") return Coder::Huffman;
  if (name == "rans") return Coder::Rans;
  throw CodecException("unknown coder '" + name + "' (expected 'huffman' or 'rans')");
}

const char* coder_name(Coder c) { return c == Coder::Huffman ? "huffman" : "rans"; }

// A buffer of one dimension or a C-contiguous array of any shape.
bool is_contiguous(const py::buffer_info& info) {
  py::ssize_t expect = info.itemsize;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[d] != 1 && info.strides[d] != expect) return false;
    expect *= info.shape[d];
  }
  return true;
}

bool is_float32(const py::buffer_info& info) {
  return info.itemsize == 4 && info.format == py::format_descriptor<float>::format();
}

bool is_contiguous_float32(const py::buffer_info& info) { return is_float32(info) && is_contiguous(info); }

// A bytes object of n bytes for C++ to fill before Python sees it (bytes are immutable only
// once shared): large outputs are written once, not built in a vector and copied.
py::bytes uninitialized_bytes(uint64_t n) {
  PyObject* o = PyBytes_FromStringAndSize(nullptr, py::ssize_t(n));
  if (!o) throw py::error_already_set();
  return py::reinterpret_steal<py::bytes>(o);
}

// encode()'s options from its Python arguments, after checking the shape against the buffer.
EncodeOptions encode_options(const py::buffer_info& in, const std::vector<uint64_t>& shape, const std::string& coder,
                             uint32_t chunk_symbols, int threads, uint32_t lanes, uint16_t format_version) {
  if (shape.size() > size_t(kMaxDims)) throw CodecException("at most 8 dimensions are supported");
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  if (n != uint64_t(in.size)) throw CodecException("shape does not match the number of symbols");
  EncodeOptions opt;
  opt.coder = parse_coder(coder);
  opt.chunk_symbols = chunk_symbols;
  opt.threads = threads;
  opt.lanes = lanes;
  opt.format_version = format_version;
  return opt;
}

void check_split_top(int split_top, const char* what) {
  if (split_top != 0 && split_top != split::kByteSplitTop)
    throw CodecException(std::string(what) + ": split_top must be 0 (the smallest split) or " +
                         std::to_string(split::kByteSplitTop) + " (the byte split), got " + std::to_string(split_top));
}

void check_encode(Status st, const char* what) {
  if (st == Status::BadArgument)
    throw CodecException(std::string(what) + ": invalid layout: format version 2 (huffman) takes chunk_symbols in [1, " +
                         std::to_string(kMaxChunkSymbolsV2) + "] and lanes in [1, 32]; version 1 (rans) takes "
                         "chunk_symbols a multiple of 32 in [32, " + std::to_string(kMaxChunkSymbols) + "]");
  check(st, what);
}

py::buffer_info contiguous_bytes(const py::buffer& b, bool writable, const char* what) {
  py::buffer_info info = b.request(writable);
  if (info.itemsize != 1) throw CodecException(std::string(what) + " must be a buffer of bytes (uint8)");
  if (!is_contiguous(info)) throw CodecException(std::string(what) + " must be C-contiguous");
  return info;
}

// A writable, contiguous buffer of 16- or 32-bit float bit patterns, and a call with its data
// typed as such.
py::buffer_info float_bits_out(const py::buffer& out, const char* where) {
  py::buffer_info o = out.request(true);
  if ((o.itemsize != 2 && o.itemsize != 4) || !is_contiguous(o))
    throw CodecException(std::string(where) + ": out must be a contiguous buffer of 16- or 32-bit values");
  return o;
}

template <class Fn>
Status with_float_bits(const py::buffer_info& o, Fn fn) {
  return o.itemsize == 2 ? fn(static_cast<uint16_t*>(o.ptr)) : fn(static_cast<uint32_t*>(o.ptr));
}

// A split weight's raw bits (bytes, whole 32-bit words) as words: the buffer itself when it is
// 4-byte aligned, else an aligned copy.
struct RawWords {
  py::buffer_info r;  // held: the buffer stays exported while `data` points into it
  std::vector<uint32_t> copy;
  const uint32_t* data;
  uint64_t n;
  RawWords(const py::buffer& raw, const char* where) : r(contiguous_bytes(raw, false, "raw")) {
    if (r.size % 4) throw CodecException(std::string(where) + ": raw must be whole 32-bit words");
    n = uint64_t(r.size) / 4;
    data = static_cast<const uint32_t*>(r.ptr);
    if (reinterpret_cast<uintptr_t>(r.ptr) % 4) {
      copy.resize(n);
      if (n) std::memcpy(copy.data(), r.ptr, size_t(r.size));
      data = copy.data();
    }
  }
};

// The frame of a split decode into ``out`` (16- or 32-bit float bits): checks the buffers, runs
// decode(blob, size, raw words, bits, out length) without the GIL, and raises ``corrupt`` when
// the stream, values table and raw bits do not fit together.
template <class Decode>
void decode_split_into(const py::buffer& blob, const py::buffer& raw, const py::buffer& out, const char* where,
                       const char* corrupt, Decode decode) {
  const py::buffer_info b = contiguous_bytes(blob, false, "blob");
  const py::buffer_info o = float_bits_out(out, where);
  const RawWords words(raw, where);
  Status st;
  {
    py::gil_scoped_release release;
    st = with_float_bits(o, [&](auto* bits) {
      return decode(static_cast<const uint8_t*>(b.ptr), size_t(b.size), words, bits, uint64_t(o.size));
    });
  }
  if (st == Status::BadArgument) throw CodecException(corrupt);
  check(st, where);
}

StreamInfo parse(const py::buffer_info& b) {
  StreamInfo s;
  check(parse_header(static_cast<const uint8_t*>(b.ptr), size_t(b.size), &s), "decode");
  return s;
}

// The format-v2 kernel entry points, bound twice with one argument handling: "cuda_*" runs the
// CUDA kernels, "host_*" their emulation on host memory (emulate.h), so tests drive the Python
// ops' glue without a GPU. `view` = (super, sizes, payload, payload_words, n_symbols,
// chunk_symbols, n_chunks, lanes, constant_code, lane_starts, max_chunk_words) with the addresses
// of the stream's pieces (lane_starts 0: none).
struct CudaKernels {
  static Status decode(const windowed::StreamView& s, const uint32_t* t, uint8_t* out, uint32_t* st, uintptr_t cs) {
    return cuda::windowed_decode(s, t, out, st, cs);
  }
  static Status affine(const windowed::StreamView& s, const uint64_t* v, const uint32_t* t, const windowed::AffineArgs& a,
                       uint32_t b, uintptr_t cs) {
    return cuda::windowed_gemv_affine(s, v, t, a, b, cs);
  }
  static Status split(const windowed::StreamView& s, const uint64_t* v, const uint32_t* t, const windowed::SplitArgs& a,
                      uint32_t b, uintptr_t cs) {
    return cuda::windowed_gemv_split(s, v, t, a, b, cs);
  }
  static Status merge(const uint8_t* sym, uint64_t n, const uint16_t* v, const uint32_t* raw, uint64_t rw, uint32_t low,
                      uint16_t* out, uintptr_t cs) {
    return cuda::split_merge(sym, n, v, raw, rw, low, out, cs);
  }
  static Status decode_split(const windowed::StreamView& s, const uint32_t* t, const windowed::SplitDecodeArgs& a,
                             uint32_t* st, uintptr_t cs) {
    return cuda::windowed_decode_split(s, t, a, st, cs);
  }
  static uint32_t split_decode_max_chunk() { return cuda::split_decode_max_chunk(); }
  static Status fixed12_gemv(const fixed12::GemvArgs& a, uint32_t batch_pad, uintptr_t cs) {
    return cuda::fixed12_gemv(a, batch_pad, cs);
  }
  static Status fixed12_decode(const uint32_t* c, const uint32_t* l, uint64_t p, uint32_t b4, uint16_t* o, uintptr_t cs) {
    return cuda::fixed12_decode(c, l, p, b4, o, cs);
  }
  static Status tile(const windowed::StreamView& s, const uint32_t* t, const windowed::TileArgs& a, uint32_t b,
                     uintptr_t cs) {
    return cuda::windowed_tile_affine(s, t, a, b, cs);
  }
};

struct HostKernels {
  static Status decode(const windowed::StreamView& s, const uint32_t* t, uint8_t* out, uint32_t* st, uintptr_t) {
    return host::windowed_decode(s, t, out, st);
  }
  static Status affine(const windowed::StreamView& s, const uint64_t* v, const uint32_t* t, const windowed::AffineArgs& a,
                       uint32_t b, uintptr_t) {
    return host::windowed_gemv_affine(s, v, t, a, b, cuda::affine_gemv_staged() != 0);
  }
  static Status split(const windowed::StreamView& s, const uint64_t* v, const uint32_t* t, const windowed::SplitArgs& a,
                      uint32_t b, uintptr_t) {
    return host::windowed_gemv_split(s, v, t, a, b, cuda::split_gemv_staged() != 0);
  }
  static Status merge(const uint8_t* sym, uint64_t n, const uint16_t* v, const uint32_t* raw, uint64_t rw, uint32_t low,
                      uint16_t* out, uintptr_t) {
    return host::split_merge(sym, n, v, raw, rw, low, out);
  }
  static Status decode_split(const windowed::StreamView& s, const uint32_t* t, const windowed::SplitDecodeArgs& a,
                             uint32_t* st, uintptr_t) {
    return host::windowed_decode_split(s, t, a, st);
  }
  static uint32_t split_decode_max_chunk() { return windowed::kMaxChunkSymbols; }  // host memory: any chunk
  static Status fixed12_gemv(const fixed12::GemvArgs& a, uint32_t batch_pad, uintptr_t) {
    return host::fixed12_gemv(a, batch_pad, cuda::fixed12_tensor_cores() != 0);
  }
  static Status fixed12_decode(const uint32_t* c, const uint32_t* l, uint64_t p, uint32_t b4, uint16_t* o, uintptr_t) {
    return host::fixed12_decode(c, l, p, b4, o);
  }
  static Status tile(const windowed::StreamView& s, const uint32_t* t, const windowed::TileArgs& a, uint32_t b,
                     uintptr_t) {
    return host::windowed_tile_affine(s, t, a, b);
  }
};

// The fields AffineArgs and TileArgs share (the same names), from bound addresses and ints.
template <class Args>
void set_affine_fields(Args& a, uintptr_t prefix_dev, uintptr_t scale_dev, uintptr_t zero_dev, bool zero_broadcast,
                       float zero_in_values, uint32_t group_size, uint32_t n_rows, uint32_t k, uintptr_t y_dev,
                       uintptr_t escape_row_dev, uintptr_t escape_col_dev, uintptr_t escape_value_dev,
                       uint32_t n_escapes) {
  a.prefix = reinterpret_cast<const float*>(prefix_dev);
  a.scale = reinterpret_cast<const uint16_t*>(scale_dev);
  a.zero = reinterpret_cast<const uint16_t*>(zero_dev);
  a.n_rows = n_rows;
  a.k = k;
  a.group_size = group_size;
  a.n_groups = group_size ? uint32_t((uint64_t(k) + group_size - 1) / group_size) : 0;
  a.zero_broadcast = zero_broadcast;
  a.zero_in_values = zero_in_values;
  a.escape_row = reinterpret_cast<const int32_t*>(escape_row_dev);  // 0: no escapes
  a.escape_col = reinterpret_cast<const int32_t*>(escape_col_dev);
  a.escape_value = reinterpret_cast<const float*>(escape_value_dev);
  a.n_escapes = n_escapes;
  a.y = reinterpret_cast<float*>(y_dev);
}

template <class K>
void bind_windowed(py::module_& m, const std::string& prefix) {
  m.def(
      (prefix + "windowed_decode").c_str(),
      [prefix](py::tuple view, uintptr_t table_dev, uintptr_t out_dev, uintptr_t status_dev, uintptr_t stream) {
        check(K::decode(stream_view(view), reinterpret_cast<const uint32_t*>(table_dev),
                        reinterpret_cast<uint8_t*>(out_dev), reinterpret_cast<uint32_t*>(status_dev), stream),
              (prefix + "windowed_decode").c_str());
      },
      py::arg("view"), py::arg("table_dev"), py::arg("out_dev"), py::arg("status_dev"), py::arg("stream"),
      "Decode a v2 stream into out_dev (n_symbols bytes).");

  m.def(
      (prefix + "windowed_gemv_affine").c_str(),
      [prefix](py::tuple view, uintptr_t value_table_dev, uintptr_t table_dev, uintptr_t x_dev, uintptr_t prefix_dev,
               uintptr_t scale_dev, uintptr_t zero_dev, bool zero_broadcast, float zero_in_values, uint32_t group_size,
               uint32_t n_rows, uint32_t k, uint32_t batch, uintptr_t y_dev, uintptr_t escape_row_dev,
               uintptr_t escape_col_dev, uintptr_t escape_value_dev, uint32_t n_escapes, uintptr_t stream) {
        windowed::AffineArgs a;
        a.x = reinterpret_cast<const float*>(x_dev);
        set_affine_fields(a, prefix_dev, scale_dev, zero_dev, zero_broadcast, zero_in_values, group_size, n_rows, k,
                          y_dev, escape_row_dev, escape_col_dev, escape_value_dev, n_escapes);
        check(K::affine(stream_view(view), reinterpret_cast<const uint64_t*>(value_table_dev),
                        reinterpret_cast<const uint32_t*>(table_dev), a, batch, stream),
              (prefix + "windowed_gemv_affine").c_str());
      },
      py::arg("view"), py::arg("value_table_dev"), py::arg("table_dev"), py::arg("x_dev"), py::arg("prefix_dev"),
      py::arg("scale_dev"), py::arg("zero_dev"), py::arg("zero_broadcast"), py::arg("zero_in_values"),
      py::arg("group_size"), py::arg("n_rows"), py::arg("k"), py::arg("batch"), py::arg("y_dev"),
      py::arg("escape_row_dev"), py::arg("escape_col_dev"), py::arg("escape_value_dev"), py::arg("n_escapes"),
      py::arg("stream"),
      "Fused decode + affine dequant + GEMV of a v2 weight stream (windowed_gemv.h: AffineArgs).");

  m.def(
      (prefix + "windowed_gemv_split").c_str(),
      [prefix](py::tuple view, uintptr_t value_table_dev, uintptr_t table_dev, uintptr_t x_dev, uintptr_t raw_dev,
               uint64_t raw_words, uint32_t low, uint32_t n_rows, uint32_t k, uint32_t batch, uintptr_t y_dev,
               uintptr_t stream) {
        windowed::SplitArgs a;
        a.x = reinterpret_cast<const float*>(x_dev);
        a.raw = reinterpret_cast<const uint32_t*>(raw_dev);
        a.raw_words = raw_words;
        a.n_rows = n_rows;
        a.k = k;
        a.low = low;
        a.y = reinterpret_cast<float*>(y_dev);
        check(K::split(stream_view(view), reinterpret_cast<const uint64_t*>(value_table_dev),
                       reinterpret_cast<const uint32_t*>(table_dev), a, batch, stream),
              (prefix + "windowed_gemv_split").c_str());
      },
      py::arg("view"), py::arg("value_table_dev"), py::arg("table_dev"), py::arg("x_dev"), py::arg("raw_dev"),
      py::arg("raw_words"), py::arg("low"), py::arg("n_rows"), py::arg("k"), py::arg("batch"), py::arg("y_dev"),
      py::arg("stream"), "Fused decode + GEMV of a lossless split bf16 weight (windowed_gemv.h: SplitArgs).");

  m.def(
      (prefix + "fixed12_gemv").c_str(),
      [prefix](uintptr_t codes_dev, uintptr_t low_dev, uint64_t pieces, uint32_t base, uintptr_t x_dev, bool x_bf16,
               uint32_t batch_pad, uint32_t batch, uint32_t n_rows, uint32_t k, uintptr_t bias_dev, uintptr_t y_dev,
               uintptr_t escape_row_dev, uintptr_t escape_col_dev, uintptr_t escape_value_dev, uint32_t n_escapes,
               uintptr_t stream) {
        if (base > fixed12::kMaxBase) throw CodecException(prefix + "fixed12_gemv: base out of range");
        fixed12::GemvArgs a;
        a.codes = reinterpret_cast<const uint32_t*>(codes_dev);
        a.low = reinterpret_cast<const uint32_t*>(low_dev);
        a.pieces = pieces;
        a.base4 = base * 0x01010101u;
        a.x = reinterpret_cast<const void*>(x_dev);
        a.x_bf16 = x_bf16;
        a.batch = batch;
        a.n_rows = n_rows;
        a.k = k;
        a.escape_row = reinterpret_cast<const int32_t*>(escape_row_dev);
        a.escape_col = reinterpret_cast<const int32_t*>(escape_col_dev);
        a.escape_value = reinterpret_cast<const float*>(escape_value_dev);
        a.n_escapes = n_escapes;
        a.bias = reinterpret_cast<const void*>(bias_dev);
        a.y = reinterpret_cast<void*>(y_dev);
        check(K::fixed12_gemv(a, batch_pad, stream), (prefix + "fixed12_gemv").c_str());
      },
      py::arg("codes_dev"), py::arg("low_dev"), py::arg("pieces"), py::arg("base"), py::arg("x_dev"),
      py::arg("x_bf16"), py::arg("batch_pad"), py::arg("batch"), py::arg("n_rows"), py::arg("k"), py::arg("bias_dev"),
      py::arg("y_dev"), py::arg("escape_row_dev"), py::arg("escape_col_dev"), py::arg("escape_value_dev"),
      py::arg("n_escapes"), py::arg("stream"),
      "y = x W^T + bias for a fixed12 bf16 weight (fixed12.h: GemvArgs), batch 1..16, x / bias / y bf16 or fp32.");

  m.def(
      (prefix + "fixed12_decode").c_str(),
      [prefix](uintptr_t codes_dev, uintptr_t low_dev, uint64_t pieces, uint32_t base, uintptr_t out_dev,
               uintptr_t stream) {
        if (base > fixed12::kMaxBase) throw CodecException(prefix + "fixed12_decode: base out of range");
        check(K::fixed12_decode(reinterpret_cast<const uint32_t*>(codes_dev), reinterpret_cast<const uint32_t*>(low_dev),
                                pieces, base * 0x01010101u, reinterpret_cast<uint16_t*>(out_dev), stream),
              (prefix + "fixed12_decode").c_str());
      },
      py::arg("codes_dev"), py::arg("low_dev"), py::arg("pieces"), py::arg("base"), py::arg("out_dev"),
      py::arg("stream"), "The bf16 bits of a fixed12 weight's pieces (8 a piece; escapes as code 0's value).");

  m.def(
      (prefix + "split_merge").c_str(),
      [prefix](uintptr_t symbols_dev, uint64_t n, uintptr_t values_dev, uintptr_t raw_dev, uint64_t raw_words,
               uint32_t low, uintptr_t out_dev, uintptr_t stream) {
        check(K::merge(reinterpret_cast<const uint8_t*>(symbols_dev), n, reinterpret_cast<const uint16_t*>(values_dev),
                       reinterpret_cast<const uint32_t*>(raw_dev), raw_words, low, reinterpret_cast<uint16_t*>(out_dev),
                       stream),
              (prefix + "split_merge").c_str());
      },
      py::arg("symbols_dev"), py::arg("n"), py::arg("values_dev"), py::arg("raw_dev"), py::arg("raw_words"),
      py::arg("low"), py::arg("out_dev"), py::arg("stream"),
      "Rebuild exact 16-bit float bits from split symbols, values (value << low) and raw bits.");

  m.def(
      (prefix + "windowed_decode_split").c_str(),
      [prefix](py::tuple view, uintptr_t table_dev, uintptr_t value_dev, uintptr_t raw_dev, uint64_t raw_words,
               uint32_t low, uintptr_t out_dev, uintptr_t status_dev, uintptr_t stream) {
        windowed::SplitDecodeArgs a;
        a.value = reinterpret_cast<const uint16_t*>(value_dev);
        a.raw = reinterpret_cast<const uint32_t*>(raw_dev);
        a.raw_words = raw_words;
        a.low = low;
        a.out = reinterpret_cast<uint16_t*>(out_dev);
        check(K::decode_split(stream_view(view), reinterpret_cast<const uint32_t*>(table_dev), a,
                              reinterpret_cast<uint32_t*>(status_dev), stream),
              (prefix + "windowed_decode_split").c_str());
      },
      py::arg("view"), py::arg("table_dev"), py::arg("value_dev"), py::arg("raw_dev"), py::arg("raw_words"),
      py::arg("low"), py::arg("out_dev"), py::arg("status_dev"), py::arg("stream"),
      "The 16-bit float bits of a lossless split weight, decoded and merged in one kernel "
      "(windowed_gemv.h: SplitDecodeArgs).");
  m.def((prefix + "split_decode_max_chunk").c_str(), [] { return K::split_decode_max_chunk(); },
        "The longest chunk (symbols) windowed_decode_split takes here (the device's shared memory).");

  m.def(
      (prefix + "windowed_tile_affine").c_str(),
      [prefix](py::tuple view, uintptr_t table_dev, uintptr_t x_dev, bool x_half, uintptr_t prefix_dev,
               uintptr_t scale_dev, uintptr_t zero_dev, bool zero_broadcast, float zero_in_values, uint32_t group_size,
               uint32_t n_rows, uint32_t k, uint32_t batch, uint32_t batch_pad, uintptr_t y_dev,
               uintptr_t escape_row_dev, uintptr_t escape_col_dev, uintptr_t escape_value_dev, uint32_t n_escapes,
               uintptr_t stream) {
        windowed::TileArgs a;
        a.x = reinterpret_cast<const uint16_t*>(x_dev);
        a.x_half = x_half;
        a.batch_pad = batch_pad;
        set_affine_fields(a, prefix_dev, scale_dev, zero_dev, zero_broadcast, zero_in_values, group_size, n_rows, k,
                          y_dev, escape_row_dev, escape_col_dev, escape_value_dev, n_escapes);
        check(K::tile(stream_view(view), reinterpret_cast<const uint32_t*>(table_dev), a, batch, stream),
              (prefix + "windowed_tile_affine").c_str());
      },
      py::arg("view"), py::arg("table_dev"), py::arg("x_dev"), py::arg("x_half"), py::arg("prefix_dev"),
      py::arg("scale_dev"), py::arg("zero_dev"), py::arg("zero_broadcast"), py::arg("zero_in_values"),
      py::arg("group_size"), py::arg("n_rows"), py::arg("k"), py::arg("batch"), py::arg("batch_pad"), py::arg("y_dev"),
      py::arg("escape_row_dev"), py::arg("escape_col_dev"), py::arg("escape_value_dev"), py::arg("n_escapes"),
      py::arg("stream"),
      "Decode 16 rows per block into shared memory, then tensor-core MMA (windowed_tile.h: TileArgs).");
}

// A GPU kernel setting read at each launch: name(arg=None) sets it when given, and returns the
// value in use (the setter clamps).
void def_kernel_setting(py::module_& m, const char* name, const char* arg, uint32_t (*set)(uint32_t),
                        uint32_t (*get)(), const char* doc) {
  m.def(
      name,
      [set, get](std::optional<uint32_t> value) {
        if (value) set(*value);
        return get();
      },
      py::arg(arg) = py::none(), doc);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "pycodec native core: chunked, lane-interleaved Huffman and rANS codecs";
  static py::exception<CodecException> codec_error(m, "CodecError", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const CodecException& e) {
      py::set_error(codec_error, e.what());
    }
  });

  m.attr("FORMAT_VERSION") = kFormatVersion;
  m.attr("MAX_CHUNK_SYMBOLS_V2") = kMaxChunkSymbolsV2;
  m.attr("GEMV_X_PAD_ROWS") = windowed::kXPadRows;
  m.attr("GEMV_MAX_SLOTS") = windowed::kGemvMaxSlots;
  m.attr("SLACK_WORDS") = windowed::kSlackWords;
  m.attr("FIXED12_MAX_BASE") = fixed12::kMaxBase;
  m.attr("LANES") = kLanes;
  m.attr("MAX_CHUNK_SYMBOLS") = kMaxChunkSymbols;
  m.attr("DEFAULT_CHUNK_SYMBOLS") = py::dict(py::arg("huffman") = kDefaultHuffmanChunk, py::arg("rans") = kDefaultRansChunk);
  m.attr("HUFFMAN_MAX_CODE_LENGTH") = huffman::kMaxCodeLength;
  m.attr("RANS_PROB_BITS") = rans::kProbBits;

  m.def(
      "encode",
      [](py::buffer symbols, std::vector<uint64_t> shape, const std::string& coder, uint32_t chunk_symbols,
         int threads, uint32_t lanes, uint16_t format_version) {
        const py::buffer_info in = contiguous_bytes(symbols, false, "symbols");
        const EncodeOptions opt = encode_options(in, shape, coder, chunk_symbols, threads, lanes, format_version);
        py::bytes blob;
        const auto into_blob = [&blob](size_t bytes) {  // the stream is written in place: no copy
          py::gil_scoped_acquire gil;
          blob = uninitialized_bytes(bytes);
          return reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(blob.ptr()));
        };
        Status st;
        {
          py::gil_scoped_release release;
          st = encode(static_cast<const uint8_t*>(in.ptr), shape.data(), int(shape.size()), opt, into_blob);
        }
        check_encode(st, "encode");
        return blob;
      },
      py::arg("symbols"), py::arg("shape"), py::arg("coder"), py::arg("chunk_symbols") = 0, py::arg("threads") = 0,
      py::arg("lanes") = 0, py::arg("format_version") = 0,
      "Encode a C-contiguous uint8 buffer; returns the stream bytes.");

  m.def(
      "encoded_size",
      [](py::buffer symbols, std::vector<uint64_t> shape, const std::string& coder, uint32_t chunk_symbols,
         int threads, uint32_t lanes, uint16_t format_version) {
        const py::buffer_info in = contiguous_bytes(symbols, false, "symbols");
        const EncodeOptions opt = encode_options(in, shape, coder, chunk_symbols, threads, lanes, format_version);
        uint64_t bytes = 0;
        Status st;
        {
          py::gil_scoped_release release;
          st = encoded_size(static_cast<const uint8_t*>(in.ptr), shape.data(), int(shape.size()), opt, &bytes);
        }
        check_encode(st, "encoded_size");
        return bytes;
      },
      py::arg("symbols"), py::arg("shape"), py::arg("coder"), py::arg("chunk_symbols") = 0, py::arg("threads") = 0,
      py::arg("lanes") = 0, py::arg("format_version") = 0,
      "len(encode(...)) with the same arguments, without writing the stream (v2: no bits, no checksum).");

  m.def(
      "decode_into",
      [](py::buffer blob, py::buffer out, int threads) {
        const py::buffer_info b = contiguous_bytes(blob, false, "blob");
        const py::buffer_info o = contiguous_bytes(out, true, "out");
        Status st;
        {
          py::gil_scoped_release release;
          st = decode(static_cast<const uint8_t*>(b.ptr), size_t(b.size), static_cast<uint8_t*>(o.ptr),
                      uint64_t(o.size), threads);
        }
        check(st, "decode");
      },
      py::arg("blob"), py::arg("out"), py::arg("threads") = 0,
      "Decode a stream into a writable uint8 buffer of exactly n_symbols bytes.");

  m.def(
      "decode_chunks",
      [](py::buffer blob, std::vector<uint64_t> chunks, py::buffer out, int threads) {
        const py::buffer_info b = contiguous_bytes(blob, false, "blob");
        const py::buffer_info o = contiguous_bytes(out, true, "out");
        Status st;
        {
          py::gil_scoped_release release;
          st = decode_chunks(static_cast<const uint8_t*>(b.ptr), size_t(b.size), chunks.data(), chunks.size(),
                             static_cast<uint8_t*>(o.ptr), uint64_t(o.size), threads);
        }
        if (st == Status::BadArgument) throw CodecException("decode_chunks: a chunk id is past the stream's end");
        check(st, "decode_chunks");
      },
      py::arg("blob"), py::arg("chunks"), py::arg("out"), py::arg("threads") = 0,
      "Decode the listed chunks only: chunk chunks[i] into out[i * chunk_symbols :] (out: len(chunks) * "
      "chunk_symbols bytes). The stream's checksum needs every symbol: verify the stream whole once.");

  m.def(
      "decode_split_chunks",
      [](py::buffer blob, std::vector<uint64_t> chunks, std::vector<uint32_t> values, int top, py::buffer raw,
         py::buffer out, int threads) {
        decode_split_into(blob, raw, out, "decode_split_chunks",
                          "decode_split_chunks: a chunk id, the values table or the raw bits do not fit the "
                          "stream (corrupt weight)",
                          [&](const uint8_t* data, size_t len, const RawWords& words, auto* bits, uint64_t n_out) {
                            return decode_split_chunks(data, len, chunks.data(), chunks.size(), values.data(),
                                                       uint32_t(values.size()), top, words.data, words.n, bits, n_out,
                                                       threads);
                          });
      },
      py::arg("blob"), py::arg("chunks"), py::arg("values"), py::arg("top"), py::arg("raw"), py::arg("out"),
      py::arg("threads") = 0, "decode_chunks of a lossless split weight, merged with its raw bits (float bits).");

  m.def(
      "info",
      [](py::buffer blob) {
        const py::buffer_info b = contiguous_bytes(blob, false, "blob");
        const StreamInfo s = parse(b);
        py::dict d;
        d["coder"] = coder_name(s.coder);
        d["version"] = s.version;
        d["lanes"] = s.lanes;
        d["shape"] = py::tuple(py::cast(std::vector<uint64_t>(s.shape, s.shape + s.ndim)));
        d["n_symbols"] = s.n_symbols;
        d["chunk_symbols"] = s.chunk_symbols;
        d["n_chunks"] = s.n_chunks;
        d["total_bytes"] = s.total_bytes;
        d["index_offset"] = s.index_offset;      // byte offsets, for a GPU to view the pieces in place
        d["sizes_offset"] = s.sizes_offset;      // v2: u16 chunk sizes (v1: = index_offset)
        d["payload_offset"] = s.payload_offset;
        d["payload_words"] = s.payload_words;
        d["max_chunk_words"] = max_chunk_words(static_cast<const uint8_t*>(b.ptr), s);
        d["side_bits"] = side_bits(static_cast<const uint8_t*>(b.ptr), s);
        d["payload_bits"] = 8 * uint64_t(s.total_bytes) - side_bits(static_cast<const uint8_t*>(b.ptr), s);
        return d;
      },
      py::arg("blob"), "Validate a stream's header, table and index and describe it (no decoding).");

  m.def(
      "symbol_counts",
      [](py::buffer symbols, int threads) {
        const py::buffer_info b = contiguous_bytes(symbols, false, "symbols");
        std::vector<uint64_t> counts(256);
        {
          py::gil_scoped_release release;
          count_symbols(static_cast<const uint8_t*>(b.ptr), uint64_t(b.size), counts.data(), threads);
        }
        return counts;
      },
      py::arg("symbols"), py::arg("threads") = 0,
      "The 256-bin histogram of a contiguous uint8 buffer (not a stream); threads as for encode.");

  m.def(
      "set_host_openmp",
      [](uintptr_t parallel, uintptr_t thread_num, uintptr_t max_threads) {
        HostOpenMP runtime{reinterpret_cast<void (*)(void (*)(void*), void*, unsigned, unsigned)>(parallel),
                           reinterpret_cast<int (*)()>(thread_num), reinterpret_cast<int (*)()>(max_threads)};
        if (!set_host_openmp(runtime))
          throw py::value_error("set_host_openmp takes both addresses (GOMP_parallel, omp_get_thread_num) or neither");
      },
      py::arg("parallel"), py::arg("thread_num"), py::arg("max_threads") = 0,
      "Run parallel calls on the host OpenMP runtime whose GOMP_parallel and omp_get_thread_num are at these "
      "addresses (0, 0: pycodec's own threads again); with omp_get_max_threads's, calls that leave their thread "
      "count open take the host's. The addresses must stay valid while installed.");
  m.def("default_threads", &default_threads,
        "The threads a call with threads=0 runs on: the host team's count (set_host_openmp) or every core.");
  m.def("host_openmp_active", &host_openmp_active,
        "True when this process's parallel calls run on a host OpenMP team (set_host_openmp).");

  m.def(
      "hash64",
      [](py::buffer data) {
        const py::buffer_info b = contiguous_bytes(data, false, "data");
        py::gil_scoped_release release;
        return hash64(static_cast<const uint8_t*>(b.ptr), size_t(b.size));
      },
      py::arg("data"),
      "hash64 (hash.h; docs/FORMAT.md section 5) of a contiguous byte buffer: the checksum checkpoints "
      "record for every tensor (~20 GB/s on one core, the GIL released).");

  m.def(
      "histogram",
      [](py::buffer blob, int threads) {
        const py::buffer_info b = contiguous_bytes(blob, false, "blob");
        std::vector<uint64_t> counts(256);
        Status st;
        {
          py::gil_scoped_release release;
          st = histogram(static_cast<const uint8_t*>(b.ptr), size_t(b.size), counts.data(), threads);
        }
        check(st, "decode");
        return counts;
      },
      py::arg("blob"), py::arg("threads") = 0,
      "Decode chunk by chunk (checksum verified) and return the 256-bin symbol histogram.");
  m.def(
      "lane_starts",
      [](py::buffer blob, int threads) {
        const py::buffer_info b = contiguous_bytes(blob, false, "blob");
        const uint8_t* p = static_cast<const uint8_t*>(b.ptr);
        const uint64_t n = lane_start_count(parse(b));
        py::array_t<uint8_t> starts(py::ssize_t{static_cast<py::ssize_t>(n)});
        std::vector<uint64_t> counts(256);
        uint8_t* out = starts.mutable_data();
        Status st;
        {
          py::gil_scoped_release release;
          st = lane_starts(p, size_t(b.size), out, n, counts.data(), threads);
        }
        check(st, "decode");
        return starts;
      },
      py::arg("blob"), py::arg("threads") = 0,
      "Decode chunk by chunk (checksum verified, as histogram) and return the stream's lane start bytes: uint8 "
      "[n_chunks * lanes], each lane's count of symbols as a distance from chunk length / lanes (biased by 128; "
      "255 in every byte of a chunk whose counts stray further; the last lane's byte unused), what the GPU "
      "kernels read instead of counting every lane's codes (pass 1). Empty for format v1.");

  m.def(
      "decode_table",
      [](py::buffer blob) {
        const py::buffer_info b = contiguous_bytes(blob, false, "blob");
        std::vector<uint32_t> table(kDecodeTableEntries + 256 / 4 + kDecodeTableEntries / 4);
        uint8_t* lengths = reinterpret_cast<uint8_t*>(table.data() + kDecodeTableEntries);
        check(build_decode_table(static_cast<const uint8_t*>(b.ptr), size_t(b.size), table.data(), lengths,
                                 lengths + 256),
              "decode_table");
        return py::bytes(reinterpret_cast<const char*>(table.data()), table.size() * sizeof(uint32_t));
      },
      py::arg("blob"),
      "The stream's decode tables for GPU upload: 4096 uint32 entries (v1 per-symbol, v2 multi-symbol), "
      "the 256 Huffman code lengths as bytes, then the 4096-byte count table (windowed.h; zeros for rANS).");

  m.def(
      "cuda_decode",
      [](int coder, uint64_t n_symbols, uint32_t chunk_symbols, uint64_t n_chunks, uintptr_t index_dev,
         uintptr_t payload_dev, uint64_t payload_words, uintptr_t table_dev, uintptr_t out_dev, uintptr_t stream) {
        cuda::DeviceStream s{uint8_t(coder), n_symbols, chunk_symbols, n_chunks,
                             reinterpret_cast<const uint32_t*>(index_dev), reinterpret_cast<const uint32_t*>(payload_dev),
                             payload_words, reinterpret_cast<const uint32_t*>(table_dev)};
        check(cuda::decode_symbols(s, reinterpret_cast<uint8_t*>(out_dev), stream), "cuda_decode");
      },
      py::arg("coder"), py::arg("n_symbols"), py::arg("chunk_symbols"), py::arg("n_chunks"), py::arg("index_dev"),
      py::arg("payload_dev"), py::arg("payload_words"), py::arg("table_dev"), py::arg("out_dev"), py::arg("stream"),
      "Decode a stream held in device memory (raw pointers) on a CUDA stream.");

  // ---- the fixed-width lossless layout (fixed12.h)
  m.def(
      "fixed12_encode",
      [](py::array_t<uint16_t, py::array::c_style> bits) {
        const uint16_t* in = bits.data();
        const uint64_t n = uint64_t(bits.size());
        const uint64_t pieces = fixed12::pieces_of(n);
        uint64_t count[128];
        uint32_t base;
        {
          py::gil_scoped_release release;
          fixed12::count_tops(in, n, count);
          base = fixed12::best_base(count);
        }
        const uint64_t held = fixed12::held_by(count, base);
        py::array_t<uint8_t> codes(py::ssize_t(4 * pieces)), low(py::ssize_t(8 * pieces));
        py::array_t<int64_t> escapes(py::ssize_t(n - held));
        uint8_t* c = codes.mutable_data();
        uint8_t* l = low.mutable_data();
        int64_t* e = escapes.mutable_data();
        uint64_t n_escapes;
        {
          py::gil_scoped_release release;
          n_escapes = fixed12::encode(in, n, base, c, l, e, n - held);
        }
        if (n_escapes != n - held) throw CodecException("fixed12_encode: escape count mismatch");
        return py::make_tuple(base, codes, low, escapes);
      },
      py::arg("bits"),
      "(base, codes uint8 [4 * pieces], low uint8 [8 * pieces], escape indices int64) of bf16 bits (fixed12.h).");
  m.def(
      "fixed12_decode_rows",
      [](py::buffer codes, py::buffer low, uint32_t base, uint64_t k, py::array_t<int64_t, py::array::c_style> rows,
         py::array_t<uint16_t, py::array::c_style> out) {
        const py::buffer_info c = contiguous_bytes(codes, false, "codes"), l = contiguous_bytes(low, false, "low");
        if (base > fixed12::kMaxBase) throw CodecException("fixed12_decode_rows: base out of range");
        const uint64_t pieces = uint64_t(l.size) / 8;
        if (uint64_t(l.size) != 8 * pieces || uint64_t(c.size) != 4 * pieces)
          throw CodecException("fixed12_decode_rows: codes and low must hold the same whole pieces (4 and 8 bytes each)");
        const uint64_t n_rows = uint64_t(rows.size());
        if (uint64_t(out.size()) != n_rows * k) throw CodecException("fixed12_decode_rows: out must hold rows x k values");
        const int64_t* r = rows.data();
        for (uint64_t i = 0; i < n_rows; ++i)  // (row + 1) * k <= 8 * pieces, without overflow
          if (r[i] < 0 || (k && uint64_t(r[i]) >= 8 * pieces / k))
            throw CodecException("fixed12_decode_rows: a row lies outside the weight");
        uint16_t* o = out.mutable_data();
        py::gil_scoped_release release;
        for (uint64_t i = 0; i < n_rows; ++i)
          fixed12::decode(static_cast<const uint8_t*>(c.ptr), static_cast<const uint8_t*>(l.ptr), base,
                          uint64_t(r[i]) * k, k, o + i * k);
      },
      py::arg("codes"), py::arg("low"), py::arg("base"), py::arg("k"), py::arg("rows"), py::arg("out"),
      "Rows of a fixed12 weight of k columns as bf16 bits (uint16 [len(rows) * k]); escapes as code 0's value.");

  // ---- format v2 kernels, and their host emulation behind the same arguments (tests)
  bind_windowed<CudaKernels>(m, "cuda_");
  bind_windowed<HostKernels>(m, "host_");

  m.def("tile_supported", &windowed::tile_supported, py::arg("n_symbols"), py::arg("chunk_symbols"),
        py::arg("n_rows"), py::arg("k"), py::arg("group_size"), py::arg("batch"),
        "Whether the tile kernel (decode to shared memory + MMA) takes this affine weight and batch.");
  m.def("tile_batch_pad", [](uint32_t batch) { return 8 * windowed::tile_batch_tiles(batch); }, py::arg("batch"),
        "The batch rows the tile kernel computes for a batch (x and y padded with zero rows).");
  m.attr("TILE_MAX_BATCH") = windowed::kTileMaxBatch;
  m.def("gemv_supported", &windowed::gemv_supported, py::arg("n_symbols"), py::arg("chunk_symbols"), py::arg("n_rows"),
        py::arg("k"), py::arg("batch"), "Whether the fused v2 GEMV takes this weight shape and batch.");

  m.def(
      "split_float",
      [](py::buffer bits, int width, int threads, py::object counts, int split_top) {
        const py::buffer_info b = bits.request();
        if ((width != 16 && width != 32) || b.itemsize != width / 8 || !is_contiguous(b))
          throw CodecException("split_float: expected a contiguous buffer of 16- or 32-bit float bit patterns");
        check_split_top(split_top, "split_float");
        const uint64_t n = uint64_t(b.size);
        split::Plan plan;
        Status st;
        {
          py::gil_scoped_release release;
          st = width == 16 ? plan_split(static_cast<const uint16_t*>(b.ptr), n, &plan, threads, split_top)
                           : plan_split(static_cast<const uint32_t*>(b.ptr), n, &plan, threads, split_top);
        }
        check(st, "split_float");
        if (!counts.is_none()) {  // the symbols' histogram, from the planning's count
          const py::buffer_info c = py::reinterpret_borrow<py::buffer>(counts).request(true);
          if (c.itemsize != 8 || (c.format != "Q" && c.format != "L") || !is_contiguous(c) || c.size != 256)
            throw CodecException("split_float: counts must be a writable contiguous uint64 array of 256");
          auto* out = static_cast<uint64_t*>(c.ptr);
          std::fill(out, out + 256, uint64_t(0));
          std::copy(plan.counts, plan.counts + plan.n_values, out);
        }
        // Written in place into the bytes objects returned: no copy of either.
        py::bytes symbols = uninitialized_bytes(n), raw = uninitialized_bytes(4 * split::raw_words(n, width - plan.top));
        auto* symbols_out = reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(symbols.ptr()));
        auto* raw_out = reinterpret_cast<uint32_t*>(PyBytes_AS_STRING(raw.ptr()));
        {
          py::gil_scoped_release release;
          if (width == 16) apply_split(static_cast<const uint16_t*>(b.ptr), n, plan, symbols_out, raw_out, threads);
          else apply_split(static_cast<const uint32_t*>(b.ptr), n, plan, symbols_out, raw_out, threads);
        }
        return py::make_tuple(plan.top, std::vector<uint32_t>(plan.values, plan.values + plan.n_values), symbols, raw);
      },
      py::arg("bits"), py::arg("width"), py::arg("threads") = 0, py::arg("counts") = py::none(),
      py::arg("split_top") = 0,
      "Split float bit patterns into (top, values, symbols, raw): symbol i numbers bits[i]'s top `top` bits "
      "among the ascending distinct `values`; raw holds the low bits (split.h). threads as for encode. counts: "
      "a uint64 array of 256 to receive the symbols' histogram, or None. split_top: 0 for the smallest split, "
      "BYTE_SPLIT_TOP for the byte split (top 8, values 0..255: a symbol is its float's top byte).");

  m.def(
      "encode_split",
      [](py::buffer bits, int width, std::vector<uint64_t> shape, const std::string& coder, uint32_t chunk_symbols,
         int threads, uint32_t lanes, uint16_t format_version, int split_top) {
        const py::buffer_info b = bits.request();
        if ((width != 16 && width != 32) || b.itemsize != width / 8 || !is_contiguous(b))
          throw CodecException("encode_split: expected a contiguous buffer of 16- or 32-bit float bit patterns");
        check_split_top(split_top, "encode_split");
        EncodeOptions opt = encode_options(b, shape, coder, chunk_symbols, threads, lanes, format_version);
        opt.split_top = split_top;
        py::array_t<uint8_t> raw, blob;
        const auto into_raw = [&raw](size_t words) {  // written in place, like the stream: no copy
          py::gil_scoped_acquire gil;
          raw = py::array_t<uint8_t>(py::ssize_t(4 * words));
          return reinterpret_cast<uint32_t*>(raw.mutable_data());
        };
        const auto into_blob = [&blob](size_t bytes) {
          py::gil_scoped_acquire gil;
          blob = py::array_t<uint8_t>(py::ssize_t(bytes));
          return blob.mutable_data();
        };
        split::Plan plan;
        Status st;
        {
          py::gil_scoped_release release;
          st = width == 16 ? encode_split(static_cast<const uint16_t*>(b.ptr), shape.data(), int(shape.size()), opt,
                                          &plan, into_raw, into_blob)
                           : encode_split(static_cast<const uint32_t*>(b.ptr), shape.data(), int(shape.size()), opt,
                                          &plan, into_raw, into_blob);
        }
        check_encode(st, "encode_split");
        py::array_t<uint64_t> counts(256);
        std::fill(counts.mutable_data(), counts.mutable_data() + 256, uint64_t(0));
        std::copy(plan.counts, plan.counts + plan.n_values, counts.mutable_data());
        return py::make_tuple(plan.top, std::vector<uint32_t>(plan.values, plan.values + plan.n_values), counts, blob,
                              raw);
      },
      py::arg("bits"), py::arg("width"), py::arg("shape"), py::arg("coder"), py::arg("chunk_symbols") = 0,
      py::arg("threads") = 0, py::arg("lanes") = 0, py::arg("format_version") = 0, py::arg("split_top") = 0,
      "split_float and encode of its symbols in one pass over the data: returns (top, values, counts, stream, raw), "
      "counts the symbols' histogram (uint64 [256]), stream and raw uint8 arrays equal to encode()'s bytes and "
      "split_float's raw bytes. split_top as for split_float.");
  m.attr("BYTE_SPLIT_TOP") = split::kByteSplitTop;

  m.def(
      "merge_split",
      [](py::buffer symbols, std::vector<uint32_t> values, int top, py::buffer raw, py::buffer out) {
        const py::buffer_info s = contiguous_bytes(symbols, false, "symbols");
        const py::buffer_info o = float_bits_out(out, "merge_split");
        if (o.size != s.size) throw CodecException("merge_split: out must hold one value per symbol");
        const RawWords words(raw, "merge_split");
        Status st;
        {
          py::gil_scoped_release release;
          st = with_float_bits(o, [&](auto* bits) {
            return split::merge(static_cast<const uint8_t*>(s.ptr), uint64_t(s.size), values.data(),
                                uint32_t(values.size()), top, words.data, words.n, bits);
          });
        }
        if (st != Status::Ok)
          throw CodecException("merge_split: the values table, symbols or raw bits are inconsistent (corrupt weight)");
      },
      py::arg("symbols"), py::arg("values"), py::arg("top"), py::arg("raw"), py::arg("out"),
      "Inverse of split_float: out[i] = values[symbols[i]] << (width - top) | raw field i.");

  m.def(
      "dequantize_affine",
      [](py::buffer q, py::buffer scale, py::buffer zero, uint64_t k, uint64_t group_size, py::buffer out) {
        const py::buffer_info qi = contiguous_bytes(q, false, "q");
        const py::buffer_info si = scale.request(), zi = zero.request(), oi = out.request(true);
        if (k == 0 || group_size == 0 || qi.size % py::ssize_t(k))
          throw CodecException("dequantize_affine: q must hold whole rows of k >= 1 symbols, group_size >= 1");
        const uint64_t rows = uint64_t(qi.size) / k, groups = (k + group_size - 1) / group_size;
        if (si.itemsize != 4 || zi.itemsize != 4 || !is_contiguous(si) || !is_contiguous(zi) ||
            uint64_t(si.size) != rows * groups || uint64_t(zi.size) != rows * groups)
          throw CodecException("dequantize_affine: scale and zero must be contiguous float32 [rows, groups]");
        if ((oi.itemsize != 4 && oi.itemsize != 2) || !is_contiguous(oi) || oi.size != qi.size)
          throw CodecException("dequantize_affine: out must be contiguous float32 or bfloat16, one value per symbol");
        const auto* qp = static_cast<const uint8_t*>(qi.ptr);
        const auto* sp = static_cast<const float*>(si.ptr);
        const auto* zp = static_cast<const float*>(zi.ptr);
        py::gil_scoped_release release;
        if (oi.itemsize == 4)
          dequant::affine_fp32(qp, rows, k, sp, zp, group_size, static_cast<float*>(oi.ptr));
        else
          dequant::affine_bf16(qp, rows, k, sp, zp, group_size, static_cast<uint16_t*>(oi.ptr));
      },
      py::arg("q"), py::arg("scale"), py::arg("zero"), py::arg("k"), py::arg("group_size"), py::arg("out"),
      "out = (q - zero) * scale per group of group_size along rows of k, in fp32, stored as fp32 or bf16 "
      "(out's item size: 4 or 2); quant.dequantize_affine's values, one pass.");

  py::class_<StreamTables>(m, "StreamTables",
                           "A stream's decode tables kept between affine_matvec calls (codec.h): checked against "
                           "the stream's header, code table and chunk index on every call, made again when they differ.")
      .def(py::init<>());

  m.def(
      "affine_matvec",
      [](py::buffer blob, uint64_t n, uint64_t k, uint64_t group_size, py::buffer scale, py::buffer zero,
         py::buffer escape_index, py::buffer escape_value, py::buffer x, py::buffer y, int threads,
         StreamTables* tables) {
        const py::buffer_info b = contiguous_bytes(blob, false, "blob");
        if (k == 0 || group_size == 0) throw CodecException("affine_matvec: k and group_size must be >= 1");
        const uint64_t groups = (k + group_size - 1) / group_size;
        const auto floats = [](const py::buffer& buf, bool writable, const char* what) {
          py::buffer_info info = buf.request(writable);
          if (!is_contiguous_float32(info))
            throw CodecException(std::string("affine_matvec: ") + what + " must be a contiguous float32 array");
          return info;
        };
        // scale and zero: both float32, or both float16 (the dtype packed weights store).
        const auto scales = [](const py::buffer& buf, const char* what) {
          py::buffer_info info = buf.request(false);
          const bool f32 = is_float32(info);
          const bool f16 = info.itemsize == 2 && info.format == "e";
          if (!(f32 || f16) || !is_contiguous(info))
            throw CodecException(std::string("affine_matvec: ") + what + " must be a contiguous float32 or float16 array");
          return info;
        };
        const py::buffer_info si = scales(scale, "scale"), zi = scales(zero, "zero");
        if (si.itemsize != zi.itemsize) throw CodecException("affine_matvec: scale and zero must have one dtype");
        const py::buffer_info vi = floats(escape_value, false, "escape_value");
        const py::buffer_info xi = floats(x, false, "x"), yi = floats(y, true, "y");
        const py::buffer_info ei = escape_index.request();
        if (ei.itemsize != 8 || (ei.format != "q" && ei.format != "l") || !is_contiguous(ei) || ei.size != vi.size)
          throw CodecException("affine_matvec: escape_index must be contiguous int64, one per escape_value");
        if (n > UINT64_MAX / groups || uint64_t(si.size) != n * groups ||
            (zi.size != 1 && uint64_t(zi.size) != n * groups))
          throw CodecException("affine_matvec: scale must be float32 [n, groups] and zero [n, groups] or one value");
        if (xi.size == 0 || uint64_t(xi.size) % k || uint64_t(xi.size) / k > UINT32_MAX ||
            uint64_t(yi.size) != uint64_t(xi.size) / k * n)
          throw CodecException("affine_matvec: x must be float32 [batch >= 1, k] and y float32 [batch, n]");
        const AffineMatvec w{n, k, group_size, si.ptr, zi.ptr, si.itemsize == 2,
                             zi.size == 1 && n * groups != 1, static_cast<const uint64_t*>(ei.ptr),
                             static_cast<const float*>(vi.ptr), uint64_t(vi.size)};
        Status st;
        {
          py::gil_scoped_release release;
          st = affine_matvec(static_cast<const uint8_t*>(b.ptr), size_t(b.size), w, static_cast<const float*>(xi.ptr),
                             uint32_t(uint64_t(xi.size) / k), static_cast<float*>(yi.ptr), threads, tables);
        }
        if (st == Status::BadArgument)
          throw CodecException("affine_matvec: the stream is not in chunks of whole rows of k, or an escape index "
                               "lies outside the weight");
        if (st == Status::OutputSize) throw CodecException("affine_matvec: the stream does not hold n x k symbols");
        check(st, "affine_matvec");
      },
      py::arg("blob"), py::arg("n"), py::arg("k"), py::arg("group_size"), py::arg("scale"), py::arg("zero"),
      py::arg("escape_index"), py::arg("escape_value"), py::arg("x"), py::arg("y"), py::arg("threads") = 0,
      py::arg("tables") = nullptr,
      "y = x w^T for an affine weight (w = (q - zero) * scale per group, escapes exact) without decoding it whole: "
      "each chunk of whole rows decoded and multiplied in a per-thread buffer. x: float32 [batch, k]; y: float32 "
      "[batch, n]; scale float32 or float16 [n, groups], zero the same dtype, [n, groups] or one value; escape_index "
      "int64; tables: a StreamTables kept for this stream between calls, or None.");

  m.def(
      "rate_quantize",
      [](py::buffer w, py::buffer step, int max_q, int zero, py::buffer q) {
        const py::buffer_info wi = w.request(), si = step.request();
        const py::buffer_info qi = contiguous_bytes(q, true, "q");
        if (!is_contiguous_float32(wi) || wi.ndim != 2)
          throw CodecException("rate_quantize: w must be a contiguous float32 [rows, k] array");
        const uint64_t rows = uint64_t(wi.shape[0]), k = uint64_t(wi.shape[1]);
        if (!is_contiguous_float32(si) || uint64_t(si.size) != rows)
          throw CodecException("rate_quantize: step must be a contiguous float32 array, one per row");
        if (uint64_t(qi.size) != rows * k) throw CodecException("rate_quantize: q must hold rows * k bytes");
        if (max_q < 0 || zero < 0 || zero + max_q > 255 || zero - max_q < 0)
          throw CodecException("rate_quantize: zero +- max_q must lie in 0..255");
        std::vector<int64_t> escapes;
        {
          py::gil_scoped_release release;
          quantize::rate_rows(static_cast<const float*>(wi.ptr), rows, k, static_cast<const float*>(si.ptr), max_q,
                              zero, static_cast<uint8_t*>(qi.ptr), escapes);
        }
        return escapes;
      },
      py::arg("w"), py::arg("step"), py::arg("max_q"), py::arg("zero"), py::arg("q"),
      "q = round(w / step[row]) + zero as bytes (fp32, round half to even); values beyond +-max_q and NaN weights "
      "are escapes (symbol zero), whose flat indices are returned. quant._rate_quantize's symbols, one pass "
      "(quantize.h).");

  m.def(
      "row_median_mad",
      [](py::buffer w, py::buffer med, py::buffer mad, int threads) {
        const py::buffer_info wi = w.request(), di = med.request(true), ai = mad.request(true);
        if (!is_contiguous_float32(wi) || wi.ndim != 2)
          throw CodecException("row_median_mad: w must be a contiguous float32 [rows, k] array");
        const uint64_t rows = uint64_t(wi.shape[0]), k = uint64_t(wi.shape[1]);
        for (const py::buffer_info* b : {&di, &ai})
          if (!is_contiguous_float32(*b) || uint64_t(b->size) != rows)
            throw CodecException("row_median_mad: med and mad must be contiguous float32 arrays, one value per row");
        py::gil_scoped_release release;
        return row_median_mad(static_cast<const float*>(wi.ptr), rows, k, static_cast<float*>(di.ptr),
                              static_cast<float*>(ai.ptr), threads);
      },
      py::arg("w"), py::arg("med"), py::arg("mad"), py::arg("threads") = 0,
      "Each row's lower median into med and the lower median of |w - med| (fp32) into mad, the values of "
      "quant._row_sigma's reference; False (med and mad unset) when w holds a NaN or an infinity (quantize.h).");

  m.def(
      "error_and_signal",
      [](py::buffer a, py::buffer b, int threads) {
        const py::buffer_info ai = a.request(), bi = b.request();
        for (const py::buffer_info* x : {&ai, &bi})
          if (!is_contiguous_float32(*x))
            throw CodecException("error_and_signal: a and b must be contiguous float32 arrays");
        if (ai.size != bi.size) throw CodecException("error_and_signal: a and b must hold as many values");
        double error = 0, signal = 0;
        {
          py::gil_scoped_release release;
          error_and_signal(static_cast<const float*>(ai.ptr), static_cast<const float*>(bi.ptr), uint64_t(ai.size),
                           &error, &signal, threads);
        }
        return py::make_tuple(error, signal);
      },
      py::arg("a"), py::arg("b"), py::arg("threads") = 0,
      "(sum (a - b)^2, sum a^2) over float32 arrays in double, one pass: an SQNR's two sums (quantize.h).");

  m.def(
      "affine_quantize",
      [](py::buffer w, py::buffer scale, py::buffer zero, uint64_t group_size, int qmax, py::buffer q) {
        const py::buffer_info wi = w.request(), si = scale.request(), zi = zero.request();
        const py::buffer_info qi = contiguous_bytes(q, true, "q");
        if (!is_contiguous_float32(wi) || wi.ndim != 2)
          throw CodecException("affine_quantize: w must be a contiguous float32 [rows, k] array");
        const uint64_t rows = uint64_t(wi.shape[0]), k = uint64_t(wi.shape[1]);
        if (group_size == 0 || qmax < 1 || qmax > 255)
          throw CodecException("affine_quantize: group_size must be >= 1 and qmax in 1..255");
        const uint64_t groups = (k + group_size - 1) / group_size;
        for (const py::buffer_info* b : {&si, &zi})
          if (!is_contiguous_float32(*b) || uint64_t(b->size) != rows * groups)
            throw CodecException("affine_quantize: scale and zero must be contiguous float32 [rows, groups]");
        if (uint64_t(qi.size) != rows * k) throw CodecException("affine_quantize: q must hold rows * k bytes");
        py::gil_scoped_release release;
        quantize::affine_rows(static_cast<const float*>(wi.ptr), rows, k, static_cast<const float*>(si.ptr),
                              static_cast<const float*>(zi.ptr), group_size, qmax, static_cast<uint8_t*>(qi.ptr));
      },
      py::arg("w"), py::arg("scale"), py::arg("zero"), py::arg("group_size"), py::arg("qmax"), py::arg("q"),
      "q = clamp(round(w / scale) + zero, 0, qmax) per group of group_size along rows (fp32, round half to even; "
      "zero whole numbers in 0..qmax): quant.quantize_int's symbols, one pass (quantize.h).");

  m.def(
      "decode_split",
      [](py::buffer blob, std::vector<uint32_t> values, int top, py::buffer raw, py::buffer out, int threads) {
        decode_split_into(blob, raw, out, "decode_split",
                          "decode_split: the values table, symbols or raw bits are inconsistent (corrupt weight)",
                          [&](const uint8_t* data, size_t len, const RawWords& words, auto* bits, uint64_t n_out) {
                            return decode_split(data, len, values.data(), uint32_t(values.size()), top, words.data,
                                                words.n, bits, n_out, threads);
                          });
      },
      py::arg("blob"), py::arg("values"), py::arg("top"), py::arg("raw"), py::arg("out"), py::arg("threads") = 0,
      "Decode a lossless split weight's stream and merge it with its raw bits into out (merge_split of decode), "
      "chunk by chunk.");

  // ---- CPU emulation of the windowed GEMV kernels (tests, and the reference for GPU runs)
  m.def(
      "emulate_gemv_affine",
      [](py::buffer blob, py::buffer scale, py::buffer zero, bool zero_broadcast, uint32_t group_size, uint32_t n_rows,
         uint32_t k, py::buffer x_t, py::object prefix, uint32_t batch, py::buffer y, py::buffer escape_row,
         py::buffer escape_col, py::buffer escape_value) {
        const py::buffer_info b = contiguous_bytes(blob, false, "blob");
        const py::buffer_info s = scale.request(), z = zero.request(), x = x_t.request();
        // None: no prefix sums, as the op passes where the zero point lies whole in the values
        const std::optional<py::buffer_info> p =
            prefix.is_none() ? std::nullopt : std::optional<py::buffer_info>(prefix.cast<py::buffer>().request());
        const py::buffer_info o = y.request(true);
        const py::buffer_info er = escape_row.request(), ec = escape_col.request(), ev = escape_value.request();
        if (er.itemsize != 4 || ec.itemsize != 4 || ev.itemsize != 4 || er.size != py::ssize_t(n_rows) + 1 ||
            ec.size != ev.size)
          throw CodecException("emulate_gemv_affine: escapes must be int32 row pointers [n_rows + 1], int32 columns "
                               "and float32 values");
        const int32_t* rp = static_cast<const int32_t*>(er.ptr);
        const int32_t* cp = static_cast<const int32_t*>(ec.ptr);
        if (rp[0] != 0 || rp[n_rows] != ec.size) throw CodecException("emulate_gemv_affine: escape rows inconsistent");
        for (uint32_t r = 0; r < n_rows; ++r)
          if (rp[r + 1] < rp[r]) throw CodecException("emulate_gemv_affine: escape rows not monotone");
        for (py::ssize_t e = 0; e < ec.size; ++e)
          if (cp[e] < 0 || uint32_t(cp[e]) >= k) throw CodecException("emulate_gemv_affine: escape column outside K");
        if (group_size == 0) throw CodecException("emulate_gemv_affine: group_size must be positive");
        const uint32_t groups = (k + group_size - 1) / group_size;
        if (s.itemsize != 2 || s.size != py::ssize_t(n_rows) * groups || z.itemsize != 2 ||
            z.size != (zero_broadcast ? 1 : s.size) || x.itemsize != 4 ||
            x.size != py::ssize_t(k + windowed::kXPadRows) * batch ||
            (p && (p->itemsize != 4 || p->size != py::ssize_t(k + 1) * batch)) || o.itemsize != 4 ||
            o.size != py::ssize_t(batch) * n_rows)
          throw CodecException("emulate_gemv_affine: argument sizes do not match the weight and batch");
        windowed::AffineArgs a;
        a.x = static_cast<const float*>(x.ptr);
        a.prefix = p ? static_cast<const float*>(p->ptr) : nullptr;
        a.scale = static_cast<const uint16_t*>(s.ptr);
        a.zero = static_cast<const uint16_t*>(z.ptr);
        a.n_rows = n_rows;
        a.k = k;
        a.group_size = group_size;
        a.n_groups = groups;
        a.zero_broadcast = zero_broadcast;
        a.zero_in_values = windowed::affine_zero_in_values(zero_broadcast, a.zero[0]);
        a.escape_row = ec.size ? rp : nullptr;
        a.escape_col = cp;
        a.escape_value = static_cast<const float*>(ev.ptr);
        a.n_escapes = uint32_t(ec.size);
        a.y = static_cast<float*>(o.ptr);
        check(emulate_gemv_affine(static_cast<const uint8_t*>(b.ptr), size_t(b.size), a, batch,
                                  cuda::affine_gemv_staged() != 0),
              "emulate_gemv_affine");
      },
      py::arg("blob"), py::arg("scale"), py::arg("zero"), py::arg("zero_broadcast"), py::arg("group_size"),
      py::arg("n_rows"), py::arg("k"), py::arg("x_t"), py::arg("prefix"), py::arg("batch"), py::arg("y"),
      py::arg("escape_row"), py::arg("escape_col"), py::arg("escape_value"),
      "The affine GEMV kernels, emulated on the CPU lane by lane (bit-exact with the GPU): the route "
      "affine_gemv_staged picks. prefix: the prefix sums of x, or None where the op passes none (a broadcast zero "
      "point that lies whole in the values).");

  m.def(
      "emulate_decode",
      [](py::buffer blob) {
        const py::buffer_info b = contiguous_bytes(blob, false, "blob");
        StreamInfo s = parse(b);
        std::vector<uint8_t> out(s.n_symbols);
        Status st;
        {
          py::gil_scoped_release release;
          st = emulate_decode(static_cast<const uint8_t*>(b.ptr), size_t(b.size), out.data(), out.size());
        }
        check(st, "emulate_decode");
        return py::bytes(reinterpret_cast<const char*>(out.data()), out.size());
      },
      py::arg("blob"), "The v2 decode kernel, emulated on the CPU lane by lane: the symbols, no checksum test.");

  m.def(
      "emulate_gemv_split",
      [](py::buffer blob, std::vector<uint32_t> values, int top, py::buffer raw, uint32_t n_rows, uint32_t k,
         py::buffer x_t, uint32_t batch, py::buffer y) {
        const py::buffer_info b = contiguous_bytes(blob, false, "blob");
        const py::buffer_info r = contiguous_bytes(raw, false, "raw");
        const py::buffer_info x = x_t.request();
        const py::buffer_info o = y.request(true);
        if (top < 8 || top > 16 || r.size % 4 || x.itemsize != 4 ||
            x.size != py::ssize_t(k + windowed::kXPadRows) * batch || o.itemsize != 4 ||
            o.size != py::ssize_t(batch) * n_rows)
          throw CodecException("emulate_gemv_split: argument sizes do not match the weight and batch");
        // The kernels' readable slack after the raw bits (their readers load ahead, unchecked).
        std::vector<uint32_t> words(size_t(r.size) / 4 + windowed::kSlackWords, 0);
        if (r.size) std::memcpy(words.data(), r.ptr, size_t(r.size));
        windowed::SplitArgs a;
        a.x = static_cast<const float*>(x.ptr);
        a.raw = words.data();
        a.raw_words = size_t(r.size) / 4;
        a.n_rows = n_rows;
        a.k = k;
        a.low = uint32_t(16 - top);
        a.y = static_cast<float*>(o.ptr);
        check(emulate_gemv_split(static_cast<const uint8_t*>(b.ptr), size_t(b.size), values.data(),
                                 uint32_t(values.size()), a, batch, cuda::split_gemv_staged() != 0),
              "emulate_gemv_split");
      },
      py::arg("blob"), py::arg("values"), py::arg("top"), py::arg("raw"), py::arg("n_rows"), py::arg("k"),
      py::arg("x_t"), py::arg("batch"), py::arg("y"),
      "The lossless (split bf16) GEMV kernels, emulated on the CPU lane by lane: the route the kernel takes "
      "under the split_gemv_staged setting (staged or fused).");

  m.def(
      "value_table",
      [](py::buffer blob, py::buffer value16) {
        const py::buffer_info b = contiguous_bytes(blob, false, "blob");
        const py::buffer_info v = value16.request();
        if (v.itemsize != 2 || v.size != 256) throw CodecException("value_table: expected 256 uint16 symbol values");
        std::vector<uint32_t> table(kDecodeTableEntries);
        uint8_t lengths[256];
        check(build_decode_table(static_cast<const uint8_t*>(b.ptr), size_t(b.size), table.data(), lengths),
              "value_table");
        std::vector<uint64_t> out(kDecodeTableEntries);
        build_value_table(table.data(), lengths, static_cast<const uint16_t*>(v.ptr), out.data());
        return py::bytes(reinterpret_cast<const char*>(out.data()), out.size() * sizeof(uint64_t));
      },
      py::arg("blob"), py::arg("value16"),
      "The 4096 64-bit value entries (windowed.h) of a v2 stream, given every symbol's 16-bit value.");

  m.def(
      "affine_values",
      [](bool zero_broadcast, uint16_t zero_half) {
        const float zc = windowed::affine_zero_in_values(zero_broadcast, zero_half);
        std::vector<uint16_t> value(256);
        windowed::affine_values(zc, value.data());
        return py::make_tuple(zc, value);
      },
      py::arg("zero_broadcast"), py::arg("zero_half"),
      "(zc, values): the constant zero point folded into affine value entries and bf16(q - zc) per symbol.");

  m.def(
      "split_values",
      [](std::vector<uint32_t> values, int top) {
        std::vector<uint16_t> value(256);
        if (top < 1 || top > 16) throw CodecException("split_values: top must be in [1, 16]");
        check(split_values(values.data(), uint32_t(values.size()), uint32_t(16 - top), value.data()), "split_values");
        return value;
      },
      py::arg("values"), py::arg("top"), "values[s] << (16 - top) per symbol (256 entries, zeros past the values).");

  m.def(
      "cpu_simd",
      [](py::object enabled) {
        if (!enabled.is_none()) simd_wanted().store(enabled.cast<bool>());
        return split::use_vbmi_merge();
      },
      py::arg("enabled") = py::none(),
      "Whether the CPU's vector paths run on AVX-512 VBMI (where the CPU has it): lossless mode's merge of "
      "16-bit floats, the Huffman encoder's lane sums and joined codes, rANS's encode and decode rounds, the "
      "chunk checksums hashed eight at a time (AVX-512 DQ). "
      "enabled=False forces the scalar paths (the same bytes), True restores the default; returns what is in use.");
  m.def("cuda_compiled", [] { return cuda::compiled(); }, "True when this build contains the CUDA kernels.");
  m.def("cuda_device_count", [] { return cuda::device_count(); }, "CUDA devices visible (0 without a driver).");
  def_kernel_setting(m, "warps_per_block", "warps", cuda::set_warps_per_block, cuda::warps_per_block,
                     "Warps per block (one chunk each) of the GPU's windowed decode and fused GEMVs: 4 by default, "
                     "1..16 (clamped), fewer at a launch whose shared memory or chunk count calls for it. warps sets "
                     "it; returns the value in use. For tuning: results are the same bits with any value.");
  def_kernel_setting(
      m, "gemv_x_shared_bytes", "bytes", cuda::set_gemv_x_shared_bytes, cuda::gemv_x_shared_bytes,
      "The largest x ((K + 3) x padded batch x 4 bytes) that the fused GEMV kernels copy into each block's shared "
      "memory instead of reading it from global memory: 64 KiB by default and at most, 0 never. bytes sets it; "
      "returns the value in use. For side-by-side timings: the outputs are the same bits either way.");
  def_kernel_setting(
      m, "decode_stage_symbols", "symbols", cuda::set_decode_stage_symbols, cuda::decode_stage_symbols_limit,
      "The longest chunk (symbols) that the GPU's windowed decode stages in shared memory and writes out whole, "
      "rather than byte by byte to global memory: 16384 by default and at most, 0 never. symbols sets it; returns "
      "the value in use. For side-by-side timings: the output is the same bytes either way.");
  def_kernel_setting(
      m, "split_gemv_staged", "on", cuda::set_split_gemv_staged, cuda::split_gemv_staged,
      "1 (default): lossless GEMVs whose K is a multiple of 8 and whose chunks hold at most 16384 symbols take the "
      "staged kernel (the chunk decoded into shared memory, then multiplied 8 columns a lane); 0: always the fused "
      "kernel. on sets it (clamped to 0..1); returns the value in use. The two add in different orders, so their "
      "outputs may differ in the last bits; the CPU emulation follows the setting.");
  def_kernel_setting(
      m, "affine_gemv_staged", "on", cuda::set_affine_gemv_staged, cuda::affine_gemv_staged,
      "1 (default): affine GEMVs at batch 1 whose zero point lies whole in the values (rate mode's), with one group "
      "a row, K a multiple of 8 and chunks of at most 16384 symbols take the staged kernel (the chunk decoded into shared "
      "memory, then multiplied 8 columns a lane); 0: always the fused kernel. on sets it (clamped to 0..1); "
      "returns the value in use. The two add in different orders, so their outputs may differ in the last bits; "
      "the CPU emulation follows the setting.");
  def_kernel_setting(
      m, "fixed12_tensor_cores", "on", cuda::set_fixed12_tensor_cores, cuda::fixed12_tensor_cores,
      "1 (default): fixed12 GEMVs with bf16 activations take the tensor-core kernel (16 rows a block, "
      "mma.m16n8k16 on the decoded pairs); 0: the CUDA-core kernel (one warp a row, one FMA a weight a batch row). "
      "on sets it (clamped to 0..1); returns the value in use. The two add in different orders; the CPU emulation "
      "follows the setting.");
  def_kernel_setting(
      m, "stream_shared", "on", cuda::set_stream_shared, cuda::stream_shared,
      "1 (default): each warp of the GPU's v2 decodes and GEMVs (not the tile kernel) copies its chunk's words "
      "into shared memory with whole-line loads before its lanes decode them, where a block of one warp fits; "
      "0: lanes read their windows from global memory (~32 cache lines a warp-wide load). on sets it (clamped "
      "to 0..1); returns the value in use. For side-by-side timings: the same output for a valid stream.");
  def_kernel_setting(
      m, "stage_word_stores", "on", cuda::set_stage_word_stores, cuda::stage_word_stores,
      "1 (default): the GPU's staged decodes (decode to symbols, to a lossless weight's floats, the staged lossless "
      "GEMV) store each lane's symbols into shared memory a 32-bit word at a time; 0: byte by byte (three stores "
      "a table entry, at scattered banks). on sets it (clamped to 0..1); returns the value in use. For "
      "side-by-side timings: the same stage, so the same output, either way.");
}
