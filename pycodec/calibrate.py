"""Hessian-aware quantization: each linear layer rounded to keep its outputs, not its weights.

Read me first:
- What is minimized. A linear layer's output error on inputs X is ||X (W - Ŵ)ᵀ||², a quadratic
  form in the second moment H = XᵀX / n of its inputs. H comes from a calibration text the model
  reads (CompressionConfig.calibration), layer by layer and sequentially: decoder layer i sees
  the inputs that the already-quantized layers 0..i-1 produce, so it corrects their errors too.
- The grid is fixed before the sweep, from the original weights: rate mode's step per row
  (c * robust std of the row, as pycodec.quant.quantize_rate) or int mode's scale and zero per
  group (pycodec.quant.quantize_int). The sweep only decides how to round; the packed layout,
  its escapes and the size accounting are pycodec.quant's.
- The sweep (GPTQ, Frantar et al. 2022): columns are quantized one at a time, the most excited
  input first, and each column's error is pushed onto the columns not yet quantized through the
  upper Cholesky factor U of H⁻¹ (H⁻¹ = UᵀU): err = (w - ŵ) / U[i, i], W[:, j] -= err * U[i, j].
  Lazily: within a block of SWEEP_BLOCK columns at once, onto the rest once per block (a matmul).
- Rounding (rate mode) is rate-distortion optimized (RDOQ, as in DeepCABAC): each weight takes
  the lower or the upper neighbouring level, whichever costs less in
      (error / step)² + rdoq_lambda * U[i, i]² / mean(U[j, j]²) * code length(level) [bits],
  i.e. squared output error + λ * bits with λ tied to step². Code lengths are -log2 p of the
  layer's levels under plain rounding. A rounding that saves bits lets the search choose a finer
  step for the same budget.
- The budget holds exactly as in rate mode: the step factor c of each layer is searched so the
  packed layer, everything stored counted, meets ``bits`` per weight. The first sweep runs at the
  c that rate mode's estimate predicts; the measured size corrects the estimate, then secant
  steps. A layer is done after MAX_RATE_SWEEPS sweeps if one fits within RATE_SLACK of its
  budget, after MAX_RATE_SWEEPS_FITTING if one fits at all; while none fits, c grows until one
  does (as rate mode). Measured on SmolLM2: 3 sweeps for most layers, 4 for some.
- Layers that share an input (q/k/v, gate/up) share H, and rows are independent given H: they
  are swept together, as one matrix with per-row steps.
- int mode: the same sweep with plain rounding (GPTQ int-g128). RDOQ is off there: int mode has
  no rate target to trade against, so saving bits would only add error.
- Where the bits go (rate mode, bit_allocation="sensitivity"): before anything is compressed, one
  backward pass per calibration sequence measures, per output row of every linear, how much the
  next-token loss grows per squared weight error (output_sensitivity). Each layer's curve of
  stored bits against that loss growth, over rate mode's step grid, is estimated on samples;
  the budget is split where the curves have equal slopes (allocate_bits). ``bits`` is then the
  mean over the linears, and each meets its own share exactly as above. Measured on SmolLM2 at
  3 bits: the value projections of early layers get 4.6-5.4 bits, late query projections 1.5-2.
- The block stack is found by shape (decoder_layers): the largest nn.ModuleList of like blocks
  holding linears, so Llama-like decoders and BERT-like encoders calibrate alike; an encoder has
  no next-token loss, so its bits stay uniform.

Peak memory: the dense model, one decoder layer's H matrices and one layer's activations of the
calibration batch; for the sensitivity pass, the activations of one sequence through the model
(kept for its backward pass), and no weight gradients.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from .attention import compress_attention
from .codec import CodecError
from .experts import (CompressedExperts, ExpertInputs, bank_report, compress_experts, expert_targets, install_bank,
                      use_implementation)
from .nn import is_conv1d, linear_weight
from .quant import (ESCAPE_BITS, RATE_MAX_Q, RATE_ZERO, LayerStats, _constant_stream_bits, _RateEstimate,
                    _row_chunk_symbols, _row_sigma, _solve_log, _stream, _symbol_entropy_bits, coder_overhead,
                    pack_affine, packed_bits, quantize_int, sqnr_db, unpack)

# Licence texts that base-files installs on every Debian and Ubuntu system: about 5.5k SmolLM2
# tokens together. More tokens calibrate better: these, rather than Apache-2.0's first 2048,
# lowered SmolLM2's perplexity at 3 bits on a held-out README from 9.7 to 8.7 (dense: 4.3).
# Not GPL-3, the text pycodec's perplexity figures are measured on, nor its relatives by the same
# authors (GPL, LGPL, GFDL), whose shared wording would flatter them; not the MPLs either:
# MPL-2.0 is the held-out text the defaults were tuned on.
DEFAULT_CALIBRATION_TEXTS = tuple(f"/usr/share/common-licenses/{name}"
                                  for name in ("Apache-2.0", "Artistic", "BSD", "CC0-1.0"))
CALIBRATION_SEQUENCE = 512  # tokens per calibration sequence: long enough for real attention patterns
SWEEP_BLOCK = 128           # columns whose updates are applied lazily (GPTQ's B)
MAX_RATE_SWEEPS = 3         # sweeps per layer for the step search, once one fits within RATE_SLACK
MAX_RATE_SWEEPS_FITTING = 6  # and at most, once one fits at all (strong RDOQ moves the rate far)
RATE_TOLERANCE = 1e-3       # a fitting layer within this fraction under its budget is done
RATE_SLACK = 1e-2           # ... and within this one, after MAX_RATE_SWEEPS
UNUSED_LEVEL_BITS = 1e4     # code length of levels outside -127..127: never chosen


# ---------------------------------------------------------------------------- calibration text

def calibration_text(spec: str) -> tuple[list[str], str]:
    """(paths, text) of a calibration spec: a text file, or "default" (DEFAULT_CALIBRATION_TEXTS,
    those present, one after another). CodecError when the file is missing or holds no text."""
    if spec == "default":
        paths = [p for p in DEFAULT_CALIBRATION_TEXTS if os.path.isfile(p)]
        if not paths:
            raise CodecError(f"the default calibration texts ({os.path.dirname(DEFAULT_CALIBRATION_TEXTS[0])}/"
                             f"{{{','.join(os.path.basename(p) for p in DEFAULT_CALIBRATION_TEXTS)}}}) are not on this "
                             "system: give a text file")
    else:
        if not os.path.isfile(spec):
            raise CodecError(f"calibration text {spec}: no such file")
        paths = [os.path.abspath(spec)]
    texts = []
    for path in paths:
        with open(path, errors="replace") as f:
            texts.append(f.read())
    text = "\n\n".join(t for t in texts if t.strip())
    if not text:
        raise CodecError(f"calibration text {spec} is empty")
    return paths, text


def calibration_ids(tokenizer, text: str, n_tokens: int, max_positions: int | None = None) -> torch.Tensor:
    """The first n_tokens tokens of text as equal-length sequences [n_seq, seq_len] of about
    CALIBRATION_SEQUENCE tokens, or at most ``max_positions`` (the model's context), fewer
    tokens if the text is shorter."""
    if tokenizer is None:
        raise CodecError("calibration needs the model's tokenizer: compress_(model, config, tokenizer=tok)")
    ids = tokenizer(text, return_tensors="pt").input_ids.reshape(-1)[:n_tokens]
    if ids.numel() < 2:
        raise CodecError(f"the calibration text gives {ids.numel()} token(s); at least 2 are needed")
    longest = CALIBRATION_SEQUENCE if not max_positions else max(2, min(CALIBRATION_SEQUENCE, max_positions))
    n_seq = math.ceil(ids.numel() / longest)
    seq_len = ids.numel() // n_seq
    return ids[:n_seq * seq_len].reshape(n_seq, seq_len)


# ---------------------------------------------------------------------------- Hessians

def _is_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or is_conv1d(m)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks: the nn.ModuleList of blocks of one class that holds the
    most parameters (model.model.layers of a Llama, encoder.layer of a BERT)."""
    best, best_size = None, 0
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 1:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        if not any(_is_linear(m) for m in module[0].modules()):
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = module, size
    if best is None:
        raise CodecError(f"calibration needs a transformer with a stack of blocks (an nn.ModuleList of "
                         f"layers holding linear layers); {type(model).__name__} has none")
    return best


class _Captured(Exception):
    pass


def capture_layer_inputs(model: nn.Module, layers: nn.ModuleList, ids: torch.Tensor):
    """(hidden states, other positional arguments, keyword arguments) that the model passes to
    its first block."""
    seen = {}

    def hook(module, args, kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        raise _Captured

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model(ids.to(next(model.parameters()).device), use_cache=False)
    except _Captured:
        pass
    finally:
        handle.remove()
    if "args" not in seen:
        raise CodecError(f"{type(model).__name__}: its forward never reached the first block")
    args, kwargs = tuple(seen["args"]), dict(seen["kwargs"])
    hidden = args[0] if args else kwargs.pop("hidden_states")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value")}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return hidden, args[1:], kwargs


def _as_float32(obj):
    if torch.is_tensor(obj):
        return obj.float() if obj.is_floating_point() else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_as_float32(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _as_float32(v) for k, v in obj.items()}
    return obj


def _run_layer(layer: nn.Module, hidden: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    with torch.no_grad():
        out = layer(hidden, *args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@dataclass
class InputGroup:
    """Linear layers that read the same input tensor, and its second moment H = XᵀX / n."""

    names: list
    hessian: torch.Tensor
    rows: int = 0


def collect_hessians(layer: nn.Module, linears: dict, hidden: torch.Tensor, args: tuple,
                     kwargs: dict) -> list[InputGroup]:
    """Runs the layer once; each linear in ``linears`` (name -> module) gets the H of its input.
    Linears fed the very same tensor share one InputGroup, in the order the forward reaches them."""
    groups: dict[int, tuple[torch.Tensor, InputGroup]] = {}  # id(input) -> (input kept alive, group)

    def hook_for(name):
        def hook(module, inputs, output):
            x = inputs[0]
            if id(x) in groups and groups[id(x)][0] is x:
                groups[id(x)][1].names.append(name)
                return
            x2 = x.detach().reshape(-1, x.shape[-1]).float()
            group = InputGroup([name], x2.t() @ x2, x2.shape[0])
            groups[id(x)] = (x, group)
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in linears.items()]
    try:
        _run_layer(layer, hidden, args, kwargs)
    finally:
        for h in handles:
            h.remove()
    result = [g for _, g in groups.values()]
    for g in result:
        g.hessian /= g.rows
    return result


# ---------------------------------------------------------------------------- the sweep

def _inverse_factor(hessian: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, U): the column order (most excited input first) and the upper Cholesky factor of
    the damped H⁻¹ in that order."""
    h = hessian.double().cpu()
    order = torch.argsort(torch.diagonal(h), descending=True)
    h = h[order][:, order]
    scale = float(torch.diagonal(h).mean())
    if not scale > 0:  # no input ever reached the layer: every column equally (un)important
        h = torch.eye(h.shape[0], dtype=torch.float64)
        scale = 1.0
    h.diagonal().add_(damp * scale)
    low, info = torch.linalg.cholesky_ex(h)
    if int(info):  # not positive definite in float64 even damped: a NaN or inf in the inputs
        raise CodecError("calibration: a layer's input second moment is not positive definite "
                         "(non-finite activations?)")
    return order, torch.linalg.cholesky(torch.cholesky_inverse(low), upper=True).float()


def gptq_sweep(w: torch.Tensor, factor: torch.Tensor, quantize_column) -> tuple[torch.Tensor, torch.Tensor,
                                                                                  torch.Tensor]:
    """Quantizes the columns of w [N, K] (already in sweep order) one by one with error feedback.

    quantize_column(i, column) -> (dequantized column, symbols, exact mask or None).
    Returns (symbols [N, K] int16, exact [N, K] bool, the columns as they were when quantized:
    the value an exact weight keeps).
    """
    n, k = w.shape
    columns = w.t().contiguous()  # [K, N]: a column is one contiguous row
    symbols = torch.empty(k, n, dtype=torch.int16)
    exact = torch.zeros(k, n, dtype=torch.bool)
    with _one_thread():
        _sweep_blocks(columns, symbols, exact, factor, quantize_column)
    return symbols.t(), exact.t(), columns.t()


@contextlib.contextmanager
def _one_thread():
    # The sweep is thousands of ops on one column each. Split over threads, every op waits for
    # all of them: on a shared machine one busy core made a sweep 40x slower (25 s, not 0.4 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _sweep_blocks(columns, symbols, exact, factor, quantize_column) -> None:
    k, n = columns.shape
    for i1 in range(0, k, SWEEP_BLOCK):
        i2 = min(i1 + SWEEP_BLOCK, k)
        block = columns[i1:i2]
        u = factor[i1:i2, i1:i2]
        errors = torch.empty(i2 - i1, n)
        for j in range(i2 - i1):
            col = block[j]
            deq, sym, esc = quantize_column(i1 + j, col)
            symbols[i1 + j] = sym
            if esc is not None:
                exact[i1 + j] = esc
            err = errors[j]
            torch.sub(col, deq, out=err).div_(u[j, j])
            if j + 1 < i2 - i1:
                block[j + 1:].addr_(u[j, j + 1:], err, alpha=-1)
        if i2 < k:
            columns[i2:].addmm_(factor[i1:i2, i2:].t(), errors, alpha=-1)


def _code_lengths(w: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """-log2 p of each level -129..128 (index level + 129) under plain rounding of w at step;
    escapes count as level 0, levels never seen cost one bit more than the rarest possible."""
    step = step.float()
    qf = torch.where(step > 0, w / step, torch.zeros_like(w)).round()  # rows of zeros: step 0
    qf = torch.where(qf.abs() > RATE_MAX_Q, torch.zeros_like(qf), qf)
    counts = torch.bincount((qf + RATE_MAX_Q + 2).reshape(-1).long(), minlength=2 * RATE_MAX_Q + 4).double()
    total = float(w.numel())
    bits = torch.where(counts > 0, -torch.log2(counts.clamp_min(1) / total), torch.tensor(math.log2(2 * total)))
    bits[0] = bits[1] = bits[-1] = UNUSED_LEVEL_BITS  # -129, -128, 128
    return bits.float()


def _rate_sweep(ws: list, sigmas: list, cs: list, order: torch.Tensor, factor: torch.Tensor, rdoq_lambda: float,
                forced: list):
    """One GPTQ sweep of the stacked weights ws (each [N_l, K], in sweep order) at step factors
    cs; forced (masks like ws) marks weights that are escapes whatever their value. Returns per
    weight (q uint8, step fp16 [N_l, 1], exact mask, exact values), in the layer's own column
    order."""
    steps = [(c * s).clamp_min(1e-8).half() for c, s in zip(cs, sigmas)]
    step = torch.cat(steps).float().reshape(-1)
    # A row of zeros has step 0 (its fp16 rounds to 0): its levels are all 0, never NaN.
    inv_step = torch.where(step > 0, 1.0 / step, torch.zeros_like(step))
    d2 = torch.diagonal(factor).pow(2)
    weight = (rdoq_lambda * d2 / d2.mean()).tolist()  # λ per column, in squared steps per bit
    tables = torch.cat([_code_lengths(x, s) for x, s in zip(ws, steps)])
    width = 2 * RATE_MAX_Q + 4
    base = torch.cat([torch.full((x.shape[0],), float(i * width + RATE_MAX_Q + 2)) for i, x in enumerate(ws)])
    forced_cols = torch.cat(forced).t().contiguous()  # [K, N]

    def quantize_column(i, col):
        u = col * inv_step
        nearest = u.round()
        escaped = (nearest.abs() > RATE_MAX_Q).logical_or_(forced_cols[i])
        if weight[i] > 0:
            low = u.floor().clamp_(-RATE_MAX_Q - 1, RATE_MAX_Q)
            index = (low + base).long()
            # the upper level iff (1 - f)² + λ L(upper) < f² + λ L(lower), f = u - low
            gain = (tables.take(index) - tables.take(index + 1)).mul_(weight[i])
            q = low.add_(((1 - 2 * (u - low)) < gain).to(low.dtype))
        else:
            q = nearest
        q = q.masked_fill_(escaped, 0)
        deq = torch.where(escaped, col, q * step)
        return deq, q.to(torch.int16), escaped

    symbols, exact, values = gptq_sweep(torch.cat(ws), factor, quantize_column)
    inverse = torch.argsort(order)
    symbols, exact, values = symbols[:, inverse], exact[:, inverse], values[:, inverse]
    out, row = [], 0
    for x, s in zip(ws, steps):
        rows = slice(row, row + x.shape[0])
        out.append(((symbols[rows] + RATE_ZERO).to(torch.uint8).contiguous(), s, exact[rows], values[rows]))
        row += x.shape[0]
    return out


@dataclass
class _RateSearch:
    """Step-factor search of one layer: rate mode's estimate, corrected by real sweeps."""

    w: torch.Tensor          # original weight, in sweep order, non-finite weights as 0
    nonfinite: torch.Tensor  # where the original is NaN or infinite (escapes), in sweep order
    sigma: torch.Tensor
    budget: float
    fixed_bits: int          # the stream's cost at zero entropy
    side_bits: int
    estimate: _RateEstimate
    chunk_symbols: int | None
    coder: str
    target_bits: float
    tried: dict = field(default_factory=dict)   # c -> stored bits
    best: tuple | None = None  # (stored bits, c, result + stream) of the largest that fits
    done: bool = False
    relaxed: bool = False
    misses: int = 0

    def predicted(self, c: float, scale: float = 1.0) -> float:
        return (self.estimate.bits_per_weight(c) * self.w.numel() + self.fixed_bits) * scale + self.side_bits

    def first_c(self) -> float:
        return _solve_log(self.predicted, self.budget)

    def record(self, c: float, result) -> float | None:
        """Measures one sweep's result at c; returns the next c to sweep at, or None when done."""
        q, step, exact, _ = result
        stream = _stream(q.numpy(), self.coder, self.chunk_symbols)
        total = stream.numel() * 8 + step.numel() * 16 + 16 + int(exact.sum()) * ESCAPE_BITS
        self.tried[c] = total
        if total <= self.budget and (self.best is None or total > self.best[0]):
            self.best = (total, c, result + (stream,))
        fits = self.best is not None
        unused = (self.budget - self.best[0]) / self.budget if fits else math.inf
        sweeps = len(self.tried)
        if unused <= RATE_TOLERANCE or sweeps >= MAX_RATE_SWEEPS and unused <= RATE_SLACK or \
                fits and sweeps >= MAX_RATE_SWEEPS_FITTING:
            self.done = True
            return None
        # The last sweep aims lower: the secant lands within about 0.2% of its aim, and missing the
        # budget would leave an earlier sweep, often 0.5% under it.
        last = sweeps >= MAX_RATE_SWEEPS - 1
        aim = self.budget * (1 - (3 * RATE_TOLERANCE if last else RATE_TOLERANCE / 2))
        if len(self.tried) == 1:  # the estimate's error at c, taken as the same nearby
            correction = (total - self.side_bits) / (self.predicted(c) - self.side_bits)
            nxt = _solve_log(lambda x: self.predicted(x, correction), aim, c / 4, c * 4, 20)
        else:  # secant in log c (bits are close to linear in it) through the closest under and over
            under = [x for x, t in self.tried.items() if t <= self.budget]
            over = [x for x, t in self.tried.items() if t > self.budget]
            a, b = (min(under), max(over)) if under and over else \
                sorted(self.tried, key=lambda x: abs(self.tried[x] - aim))[:2]
            ta, tb = self.tried[a], self.tried[b]
            nxt = math.exp(math.log(a) + (aim - ta) * (math.log(b) - math.log(a)) / (tb - ta)) if ta != tb else None
        if fits:
            if nxt is None or nxt in self.tried:
                self.done = True
            return None if self.done else nxt
        largest = max(self.tried)  # nothing fits yet, and every c up to this one is too fine
        if nxt is not None and nxt > largest and sweeps < MAX_RATE_SWEEPS:
            return nxt
        if largest > 1e4:  # a layer too small to ever fit: its fixed stream cost on top, as rate mode
            if self.relaxed:
                raise CodecError(f"rate mode cannot reach {self.target_bits} bits per weight on a "
                                 f"{tuple(self.w.shape)} weight")
            self.relaxed, self.budget = True, self.budget + self.fixed_bits
            return largest * (1 + 1e-6)
        excess = max((self.tried[largest] - self.budget) / self.w.numel(), 1e-3)
        self.misses += 1
        return largest * 2 ** (excess * 2 ** (self.misses - 1))  # about 1 bit per doubling, faster each time


def quantize_rate_calibrated(ws: list, hessian: torch.Tensor, target_bits, damp: float, rdoq_lambda: float,
                             coder: str = "huffman", chunk_symbols: int | None = None) -> list:
    """Rate mode for weights that read the same input (second moment ``hessian``): each meets
    ``target_bits`` per weight (one figure for all, or one per weight), everything stored
    counted. Returns per weight what
    pycodec.quant.quantize_rate returns: (q, scale [N,1], zero [1,1], escape_index, escape_value,
    stream)."""
    order, factor = _inverse_factor(hessian, damp)
    targets = list(target_bits) if isinstance(target_bits, (list, tuple)) else [target_bits] * len(ws)
    searches, originals = [], []
    for w, target in zip(ws, targets):
        w = w.detach().float().cpu()
        sigma = _row_sigma(w)  # of the original row: the grid is fixed before the sweep
        chunk = _row_chunk_symbols(w.shape[1], coder, chunk_symbols)
        fixed = _constant_stream_bits(tuple(w.shape), coder, chunk)
        overhead = coder_overhead(coder)
        # NaN and infinite weights are escapes, as in rate mode; the sweep sees them as 0 and
        # feeds back no error from them (an escape's value is its own), so they spread nothing.
        nonfinite = ~torch.isfinite(w)
        originals.append(w)
        searches.append(_RateSearch(torch.where(nonfinite, 0.0, w)[:, order], nonfinite[:, order], sigma,
                                    target * w.numel(), fixed, w.shape[0] * 16 + 16,
                                    _RateEstimate(w, sigma, overhead), chunk, coder, target))
    cs = [s.first_c() for s in searches]
    while True:
        active = [i for i, s in enumerate(searches) if not s.done]
        if not active:
            break
        results = _rate_sweep([searches[i].w for i in active], [searches[i].sigma for i in active],
                              [cs[i] for i in active], order, factor, rdoq_lambda,
                              [searches[i].nonfinite for i in active])
        for i, result in zip(active, results):
            cs[i] = searches[i].record(cs[i], result)
    out = []
    zero = torch.full((1, 1), float(RATE_ZERO), dtype=torch.float16)
    for s, w in zip(searches, originals):
        q, step, exact, values, stream = s.best[2]
        idx = exact.reshape(-1).nonzero().reshape(-1)
        kept = torch.where(torch.isfinite(w), values, w)  # a non-finite weight's escape keeps it
        out.append((q, step, zero.clone(), idx, kept.reshape(-1)[idx].clone(), stream))
    return out


def quantize_int_calibrated(ws: list, hessian: torch.Tensor, bits: int, group_size: int, symmetric: bool,
                            damp: float) -> list:
    """GPTQ int: scale and zero per group from the original weights (pycodec.quant.quantize_int),
    plain rounding with error feedback. NaN and infinite weights are escapes, as in int mode:
    quantized as the zero point, feeding back no error, their groups' grids set by the others.
    Returns per weight (q uint8 [N, K], scale, zero, escape_index, escape_value)."""
    order, factor = _inverse_factor(hessian, damp)
    inverse = torch.argsort(order)
    ws = [w.detach().float().cpu() for w in ws]
    nonfinite = [~torch.isfinite(w) for w in ws]
    originals, ws = ws, [torch.where(bad, 0.0, w) for w, bad in zip(ws, nonfinite)]
    forced_cols = torch.cat(nonfinite)[:, order].t().contiguous()  # [K, N]
    grids = [quantize_int(w, bits, group_size, symmetric)[1:] for w in ws]
    scale = torch.cat([s for s, _ in grids]).float()
    zero = torch.cat([z for _, z in grids]).float()
    group_of = (order // group_size).tolist()
    qmax = float((1 << bits) - 1)
    scale_cols = scale.t().contiguous()  # [G, N]: a group's scales contiguous
    zero_cols = zero.t().contiguous()
    # A group of (near) zeros has scale 0 in fp16: its weights become the zero point, not NaN.
    divisor_cols = torch.where(scale_cols > 0, scale_cols, torch.full_like(scale_cols, math.inf))

    def quantize_column(i, col):
        s, z = scale_cols[group_of[i]], zero_cols[group_of[i]]
        q = (col / divisor_cols[group_of[i]]).round_().add_(z).clamp_(0, qmax)
        escaped = forced_cols[i]
        q = torch.where(escaped, z, q)
        return torch.where(escaped, col, (q - z) * s), q.to(torch.int16), escaped

    symbols, _, _ = gptq_sweep(torch.cat(ws)[:, order], factor, quantize_column)
    symbols = symbols[:, inverse].to(torch.uint8)
    out, row = [], 0
    for w, bad, (s, z) in zip(originals, nonfinite, grids):
        idx = bad.reshape(-1).nonzero().reshape(-1)
        out.append((symbols[row:row + w.shape[0]].contiguous(), s, z, idx, w.reshape(-1)[idx].clone()))
        row += w.shape[0]
    return out


def compress_weights_calibrated(ws: list, hessian: torch.Tensor, config, bits: list | None = None) -> list:
    """Packs weights that read the same input, as pycodec.quant.compress_weight does, with
    rounding chosen for their outputs on inputs of second moment ``hessian``. Rate mode: each
    weight meets its entry of ``bits`` (default: config.bits). Returns [(packed, LayerStats)]."""
    wf = [w.detach().float().cpu() for w in ws]
    out = []
    if config.mode == "int":
        for w, wo, (q, scale, zero, idx, val) in zip(ws, wf, quantize_int_calibrated(
                wf, hessian, int(config.bits), config.group_size, config.symmetric, config.damp)):
            packed = pack_affine(q, scale, zero, config.group_size, w.dtype, idx, val, coder=config.coder,
                                 chunk_symbols=config.chunk_symbols)
            out.append((packed, _stats(w, wo, packed, q, (scale.numel() + zero.numel()) * 16 +
                                       idx.numel() * ESCAPE_BITS)))
    elif config.mode == "rate":
        for w, wo, (q, scale, zero, idx, val, stream) in zip(ws, wf, quantize_rate_calibrated(
                wf, hessian, bits or config.bits, config.damp, config.rdoq_lambda, config.coder,
                config.chunk_symbols)):
            packed = pack_affine(q, scale, zero, w.shape[1], w.dtype, idx, val, stream=stream)
            out.append((packed, _stats(w, wo, packed, q, (scale.numel() + zero.numel()) * 16 +
                                       idx.numel() * ESCAPE_BITS)))
    else:
        raise CodecError(f"calibration needs mode 'int' or 'rate', got {config.mode!r}")
    return out


def _stats(w, wf, packed, q, side_entropy_bits) -> LayerStats:
    return LayerStats(w.numel(), packed_bits(packed), _symbol_entropy_bits(q) + side_entropy_bits,
                      sqnr_db(wf, unpack(packed)))


# ---------------------------------------------------------------------------- bit allocation

ALLOCATION_C = (0.02, 60.0)   # step factors c from about 8 bits per weight to almost 0
ALLOCATION_GRID = 160         # c values per layer at which its rate and distortion are sampled
ALLOCATION_SAMPLE = 1 << 15   # weights per layer the distortion is estimated on
# A layer's bits stay within max(bits - 1.5, 1.5) .. bits + 3. The sensitivity is a second-order
# estimate, for small errors; below about 1.5 bits most of a layer's weights round to zero, and
# SmolLM2 at a 2.5-bit mean, its first query projection allocated 0.5 bits, scored 228 (uniform: 32).
ALLOCATION_BELOW, ALLOCATION_ABOVE, ALLOCATION_FLOOR = 1.5, 3.0, 1.5


def output_sensitivity(model: nn.Module, names: list, ids: torch.Tensor, progress: bool = False) -> dict | None:
    """Per output row r of each named linear layer, the growth of the model's loss per unit of
    squared weight error in that row: F_r = sum over tokens t of g_tr² |x_t|² / (K * tokens),
    with g_t the gradient of the next-token loss with respect to the layer's output at token t
    and x_t its input (K wide). It is the diagonal, in output space and token by token, of the
    loss's curvature, for an error that is white along the row; one backward pass per sequence,
    no weight gradients. None for a model that does not predict next tokens (an encoder): the
    bits then stay uniform."""
    can_generate = getattr(model, "can_generate", None)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is None or not callable(can_generate) or not can_generate():
        return None
    modules = dict(model.named_modules())
    sums = {n: torch.zeros(linear_weight(modules[n]).shape[0], dtype=torch.float64) for n in names}

    def hook_for(name):
        def hook(module, inputs, output):
            if not output.requires_grad:
                return
            x2 = inputs[0].detach().float().pow(2).sum(-1)

            def on_grad(g):
                sums[name].add_(torch.einsum("...n,...->n", g.detach().float().pow(2), x2).double().cpu())
            output.register_hook(on_grad)
        return hook

    leaf = {}

    def as_leaf(module, inputs, output):  # gradients start here: none reach the weights
        leaf["x"] = output.detach().requires_grad_(True)
        return leaf["x"]

    handles = [modules[n].register_forward_hook(hook_for(n)) for n in names]
    handles.append(embeddings.register_forward_hook(as_leaf))
    device = next(model.parameters()).device
    sequences = range(ids.shape[0])
    if progress:
        sequences = _progress(sequences, "pycodec sensitivity", "sequence")
    try:
        with torch.enable_grad():
            for i in sequences:
                seq = ids[i:i + 1].to(device)
                logits = model(seq, use_cache=False).logits
                loss = nn.functional.cross_entropy(logits[0, :-1].float(), seq[0, 1:], reduction="sum")
                torch.autograd.grad(loss, leaf.pop("x"))
    finally:
        for h in handles:
            h.remove()
    tokens = ids.numel()
    return {n: v / (linear_weight(modules[n]).shape[1] * tokens) for n, v in sums.items()}


def _rate_distortion(w: torch.Tensor, sensitivity: torch.Tensor, coder: str, cs: torch.Tensor):
    """(bits per weight, loss growth) of a layer at each step factor c of rate mode's grid
    (step = c * sigma(row)): stored bits as rate mode's estimate predicts them plus the steps,
    distortion as the sensitivity-weighted squared error, both estimated on samples."""
    w = w.detach().float().cpu()
    n, k = w.shape
    sigma = _row_sigma(w)
    overhead = coder_overhead(coder)
    estimate = _RateEstimate(w, sigma, overhead)
    side = (16 * n + 16) / w.numel()
    bits = torch.tensor([estimate.bits_per_weight(float(c)) + side for c in cs], dtype=torch.float64)
    generator = torch.Generator().manual_seed(w.numel())
    index = torch.randint(w.numel(), (min(ALLOCATION_SAMPLE, w.numel()),), generator=generator)
    rows = index // k
    s = sigma.reshape(-1)[rows]
    u = w.reshape(-1)[index] / torch.where(s > 0, s, torch.ones_like(s))
    importance = sensitivity.float()[rows] * s.pow(2)
    q = (u[None, :] / cs[:, None].float()).round()
    err = torch.where(q.abs() > RATE_MAX_Q, torch.zeros_like(q), u[None, :] - q * cs[:, None].float())
    distortion = (err.pow(2) * importance[None, :]).sum(1).double() * (w.numel() / index.numel())
    return bits, distortion


def allocate_bits(weights: dict, sensitivity: dict, target_bits: float, coder: str = "huffman") -> dict:
    """Per layer name, its bits per weight: the split of target_bits * (all weights) that
    minimizes the summed loss growth. Each layer takes the point of its rate-distortion curve
    where the slope is -mu (Lagrangian); mu is bisected until the total meets the budget, and
    the two solutions that bracket it are mixed so the mean is target_bits exactly. Bits stay
    within max(target_bits - ALLOCATION_BELOW, ALLOCATION_FLOOR) .. target_bits + ALLOCATION_ABOVE
    (and at most 8); below ALLOCATION_FLOOR bits, every layer takes target_bits."""
    names = list(weights)
    cs = torch.logspace(math.log10(ALLOCATION_C[0]), math.log10(ALLOCATION_C[1]), ALLOCATION_GRID,
                        dtype=torch.float64)
    curves = [_rate_distortion(weights[n], sensitivity[n], coder, cs) for n in names]
    bits = torch.stack([b for b, _ in curves])         # [L, G]
    distortion = torch.stack([d for _, d in curves])
    count = torch.tensor([float(weights[n].numel()) for n in names], dtype=torch.float64)
    lo = min(target_bits, max(ALLOCATION_FLOOR, target_bits - ALLOCATION_BELOW))
    hi = min(8.0, target_bits + ALLOCATION_ABOVE)
    allowed = (bits >= lo) & (bits <= hi)
    free = allowed.any(1)  # a layer whose curve never enters the range keeps target_bits
    budget = target_bits * float(count.sum()) - target_bits * float(count[~free].sum())

    def choose(mu: float) -> torch.Tensor:
        cost = distortion + mu * count[:, None] * bits
        cost = torch.where(allowed, cost, torch.full_like(cost, math.inf))
        picked = bits.gather(1, cost.argmin(1, keepdim=True)).reshape(-1)
        return torch.where(free, picked, torch.full_like(picked, target_bits))

    def spent(b: torch.Tensor) -> float:
        return float((b * count)[free].sum())

    low, high = 1e-30, 1e30  # mu: the price of a bit in loss; high enough spends the least
    for _ in range(200):
        mid = math.sqrt(low * high)
        if spent(choose(mid)) > budget:
            low = mid
        else:
            high = mid
    fits, over = choose(high), choose(low)
    extra = spent(over) - spent(fits)
    mix = min(max((budget - spent(fits)) / extra, 0.0), 1.0) if extra > 0 else 0.0
    chosen = fits + mix * (over - fits)
    excess = float((chosen * count).sum()) - target_bits * float(count.sum())
    room = (chosen - lo).clamp_min(0) * count
    if excess > -1e-9 * target_bits * float(count.sum()) and float(room.sum()) > 0:  # rounding never adds a bit
        chosen = chosen - (chosen - lo).clamp_min(0) * ((max(excess, 0.0) + 1e-9 * float(count.sum()))
                                                         / float(room.sum()))
    return {n: float(b) for n, b in zip(names, chosen)}


def _progress(iterable, desc: str, unit: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, unit=unit, file=sys.stderr)


# ---------------------------------------------------------------------------- the model

def compress_bank_calibrated(weight: torch.Tensor, transposed: bool, param: str, inputs: ExpertInputs,
                             config) -> CompressedExperts:
    """A CompressedExperts of ``weight`` [experts, rows, columns], each expert rounded for its
    outputs on the inputs routed to it (an expert no token reached: as if all inputs were alike)."""

    def code(e, w):  # w: expert e's [out, in]
        w = w.contiguous()
        (packed_stats,) = compress_weights_calibrated([w], inputs.hessian(param, e, w.shape[1]), config)
        return packed_stats

    return CompressedExperts.from_parameter(weight, transposed, config, code)


def _max_positions(model: nn.Module) -> int | None:
    """The longest sequence the model's position embeddings take (GPT-2's n_positions), if it says."""
    cfg = getattr(model, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def compress_calibrated(model: nn.Module, config, tokenizer=None, skip=None, progress: bool = True) -> dict:
    """pycodec.compress_ with calibration: the same modules are replaced (pycodec.nn.compression_plan),
    and the linears of the decoder layers are quantized in order, each on the inputs that the
    already-compressed modules before it produce. Modules outside the decoder layers (embeddings,
    the output head) are compressed first, from their weights alone, so the first layer is
    calibrated on the embeddings the compressed model will have. In rate mode with
    bit_allocation="sensitivity", ``bits`` is the mean of those linears: allocate_bits splits it
    by output_sensitivity, measured first on the dense model. Returns compress_'s report, plus
    "calibration": {"texts": the files read, "tokens", "sequences", "bit_allocation"}."""
    from .nn import (CompressedConv1D, CompressedEmbedding, CompressedLinear, _compressed, _layer_report, _plan,
                     _set_submodule, is_conv1d, skip_names, whole_model_report)

    layers = decoder_layers(model)
    paths, text = calibration_text(config.calibration)
    ids = calibration_ids(tokenizer, text, config.calibration_tokens, _max_positions(model))
    plan, kept_dense = _plan(model, config, skip)
    if not plan and any(isinstance(m, (CompressedLinear, CompressedEmbedding)) for m in model.modules()):
        raise CodecError("the model is already compressed (pycodec.decompress_ restores dense modules first)")
    n_parameters = sum(p.numel() for p in model.parameters())  # before compression: tied ones once
    in_layers = {id(m) for layer in layers for m in layer.modules()}
    calibrated = {id(m): (name, cfg) for name, m, cfg, shares in plan
                  if id(m) in in_layers and _is_linear(m) and shares is None}
    targets, allocation = {}, "uniform"
    if config.mode == "rate" and config.bit_allocation == "sensitivity" and calibrated:
        # Measured on the dense model, before anything is compressed: how much the loss cares
        # about each layer's errors, and so where the budget's bits do the most good.
        names = [name for name, _ in calibrated.values()]
        sensitivity = output_sensitivity(model, names, ids, progress)
        if sensitivity is None:
            allocation = f"uniform ({type(model).__name__} does not predict next tokens)"
        else:
            modules = dict(model.named_modules())
            targets = allocate_bits({n: linear_weight(modules[n]) for n in names}, sensitivity, config.bits,
                                    config.coder)
            allocation = "sensitivity"
    reports, done = {}, {}

    def install(name, module, new, shares=None):
        _set_submodule(model, name, new)
        done[name] = new
        reports[name] = _layer_report(module, new, shares)

    for name, module, cfg, shares in plan:  # embeddings and head first: weights alone
        if id(module) not in in_layers:
            install(name, module, _compressed(module, cfg or config, done[shares].packed() if shares else None), shares)

    hidden, args, kwargs = capture_layer_inputs(model, layers, ids)
    hidden, args, kwargs = hidden.float(), _as_float32(args), _as_float32(kwargs)
    skipped = skip_names(config, skip)
    iterator = _progress(layers, f"pycodec {config.mode} calibrated", "layer") if progress else layers
    for layer in iterator:
        dtype = next(layer.parameters()).dtype
        layer.float()  # computed in float32, as H is accumulated; cast back below
        linears = {calibrated[id(m)][0]: m for m in layer.modules() if id(m) in calibrated}
        banks = expert_targets(model, skipped, within=layer)
        inputs = ExpertInputs()
        for _, module, _ in banks:  # the pass below gathers each expert's inputs, routed as they come
            use_implementation(module)
            module._pycodec_inputs = inputs
        try:
            groups = collect_hessians(layer, linears, hidden, args, kwargs)
        finally:
            for _, module, _ in banks:
                module.__dict__.pop("_pycodec_inputs", None)
        for name, module, param in banks:
            weight = module._parameters[param]
            bank = compress_bank_calibrated(weight.detach().to(dtype), bool(module.is_transposed), param, inputs,
                                            config)
            install_bank(model, name, module, param, bank)
            reports[name] = bank_report(bank, weight.detach().to(dtype))
        for group in groups:
            by_config: dict = {}  # layers that share an input and a config are swept together
            for n in group.names:
                by_config.setdefault(calibrated[id(linears[n])][1], []).append(n)
            for cfg, names in by_config.items():
                modules = [linears[n] for n in names]
                weights = [linear_weight(m).detach().to(dtype).contiguous() for m in modules]  # the values it holds
                bits = [targets.get(n, cfg.bits) for n in names]
                for n, m, w, (packed, stats) in zip(names, modules, weights,
                                                    compress_weights_calibrated(weights, group.hessian, cfg, bits)):
                    cls = CompressedConv1D if is_conv1d(m) else CompressedLinear
                    new = cls(w.shape[1], w.shape[0], packed, m.bias, False, cfg.exact_outputs)
                    new.to(m.weight.device)
                    new.stats = stats
                    install(n, m, new)
        hidden = _run_layer(layer, hidden, args, kwargs)  # through the compressed linears: the next layer's inputs
        layer.to(dtype)
    for name, module, cfg, shares in plan:  # a tie into a decoder layer's weight: nothing new is coded
        if name not in done:
            install(name, module, _compressed(module, cfg or config, done[shares].packed() if shares else None), shares)

    # Expert banks outside the decoder layers, if any, and attentions' packed projections (not
    # modules, so not calibrated), from their weights alone.
    reports.update(compress_experts(model, config, skipped, progress))
    attention = compress_attention(model, config, skipped)
    model.pycodec_config = config
    report = whole_model_report(model, {name: reports[name] for name, *_ in plan} | {
        name: r for name, r in reports.items() if "experts" in r} | attention, config, n_parameters, kept_dense, skip)
    report["calibration"] = {"texts": paths, "tokens": int(ids.numel()), "sequences": ids.shape[0],
                             "bit_allocation": allocation}
    return report
