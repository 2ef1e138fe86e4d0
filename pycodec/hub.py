"""Save and load compressed models: safetensors shards + config.json with a quantization_config.

``quantization_config`` holds ``quant_method: "pycodec"``, the CompressionConfig and, per
compressed module, the shapes of its buffers, so a loader can build the exact modules
before any tensor is read. Loading never unpickles. Every tensor is saved with a checksum
(dense tensors, scales and escapes included) that pycodec.from_pretrained checks, and every
stream's own header and decoded-symbol checksums are verified; a failure names the tensor.
"""
from __future__ import annotations

import json
import os

import torch
from torch import nn

from .codec import CodecError, _C
from .config import CompressionConfig
from .nn import COMPRESSED_MODULES, CompressedEmbedding, CompressedLinear, _set_submodule, buffer_dtype

QUANT_METHOD = "pycodec"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
STREAM_BUFFERS = ("symbols", "plane0", "plane1", "plane2", "plane3")  # "raw" (split layout) is not a stream


def _quantization_config(model: nn.Module) -> dict:
    cfg = getattr(model, "pycodec_config", None)
    if cfg is None:
        raise CodecError("model has not been compressed: call pycodec.compress_(model, config) first")
    modules = {name: {"class": type(m).__name__, "buffers": {b: list(t.shape) for b, t in m.packed().items()}}
               for name, m in model.named_modules() if isinstance(m, tuple(COMPRESSED_MODULES.values()))}
    return {"quant_method": QUANT_METHOD, **cfg.to_dict(), "format_version": int(_C.FORMAT_VERSION), "modules": modules}


CHECKSUMS_KEY = "pycodec_checksums"  # safetensors metadata: JSON {tensor name: tensor_checksum}


def tensor_checksum(t: torch.Tensor) -> str:
    """BLAKE2b-64 of a tensor's bytes (hex), whatever its dtype."""
    import hashlib

    data = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.blake2b(data.tobytes(), digest_size=8).hexdigest()


def _save_tensors(tensors: dict, path: str, metadata: dict) -> None:
    """safetensors' save_file with a checksum of every tensor in the metadata (dense ones, side
    information and escapes too: only the streams carry their own), and the mode open() would
    give (safetensors creates files 0600)."""
    from safetensors.torch import save_file

    sums = {name: tensor_checksum(t) for name, t in tensors.items()}
    save_file(tensors, path, metadata={**metadata, CHECKSUMS_KEY: json.dumps(sums)})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save_pretrained(model: nn.Module, out_dir: str, tokenizer=None, max_shard_bytes: int = 2 << 30) -> None:
    """Write a compressed model to ``out_dir`` (safetensors shards, config.json, tokenizer)."""
    os.makedirs(out_dir, exist_ok=True)
    qcfg = _quantization_config(model)
    state, seen = {}, {}
    for key, t in model.state_dict().items():
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
    cfg_dict["quantization_config"] = qcfg
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg_dict, f, indent=2, default=str)
    gen = getattr(model, "generation_config", None)
    if gen is not None and hasattr(gen, "save_pretrained"):
        gen.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


def _read_state(src: str) -> dict:
    """Every tensor of a checkpoint, each checked against the checksum saved beside it; a
    mismatch names the tensor. (Checkpoints written before checksums are read unchecked; their
    streams still carry their own.)"""
    from safetensors import safe_open
    from safetensors.torch import load_file

    index = os.path.join(src, INDEX_NAME)
    files = [WEIGHTS_NAME]
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    state = {}
    for fname in files:
        path = os.path.join(src, fname)
        try:
            with safe_open(path, framework="pt") as f:
                metadata = f.metadata() or {}
            tensors = load_file(path)
        except Exception as e:  # safetensors raises its own types for damaged headers
            raise CodecError(f"{path}: not a readable safetensors file ({e})") from e
        if CHECKSUMS_KEY in metadata:
            try:
                sums = json.loads(metadata[CHECKSUMS_KEY])
            except ValueError:
                raise CodecError(f"{path}: its tensor checksums are damaged") from None
            if not isinstance(sums, dict):
                raise CodecError(f"{path}: its tensor checksums are damaged")
            for name, t in tensors.items():
                if sums.get(name) != tensor_checksum(t):
                    raise CodecError(f"tensor {name!r} in {path}: checksum mismatch (the file is damaged)")
        state.update(tensors)
    return state


def verify_streams(state: dict) -> None:
    """Decode every stream once (chunk by chunk) so a damaged tensor fails at load, by name."""
    for key, t in state.items():
        prefix, _, buffer = key.rpartition(".")
        if buffer not in STREAM_BUFFERS or t.dtype != torch.uint8:
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
    expected = nn.Linear if cls_name == "CompressedLinear" else nn.Embedding
    if not isinstance(old, expected):
        raise CodecError(f"module {name!r} is a {type(old).__name__}, config says {cls_name}")
    if state is None:
        packed = {b: torch.empty(shape, dtype=buffer_dtype(b), device=device) for b, shape in shapes.items()}
    else:
        packed = {}
        for b, shape in shapes.items():
            key = f"{name}.{b}"
            if key not in state:
                raise CodecError(f"checkpoint lacks tensor {key!r}")
            if list(state[key].shape) != list(shape):
                raise CodecError(f"tensor {key!r} has shape {list(state[key].shape)}, config says {shape}")
            packed[b] = state[key]
    if cls_name == "CompressedEmbedding":
        return CompressedEmbedding(old.num_embeddings, old.embedding_dim, packed, old.padding_idx)
    bias = None
    if old.bias is not None:
        bias = state.get(f"{name}.bias") if state is not None else torch.empty(old.out_features, device=device)
    return CompressedLinear(old.in_features, old.out_features, packed, bias, exact_outputs=exact_outputs)


def install_modules(model: nn.Module, qcfg: dict, state: dict | None = None, device=None) -> None:
    """Replace the modules listed in quantization_config by their compressed counterparts."""
    exact = bool(qcfg.get("exact_outputs", False))
    for name, entry in qcfg["modules"].items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise CodecError(f"quantization_config lists module {name!r}, which the model does not have") from None
        _set_submodule(model, name, build_module(old, entry, name, state, device, exact))


def _tied_keys(model: nn.Module) -> set:
    """Parameter names that share storage with an earlier name (stored once by save_pretrained)."""
    seen, tied = set(), set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.add(id(p))
    return tied


def from_pretrained(src: str, device: str | torch.device = "cpu", verify: bool = True, model_cls=None):
    """Load a model written by ``save_pretrained``: a transformers model of the saved class
    (config.json ``architectures``; ``model_cls`` overrides it), built from its config."""
    import transformers

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
    state = _read_state(src)
    if verify:
        verify_streams(state)
    # The class that was saved (config.json "architectures", as transformers writes it), unless
    # the caller names one; a causal LM when the config does not say.
    architectures = cfg_dict.get("architectures") or []
    saved = getattr(transformers, architectures[0], None) if architectures else None
    cls = model_cls or (saved if isinstance(saved, type) else transformers.AutoModelForCausalLM)
    build = cls.from_config if hasattr(cls, "from_config") else cls._from_config  # Auto* or a model class
    # Built on the CPU, not on "meta": non-persistent buffers (rotary frequencies) are
    # computed at construction and are not in the checkpoint. This briefly holds the dense
    # skeleton; the compressed modules then replace their nn.Linear before loading.
    model = build(hf_config, dtype=getattr(hf_config, "dtype", None) or torch.float32)
    install_modules(model, qcfg, state)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise CodecError(f"checkpoint has tensors the model does not use: {sorted(unexpected)[:5]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    tied = _tied_keys(model)
    absent = [k for k in missing if k not in tied]
    if absent:
        raise CodecError(f"checkpoint lacks tensors {sorted(absent)[:5]}")
    model.pycodec_config = config
    model.eval()
    return model.to(device)
