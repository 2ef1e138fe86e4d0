"""The ``.weight`` of a compressed module: a tensor that decodes the weight where it is used.

Some modules read a child's weight instead of calling the child: nn.MultiheadAttention passes
``out_proj.weight`` to its attention function, nn.TransformerEncoderLayer's fast path takes
``linear1.weight``, T5 checks ``wo.weight.dtype``, Mamba multiplies by ``dt_proj.weight``, and
users read ``model.lm_head.weight``. A compressed module's ``weight`` is a DecodedOnUse: it has
the weight's shape, dtype and device, so reading those decodes nothing, and every torch
operation on it runs on the decoded weight (the one the model keeps, with
``pycodec.cache_decoded``, else decoded for that operation). It is read-only: an operation that
would write it raises, since the bits live in the coded stream.
"""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_map

from .codec import CodecError


class DecodedOnUse(torch.Tensor):
    """The weight of a compressed module, decoded by each operation that uses it."""

    @staticmethod
    def __new__(cls, module):
        shape, dtype, device = module._weight_meta()
        t = torch.Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=device, requires_grad=False)
        t._module = module
        return t

    # Python-level torch functions run as usual and reach __torch_dispatch__ with this tensor.
    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        schema = func._schema
        for i, arg in enumerate(schema.arguments):
            value = args[i] if i < len(args) else kwargs.get(arg.name)
            if isinstance(value, DecodedOnUse) and arg.alias_info is not None and arg.alias_info.is_write:
                raise CodecError(f"{func} would write the weight of a compressed "
                                 f"{type(value._module).__name__}, which is read-only (its bits are the "
                                 "coded stream): pycodec.decompress_ gives back dense modules")

        def decoded(x):
            return x._module._weight_in_use() if isinstance(x, DecodedOnUse) else x

        return func(*tree_map(decoded, args), **tree_map(decoded, kwargs))

    def __repr__(self) -> str:
        return (f"DecodedOnUse(shape={list(self.shape)}, dtype={self.dtype}, device={self.device}: the weight of a "
                f"compressed {type(self._module).__name__}, decoded where it is used)")
