// pycodec._C: the one place where C++ meets Python. Buffers in, buffers out; no torch.
// Every non-Ok Status becomes pycodec.CodecError (a ValueError) carrying the core's message.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <string>
#include <vector>

#include "codec/codec.h"
#include "codec/emulate.h"
#include "codec/format.h"
#include "codec/huffman.h"
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
  if (st != Status::Ok) throw CodecException(std::string(where) + ": " + status_message(st));
}

Coder parse_coder(const std::string& name) {
  if (name == "huffman") return Coder::Huffman;
  if (name == "rans") return Coder::Rans;
  throw CodecException("unknown coder '" + name + "' (expected 'huffman' or 'rans')");
}

const char* coder_name(Coder c) { return c == Coder::Huffman ? "huffman" : "rans"; }

py::buffer_info contiguous_bytes(const py::buffer& b, bool writable, const char* what) {
  py::buffer_info info = b.request(writable);
  if (info.itemsize != 1) throw CodecException(std::string(what) + " must be a buffer of bytes (uint8)");
  // A buffer of one dimension or a C-contiguous array of any shape.
  py::ssize_t expect = 1;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[d] != 1 && info.strides[d] != expect) throw CodecException(std::string(what) + " must be C-contiguous");
    expect *= info.shape[d];
  }
  return info;
}

StreamInfo parse(const py::buffer_info& b) {
  StreamInfo s;
  check(parse_header(static_cast<const uint8_t*>(b.ptr), size_t(b.size), &s), "decode");
  return s;
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
        std::vector<uint8_t> blob;
        Status st;
        {
          py::gil_scoped_release release;
          st = encode(static_cast<const uint8_t*>(in.ptr), shape.data(), int(shape.size()), opt, &blob);
        }
        if (st == Status::BadArgument)
          throw CodecException(
              "encode: invalid layout: format version 2 (huffman) takes chunk_symbols in [1, " +
              std::to_string(kMaxChunkSymbolsV2) + "] and lanes in [1, 32], fewer lanes than a chunk's symbols can "
              "fill, and one lane for a single distinct symbol; version 1 (rans) takes chunk_symbols a multiple of "
              "32 in [32, " + std::to_string(kMaxChunkSymbols) + "]");
        check(st, "encode");
        return py::bytes(reinterpret_cast<const char*>(blob.data()), blob.size());
      },
      py::arg("symbols"), py::arg("shape"), py::arg("coder"), py::arg("chunk_symbols") = 0, py::arg("threads") = 0,
      py::arg("lanes") = 0, py::arg("format_version") = 0,
      "Encode a C-contiguous uint8 buffer; returns the stream bytes.");

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
        d["side_bits"] = side_bits(static_cast<const uint8_t*>(b.ptr), s);
        d["payload_bits"] = 8 * uint64_t(s.total_bytes) - side_bits(static_cast<const uint8_t*>(b.ptr), s);
        return d;
      },
      py::arg("blob"), "Validate a stream's header, table and index and describe it (no decoding).");

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
      "decode_table",
      [](py::buffer blob) {
        const py::buffer_info b = contiguous_bytes(blob, false, "blob");
        std::vector<uint32_t> table(kDecodeTableEntries + 256 / 4);
        check(build_decode_table(static_cast<const uint8_t*>(b.ptr), size_t(b.size), table.data(),
                                 reinterpret_cast<uint8_t*>(table.data() + kDecodeTableEntries)),
              "decode_table");
        return py::bytes(reinterpret_cast<const char*>(table.data()), table.size() * sizeof(uint32_t));
      },
      py::arg("blob"),
      "The stream's decode tables for GPU upload: 4096 uint32 entries (v1 per-symbol, v2 multi-symbol), "
      "then the 256 Huffman code lengths as bytes (zeros for rANS).");

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

  m.def(
      "cuda_gemv_affine",
      [](int coder, uint64_t n_symbols, uint32_t chunk_symbols, uint64_t n_chunks, uintptr_t index_dev,
         uintptr_t payload_dev, uint64_t payload_words, uintptr_t table_dev, uintptr_t scale_dev, uintptr_t zero_dev,
         bool zero_broadcast, uint32_t group_size, uint32_t n_rows, uint32_t k, uintptr_t x_dev, uint32_t batch,
         uintptr_t y_dev, uintptr_t stream) {
        cuda::DeviceStream s{uint8_t(coder), n_symbols, chunk_symbols, n_chunks,
                             reinterpret_cast<const uint32_t*>(index_dev), reinterpret_cast<const uint32_t*>(payload_dev),
                             payload_words, reinterpret_cast<const uint32_t*>(table_dev)};
        if (!cuda::gemv_affine_supported(n_symbols, chunk_symbols, group_size, n_rows, k, batch))
          throw CodecException("cuda_gemv_affine: unsupported shape (needs K % 64 == 0, chunk_symbols % K == 0, "
                               "n_symbols == N * K, batch 1..8, even group_size >= 64)");
        check(cuda::gemv_affine(s, reinterpret_cast<const uint16_t*>(scale_dev), reinterpret_cast<const uint16_t*>(zero_dev),
                                zero_broadcast, group_size, n_rows, k, reinterpret_cast<const uint16_t*>(x_dev), batch,
                                reinterpret_cast<float*>(y_dev), stream),
              "cuda_gemv_affine");
      },
      py::arg("coder"), py::arg("n_symbols"), py::arg("chunk_symbols"), py::arg("n_chunks"), py::arg("index_dev"),
      py::arg("payload_dev"), py::arg("payload_words"), py::arg("table_dev"), py::arg("scale_dev"), py::arg("zero_dev"),
      py::arg("zero_broadcast"), py::arg("group_size"), py::arg("n_rows"), py::arg("k"), py::arg("x_dev"),
      py::arg("batch"), py::arg("y_dev"), py::arg("stream"),
      "Fused decode + affine dequant + GEMV (y fp32 [batch, n_rows] = x bf16 [batch, k] @ W.T) on a CUDA stream.");

  m.def(
      "split_float",
      [](py::buffer bits, int width) {
        const py::buffer_info b = bits.request();
        if ((width != 16 && width != 32) || b.itemsize != width / 8)
          throw CodecException("split_float: expected a contiguous buffer of 16- or 32-bit float bit patterns");
        const uint64_t n = uint64_t(b.size);
        split::Plan plan;
        std::vector<uint8_t> symbols(n);
        std::vector<uint32_t> raw;
        Status st;
        {
          py::gil_scoped_release release;
          st = width == 16 ? split::make_plan(static_cast<const uint16_t*>(b.ptr), n, &plan)
                           : split::make_plan(static_cast<const uint32_t*>(b.ptr), n, &plan);
          if (st == Status::Ok) {
            raw.resize(split::raw_words(n, width - plan.top));
            if (width == 16) split::apply_plan(static_cast<const uint16_t*>(b.ptr), n, plan, symbols.data(), raw.data());
            else split::apply_plan(static_cast<const uint32_t*>(b.ptr), n, plan, symbols.data(), raw.data());
          }
        }
        check(st, "split_float");
        return py::make_tuple(plan.top, std::vector<uint32_t>(plan.values, plan.values + plan.n_values),
                              py::bytes(reinterpret_cast<const char*>(symbols.data()), symbols.size()),
                              py::bytes(reinterpret_cast<const char*>(raw.data()), 4 * raw.size()));
      },
      py::arg("bits"), py::arg("width"),
      "Split float bit patterns into (top, values, symbols, raw): symbol i numbers bits[i]'s top `top` bits "
      "among the ascending distinct `values`; raw holds the low bits (split.h).");

  m.def(
      "merge_split",
      [](py::buffer symbols, std::vector<uint32_t> values, int top, py::buffer raw, py::buffer out) {
        const py::buffer_info s = contiguous_bytes(symbols, false, "symbols");
        const py::buffer_info r = contiguous_bytes(raw, false, "raw");
        const py::buffer_info o = out.request(true);
        if ((o.itemsize != 2 && o.itemsize != 4) || o.size != s.size)
          throw CodecException("merge_split: out must hold one 16- or 32-bit value per symbol");
        if (r.size % 4) throw CodecException("merge_split: raw must be whole 32-bit words");
        std::vector<uint32_t> words(size_t(r.size) / 4);
        if (!words.empty()) std::memcpy(words.data(), r.ptr, size_t(r.size));
        Status st;
        {
          py::gil_scoped_release release;
          const auto* sym = static_cast<const uint8_t*>(s.ptr);
          st = o.itemsize == 2
                   ? split::merge(sym, uint64_t(s.size), values.data(), uint32_t(values.size()), top, words.data(),
                                  words.size(), static_cast<uint16_t*>(o.ptr))
                   : split::merge(sym, uint64_t(s.size), values.data(), uint32_t(values.size()), top, words.data(),
                                  words.size(), static_cast<uint32_t*>(o.ptr));
        }
        if (st != Status::Ok)
          throw CodecException("merge_split: the values table, symbols or raw bits are inconsistent (corrupt weight)");
      },
      py::arg("symbols"), py::arg("values"), py::arg("top"), py::arg("raw"), py::arg("out"),
      "Inverse of split_float: out[i] = values[symbols[i]] << (width - top) | raw field i.");

  // ---- CPU emulation of the windowed GEMV kernels (tests, and the reference for GPU runs)
  m.def(
      "emulate_gemv_affine",
      [](py::buffer blob, py::buffer scale, py::buffer zero, bool zero_broadcast, uint32_t group_size, uint32_t n_rows,
         uint32_t k, py::buffer x_t, py::buffer prefix, uint32_t batch, py::buffer y) {
        const py::buffer_info b = contiguous_bytes(blob, false, "blob");
        const py::buffer_info s = scale.request(), z = zero.request(), x = x_t.request(), p = prefix.request();
        const py::buffer_info o = y.request(true);
        if (group_size == 0) throw CodecException("emulate_gemv_affine: group_size must be positive");
        const uint32_t groups = (k + group_size - 1) / group_size;
        if (s.itemsize != 2 || s.size != py::ssize_t(n_rows) * groups || z.itemsize != 2 ||
            z.size != (zero_broadcast ? 1 : s.size) || x.itemsize != 4 ||
            x.size != py::ssize_t(k + windowed::kXPadRows) * batch || p.itemsize != 4 ||
            p.size != py::ssize_t(k + 1) * batch || o.itemsize != 4 || o.size != py::ssize_t(batch) * n_rows)
          throw CodecException("emulate_gemv_affine: argument sizes do not match the weight and batch");
        windowed::AffineArgs a;
        a.x = static_cast<const float*>(x.ptr);
        a.prefix = static_cast<const float*>(p.ptr);
        a.scale = static_cast<const uint16_t*>(s.ptr);
        a.zero = static_cast<const uint16_t*>(z.ptr);
        a.n_rows = n_rows;
        a.k = k;
        a.group_size = group_size;
        a.n_groups = groups;
        a.zero_broadcast = zero_broadcast;
        a.y = static_cast<float*>(o.ptr);
        check(emulate_gemv_affine(static_cast<const uint8_t*>(b.ptr), size_t(b.size), a, batch), "emulate_gemv_affine");
      },
      py::arg("blob"), py::arg("scale"), py::arg("zero"), py::arg("zero_broadcast"), py::arg("group_size"),
      py::arg("n_rows"), py::arg("k"), py::arg("x_t"), py::arg("prefix"), py::arg("batch"), py::arg("y"),
      "The fused affine GEMV kernel, emulated on the CPU lane by lane (bit-exact with the GPU).");

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
        std::vector<uint32_t> words(size_t(r.size) / 4);
        if (!words.empty()) std::memcpy(words.data(), r.ptr, size_t(r.size));
        windowed::SplitArgs a;
        a.x = static_cast<const float*>(x.ptr);
        a.raw = words.data();
        a.raw_words = words.size();
        a.n_rows = n_rows;
        a.k = k;
        a.low = uint32_t(16 - top);
        a.y = static_cast<float*>(o.ptr);
        check(emulate_gemv_split(static_cast<const uint8_t*>(b.ptr), size_t(b.size), values.data(),
                                 uint32_t(values.size()), a, batch),
              "emulate_gemv_split");
      },
      py::arg("blob"), py::arg("values"), py::arg("top"), py::arg("raw"), py::arg("n_rows"), py::arg("k"),
      py::arg("x_t"), py::arg("batch"), py::arg("y"),
      "The fused lossless (split bf16) GEMV kernel, emulated on the CPU lane by lane.");

  m.def(
      "value_table",
      [](py::buffer blob, std::vector<uint32_t> values, int top) {
        const py::buffer_info b = contiguous_bytes(blob, false, "blob");
        std::vector<uint32_t> table(kDecodeTableEntries + 64);
        check(build_decode_table(static_cast<const uint8_t*>(b.ptr), size_t(b.size), table.data()), "value_table");
        std::vector<uint64_t> out(kDecodeTableEntries);
        check(build_value_table(table.data(), values.data(), uint32_t(values.size()), uint32_t(16 - top), out.data()),
              "value_table");
        return py::bytes(reinterpret_cast<const char*>(out.data()), out.size() * sizeof(uint64_t));
      },
      py::arg("blob"), py::arg("values"), py::arg("top"),
      "The 4096 64-bit value entries (windowed.h) of a v2 stream of split-float symbols, for GPU upload.");

  m.def("cuda_compiled", [] { return cuda::compiled(); }, "True when this build contains the CUDA kernels.");
  m.def("cuda_device_count", [] { return cuda::device_count(); }, "CUDA devices visible (0 without a driver).");
}
