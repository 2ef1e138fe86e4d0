"""Streaming and lazy loading: pycodec.stream on the CPU (the same plan and hooks as on a GPU,
with plain copies for uploads), from_pretrained(mmap=True) checks on first use, and loading
SmolLM2 without ever building its dense model (peak RSS in a subprocess)."""
import json
import os
import subprocess
import sys

import pytest
import torch

import pycodec
from pycodec import CodecError, CompressionConfig

from test_models import _damage, tiny_llama, tokens

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=["lossless", "rate"])
def saved(request, tmp_path_factory):
    """(folder, logits of the compressed model on tokens()) for a saved tiny Llama."""
    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode=request.param), progress=False)
    folder = tmp_path_factory.mktemp(request.param)
    pycodec.save_pretrained(model, folder)
    with torch.no_grad():
        return str(folder), model(tokens()).logits


def _dense_bytes(model) -> int:
    """What stream() keeps on the device besides compressed layers (from its own plan)."""
    streamer = pycodec.stream(model, "cpu", resident_bytes=1 << 40)
    dense = streamer.report()["device_bytes"]["dense"]
    streamer.close()
    return dense


def _layer_bytes(model) -> list[int]:
    from pycodec.stream import _slot_layout

    return [_slot_layout(dict(m.packed()))[1] for m in model.modules() if hasattr(m, "packed")]


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_streamed_outputs_are_identical(saved, mmap, prefetch):
    folder, reference = saved
    model = pycodec.from_pretrained(folder, mmap=mmap)
    spans = _layer_bytes(model)
    # Room for the ring and about half of the layers: some resident, some streamed.
    budget = _dense_bytes(model) + (prefetch + 1) * max(spans) + sum(spans) // 2
    with pycodec.stream(model, "cpu", resident_bytes=budget,
                        prefetch=prefetch) as streamer:
        with torch.no_grad():
            first, second = model(tokens()).logits, model(tokens()).logits
        report = streamer.report()
    assert torch.equal(first, reference) and torch.equal(second, reference)
    assert report["resident"] and report["streamed"]
    assert report["device_bytes_total"] <= report["resident_bytes"]
    assert len(report["resident"]) + len(report["streamed"]) == len(spans)
    n = len(report["streamed"])
    # Two forwards: each streamed layer uploaded once per forward; only the very first upload is
    # a miss when prefetching (the last layers of one forward prefetch the first of the next).
    assert report["prefetch_misses"] == (1 if prefetch else 2 * n)
    assert 2 * n <= report["uploads"] <= 2 * n + prefetch
    # Closed: hooks gone, the packed tensors are the host ones again.
    with torch.no_grad():
        assert torch.equal(model(tokens()).logits, reference)
    assert getattr(model, "pycodec_stream", None) is None


def test_budget_that_holds_everything_streams_nothing(saved):
    folder, reference = saved
    model = pycodec.from_pretrained(folder)
    streamer = pycodec.stream(model, "cpu", resident_bytes=1 << 30)
    report = streamer.report()
    assert report["streamed"] == [] and report["ring_slots"] == 0 and report["device_bytes"]["ring"] == 0
    with torch.no_grad():
        assert torch.equal(model(tokens()).logits, reference)
    streamer.close()


def test_a_tied_table_takes_room_once(saved):
    """The tied embedding and lm_head hold one packed table: a budget for the model's distinct
    tensors keeps everything resident, and when the table streams, both modules stream it."""
    from pycodec.nn import _packed_key
    from pycodec.stream import _slot_layout

    folder, reference = saved
    model = pycodec.from_pretrained(folder)
    distinct = {_packed_key(m): _slot_layout(dict(m.packed()))[1] for m in model.modules() if hasattr(m, "packed")}
    assert sum(distinct.values()) < sum(_layer_bytes(model))  # the tie is there to be counted once
    budget = _dense_bytes(model) + sum(distinct.values())
    with pycodec.stream(model, "cpu", resident_bytes=budget) as streamer:
        report = streamer.report()
        with torch.no_grad():
            assert torch.equal(model(tokens()).logits, reference)
    assert not report["streamed"] and report["device_bytes"]["resident"] == sum(distinct.values())
    spans = _layer_bytes(model)
    with pycodec.stream(model, "cpu", resident_bytes=budget - 1, prefetch=0) as streamer:
        report = streamer.report()
        with torch.no_grad():
            assert torch.equal(model(tokens()).logits, reference)
    tied = {"model.embed_tokens", "lm_head"}
    assert tied <= set(report["resident"]) or tied <= set(report["streamed"]), report
    assert report["device_bytes_total"] <= budget - 1 and max(spans) > 0


def test_streamed_generate_matches(saved):
    folder, _ = saved
    plain = pycodec.from_pretrained(folder)
    prompt = tokens()[:1, :8]
    expected = plain.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    model = pycodec.from_pretrained(folder, stream_to="cpu", resident_bytes=_dense_bytes(plain) + 3 * max(_layer_bytes(plain)))
    assert model.pycodec_stream.report()["streamed"]
    assert torch.equal(model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0), expected)
    model.pycodec_stream.close()


def test_out_of_order_calls_are_uploaded_when_they_run(saved):
    folder, _ = saved
    model = pycodec.from_pretrained(folder)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, pycodec.CompressedLinear)}
    inputs = {name: torch.randn(3, m.in_features, dtype=torch.bfloat16) for name, m in linears.items()}
    with torch.no_grad():
        expected = {name: m(inputs[name]) for name, m in linears.items()}
    streamer = pycodec.stream(model, "cpu", resident_bytes=_dense_bytes(model) + 3 * max(_layer_bytes(model)))
    streamed = [s.name for s in streamer.streamed if s.name in linears]
    assert len(streamed) >= 3
    with torch.no_grad():
        for name in reversed(streamed):  # against the planned order: misses, still correct
            assert torch.equal(linears[name](inputs[name]), expected[name])
    assert streamer.report()["prefetch_misses"] >= len(streamed) - 1
    streamer.close()


def test_budget_errors_are_clear(saved):
    folder, _ = saved
    model = pycodec.from_pretrained(folder)
    largest = max(_layer_bytes(model))
    with pytest.raises(ValueError, match="resident_bytes=.*below what streaming needs"):
        pycodec.stream(model, "cpu", resident_bytes=largest // 2)
    with pytest.raises(ValueError, match="lower prefetch"):
        pycodec.stream(model, "cpu", resident_bytes=_dense_bytes(model) + 2 * largest, prefetch=8)
    for bad in (0, -5, 1.5, True, None):
        with pytest.raises(ValueError, match="resident_bytes"):
            pycodec.stream(model, "cpu", resident_bytes=bad)
    with pytest.raises(ValueError, match="prefetch"):
        pycodec.stream(model, "cpu", resident_bytes=1 << 30, prefetch=-1)
    with pytest.raises(ValueError, match="resident_bytes"):
        pycodec.from_pretrained(folder, stream_to="cpu")
    # Nothing was changed by the refusals: the model streams fine afterwards.
    pycodec.stream(model, "cpu", resident_bytes=1 << 30).close()
    with pytest.raises(CodecError, match="no compressed modules"):
        pycodec.stream(tiny_llama(), "cpu", resident_bytes=1 << 30)
    streamer = pycodec.stream(model, "cpu", resident_bytes=1 << 30)
    with pytest.raises(CodecError, match="streamed already"):
        pycodec.stream(model, "cpu", resident_bytes=1 << 30)
    streamer.close()


def test_streamed_model_under_torch_compile(saved):
    """Compiled with a graph break at each streamed module (its hooks run eagerly)."""
    folder, reference = saved
    model = pycodec.from_pretrained(folder)
    streamer = pycodec.stream(model, "cpu", resident_bytes=_dense_bytes(model) + 4 * max(_layer_bytes(model)))
    with torch.no_grad():
        out = torch.compile(model)(tokens()).logits
    streamer.close()
    # bf16 model: the compiled graphs round differently, by a few ulps at most.
    assert torch.allclose(out, reference, rtol=0, atol=4 * 2 ** -7 * reference.abs().max().item())
    assert streamer.report()["uploads"] >= len(streamer.report()["streamed"])


def test_mmap_checks_each_compressed_tensor_on_first_use(tmp_path):
    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode="rate", bits=3), progress=False)
    pycodec.save_pretrained(model, tmp_path)
    name = "model.layers.1.mlp.up_proj.scale"
    _damage(tmp_path / "model.safetensors", name, 3)
    with pytest.raises(CodecError, match=name):  # read at once: refused at once
        pycodec.from_pretrained(str(tmp_path))
    lazy = pycodec.from_pretrained(str(tmp_path), mmap=True)  # nothing read yet: loads
    assert lazy.get_submodule("model.layers.1.mlp.up_proj")._unchecked
    assert lazy.get_submodule("model.layers.0.mlp.up_proj")._unchecked  # the others too
    with pytest.raises(CodecError, match=name + ".*checksum"):
        lazy(tokens())
    with pytest.raises(CodecError, match=name):  # and on every later use: never silently wrong
        lazy(tokens())
    streamed = pycodec.from_pretrained(str(tmp_path), mmap=True)
    pycodec.stream(streamed, "cpu", resident_bytes=_dense_bytes(streamed) + 3 * max(_layer_bytes(streamed)))
    with pytest.raises(CodecError, match=name):  # streamed: checked at its upload, the same refusal
        streamed(tokens())


def test_mmap_damaged_dense_tensor_is_refused_at_load(tmp_path):
    model = tiny_llama()
    pycodec.compress_(model, CompressionConfig(mode="rate", bits=3), progress=False)
    pycodec.save_pretrained(model, tmp_path)
    _damage(tmp_path / "model.safetensors", "model.norm.weight", 1)
    with pytest.raises(CodecError, match="model.norm.weight.*checksum"):
        pycodec.from_pretrained(str(tmp_path), mmap=True)


def test_loading_never_builds_dense_linears(saved, monkeypatch):
    """The skeleton's parameters are created on the meta device: a dense nn.Linear weight
    with storage never exists during from_pretrained."""
    folder, reference = saved
    real = []
    original = torch.nn.Linear.reset_parameters

    def spy(self):
        real.append(not self.weight.is_meta)
        original(self)

    monkeypatch.setattr(torch.nn.Linear, "reset_parameters", spy)
    model = pycodec.from_pretrained(folder, mmap=True)
    assert real and not any(real)
    with torch.no_grad():
        assert torch.equal(model(tokens()).logits, reference)


# Peak RSS from /proc/self/status VmHWM, not getrusage's ru_maxrss: a child forked from
# pytest inherits the parent's (GB-sized) maxrss across exec, while VmHWM is its own. The
# baseline is taken after importing the code the load runs (torch._dynamo, which torch imports
# at the first custom-op call, is ~120 MB of modules; transformers' Llama module): library code
# is not the model's memory.
RSS_SCRIPT = r"""
import json, sys
import torch, torch._dynamo, pycodec
import transformers.models.llama.modeling_llama

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

before = status("VmRSS")
model = pycodec.from_pretrained(sys.argv[1], mmap=sys.argv[2] == "1")
loaded = status("VmRSS")
with torch.no_grad():
    logits = model(torch.arange(64)[None] * 7 % model.config.vocab_size).logits
print(json.dumps({"load_growth": loaded - before, "peak_growth": status("VmHWM") - before,
                  "finite": bool(logits.isfinite().all())}))
"""


@pytest.fixture(scope="module")
def smollm2_rate(tmp_path_factory):
    from pycodec.cli import load_source

    model, _ = load_source("smollm2")
    pycodec.compress_(model, CompressionConfig(mode="rate", bits=3.5), progress=False)
    folder = tmp_path_factory.mktemp("smollm2_rate")
    pycodec.save_pretrained(model, folder)
    return str(folder)


@pytest.mark.parametrize("mmap", [False, True])
def test_smollm2_load_and_forward_peak_rss(smollm2_rate, mmap):
    """from_pretrained + one 64-token forward of SmolLM2 at rate 3.5, in a fresh process: peak
    RSS growth within 1.3x the checkpoint's size on disk + 150 MB (its dense model in fp32
    would be 540 MB)."""
    size = sum(os.path.getsize(os.path.join(smollm2_rate, f)) for f in os.listdir(smollm2_rate)
               if f.endswith(".safetensors"))
    r = subprocess.run([sys.executable, "-c", RSS_SCRIPT, smollm2_rate, str(int(mmap))], capture_output=True,
                       text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"checkpoint {size / 1e6:.1f} MB, mmap={mmap}: load +{got['load_growth'] / 1e6:.0f} MB, "
          f"peak +{got['peak_growth'] / 1e6:.0f} MB")
    assert got["finite"]
    assert got["peak_growth"] <= 1.3 * size + 150e6
