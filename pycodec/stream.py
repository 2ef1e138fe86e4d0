"""Streaming: run a model whose compressed weights do not all fit on the device, moving only
compressed bytes.

``pycodec.stream(model, device="cuda", resident_bytes=N, prefetch=2)`` plans, within N bytes
of device memory:

  always on the device  every tensor that is not a compressed module's packed weight: norms,
                        dense embeddings, biases, rotary buffers, the GPU path's decode tables
  resident              the compressed modules that fit after that, in execution order
  ring                  prefetch + 1 slots, each the size of the largest packed weight; the
                        other compressed modules ("streamed") take turns in it

A streamed module keeps its packed tensors in host memory: pinned (one copy of them, the
module's buffers become views of it) or, for a memory-mapped checkpoint
(``from_pretrained(mmap=True)``), in the mapped file. Uploads take the slots round robin, in
execution order, so each lands in the slot whose occupant ran longest ago. Before a streamed
module runs, its forward pre-hook waits for its upload and issues those of the next
``prefetch`` streamed modules on a side CUDA stream, each after the event that says its slot's
occupant has finished computing: uploading i+1 overlaps computing i, and the last modules of
one forward prefetch the first of the next (``generate()``). During its forward the module's
packed buffers are views of its slot; afterwards they point back to the host copy, so nothing
outside a forward ever sees a slot that another module may overwrite.

A module that runs out of the planned order (registration order) is uploaded when it runs,
synchronously: correct, slower, and counted in ``report()["prefetch_misses"]``.

Experts (the modules of a CompressedExperts bank) are not in that order: which of them run
depends on the router. They are uploaded when the experts' forward knows which tokens went where
(``expect``: the routed experts, in the order they will run, as many as the ring holds), and
the order's prefetch passes over them, so no expert that no token was routed to is uploaded.

``generate()`` works. ``torch.compile`` works with a graph break at each streamed module: its
hooks (uploads, stream and event calls) run eagerly, between compiled regions; CUDA graphs
(``mode="reduce-overhead"``) cannot hold uploads that depend on the host's order of calls.
On the CPU (``device="cpu"``), uploads are plain copies: the same plan and hooks, which the
tests exercise.
"""
from __future__ import annotations

import torch
from torch import nn

from . import cuda_ops, gpu
from .codec import CodecError
from .experts import CompressedExperts
from .nn import CompressedEmbedding, CompressedLinear, _packed_key

ALIGN = 256  # bytes: each packed tensor's start in a slot (what CUDA allocations give)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _slot_layout(packed: dict) -> tuple[dict, int]:
    """{name: byte offset} of a module's packed tensors in a slot, and the bytes it spans. Each
    tensor is followed by the kernels' read slack, so they may read past any stream's end."""
    offsets, at = {}, 0
    for name, t in packed.items():
        offsets[name] = at
        at += -(-(_nbytes(t) + cuda_ops.SLACK_BYTES) // ALIGN) * ALIGN
    return offsets, at


def _views(blob: torch.Tensor, packed: dict, offsets: dict) -> dict:
    """Tensors shaped as ``packed``, at ``offsets`` inside the byte tensor ``blob``."""
    return {name: blob[offsets[name]:offsets[name] + _nbytes(t)].view(t.dtype).view(t.shape)
            for name, t in packed.items()}


def _is_mapped(t: torch.Tensor) -> bool:
    return bool(getattr(t.untyped_storage(), "filename", None))


class _Streamed:
    """One streamed module: its host tensors, its slot and its views of that slot."""

    def __init__(self, name: str, module: nn.Module, index: int, routed: bool = False):
        self.name, self.module, self.index = name, module, index
        self.routed = routed  # an expert: uploaded when routed to (Streamer.expect), not in order
        self.order: int | None = None  # its place among the streamed modules that run in order
        self.host = dict(module.packed())
        self.offsets, self.span = _slot_layout(self.host)
        self.blob: torch.Tensor | None = None  # pinned host copy in the slot's layout (one upload)
        self.slot_id: int | None = None  # the ring slot it was last uploaded to
        self.views: dict | None = None  # its packed tensors as views of that slot


class Streamer:
    """The plan and hooks of ``pycodec.stream`` (see the module docstring); ``report()``,
    ``close()`` (also as a context manager) to put the model back as it was, on the host."""

    def __init__(self, model: nn.Module, device, resident_bytes: int, prefetch: int = 2, pin: bool | None = None):
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if not isinstance(resident_bytes, int) or isinstance(resident_bytes, bool) or resident_bytes <= 0:
            raise ValueError(f"resident_bytes must be a positive int, got {resident_bytes!r}")
        if not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 0:
            raise ValueError(f"prefetch must be a non-negative int, got {prefetch!r}")
        if getattr(model, "pycodec_stream", None) is not None:
            raise CodecError("the model is streamed already: close() its Streamer first")
        if device.type == "cuda":
            gpu.require_gpu_build()
        compressed = [(n, m) for n, m in model.named_modules() if isinstance(m, (CompressedLinear, CompressedEmbedding))]
        if not compressed:
            raise CodecError("the model has no compressed modules to stream: call pycodec.compress_ first")
        if any(m.meta.device.type != "cpu" for _, m in compressed):
            raise CodecError("stream() takes a model on the CPU (as loaded): it moves what fits to the device itself")
        self.model, self.device, self.budget, self.prefetch = model, device, resident_bytes, prefetch

        packed_ids = {id(t) for _, m in compressed for t in m.packed().values()}
        seen, dense = set(), 0
        for t in list(model.parameters()) + list(model.buffers()):
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
            if id(t) not in packed_ids and key not in seen and not t.is_meta:
                seen.add(key)
                dense += _nbytes(t)
        tables = {}
        for name, m in compressed:
            if device.type == "cuda" and isinstance(m, CompressedLinear):
                m.verify()  # a memory-mapped checkpoint: checked before its tables are built from it
                tables[name] = gpu.kernel_buffers(m._packed_cpu(), m._info)
        dense += sum(_nbytes(t) for buffers in tables.values() for t in buffers.values())
        # A tied lm_head holds its embedding's packed tensors: resident, they take room once,
        # and both modules follow the first of them (in execution order) into the plan.
        first_holder, follows = {}, {}
        for name, m in compressed:
            follows[name] = first_holder.setdefault(_packed_key(m), name)
        spans = {name: _slot_layout(dict(m.packed()))[1] for name, m in compressed if follows[name] == name}

        # Resident first, in execution order, while the rest still has its ring.
        slot_bytes = max(spans.values())
        if dense + sum(spans.values()) <= resident_bytes:
            resident, ring_slots = [n for n, _ in compressed], 0
        else:
            ring_slots = prefetch + 1
            need = dense + ring_slots * slot_bytes
            if need > resident_bytes:
                raise ValueError(
                    f"resident_bytes={resident_bytes} is below what streaming needs on {device}: {need} bytes "
                    f"({dense} always resident: dense tensors and decode tables; {ring_slots} ring slots of "
                    f"{slot_bytes} bytes, the largest layer). Raise the budget or lower prefetch (now {prefetch}).")
            free, resident = resident_bytes - need, []
            for name, _ in compressed:
                if follows[name] != name:
                    if follows[name] in resident:
                        resident.append(name)
                elif spans[name] <= free:
                    resident.append(name)
                    free -= spans[name]
        resident_set = set(resident)
        self.resident = resident
        experts = {id(e) for m in model.modules() if isinstance(m, CompressedExperts) for e in m.children()}
        self.streamed = [_Streamed(n, m, 0, id(m) in experts) for n, m in compressed if n not in resident_set]
        for i, s in enumerate(self.streamed):
            s.index = i
        self.in_order = [s for s in self.streamed if not s.routed]
        for i, s in enumerate(self.in_order):
            s.order = i
        self._by_module = {id(s.module): s for s in self.streamed if s.routed}
        self.slots = min(ring_slots, len(self.streamed))
        self.device_bytes = {"dense": dense, "resident": sum(spans.get(n, 0) for n in resident),
                             "ring": self.slots * slot_bytes}
        self.stats = {"uploads": 0, "prefetch_misses": 0, "bytes_uploaded": 0}
        self.slot_bytes = slot_bytes
        self._handles, self._owner, self._cursor = [], [-1] * self.slots, 0
        self._copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._ready = [torch.cuda.Event() for _ in range(self.slots)] if device.type == "cuda" else []
        self._free = [torch.cuda.Event() for _ in range(self.slots)] if device.type == "cuda" else []
        try:
            self._place(compressed, tables, slot_bytes, pin)
        except torch.cuda.OutOfMemoryError as e:
            self.close()
            raise CodecError(f"out of memory on {device} while placing the streamed model "
                             f"(planned {sum(self.device_bytes.values())} bytes): {e}") from None
        for m in model.modules():  # the experts' forward announces the routed experts to it
            if isinstance(m, CompressedExperts):
                m.streamer = self
        model.pycodec_stream = self

    def _place(self, compressed, tables, slot_bytes, pin) -> None:
        streamed_ids = {id(s.module) for s in self.streamed}

        def to_device(t):  # one function for every module: a tied pair's tensors move once
            return t.to(self.device)

        for m in self.model.modules():  # everything but the streamed modules' packed tensors
            if id(m) not in streamed_ids:
                m._apply(to_device, recurse=False)
        self.ring = torch.empty(self.slots * slot_bytes, dtype=torch.uint8, device=self.device)
        pin = self.device.type == "cuda" if pin is None else pin
        staged_twins = {}  # packed storage -> the _Streamed whose pinned blob holds it
        for s in self.streamed:
            m = s.module
            if isinstance(m, CompressedLinear):
                if m.bias is not None:
                    m.bias.data = m.bias.data.to(self.device)
                for name, t in tables.get(s.name, {}).items():
                    m._buffers[f"_k_{name}"] = t.to(self.device)
                m._ready_device = self.device  # its decode tables are there: forward must not rebuild them
            twin = staged_twins.get(_packed_key(m))
            if twin is not None:  # a tied module: the pinned copy its twin made
                s.blob, s.host = twin.blob, twin.host
                for name, t in s.host.items():
                    m._buffers[name] = t
            elif pin and not any(_is_mapped(t) for t in s.host.values()):
                key = _packed_key(m)
                s.blob = torch.zeros(s.span, dtype=torch.uint8).pin_memory()
                staged = _views(s.blob, s.host, s.offsets)
                for name, t in s.host.items():
                    staged[name].copy_(t)
                s.host = staged  # the pinned copy is the module's host copy: no second one
                for name, t in staged.items():
                    m._buffers[name] = t
                staged_twins[key] = s
            self._handles.append(m.register_forward_pre_hook(self._make_pre_hook(s)))
            self._handles.append(m.register_forward_hook(self._make_post_hook(s)))

    # -- uploads -------------------------------------------------------------------------------

    def _present(self, s: _Streamed) -> bool:
        return s.slot_id is not None and self._owner[s.slot_id] == s.index

    def _upload(self, s: _Streamed) -> None:
        """Into the next slot, round robin (uploads follow execution order, so the slot taken is
        the one whose occupant ran longest ago), after that occupant's compute is done."""
        if s.module._unchecked:  # a memory-mapped checkpoint: its first read
            s.module.verify(s.host)
        slot, self._cursor = self._cursor, (self._cursor + 1) % self.slots
        s.slot_id = slot
        s.views = _views(self._slot_bytes(slot, s.span), s.host, s.offsets)
        self.stats["uploads"] += 1
        self.stats["bytes_uploaded"] += sum(_nbytes(t) for t in s.host.values())
        if self._copy_stream is None:
            for name, t in s.host.items():
                s.views[name].copy_(t)
        else:
            with torch.cuda.stream(self._copy_stream):
                self._copy_stream.wait_event(self._free[slot])
                if s.blob is not None:  # one copy: the pinned blob has the slot's layout
                    self._slot_bytes(slot, s.span).copy_(s.blob, non_blocking=True)
                else:
                    for name, t in s.host.items():
                        s.views[name].copy_(t, non_blocking=True)
                self._ready[slot].record(self._copy_stream)
        self._owner[slot] = s.index

    def _slot_bytes(self, slot: int, span: int) -> torch.Tensor:
        return self.ring[slot * self.slot_bytes:slot * self.slot_bytes + span]

    def _make_pre_hook(self, s: _Streamed):
        @torch.compiler.disable
        def pre_hook(module, args):
            if not self._present(s):
                self.stats["prefetch_misses"] += 1
                self._upload(s)
            if self._copy_stream is not None:
                torch.cuda.current_stream(self.device).wait_event(self._ready[s.slot_id])
            for name, view in s.views.items():
                module._buffers[name] = view
            if s.order is not None:
                for ahead in range(1, min(self.prefetch, self.slots - 1) + 1):
                    nxt = self.in_order[(s.order + ahead) % len(self.in_order)]
                    if not self._present(nxt) and self._owner[self._cursor] != s.index:
                        self._upload(nxt)
        return pre_hook

    @torch.compiler.disable
    def expect(self, modules: list) -> None:
        """Uploads the streamed ones among ``modules`` (experts about to run, in that order),
        as many as the ring holds: the experts' forward calls this once it knows the routing."""
        wanted = [self._by_module[id(m)] for m in modules if id(m) in self._by_module]
        for s in wanted[:self.slots]:
            if not self._present(s):
                self._upload(s)

    def _make_post_hook(self, s: _Streamed):
        @torch.compiler.disable
        def post_hook(module, args, output):
            for name, t in s.host.items():
                module._buffers[name] = t
            if self._copy_stream is not None:
                self._free[s.slot_id].record(torch.cuda.current_stream(self.device))
        return post_hook

    # -- the rest ------------------------------------------------------------------------------

    def report(self) -> dict:
        """The plan (which modules are resident, which streamed), device bytes by use, and the
        uploads so far (count, bytes, those not prefetched)."""
        return {"device": str(self.device), "resident_bytes": self.budget, "prefetch": self.prefetch,
                "ring_slots": self.slots, "device_bytes": dict(self.device_bytes),
                "device_bytes_total": sum(self.device_bytes.values()), "resident": list(self.resident),
                "streamed": [s.name for s in self.streamed], **self.stats}

    def close(self) -> None:
        """Removes the hooks and moves the whole model back to the host (packed tensors as they
        were before streaming, in pageable memory)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        if self._copy_stream is not None:
            torch.cuda.synchronize(self.device)
        pageable = {}  # id(pinned blob) -> its tensors back in pageable memory: a tied pair's once
        for s in self.streamed:
            if s.blob is not None and id(s.blob) not in pageable:
                pageable[id(s.blob)] = {name: t.clone() for name, t in s.host.items()}
            for name, t in (pageable[id(s.blob)] if s.blob is not None else s.host).items():
                s.module._buffers[name] = t
        for s in self.streamed:
            s.blob = None
        for m in self.model.modules():
            if isinstance(m, CompressedExperts) and m.streamer is self:
                m.streamer = None
        self.ring = None
        if getattr(self.model, "pycodec_stream", None) is self:
            self.model.pycodec_stream = None
        self.model.to("cpu")

    def __enter__(self) -> "Streamer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stream(model: nn.Module, device="cuda", resident_bytes: int | None = None, prefetch: int = 2,
           pin: bool | None = None) -> Streamer:
    """Place ``model`` (a compressed model on the CPU) on ``device`` within ``resident_bytes``
    of device memory: what does not fit streams through a ring of ``prefetch + 1`` slots,
    uploaded ahead of use on a side stream. ``pin`` (default: on CUDA, unless the tensors are
    memory-mapped) stages the streamed tensors in pinned host memory. Returns the Streamer
    (``report()``, ``close()``). See the module docstring for the plan."""
    if resident_bytes is None:
        raise ValueError("resident_bytes is required: the device memory the model may use, in bytes")
    return Streamer(model, device, resident_bytes, prefetch, pin)
