"""nn.MultiheadAttention with its packed input projection compressed.

nn.MultiheadAttention keeps the q, k and v projections as parameters of its own
(``in_proj_weight`` [3E, E], ``in_proj_bias`` [3E]), not as child modules, and passes them to its
attention function: three quarters of an attention's weights that compress_ used to leave dense.
``CompressedMultiheadAttention`` holds them as a CompressedLinear child ``in_proj`` and shows
``in_proj_weight`` / ``in_proj_bias`` as properties (the weight a DecodedOnUse, pycodec.weight_view),
so every path of nn.MultiheadAttention.forward still runs. Its out_proj is an nn.Linear, which
compress_ replaces like any other.

Forward:
- On the CPU with a lossless in_proj: nn.MultiheadAttention's own forward on the decoded weight,
  so outputs are bitwise the dense module's on whichever path it takes (its native fast path
  too). A CPU forward decodes a lossless weight anyway; there is nothing to fuse.
- Otherwise (a GPU, or rate / int weights), for self-attention without attention weights
  returned (what nn.TransformerEncoderLayer and ViTs call): in_proj and out_proj are called as
  modules, so they run their fused decode + GEMV (and pycodec.stream's hooks see them), with
  the attention itself as F.multi_head_attention_forward computes it. Any other call (cross
  attention, need_weights, bias_k, add_zero_attn) takes nn.MultiheadAttention's forward on the
  decoded weight.

The checkpoint lists the projection as "<attention>.in_proj", a CompressedLinear entry with
``"attention_in_proj": true`` (pycodec.hub); decompress_ gives back an nn.MultiheadAttention.
Attentions with separate q / k / v weights (kdim or vdim unlike embed_dim) stay dense.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .codec import CodecError

IN_PROJ = "in_proj"  # the child that holds the packed projection


def is_packed_attention(module: nn.Module) -> bool:
    """An nn.MultiheadAttention whose q, k, v projections are one [3E, E] parameter."""
    return (isinstance(module, nn.MultiheadAttention) and not isinstance(module, CompressedMultiheadAttention)
            and module._qkv_same_embed_dim and isinstance(module._parameters.get("in_proj_weight"), torch.Tensor))


def in_proj_linear(attention: nn.Module) -> nn.Linear:
    """An nn.Linear [3E, E] holding ``attention``'s packed projection (its very parameters)."""
    weight = attention._parameters["in_proj_weight"]
    bias = attention._parameters.get("in_proj_bias")
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = weight
    if bias is not None:
        linear.bias = bias
    return linear


class CompressedMultiheadAttention(nn.MultiheadAttention):
    """nn.MultiheadAttention whose in_proj_weight / in_proj_bias live in a CompressedLinear child
    ``in_proj``. Build with ``from_attention``."""

    @classmethod
    def from_attention(cls, attention: nn.MultiheadAttention, in_proj: nn.Module) -> "CompressedMultiheadAttention":
        """The attention with ``in_proj`` (a CompressedLinear [3E, E], the projection's bias as its
        own) in place of its in_proj_weight and in_proj_bias parameters."""
        if not is_packed_attention(attention):
            raise CodecError(f"a {type(attention).__name__} without a packed in_proj_weight cannot take a "
                             "compressed projection")
        e = attention.embed_dim
        if (in_proj.in_features, in_proj.out_features) != (e, 3 * e):
            raise CodecError(f"in_proj is {in_proj.out_features}x{in_proj.in_features}, the attention needs "
                             f"{3 * e}x{e}")
        if (in_proj.bias is None) != (attention._parameters.get("in_proj_bias") is None):
            raise CodecError("in_proj's bias does not match the attention's in_proj_bias")
        new = copy.copy(attention)  # every attribute the installed torch's MultiheadAttention has
        new.__class__ = cls
        new._parameters = {k: v for k, v in attention._parameters.items() if k not in ("in_proj_weight",
                                                                                       "in_proj_bias")}
        new._buffers = dict(attention._buffers)
        new._modules = dict(attention._modules)
        new._modules[IN_PROJ] = in_proj
        # hooks and their dicts stay the attention's own (copy.copy shares them, as a replacement should)
        return new

    @property
    def in_proj_weight(self) -> torch.Tensor:
        return self._modules[IN_PROJ].weight

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        return self._modules[IN_PROJ].bias

    def dense(self) -> nn.MultiheadAttention:
        """The nn.MultiheadAttention holding the decoded projection (decompress_)."""
        in_proj = self._modules[IN_PROJ]
        dense = copy.copy(self)
        dense.__class__ = nn.MultiheadAttention
        dense._modules = {k: v for k, v in self._modules.items() if k != IN_PROJ}
        dense._buffers = dict(self._buffers)
        dense._parameters = {"in_proj_weight": nn.Parameter(in_proj.decoded_weight().to(in_proj.meta.device),
                                                            requires_grad=False), **self._parameters}
        if in_proj.bias is not None:
            dense._parameters["in_proj_bias"] = nn.Parameter(in_proj.bias.detach().clone(), requires_grad=False)
        else:
            dense._parameters["in_proj_bias"] = None
        return dense

    def _projects_itself(self, query, key, value, need_weights: bool) -> bool:
        """Whether this call runs in_proj as a module (see the module docstring)."""
        if (query is not key or key is not value or need_weights or self.bias_k is not None or self.add_zero_attn
                or query.is_nested or query.dim() not in (2, 3)):
            return False
        if query.is_cuda:
            return True
        from .quant import KIND_AFFINE

        in_proj = self._modules[IN_PROJ]
        return (in_proj._info.kind if in_proj._info is not None else int(in_proj.meta[1])) == KIND_AFFINE

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not self._projects_itself(query, key, value, need_weights):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        return self._self_attention(query, key_padding_mask, attn_mask, is_causal), None

    def _self_attention(self, x, key_padding_mask, attn_mask, is_causal):
        """F.multi_head_attention_forward's self-attention without weights (its need_weights=False
        branch, step for step), the projections called as modules."""
        batched = x.dim() == 3
        if batched and self.batch_first:
            x = x.transpose(1, 0)
        elif not batched:
            x = x.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        length, batch, embed = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        if embed != self.embed_dim:
            raise CodecError(f"input has {embed} features, the attention {self.embed_dim}")
        key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                             other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                             target_type=x.dtype)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint.")
        if is_causal and key_padding_mask is None:
            attn_mask = None  # SDPA's own causal mask
        else:
            attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                          target_type=x.dtype, check_other=False)
            if key_padding_mask is not None:
                is_causal = False
        if attn_mask is not None:
            if attn_mask.dim() == 2:
                if attn_mask.shape != (length, length):
                    raise RuntimeError(f"The shape of the 2D attn_mask is {attn_mask.shape}, "
                                       f"but should be {(length, length)}.")
                attn_mask = attn_mask.unsqueeze(0)
            elif attn_mask.dim() != 3 or attn_mask.shape != (batch * heads, length, length):
                raise RuntimeError(f"attn_mask of shape {tuple(attn_mask.shape)} does not fit "
                                   f"{(batch * heads, length, length)}")
        proj = self._modules[IN_PROJ](x)
        proj = proj.unflatten(-1, (3, embed)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
        q, k, v = proj[0], proj[1], proj[2]
        q = q.view(length, batch * heads, head_dim).transpose(0, 1)
        k = k.view(length, batch * heads, head_dim).transpose(0, 1)
        v = v.view(length, batch * heads, head_dim).transpose(0, 1)
        if key_padding_mask is not None:
            if key_padding_mask.shape != (batch, length):
                raise RuntimeError(f"key_padding_mask of shape {tuple(key_padding_mask.shape)} does not fit "
                                   f"{(batch, length)}")
            key_padding_mask = key_padding_mask.view(batch, 1, 1, length).expand(-1, heads, -1, -1) \
                .reshape(batch * heads, 1, length)
            attn_mask = key_padding_mask if attn_mask is None else attn_mask + key_padding_mask
        if attn_mask is not None:
            if attn_mask.size(0) == 1 and attn_mask.dim() == 3:
                attn_mask = attn_mask.unsqueeze(0)
            else:
                attn_mask = attn_mask.view(batch, heads, -1, length)
        q = q.view(batch, heads, length, head_dim)
        k = k.view(batch, heads, length, head_dim)
        v = v.view(batch, heads, length, head_dim)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask, self.dropout if self.training else 0.0, is_causal)
        out = out.permute(2, 0, 1, 3).reshape(batch * length, embed)
        out = self.out_proj(out).view(length, batch, -1)
        if not batched:
            return out.squeeze(1)
        return out.transpose(1, 0) if self.batch_first else out


def attention_targets(model: nn.Module, skip: tuple) -> list[tuple[str, nn.MultiheadAttention]]:
    """(name, attention) of each packed-projection attention whose projection compress_ codes:
    not named in ``skip`` (the attention, or "<attention>.in_proj"), its projection held by no
    other module (a shared tensor would then be stored twice)."""
    from .nn import _skipped

    holders: dict[int, int] = {}
    for m in model.modules():
        for p in m._parameters.values():
            if p is not None:
                holders[id(p)] = holders.get(id(p), 0) + 1
    return [(n, m) for n, m in model.named_modules()  # (a model that is itself one has no parent to hold the new)
            if n and is_packed_attention(m) and not _skipped(n, skip) and not _skipped(f"{n}.{IN_PROJ}", skip)
            and holders.get(id(m._parameters["in_proj_weight"]), 0) == 1]


def install_attention(model: nn.Module, name: str, attention: nn.Module, in_proj: nn.Module) -> nn.Module:
    """Puts a CompressedMultiheadAttention with ``in_proj`` where ``attention`` was."""
    from .nn import _set_submodule

    new = CompressedMultiheadAttention.from_attention(attention, in_proj)
    _set_submodule(model, name, new)
    return new


def compress_attention(model: nn.Module, config, skip: tuple) -> dict:
    """Compresses the packed projection of every attention attention_targets finds, from its
    weight alone; returns {"<attention>.in_proj": its layer report}."""
    from .nn import CompressedLinear, _layer_report

    layers = {}
    for name, attention in attention_targets(model, skip):
        linear = in_proj_linear(attention)
        in_proj = CompressedLinear.from_linear(linear, config)
        install_attention(model, name, attention, in_proj)
        layers[f"{name}.{IN_PROJ}"] = _layer_report(linear, in_proj, None)
    return layers
