"""Mixture-of-experts weights: a 3-D expert parameter coded expert by expert.

transformers keeps the experts of a MoE layer (Mixtral, Qwen3-MoE, DeepSeek, gpt-oss, ...) as
3-D parameters of one module, ``gate_up_proj`` / ``up_proj`` and ``down_proj``, [experts,
rows, columns], and picks its forward by ``config._experts_implementation`` (transformers'
``use_experts_implementation``). ``compress_`` replaces each such parameter by a
``CompressedExperts``: one CompressedLinear per expert (a CompressedConv1D where the layout is
transposed, [experts, in, out]), so an expert runs through the same CPU matvec and GPU kernels
as any linear, and the model's experts implementation becomes ``"pycodec"`` (registered with
transformers), which calls them. Biases stay dense.

Indexing a CompressedExperts (``bank[e]``) gives expert e's weight decoded, in the parameter's
own layout, for code that indexes the parameter itself (a model's own eager forward).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .codec import CodecError

IMPLEMENTATION = "pycodec"  # the name registered in transformers' experts interface
# The parameters an experts module of transformers holds its matrices in.
EXPERT_PARAMETERS = ("gate_up_proj", "up_proj", "down_proj")


def is_experts_module(module: nn.Module) -> bool:
    """A module whose class transformers' use_experts_implementation decorated: its forward is
    chosen by config._experts_implementation, and its flags say its layout."""
    return (hasattr(type(module), "_apply_gate") and all(hasattr(module, a) for a in ("has_gate", "has_bias",
                                                                                         "is_transposed"))
            and hasattr(getattr(module, "config", None), "_experts_implementation"))


def expert_parameters(module: nn.Module) -> list[str]:
    """The names of ``module``'s 3-D expert weights that compress_ codes."""
    return [n for n in EXPERT_PARAMETERS
            if isinstance(module._parameters.get(n), torch.Tensor) and module._parameters[n].dim() == 3]


class CompressedExperts(nn.Module):
    """A [experts, rows, columns] expert weight held as one compressed module per expert
    (children "0", "1", ...). ``transposed``: the parameter held each expert as [in, out].
    ``streamer``: the pycodec.stream Streamer that uploads its experts, while one does."""

    streamer = None

    def __init__(self, experts: list[nn.Module], transposed: bool):
        super().__init__()
        from .nn import CompressedConv1D

        if not experts:
            raise CodecError("CompressedExperts needs at least one expert")
        for e, m in enumerate(experts):
            if isinstance(m, CompressedConv1D) != bool(transposed):
                raise CodecError(f"expert {e} is a {type(m).__name__}, the bank is "
                                 f"{'transposed' if transposed else 'not transposed'}")
            self.add_module(str(e), m)
        self.transposed = bool(transposed)
        first = experts[0]
        rows, cols = (first.in_features, first.out_features) if transposed else (first.out_features, first.in_features)
        if any((m.in_features, m.out_features) != (first.in_features, first.out_features) for m in experts):
            raise CodecError("the experts of one bank must share a shape")
        self.shape = torch.Size((len(experts), rows, cols))

    @classmethod
    def from_parameter(cls, weight: torch.Tensor, transposed: bool, config, code=None) -> "CompressedExperts":
        """The bank of ``weight`` [experts, rows, columns], each expert coded by ``config`` from its
        weight alone, or by ``code(e, w)`` -> (packed, stats) of expert e's [out, in] weight w."""
        from .nn import CompressedConv1D, CompressedLinear
        from .quant import compress_weight

        kind = CompressedConv1D if transposed else CompressedLinear
        experts = []
        for e in range(weight.shape[0]):
            # A transposed slice is a Conv1D's [in, out]; the stream codes it as [out, in].
            w = weight[e].detach().t() if transposed else weight[e].detach()
            packed, stats = compress_weight(w, config) if code is None else code(e, w)
            m = kind(w.shape[1], w.shape[0], {k: v.to(weight.device) for k, v in packed.items()}, None, False,
                     getattr(config, "exact_outputs", False))
            m.stats = stats
            experts.append(m)
        return cls(experts, transposed)

    def __len__(self) -> int:
        return self.shape[0]

    def linear(self, e: int) -> nn.Module:
        """Expert e's compressed module: y = x W_e^T."""
        return self._modules[str(e)]

    def __getitem__(self, e) -> torch.Tensor:
        """Expert e's weight decoded, as the parameter held it ([rows, columns]); a 1-D index
        tensor gives the stack of those experts' weights."""
        if isinstance(e, torch.Tensor) and e.dim() == 1:
            return torch.stack([self[int(i)] for i in e.tolist()])
        e = int(e)
        if not -len(self) <= e < len(self):
            raise IndexError(f"expert {e} of {len(self)}")
        return self.linear(e % len(self))._weight_in_use()  # what the expert's .weight shows: this layout

    @property
    def dtype(self) -> torch.dtype:
        return self.linear(0).weight_dtype

    @property
    def device(self) -> torch.device:
        return self.linear(0).meta.device

    def dim(self) -> int:
        return 3

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def dense(self) -> nn.Parameter:
        """The experts' weights decoded into one [experts, rows, columns] parameter."""
        return nn.Parameter(torch.stack([self[e] for e in range(len(self))]).contiguous(), requires_grad=False)

    def extra_repr(self) -> str:
        return f"experts={self.shape[0]}, rows={self.shape[1]}, columns={self.shape[2]}, transposed={self.transposed}"


def _project(module: nn.Module, name: str, e: int, x: torch.Tensor) -> torch.Tensor:
    """x through expert e's ``name`` matrix, and its bias when the module has biases."""
    bank = getattr(module, name)
    if isinstance(bank, CompressedExperts):
        out = bank.linear(e)(x)
    elif module.is_transposed:
        out = x @ bank[e]
    else:
        out = F.linear(x, bank[e])
    if module.has_bias:
        out = out + getattr(module, f"{name}_bias")[e]
    return out


def experts_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                    top_k_weights: torch.Tensor) -> torch.Tensor:
    """The "pycodec" experts implementation: transformers' eager loop over the experts that
    tokens were routed to, each projection through its compressed expert module (dense banks
    as their own parameters)."""
    up_name = "gate_up_proj" if self.has_gate else "up_proj"
    n_experts = getattr(self, up_name).shape[0]
    final = torch.zeros_like(hidden_states)
    with torch.no_grad():
        mask = F.one_hot(top_k_index, num_classes=n_experts + 1).permute(2, 1, 0)
        hit = torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero()
    inputs = getattr(self, "_pycodec_inputs", None)  # ExpertInputs, while calibration gathers them
    routed = [e for e in hit.reshape(-1).tolist() if e < n_experts]  # not an expert-parallel sentinel
    banks = [b for b in (getattr(self, up_name), self.down_proj) if isinstance(b, CompressedExperts)]
    streamer = next((b.streamer for b in banks if b.streamer is not None), None)
    if streamer is not None:  # streamed experts: upload those routed to, in the order they run
        streamer.expect([b.linear(e) for e in routed for b in banks])
    for e in routed:
        top_k_pos, token_idx = torch.where(mask[e])
        x = hidden_states[token_idx]
        up = _project(self, up_name, e, x)
        h = self._apply_gate(up) if self.has_gate else self.act_fn(up)
        if inputs is not None:
            inputs.add(up_name, e, x)
            inputs.add("down_proj", e, h)
        out = _project(self, "down_proj", e, h)
        if getattr(self, "has_post_expert_norm", False):
            out = self.post_expert_norm(out)
        out = out * top_k_weights[token_idx, top_k_pos, None]
        final.index_add_(0, token_idx, out.to(final.dtype))
    return final


def register_implementation() -> bool:
    """Registers experts_forward as transformers' "pycodec" experts implementation (once)."""
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    except ImportError:
        return False
    if IMPLEMENTATION not in ALL_EXPERTS_FUNCTIONS:
        ALL_EXPERTS_FUNCTIONS.register(IMPLEMENTATION, experts_forward)
    return True


def use_implementation(module: nn.Module) -> None:
    """Points an experts module's config at the "pycodec" implementation."""
    if not register_implementation():
        raise CodecError("compressed experts need transformers' experts interface (transformers >= 5)")
    module.config._experts_implementation = IMPLEMENTATION


class ExpertInputs:
    """The second moment H = XᵀX / n of each expert's inputs to each of its matrices, gathered
    while experts_forward runs (calibration): the tokens routed to it, and their activations."""

    def __init__(self):
        self._sums: dict[tuple[str, int], tuple[torch.Tensor, int]] = {}

    def add(self, param: str, e: int, x: torch.Tensor) -> None:
        x2 = x.detach().reshape(-1, x.shape[-1]).float()
        h, n = self._sums.get((param, e), (0, 0))
        self._sums[(param, e)] = (x2.t() @ x2 + h, n + x2.shape[0])

    def hessian(self, param: str, e: int, k: int) -> torch.Tensor:
        """H of expert e's ``param`` input ([k, k]); zeros when no token reached it."""
        h, n = self._sums.get((param, e), (None, 0))
        return torch.zeros(k, k) if n == 0 else (h / n).cpu()


def expert_targets(model: nn.Module, skip: tuple, within: nn.Module | None = None) -> list:
    """(parameter name, experts module, parameter) for each expert weight compress_ codes (in
    ``within`` only, when given), except those named in ``skip``."""
    from .nn import _skipped

    inside = None if within is None else {id(m) for m in within.modules()}
    targets = [(f"{n}.{p}" if n else p, m, p) for n, m in model.named_modules()
               if is_experts_module(m) and (inside is None or id(m) in inside) for p in expert_parameters(m)]
    return [t for t in targets if not _skipped(t[0], skip) and not _skipped(t[0].rpartition(".")[0], skip)]


def install_bank(model: nn.Module, name: str, module: nn.Module, param: str, bank: CompressedExperts) -> None:
    """Puts ``bank`` where ``module``'s expert parameter was, and points the module at the
    "pycodec" experts implementation."""
    from .nn import _set_submodule

    del module._parameters[param]
    _set_submodule(model, name, bank)
    use_implementation(module)


def compress_experts(model: nn.Module, config, skip: tuple, progress: bool = False) -> dict:
    """Replaces the expert parameters of every experts module not named in ``skip`` by a
    CompressedExperts, each expert from its weight alone; returns {parameter name: its layer
    report}."""
    targets = expert_targets(model, skip)
    if progress and targets:
        try:
            from tqdm.auto import tqdm

            targets = tqdm(targets, desc=f"pycodec {config.mode} experts", unit="bank")
        except ImportError:
            pass
    layers = {}
    for name, module, param in targets:
        weight = module._parameters[param]
        bank = CompressedExperts.from_parameter(weight, bool(module.is_transposed), config)
        install_bank(model, name, module, param, bank)
        layers[name] = bank_report(bank, weight)
    return layers


def bank_report(bank: CompressedExperts, weight: torch.Tensor) -> dict:
    """compress_'s layer report over a bank's experts: their bits and entropy per weight, and
    the SQNR of the whole bank (its signal and error energies summed over experts)."""
    n = weight[0].numel()
    signal = noise = bits = entropy = 0.0
    for e in range(len(bank)):
        s = bank.linear(e).stats
        energy = float(weight[e].detach().double().pow(2).sum())
        signal += energy
        noise += energy / 10 ** (s.sqnr_db / 10) if math.isfinite(s.sqnr_db) else 0.0
        bits += s.bits_per_weight * n
        entropy += s.entropy_bits_per_weight * n
    total = n * len(bank)
    sqnr = 10 * math.log10(signal / noise) if noise > 0 else math.inf
    return {"shape": list(weight.shape), "bits_per_weight": bits / total, "entropy_bits_per_weight": entropy / total,
            "sqnr_db": sqnr, "experts": len(bank)}
