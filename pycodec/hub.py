"""Save and load compressed models: safetensors shards + config.json with a quantization_config.

``quantization_config`` holds ``quant_method: "pycodec"``, the CompressionConfig and, per
compressed module, the shapes of its buffers, so a loader can build the exact modules
before any tensor is read. Loading never unpickles. Every tensor is saved with a checksum
(hash64 of its bytes, docs/FORMAT.md section 11; dense tensors, scales and escapes included)
that pycodec.from_pretrained checks, and every stream's own header and decoded-symbol checksums
are verified when it is decoded; a failure names the tensor.
"""
from __future__ import annotations

import json
import math
import os

import torch
from torch import nn

from .codec import CodecError, _C
from .config import CompressionConfig
from .attention import IN_PROJ, CompressedMultiheadAttention, install_attention, is_packed_attention
from .experts import CompressedExperts, install_bank
from .nn import (COMPRESSED_MODULES, CompressedConv1D, CompressedEmbedding, CompressedLinear, _packed_key,
                 _set_submodule, buffer_dtype, embedding_scale, is_conv1d)

QUANT_METHOD = "pycodec"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
STREAM_BUFFERS = ("symbols", "plane0", "plane1", "plane2", "plane3")  # "raw" (split layout) is not a stream


def _quantization_config(model: nn.Module) -> dict:
    cfg = getattr(model, "pycodec_config", None)
    if cfg is None:
        raise CodecError("model has not been compressed: call pycodec.compress_(model, config) first")
    modules, owners = {}, {}
    banks = {name: m for name, m in model.named_modules() if isinstance(m, CompressedExperts)}
    for name, bank in banks.items():
        first = bank.linear(0)
        modules[name] = {"class": "CompressedExperts", "transposed": bank.transposed,
                         "in_features": first.in_features, "out_features": first.out_features,
                         "experts": [{b: list(t.shape) for b, t in bank.linear(e).packed().items()}
                                     for e in range(len(bank))]}
    for name, m in model.named_modules():
        if name.rpartition(".")[0] in banks:  # listed with its bank
            continue
        if isinstance(m, tuple(COMPRESSED_MODULES.values())):
            entry = {"class": type(m).__name__, "buffers": {b: list(t.shape) for b, t in m.packed().items()}}
            parent_name, _, child = name.rpartition(".")
            if child == IN_PROJ and isinstance(model.get_submodule(parent_name), CompressedMultiheadAttention):
                entry["attention_in_proj"] = True  # the attention's own parameters, not a module of the model
            if getattr(m, "output_scale", None) is not None:
                entry["output_scale"] = list(m.output_scale)
            key = _packed_key(m)
            if key in owners:  # a tied weight: stored once, under the first module that holds it
                entry["shares"] = owners[key]
            else:
                owners[key] = name
            modules[name] = entry
    return {"quant_method": QUANT_METHOD, **cfg.to_dict(), "format_version": int(_C.FORMAT_VERSION), "modules": modules}


CHECKSUMS_KEY = "pycodec_checksums"  # safetensors metadata: JSON {tensor name: tensor_checksum}
# safetensors metadata: how those checksums are computed. Absent in checkpoints written before
# 2026-11-30's eighth session, whose checksums are BLAKE2b-64: they still load.
CHECKSUM_ALGORITHM_KEY = "pycodec_checksum_algorithm"
CHECKSUM_ALGORITHM = "hash64"
LEGACY_CHECKSUM_ALGORITHM = "blake2b-64"


def tensor_checksum(t: torch.Tensor, algorithm: str = CHECKSUM_ALGORITHM) -> str:
    """The checksum of a tensor's bytes (hex), whatever its dtype, hashed in place: no copy of a
    contiguous CPU tensor, so a memory-mapped one is read once, not duplicated. ``hash64`` is
    the streams' own checksum (docs/FORMAT.md section 5.1), ~20 GB/s on one core in C++, where
    BLAKE2b ran at 1.4 GB/s and took longer than decoding a lossless model (0.13 s of SmolLM2's
    0.58 s load on one thread); it detects damage, not tampering, as BLAKE2b-64 did here."""
    data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    if algorithm == CHECKSUM_ALGORITHM:
        return f"{_C.hash64(data):016x}"
    if algorithm == LEGACY_CHECKSUM_ALGORITHM:
        import hashlib

        return hashlib.blake2b(data, digest_size=8).hexdigest()
    raise CodecError(f"unknown checksum algorithm {algorithm!r}: this pycodec knows "
                     f"{CHECKSUM_ALGORITHM!r} and {LEGACY_CHECKSUM_ALGORITHM!r}")


def _save_tensors(tensors: dict, path: str, metadata: dict) -> None:
    """safetensors' save_file with a checksum of every tensor in the metadata (dense ones, side
    information and escapes too: only the streams carry their own), and the mode open() would
    give (safetensors creates files 0600)."""
    from safetensors.torch import save_file

    sums = {name: tensor_checksum(t) for name, t in tensors.items()}
    save_file(tensors, path, metadata={**metadata, CHECKSUMS_KEY: json.dumps(sums),
                                       CHECKSUM_ALGORITHM_KEY: CHECKSUM_ALGORITHM})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save_pretrained(model: nn.Module, out_dir: str, tokenizer=None, max_shard_bytes: int = 2 << 30) -> None:
    """Write a compressed model to ``out_dir`` (safetensors shards, config.json, tokenizer)."""
    os.makedirs(out_dir, exist_ok=True)
    qcfg = _quantization_config(model)
    shared = {f"{name}.{b}" for name, e in qcfg["modules"].items() if "shares" in e for b in e["buffers"]}
    state, seen = {}, {}
    for key, t in model.state_dict().items():
        if key in shared:  # its owner's tensors (empty ones too, which have no storage to compare)
            continue
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        if ptr is not None and ptr in seen:  # tied weights: stored once, re-tied on load
            continue
        if ptr is not None:
            seen[ptr] = key
        state[key] = t.detach().cpu().contiguous()
    shards, cur, cur_bytes = [], {}, 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if cur and cur_bytes + nbytes > max_shard_bytes:
            shards.append(cur)
            cur, cur_bytes = {}, 0
        cur[key] = t
        cur_bytes += nbytes
    shards.append(cur)
    meta = {"format": "pt", "pycodec_format_version": str(_C.FORMAT_VERSION)}
    if len(shards) == 1:
        _save_tensors(shards[0], os.path.join(out_dir, WEIGHTS_NAME), meta)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _save_tensors(shard, os.path.join(out_dir, fname), meta)
            weight_map.update({k: fname for k in shard})
        with open(os.path.join(out_dir, INDEX_NAME), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)
    config = getattr(model, "config", None)
    cfg_dict = config.to_dict() if config is not None and hasattr(config, "to_dict") else {}
    if cfg_dict and not cfg_dict.get("architectures"):
        # As transformers' save_pretrained records it: which class to build at load (a BertModel
        # or a T5 made from a config has none, and the loader's fallback is a causal LM).
        cfg_dict["architectures"] = [type(model).__name__]
    cfg_dict["quantization_config"] = qcfg
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2, default=str)
    gen = getattr(model, "generation_config", None)
    if gen is not None and hasattr(gen, "save_pretrained"):
        gen.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


SAFETENSORS_DTYPES = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16,
                      "I32": torch.int32, "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16,
                      "F32": torch.float32, "F64": torch.float64}
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on its JSON header


def _mmap_safetensors(path: str) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file whose tensors are views of a private,
    read-only-by-convention memory map of it: nothing is read until a tensor's bytes are."""
    import struct

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CodecError(f"{path}: not a readable safetensors file (truncated)")
        (n,) = struct.unpack("<Q", head)
        if not 0 < n <= min(MAX_HEADER_BYTES, size - 8):
            raise CodecError(f"{path}: not a readable safetensors file (header of {n} bytes)")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise CodecError(f"{path}: not a readable safetensors file (damaged header)") from None
    if not isinstance(header, dict):
        raise CodecError(f"{path}: not a readable safetensors file (damaged header)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CodecError(f"{path}: not a readable safetensors file (damaged metadata)")
    storage = torch.UntypedStorage.from_file(path, shared=False, nbytes=size)  # MAP_PRIVATE: pages load lazily
    base = 8 + n
    tensors = {}
    for name, entry in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = [int(d) for d in entry["shape"]]
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CodecError(f"{path}: tensor {name!r} has a damaged header entry") from None
        itemsize = torch.empty(0, dtype=dtype).element_size()
        count = math.prod(shape)
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= size - base or end - begin != count * itemsize:
            raise CodecError(f"{path}: tensor {name!r} has a damaged header entry")
        raw = torch.empty(0, dtype=torch.uint8).set_(storage, base + begin, (end - begin,))
        if (base + begin) % itemsize == 0:
            tensors[name] = torch.empty(0, dtype=dtype).set_(storage, (base + begin) // itemsize, shape)
        else:  # unaligned (not written by safetensors' own writer): a copy
            tensors[name] = raw.clone().view(dtype).reshape(shape)
    return tensors, metadata


def _checksums(path: str, metadata: dict) -> tuple[dict, str] | None:
    """The file's {tensor name: checksum} and the algorithm that made them; None without any."""
    if CHECKSUMS_KEY not in metadata:
        return None
    try:
        sums = json.loads(metadata[CHECKSUMS_KEY])
    except ValueError:
        raise CodecError(f"{path}: its tensor checksums are damaged") from None
    if not isinstance(sums, dict):
        raise CodecError(f"{path}: its tensor checksums are damaged")
    algorithm = metadata.get(CHECKSUM_ALGORITHM_KEY, LEGACY_CHECKSUM_ALGORITHM)
    if algorithm not in (CHECKSUM_ALGORITHM, LEGACY_CHECKSUM_ALGORITHM):
        raise CodecError(f"{path}: its tensor checksums use {algorithm!r}, which this pycodec does not know "
                         f"({CHECKSUM_ALGORITHM!r} or {LEGACY_CHECKSUM_ALGORITHM!r}); a newer pycodec wrote it?")
    return sums, algorithm


def check_tensor(name: str, t: torch.Tensor, expected: str | None, path: str,
                 algorithm: str = CHECKSUM_ALGORITHM) -> None:
    """Raises, naming the tensor, when its bytes do not match the checksum saved beside it."""
    if expected != tensor_checksum(t, algorithm):
        raise CodecError(f"tensor {name!r} in {path}: checksum mismatch (the file is damaged)")


def _read_state(src: str, mmap: bool = False, lazy: frozenset | set = frozenset()) -> tuple[dict, dict, set]:
    """Every tensor of a checkpoint; {name: (checksum, file, algorithm)} of those not checked
    yet; and the names of those checked now.

    Each tensor is checked against the checksum saved beside it, now, unless its name is in
    ``lazy`` (then its check is returned, for the module that reads it to run on first use:
    see nn._DecodedWeight.verify). With ``mmap``, tensors are views of the mapped files.
    (Checkpoints written before checksums are read unchecked; their streams still carry their own.)
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    index = os.path.join(src, INDEX_NAME)
    files = [WEIGHTS_NAME]
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    state, pending, checked = {}, {}, set()
    for fname in files:
        path = os.path.join(src, fname)
        try:
            if mmap:
                tensors, metadata = _mmap_safetensors(path)
            else:
                with safe_open(path, framework="pt") as f:
                    metadata = f.metadata() or {}
                tensors = load_file(path)
        except CodecError:
            raise
        except Exception as e:  # safetensors raises its own types for damaged headers
            raise CodecError(f"{path}: not a readable safetensors file ({e})") from e
        found = _checksums(path, metadata)
        if found is not None:
            sums, algorithm = found
            for name, t in tensors.items():
                if name in lazy:
                    pending[name] = (sums.get(name), path, algorithm)
                else:
                    check_tensor(name, t, sums.get(name), path, algorithm)
                    checked.add(name)
        state.update(tensors)
    return state, pending, checked


def verify_streams(state: dict, checked: frozenset | set = frozenset()) -> None:
    """Decode every stream once (chunk by chunk) so a damaged tensor fails at load, by name;
    except those in ``checked``, whose bytes a checksum has matched: they are the bytes that
    were written (decoding them here took 0.15 s of SmolLM2's 0.58 s lossless load on one thread,
    to find what the checksum had shown). Their symbols' own checksum is checked again wherever a
    stream is decoded whole (lossless weights, decode, a move to a GPU); the CPU's fused matvec
    and row lookups, which decode chunks, rely on the stream's header checksum and bounds checks."""
    for key, t in state.items():
        prefix, _, buffer = key.rpartition(".")
        if buffer not in STREAM_BUFFERS or t.dtype != torch.uint8 or key in checked:
            continue
        if buffer.startswith("plane"):  # lossless planes are streams only where plane_coded says so
            flags = state.get(f"{prefix}.plane_coded")
            if flags is None or int(buffer[5:]) >= flags.numel():
                raise CodecError(f"tensor {key!r}: its module has no plane_coded entry for it")
            if not int(flags[int(buffer[5:])]):
                continue
        try:
            _C.histogram(t.contiguous().numpy(), 0)
        except CodecError as e:
            raise CodecError(f"tensor {key!r}: {e}") from None


def build_module(old: nn.Module, entry: dict, name: str, state: dict | None = None, device=None,
                 exact_outputs: bool = False) -> nn.Module:
    """The compressed module that replaces ``old``, from a quantization_config modules entry.

    With ``state``, its buffers are the checkpoint's tensors (shapes checked); without, they
    are empty tensors on ``device`` for a loader to fill.
    """
    cls_name, shapes = entry.get("class"), entry.get("buffers")
    if cls_name not in COMPRESSED_MODULES or not isinstance(shapes, dict):
        raise CodecError(f"quantization_config entry for {name!r} is malformed: {entry!r:.200}")
    fits = {"CompressedLinear": lambda m: isinstance(m, nn.Linear), "CompressedConv1D": is_conv1d,
            "CompressedEmbedding": lambda m: isinstance(m, nn.Embedding)}[cls_name]
    if not fits(old):
        raise CodecError(f"module {name!r} is a {type(old).__name__}, config says {cls_name}")
    packed = _packed_of(name, shapes, state, device)
    if cls_name == "CompressedEmbedding":
        return CompressedEmbedding(old.num_embeddings, old.embedding_dim, packed, old.padding_idx,
                                   _output_scale(old, entry, name))
    cls = COMPRESSED_MODULES[cls_name]
    # Conv1D holds W as [in, out]; its compressed module codes it as a linear's [out, in].
    in_features, out_features = old.weight.shape if cls is CompressedConv1D else (old.in_features, old.out_features)
    bias = None
    if old.bias is not None:
        bias = state.get(f"{name}.bias") if state is not None else torch.empty(out_features, device=device)
    return cls(in_features, out_features, packed, bias, exact_outputs=exact_outputs)


def _output_scale(old: nn.Module, entry: dict, name: str) -> tuple[str, float] | None:
    """The output scale of the embedding ``name``: the checkpoint's; else, for a checkpoint
    written before pycodec kept one, that of the model's own scaled embedding (its table was
    stored unscaled either way). Any other embedding whose class overrides forward is refused:
    a plain lookup would silently differ from it."""
    if "output_scale" in entry:
        scale = entry["output_scale"]
        if not isinstance(scale, list):
            raise CodecError(f"quantization_config entry for {name!r} is malformed: output_scale {scale!r:.100}")
        return tuple(scale)
    if type(old).forward is nn.Embedding.forward:
        return None
    scale = embedding_scale(old)
    if scale is None:
        raise CodecError(f"module {name!r} is a {type(old).__name__}, whose forward is not a plain lookup; "
                         "this checkpoint replaces it by one: compress the model again with this pycodec")
    return scale


def _packed_of(name: str, shapes, state: dict | None, device) -> dict:
    """A compressed module's packed tensors: the checkpoint's (shapes checked), or empty ones on
    ``device`` for a loader to fill."""
    if not isinstance(shapes, dict):
        raise CodecError(f"quantization_config entry for {name!r} is malformed: buffers {shapes!r:.200}")
    if state is None:
        return {b: torch.empty(shape, dtype=buffer_dtype(b), device=device) for b, shape in shapes.items()}
    packed = {}
    for b, shape in shapes.items():
        key = f"{name}.{b}"
        if key not in state:
            raise CodecError(f"checkpoint lacks tensor {key!r}")
        if list(state[key].shape) != list(shape):
            raise CodecError(f"tensor {key!r} has shape {list(state[key].shape)}, config says {shape}")
        packed[b] = state[key]
    return packed


def packed_modules(modules: dict) -> list[tuple[str, dict]]:
    """(module name, {buffer: shape}) of every module of quantization_config that stores packed
    tensors: an experts bank's experts one by one ("<bank>.<expert>"), no module that shares."""
    out = []
    for name, entry in modules.items():
        if not isinstance(entry, dict) or "shares" in entry:
            continue
        if entry.get("class") == "CompressedExperts" and isinstance(entry.get("experts"), list):
            out += [(f"{name}.{e}", shapes) for e, shapes in enumerate(entry["experts"]) if isinstance(shapes, dict)]
        elif isinstance(entry.get("buffers"), dict):
            out.append((name, entry["buffers"]))
    return out


def build_experts(parent: nn.Module, attr: str, entry: dict, name: str, state: dict | None = None, device=None,
                  exact_outputs: bool = False) -> CompressedExperts:
    """The CompressedExperts that replaces ``parent``'s expert parameter ``attr``."""
    experts, transposed = entry.get("experts"), entry.get("transposed")
    n_in, n_out = entry.get("in_features"), entry.get("out_features")
    if (not isinstance(experts, list) or not experts or not isinstance(transposed, bool)
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (n_in, n_out))):
        raise CodecError(f"quantization_config entry for {name!r} is malformed: {entry!r:.200}")
    old = parent._parameters.get(attr)
    rows, cols = (n_in, n_out) if transposed else (n_out, n_in)
    if not isinstance(old, torch.Tensor) or tuple(old.shape) != (len(experts), rows, cols):
        have = "nothing" if old is None else f"a {type(old).__name__} of shape {list(getattr(old, 'shape', []))}"
        raise CodecError(f"module {name!r}: the model holds {have}, config says {len(experts)} experts "
                         f"of {rows}x{cols}")
    cls = CompressedConv1D if transposed else CompressedLinear
    return CompressedExperts([cls(n_in, n_out, _packed_of(f"{name}.{e}", shapes, state, device), None,
                                  exact_outputs=exact_outputs) for e, shapes in enumerate(experts)], transposed)


def install_modules(model: nn.Module, qcfg: dict, state: dict | None = None, device=None) -> None:
    """Replace the modules listed in quantization_config by their compressed counterparts; a
    module that ``shares`` another's weight (a tied lm_head) gets that module's tensors, and an
    expert parameter becomes a CompressedExperts (its module then runs the "pycodec" experts
    implementation)."""
    exact = bool(qcfg.get("exact_outputs", False))
    modules = qcfg["modules"]
    for name, entry in modules.items():
        if isinstance(entry, dict) and entry.get("class") == "CompressedExperts":
            parent_name, _, attr = name.rpartition(".")
            try:
                parent = model.get_submodule(parent_name)
            except AttributeError:
                raise CodecError(f"quantization_config lists {name!r}, which the model does not have") from None
            install_bank(model, name, parent, attr, build_experts(parent, attr, entry, name, state, device, exact))
    modules = {n: e for n, e in modules.items() if not (isinstance(e, dict) and e.get("class") == "CompressedExperts")}
    for name, entry in modules.items():
        if isinstance(entry, dict) and entry.get("attention_in_proj") is True:
            attention = attention_of(model, name)
            in_proj = build_module(in_proj_stand_in(attention), entry, name, state, device, exact)
            install_attention(model, name.rpartition(".")[0], attention, in_proj)
    modules = {n: e for n, e in modules.items() if not (isinstance(e, dict) and e.get("attention_in_proj") is True)}
    built = {}
    for name, entry in sorted(modules.items(), key=lambda kv: "shares" in kv[1]):  # owners first
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise CodecError(f"quantization_config lists module {name!r}, which the model does not have") from None
        owner = entry.get("shares") if isinstance(entry, dict) else None
        if owner is not None:
            if owner not in built or "shares" in modules[owner]:
                raise CodecError(f"quantization_config: {name!r} shares the weight of {owner!r}, which holds none")
            source = {f"{name}.{b}": t for b, t in built[owner].packed().items()}
            new = build_module(old, entry, name, source, device, exact)
            tie_packed(new, built[owner])
        else:
            new = build_module(old, entry, name, state, device, exact)
        built[name] = new
        _set_submodule(model, name, new)
    _drop_tied_parameter_keys(model, set(built))


def attention_of(model: nn.Module, name: str) -> nn.Module:
    """The nn.MultiheadAttention whose packed projection the config lists as ``name``
    ("<attention>.in_proj")."""
    parent_name, _, child = name.rpartition(".")
    try:
        attention = model.get_submodule(parent_name)
    except AttributeError:
        attention = None
    if child != IN_PROJ or not is_packed_attention(attention):
        have = "nothing" if attention is None else f"a {type(attention).__name__}"
        raise CodecError(f"quantization_config lists {name!r} as an attention's projection; the model holds "
                         f"{have} at {parent_name!r}, not an nn.MultiheadAttention with a packed in_proj_weight")
    return attention


def in_proj_stand_in(attention: nn.Module) -> nn.Linear:
    """An nn.Linear on the meta device shaped as ``attention``'s projection, for build_module."""
    weight, bias = attention._parameters["in_proj_weight"], attention._parameters.get("in_proj_bias")
    return nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")


def tie_packed(module: nn.Module, owner: nn.Module) -> None:
    """Point ``module``'s packed buffers at ``owner``'s tensors (after a loader replaced them)."""
    for b, t in owner.packed().items():
        module._buffers[b] = t
    if not module.meta.is_meta and hasattr(module, "_refresh_gpu_state"):
        module._refresh_gpu_state()


def retie_shared(model: nn.Module, modules: dict) -> None:
    """tie_packed for every module of quantization_config that shares another's weight."""
    for name, entry in modules.items():
        if isinstance(entry, dict) and entry.get("shares"):
            tie_packed(model.get_submodule(name), model.get_submodule(entry["shares"]))


def _drop_tied_parameter_keys(model: nn.Module, compressed: set) -> None:
    """transformers ties the dense weights of tied modules by parameter name ("lm_head.weight"
    to "model.embed_tokens.weight"); once they are compressed those parameters do not exist and
    the tie is ours (``shares``), so its entries go: the model's own and those of every
    sub-model (MBart's inner model ties its encoder's and decoder's tables to ``shared``), whose
    names are relative to it."""
    if not compressed:
        return
    for prefix, sub in model.named_modules():
        for attr in ("all_tied_weights_keys", "_tied_weights_keys"):
            keys = getattr(sub, attr, None)
            if not isinstance(keys, dict):
                continue

            def owner(param: str) -> str:
                return (f"{prefix}.{param}" if prefix else param).rpartition(".")[0]

            kept = {t: s for t, s in keys.items() if owner(t) not in compressed and owner(str(s)) not in compressed}
            if kept != keys:
                try:
                    setattr(sub, attr, kept)
                except AttributeError:
                    pass


def _tied_keys(model: nn.Module) -> set:
    """Parameter names that share storage with an earlier name (stored once by save_pretrained)."""
    seen, tied = set(), set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.add(id(p))
    return tied


class _ParametersOnMeta:
    """While active, every parameter a module registers lands on the ``meta`` device (no
    storage), while buffers are built as usual: non-persistent ones (rotary frequencies) are
    computed at construction and are not in checkpoints, so they must be real.

    The parameters are also marked as initialized (transformers' ``_is_hf_initialized``), so
    that the model's weight initialization skips them: on ``meta`` each ``normal_`` still runs
    a Python decomposition (0.1 s of SmolLM2's 0.58 s load), to fill tensors the checkpoint
    replaces. Buffers are initialized as usual."""

    def __enter__(self):
        self._register = nn.Module.register_parameter

        def register_parameter(module, name, param):
            if param is not None and param.device.type != "meta":
                param = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)
            if param is not None:
                param._is_hf_initialized = True
            self._register(module, name, param)

        nn.Module.register_parameter = register_parameter
        return self

    def __exit__(self, *exc):
        nn.Module.register_parameter = self._register


def saved_model_class(cfg_dict: dict):
    """The class a config.json names ("architectures", as transformers writes it) when
    transformers has it; a causal LM when the config does not say."""
    import transformers

    names = cfg_dict.get("architectures") or []
    saved = getattr(transformers, names[0], None) if isinstance(names, list) and names and isinstance(names[0], str) \
        else None
    return saved if isinstance(saved, type) else transformers.AutoModelForCausalLM


def from_pretrained(src: str, device: str | torch.device = "cpu", verify: bool = True, model_cls=None,
                    mmap: bool = False, stream_to: str | torch.device | None = None,
                    resident_bytes: int | None = None):
    """Load a model written by ``save_pretrained``: a transformers model of the saved class
    (config.json ``architectures``; ``model_cls`` overrides it), built from its config.

    The dense model is never built: parameters start on the ``meta`` device and take the
    checkpoint's tensors. With ``mmap=True`` the tensors stay memory-mapped from the files
    (nothing is read until used; the OS pages them in and out, so a model larger than RAM
    runs), and each compressed module checks its tensors' checksums on first use instead of at
    load. Every tensor's checksum is checked; a stream no checksum covers (a checkpoint written
    before checksums) is also decoded once at load, unless ``verify=False``. ``stream_to`` (with ``resident_bytes``) hands the loaded model to
    ``pycodec.stream``: what does not fit that device budget streams from host memory.
    """
    import transformers

    if stream_to is not None and resident_bytes is None:
        raise ValueError("stream_to needs resident_bytes: the device memory the model may use, in bytes")
    with open(os.path.join(src, "config.json")) as f:
        cfg_dict = json.load(f)
    qcfg = cfg_dict.get("quantization_config")
    if not qcfg or qcfg.get("quant_method") != QUANT_METHOD:
        raise CodecError(f"{src}/config.json has no pycodec quantization_config")
    version = qcfg.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= int(_C.FORMAT_VERSION):
        raise CodecError(f"checkpoint stream format version {version} is not supported "
                         f"(this pycodec reads versions 1 to {int(_C.FORMAT_VERSION)})")
    config = CompressionConfig.from_dict({k: v for k, v in qcfg.items() if k not in ("modules", "format_version")})
    hf_config = transformers.AutoConfig.from_pretrained(src)
    if hasattr(hf_config, "quantization_config"):
        del hf_config.quantization_config  # ours; keeps transformers from looking for a quantizer
    modules = qcfg.get("modules")
    if not isinstance(modules, dict):
        raise CodecError(f"{src}/config.json: quantization_config has no modules table")
    compressed_keys = {f"{name}.{b}" for name, shapes in packed_modules(modules) for b in shapes}
    state, pending, checked = _read_state(src, mmap=mmap, lazy=compressed_keys if mmap else frozenset())
    if verify and not mmap:
        verify_streams(state, checked)
    cls = model_cls or saved_model_class(cfg_dict)
    build = cls.from_config if hasattr(cls, "from_config") else cls._from_config  # Auto* or a model class
    with _ParametersOnMeta():
        model = build(hf_config, dtype=getattr(hf_config, "dtype", None) or torch.float32)
    install_modules(model, qcfg, state)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise CodecError(f"checkpoint has tensors the model does not use: {sorted(unexpected)[:5]}")
    retie_shared(model, modules)  # load_state_dict(assign=True) gave the owners new tensors
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    tied = _tied_keys(model) | {f"{name}.{b}" for name, entry in modules.items() if "shares" in entry
                                for b in entry["buffers"]}
    absent = [k for k in missing if k not in tied]
    on_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if absent or on_meta:
        raise CodecError(f"checkpoint lacks tensors {sorted(set(absent) | set(on_meta))[:5]}")
    if pending:
        for name, shapes in packed_modules(modules):  # a module that shares: its owner checks them
            module = model.get_submodule(name)
            module._unchecked = {b: (f"{name}.{b}", *pending[f"{name}.{b}"]) for b in shapes
                                 if f"{name}.{b}" in pending}
    model.pycodec_config = config
    model.eval()
    if stream_to is not None:
        from .stream import stream

        stream(model, stream_to, resident_bytes)
        return model
    return model.to(device)
