"""transformers integration: ``AutoModelForCausalLM.from_pretrained(dir)`` on a pycodec checkpoint.

Registered at ``import pycodec`` (when transformers is installed) through transformers'
out-of-tree registration: a QuantizationConfigMixin for ``quant_method: "pycodec"`` and
an HfQuantizer that, before weights load, swaps each listed module for an empty
compressed one with the checkpoint's buffer shapes, so the loader fills them as is.
"""
from __future__ import annotations

import os
import re

import torch

from transformers.quantizers import HfQuantizer
from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING
from transformers.quantizers.auto import register_quantization_config, register_quantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from .config import CompressionConfig
from .experts import CompressedExperts
from .hub import QUANT_METHOD, _read_state, check_tensor, install_modules, retie_shared, verify_streams
from .nn import COMPRESSED_MODULES


class PycodecHfConfig(QuantizationConfigMixin):
    def __init__(self, modules: dict | None = None, format_version: int = 1, **kwargs):
        self.quant_method = QUANT_METHOD
        self.modules = modules or {}
        self.format_version = format_version
        kwargs.pop("quant_method", None)
        self.compression = CompressionConfig.from_dict(kwargs)

    def to_dict(self) -> dict:
        return {"quant_method": QUANT_METHOD, **self.compression.to_dict(), "format_version": self.format_version,
                "modules": self.modules}


class PycodecHfQuantizer(HfQuantizer):
    requires_calibration = True  # checkpoints are compressed already; compress with pycodec.compress_

    def validate_environment(self, *args, **kwargs):
        from . import _C

        version = self.quantization_config.format_version
        if not isinstance(version, int) or not 1 <= version <= int(_C.FORMAT_VERSION):
            raise ValueError(f"checkpoint stream format version {version} is not supported by this pycodec "
                             f"(reads versions 1 to {int(_C.FORMAT_VERSION)})")

    def _process_model_before_weight_loading(self, model, **kwargs):
        install_modules(model, self.quantization_config.to_dict(), device=next(model.parameters()).device)
        # transformers then initializes every module it did not see loaded, and a model's
        # _init_weights may reach into a child's weight (GPT-2 rescales its c_proj's): until
        # loading ends, each compressed module holds a weightless stand-in marked initialized,
        # which transformers' init functions leave alone. Nothing of theirs is needed.
        # An experts module whose banks are compressed is initialized by what loads (its biases).
        for m in model.modules():
            if isinstance(m, tuple(COMPRESSED_MODULES.values())):
                m._is_hf_initialized = True
                stand_in = torch.empty(0, device="meta")
                stand_in._is_hf_initialized = True
                m._load_stand_in = stand_in  # what .weight gives until loading ends
            elif any(isinstance(c, CompressedExperts) for c in m.children()):
                m._is_hf_initialized = True
        # A module that shares another's weight (a tied lm_head) has no tensors of its own in
        # the checkpoint: not "missing", it is tied after loading.
        shared = [re.escape(n) + r"\." for n, e in self.quantization_config.modules.items() if e.get("shares")]
        if shared:
            ignored = set(getattr(model, "_keys_to_ignore_on_load_missing", None) or ())
            model._keys_to_ignore_on_load_missing = ignored | {"^" + p for p in shared}

    def _process_model_after_weight_loading(self, model, **kwargs):
        modules = self.quantization_config.modules
        for m in model.modules():
            if isinstance(m, tuple(COMPRESSED_MODULES.values())):
                m.__dict__.pop("_load_stand_in", None)  # the stand-in of _process_model_before_weight_loading
        retie_shared(model, modules)  # the loader filled the owners' tensors, not the sharers'
        state = {f"{n}.{b}": t for n, m in model.named_modules() if isinstance(m, tuple(COMPRESSED_MODULES.values()))
                 and "shares" not in modules.get(n, {}) for b, t in m.packed().items()}
        # transformers read the files itself (and may have cast dense tensors to the model's
        # dtype): check the files' dense tensors against the checksums saved in them, and the
        # compressed modules' tensors as loaded, by name. Streams no checksum covered (older
        # checkpoints, or files that are not in a local folder) are decoded once.
        checked = set()
        folder = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
        if folder and os.path.isdir(folder) and os.path.exists(os.path.join(folder, "config.json")):
            _, pending, _ = _read_state(folder, mmap=True, lazy=set(state))
            for key, t in state.items():
                if key in pending:
                    check_tensor(key, t, *pending[key])
                    checked.add(key)
        verify_streams({k: v.cpu() for k, v in state.items()}, checked)
        model.pycodec_config = self.quantization_config.compression
        return model

    def get_new_dtype(self, converter, param, dtype):
        # Keep every checkpoint tensor in its stored dtype: streams are bytes, scales fp16,
        # escapes fp32; casting them to the model dtype would corrupt or degrade them.
        return None

    def is_serializable(self, safe_serialization=None):
        return True

    @property
    def is_trainable(self) -> bool:
        return False


if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
    register_quantization_config(QUANT_METHOD)(PycodecHfConfig)
if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
    register_quantizer(QUANT_METHOD)(PycodecHfQuantizer)
