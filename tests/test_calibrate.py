"""Calibrated (Hessian-aware) quantization: pycodec.calibrate, CompressionConfig(calibration=...).

Tiny random Llama models read a generated text through a byte-level tokenizer; their norms are
made anisotropic so that inputs, as in trained models, excite some directions far more than
others (which is what calibration exploits).
"""
import dataclasses
import json
import math
import os
import random

import pytest
import torch

import pycodec
from pycodec import CodecError, CompressedLinear, CompressionConfig
from pycodec import calibrate
from pycodec.quant import compress_weight, packed_bits, unpack

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ("the model reads a text and each layer keeps its outputs while its weights are rounded to a grid "
         "whose step the coder pays for in bits every symbol costs what its probability says").split()


def byte_tokenizer():
    """A transformers tokenizer with one token per byte (ids 0..255)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tk)


def text(seed: int, n_words: int = 900) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def small_llama(seed=0, layers=2):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                   tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM._from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight.copy_(torch.logspace(-1.5, 1.0, 128)[torch.randperm(128)])
    return model


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture
def calibration_file(tmp_path):
    path = tmp_path / "calibration.txt"
    path.write_text(text(seed=1))
    return str(path)


def anisotropic_inputs(k: int, n: int = 2048, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.linalg.qr(torch.randn(k, k, generator=g))[0]
    return torch.randn(n, k, generator=g) * torch.logspace(-2, 0.5, k) @ mixing


def output_error(x, w, w_hat) -> float:
    return (x @ (w - w_hat).t()).pow(2).sum().item()


# ---------------------------------------------------------------------------- one layer

@pytest.mark.parametrize("mode,bits", [("rate", 3.0), ("rate", 2.0), ("int", 4)])
def test_calibrated_rounding_lowers_the_layer_output_error(mode, bits):
    w = torch.randn(96, 256, generator=torch.Generator().manual_seed(2)) * 0.02
    x = anisotropic_inputs(256)
    config = CompressionConfig(mode=mode, bits=bits, calibration="default")
    (packed, stats), = calibrate.compress_weights_calibrated([w], x.t() @ x / x.shape[0], config)
    plain, plain_stats = compress_weight(w, dataclasses.replace(config, calibration=None))
    calibrated_err, plain_err = output_error(x, w, unpack(packed)), output_error(x, w, unpack(plain))
    assert calibrated_err < 0.7 * plain_err, (calibrated_err, plain_err)
    if mode == "rate":
        assert stats.bits <= bits * w.numel() and plain_stats.bits <= bits * w.numel()
    else:  # the same grid (scale and zero per group), only the rounding differs
        assert torch.equal(packed["scale"], plain["scale"]) and torch.equal(packed["zero"], plain["zero"])


@pytest.mark.parametrize("shape,target", [((192, 256), 2.0), ((256, 384), 3.5), ((96, 256), 5.0)])
def test_calibrated_rate_meets_the_budget_with_everything_counted(shape, target, monkeypatch):
    sweeps = []
    real_sweep = calibrate._rate_sweep
    monkeypatch.setattr(calibrate, "_rate_sweep", lambda *a: sweeps.append(1) or real_sweep(*a))
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[0])) * 0.02
    w[3, 7] = 50.0  # far beyond 127 steps: kept exactly (an escape), whatever the sweep does around it
    x = anisotropic_inputs(shape[1], seed=shape[1])
    config = CompressionConfig(mode="rate", bits=target, calibration="default")
    (packed, stats), = calibrate.compress_weights_calibrated([w], x.t() @ x / x.shape[0], config)
    stored = sum(t.numel() * t.element_size() * 8 for k, t in packed.items() if k != "meta")
    assert stored == stats.bits == packed_bits(packed)
    assert target * 0.99 * w.numel() <= stored <= target * w.numel()
    assert 1 <= len(sweeps) <= calibrate.MAX_RATE_SWEEPS
    back = unpack(packed)
    assert int(packed["escape_index"][0]) == 3 * shape[1] + 7
    assert abs(float(back[3, 7]) - 50.0) < 0.05  # the escape holds the weight as the sweep left it
    assert stats.sqnr_db == pytest.approx(pycodec.quant.sqnr_db(w, back))


@pytest.mark.parametrize("mode,bits", [("rate", 3.0), ("int", 4)])
def test_calibrated_degenerate_rows_stay_finite(mode, bits):
    """Rows of zeros (step or scale 0 in fp16), constant rows, huge outliers, dead inputs."""
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(6)) * 0.02
    w[0] = 0.0
    w[1] = 0.5
    w[2, ::16] = 1e4
    x = anisotropic_inputs(256, seed=6)
    x[:, :8] = 0.0  # inputs the calibration text never excites
    config = CompressionConfig(mode=mode, bits=bits, calibration="default")
    (packed, stats), = calibrate.compress_weights_calibrated([w], x.t() @ x / x.shape[0], config)
    back = unpack(packed)
    assert torch.isfinite(back).all() and torch.equal(back[0], w[0])
    assert math.isfinite(stats.sqnr_db)
    if mode == "rate":
        assert stats.bits <= bits * w.numel()
        assert torch.allclose(back[2, ::16], w[2, ::16], rtol=1e-3)  # escapes


@pytest.mark.parametrize("mode,bits", [("rate", 3.0), ("int", 4)])
def test_calibrated_nonfinite_weights_are_escapes_that_spread_nothing(mode, bits):
    """NaN and infinite weights are kept exactly, as without calibration; the sweep's error
    feedback along their rows must not carry them into other weights (it used to fill int rows
    with NaN, and rate mode failed in a bincount)."""
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(8)) * 0.02
    bad = torch.zeros_like(w, dtype=torch.bool)
    for (r, c), v in {(5, 10): math.nan, (7, 200): math.inf, (9, 0): -math.inf, (9, 255): math.nan}.items():
        w[r, c], bad[r, c] = v, True
    x = anisotropic_inputs(256, seed=8)
    config = CompressionConfig(mode=mode, bits=bits, calibration="default")
    (packed, stats), = calibrate.compress_weights_calibrated([w], x.t() @ x / x.shape[0], config)
    back = unpack(packed)
    assert set(bad.reshape(-1).nonzero().reshape(-1).tolist()) <= set(packed["escape_index"].tolist())
    assert torch.equal(back[bad].isnan(), w[bad].isnan())
    assert torch.equal(back[bad & ~w.isnan()], w[bad & ~w.isnan()])
    assert torch.isfinite(back[~bad]).all()
    # Rows without them are calibrated as ever: a lower output error than plain rounding.
    clean = ~bad.any(dim=1)
    plain = unpack(compress_weight(w, dataclasses.replace(config, calibration=None))[0])
    assert output_error(x, w[clean], back[clean]) < 0.8 * output_error(x, w[clean], plain[clean])
    assert math.isfinite(stats.sqnr_db)
    if mode == "rate":
        assert stats.bits <= bits * w.numel()


def test_layers_sharing_an_input_are_swept_together_each_on_its_own_budget():
    x = anisotropic_inputs(128, seed=4)
    ws = [torch.randn(n, 128, generator=torch.Generator().manual_seed(n)) * s for n, s in ((64, 0.02), (32, 0.2))]
    config = CompressionConfig(mode="rate", bits=3.0, calibration="default")
    together = calibrate.compress_weights_calibrated(ws, x.t() @ x / x.shape[0], config)
    for w, (packed, stats) in zip(ws, together):
        alone, = calibrate.compress_weights_calibrated([w], x.t() @ x / x.shape[0], config)
        assert stats.bits <= 3.0 * w.numel()
        assert torch.equal(unpack(packed), unpack(alone[0]))  # rows are independent given H


# ---------------------------------------------------------------------------- bit allocation

def test_allocation_gives_bits_where_the_loss_is_sensitive_and_keeps_the_mean():
    g = torch.Generator().manual_seed(11)
    weights = {"a": torch.randn(64, 128, generator=g) * 0.02, "b": torch.randn(128, 128, generator=g) * 0.02,
               "c": torch.randn(32, 256, generator=g) * 0.5, "d": torch.randn(64, 128, generator=g) * 0.02}
    sensitivity = {"a": torch.ones(64), "b": torch.full((128,), 100.0), "c": torch.full((32,), 0.04 ** 2),
                   "d": torch.ones(64)}
    bits = calibrate.allocate_bits(weights, sensitivity, 3.0)
    n = {k: w.numel() for k, w in weights.items()}
    mean = sum(bits[k] * n[k] for k in bits) / sum(n.values())
    assert 3.0 - 1e-6 <= mean <= 3.0
    assert all(3.0 - calibrate.ALLOCATION_BELOW <= b <= 3.0 + calibrate.ALLOCATION_ABOVE for b in bits.values())
    assert all(b >= calibrate.ALLOCATION_FLOOR for b in bits.values())
    # 100x the loss per squared error is worth about log2(100) / 2 = 3.3 bits more at high rate
    assert bits["b"] > bits["a"] + 2.0, bits
    assert abs(bits["a"] - bits["d"]) < 0.2, bits  # alike layers, alike shares
    # what counts is the loss per squared step: c's weights are 25x wider, its loss 625x less sensitive
    assert abs(bits["c"] - bits["a"]) < 0.3, bits
    # at a mean below the floor there is nothing to take from: every layer gets the mean
    assert all(abs(b - 1.2) < 1e-6 for b in calibrate.allocate_bits(weights, sensitivity, 1.2).values())


def test_output_sensitivity_is_the_loss_curvature_along_each_row(tok):
    model = small_llama(layers=2)
    ids = calibrate.calibration_ids(tok, text(seed=3), 256)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    sensitivity = calibrate.output_sensitivity(model, names, ids)
    assert all(p.grad is None for p in model.parameters())  # no weight gradients were made
    assert set(sensitivity) == set(names)
    for name in names:
        f = sensitivity[name]
        assert f.shape == (model.get_submodule(name).out_features,) and bool((f >= 0).all()) and float(f.sum()) > 0
    # by hand for one layer: sum over tokens of (dloss / dy_tr)^2 |x_t|^2 / (K * tokens)
    layer = model.get_submodule("model.layers.1.mlp.down_proj")
    seen = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    expected = torch.zeros(layer.out_features, dtype=torch.float64)
    for seq in ids:
        logits = model(seq[None]).logits
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], seq[1:], reduction="sum")
        g, = torch.autograd.grad(loss, seen["y"])
        expected += (g[0].pow(2) * seen["x"][0].pow(2).sum(-1, keepdim=True)).sum(0).double()
    handle.remove()
    expected /= layer.in_features * ids.numel()
    assert torch.allclose(sensitivity["model.layers.1.mlp.down_proj"], expected, rtol=1e-4)


def small_bert(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, max_position_embeddings=512)
    model = transformers.BertModel._from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():  # anisotropic inputs, as in trained models
        for norm in [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]:
            norm.weight.copy_(torch.logspace(-1.5, 1.0, 64)[torch.randperm(64)])
    return model


def test_an_encoder_calibrates_with_uniform_bits(tok, calibration_file):
    """A BERT: its blocks (encoder.layer) take the attention mask positionally; it predicts no
    next token, so nothing tells where bits matter most and every layer meets bits."""
    model, dense = small_bert(), small_bert()
    assert calibrate.decoder_layers(model) is model.encoder.layer
    assert calibrate.output_sensitivity(model, [], torch.zeros(1, 4, dtype=torch.long)) is None
    config = CompressionConfig(mode="rate", bits=3.0, calibration=calibration_file, calibration_tokens=512,
                               skip=("word_embeddings", "position_embeddings", "token_type_embeddings"))
    report = pycodec.compress_(model, config, progress=False, tokenizer=tok)
    assert report["calibration"]["bit_allocation"] == "uniform (BertModel does not predict next tokens)"
    assert all(v["bits_per_weight"] <= 3.0 for name, v in report["layers"].items() if ".layer." in name)
    assert all(isinstance(m, CompressedLinear) for n, m in model.named_modules() if n.endswith(".dense"))
    plain = small_bert()
    pycodec.compress_(plain, dataclasses.replace(config, calibration=None, calibration_tokens=8192), progress=False)
    ids = tok(text(seed=5, n_words=60), return_tensors="pt").input_ids[:, :200]  # not the calibration text
    with torch.no_grad():
        ref = dense(ids).last_hidden_state
        calibrated_error = (model(ids).last_hidden_state - ref).pow(2).mean().item()
        plain_error = (plain(ids).last_hidden_state - ref).pow(2).mean().item()
    assert calibrated_error < 0.8 * plain_error, (calibrated_error, plain_error)


def test_calibration_codes_an_attentions_packed_projection_from_its_weight(tok, calibration_file):
    """nn.MultiheadAttention's in_proj_weight is no module's weight, so no calibration pass sees it:
    compress_ with calibration codes it from its weight alone, as without."""
    from pycodec.attention import CompressedMultiheadAttention

    model = small_llama()
    model.model.pooler = torch.nn.MultiheadAttention(128, 4)  # off the forward path
    config = CompressionConfig(mode="rate", bits=3.0, calibration=calibration_file, calibration_tokens=256)
    report = pycodec.compress_(model, config, progress=False, tokenizer=tok)
    assert isinstance(model.model.pooler, CompressedMultiheadAttention)
    assert report["layers"]["model.pooler.in_proj"]["shape"] == [384, 128]
    assert not [k for k in report["dense_weights"] if "pooler" in k]


# ---------------------------------------------------------------------------- whole models

@pytest.mark.parametrize("mode,bits", [("rate", 3.0), ("int", 4)])
def test_calibrated_model_is_closer_to_dense_on_unseen_text(mode, bits, tok, calibration_file):
    dense = small_llama()
    ids = tok(text(seed=9, n_words=120), return_tensors="pt").input_ids[:, :256]  # not the calibration text
    with torch.no_grad():
        ref = dense(ids).logits
    errors, reports = {}, {}
    for calibration in (None, calibration_file):
        model = small_llama()
        config = CompressionConfig(mode=mode, bits=bits, calibration=calibration,
                                   **({"calibration_tokens": 1024} if calibration else {}))
        reports[calibration] = pycodec.compress_(model, config, progress=False, tokenizer=tok)
        with torch.no_grad():
            errors[calibration] = (model(ids).logits - ref).pow(2).mean().item()
    report = reports[calibration_file]
    assert errors[calibration_file] < 0.8 * errors[None], errors
    assert report["calibration"] == {"texts": [calibration_file], "tokens": 1024, "sequences": 2,
                                     "bit_allocation": "sensitivity" if mode == "rate" else "uniform"}
    assert set(report["layers"]) == set(reports[None]["layers"])
    if mode == "rate":  # decoder linears at bits on average; embeddings and head at head_bits
        assert decoder_mean_bits(report) <= bits
        assert all(v["bits_per_weight"] <= config.head_bits
                   for name, v in report["layers"].items() if ".layers." not in name and "shares" not in v)


def decoder_mean_bits(report: dict) -> float:
    rows = [v for name, v in report["layers"].items() if ".layers." in name]
    n = sum(v["shape"][0] * v["shape"][1] for v in rows)
    return sum(v["bits_per_weight"] * v["shape"][0] * v["shape"][1] for v in rows) / n


def test_calibrated_model_saves_and_loads(tmp_path, tok, calibration_file):
    model = small_llama(layers=1)
    config = CompressionConfig(mode="rate", bits=3.0, calibration=calibration_file, calibration_tokens=300)
    pycodec.compress_(model, config, progress=False, tokenizer=tok)
    assert all(isinstance(m, CompressedLinear) for n, m in model.named_modules() if n.endswith("_proj"))
    pycodec.save_pretrained(model, tmp_path / "out", tokenizer=tok)
    with open(tmp_path / "out" / "config.json") as f:
        saved = json.load(f)["quantization_config"]
    assert saved["calibration"] == calibration_file and saved["calibration_tokens"] == 300
    os.remove(calibration_file)  # a checkpoint loads where its calibration text does not exist
    loaded = pycodec.from_pretrained(str(tmp_path / "out"))
    assert loaded.pycodec_config == config
    ids = tok("each layer keeps its outputs", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_calibration_none_takes_todays_path_bit_for_bit(monkeypatch):
    from pycodec.nn import compression_plan

    monkeypatch.setattr(calibrate, "compress_calibrated", lambda *a, **k: pytest.fail("calibrated path taken"))
    model = small_llama(layers=1)
    config = CompressionConfig(mode="rate", bits=3.0)
    expected = {name: compress_weight(m.weight.detach().clone(), cfg)[0]
                for name, m, cfg, shares in compression_plan(model, config) if shares is None}
    pycodec.compress_(model, config, progress=False)
    for name, packed in expected.items():
        m = model.get_submodule(name)
        assert all(torch.equal(t, packed[k]) for k, t in m.packed().items()), name


# ---------------------------------------------------------------------------- configuration

def test_config_round_trip_and_configs_saved_before_calibration_load():
    from pycodec.config import CALIBRATION_FIELDS

    cfg = CompressionConfig(mode="rate", bits=2.5, calibration="notes.txt", calibration_tokens=512, damp=0.05,
                            rdoq_lambda=0.2)
    assert CompressionConfig.from_json(cfg.to_json()) == cfg
    assert CompressionConfig.from_json(dataclasses.replace(cfg, bit_allocation="uniform").to_json()).bit_allocation \
        == "uniform"
    # calibrated configs saved before bit_allocation existed were made with every layer at bits
    old = {k: v for k, v in cfg.to_dict().items() if k != "bit_allocation"}
    assert CompressionConfig.from_dict(old) == dataclasses.replace(cfg, bit_allocation="uniform")
    # without calibration, nothing about it is saved: configs (and checkpoints) are written as
    # before calibration existed, and such configs load
    for plain in (CompressionConfig(), CompressionConfig(mode="int", bits=4, group_size=64)):
        saved = plain.to_dict()
        assert not set(CALIBRATION_FIELDS) & set(saved)
        assert CompressionConfig.from_dict(saved) == plain
        assert CompressionConfig.from_dict({**saved, "quant_method": "pycodec"}).calibration is None


@pytest.mark.parametrize("kwargs,message", [
    (dict(calibration="default", calibration_tokens=0), "calibration_tokens must be a positive integer"),
    (dict(calibration="default", calibration_tokens=-5), "calibration_tokens must be a positive integer"),
    (dict(calibration="default", calibration_tokens=1.5), "calibration_tokens must be a positive integer"),
    (dict(calibration="default", calibration_tokens=True), "calibration_tokens must be a positive integer"),
    (dict(calibration=""), "calibration must be a text file path"),
    (dict(calibration=3), "calibration must be a text file path"),
    (dict(calibration="default", damp=0.0), "damp"),
    (dict(calibration="default", rdoq_lambda=-1.0), "rdoq_lambda"),
    (dict(mode="lossless", calibration="default"), "needs mode 'int' or 'rate'"),
    (dict(calibration="default", prune=0.1), "prune"),
    (dict(calibration_tokens=512), "only apply with calibration"),
    (dict(damp=0.1), "only apply with calibration"),
    (dict(bit_allocation="uniform"), "only apply with calibration"),
    (dict(calibration="default", bit_allocation="greedy"), "bit_allocation must be one of"),
])
def test_bad_calibration_settings_are_refused(kwargs, message):
    with pytest.raises(CodecError, match=message):
        CompressionConfig(**kwargs)


def test_bad_calibration_inputs_are_clear_errors(tmp_path, tok):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text(" \n\t\n")
    (tmp_path / "one.txt").write_text("a")
    cases = [(str(tmp_path / "missing.txt"), tok, "no such file"), (str(tmp_path / "empty.txt"), tok, "is empty"),
             (str(tmp_path / "blank.txt"), tok, "is empty"), (str(tmp_path / "one.txt"), tok, "at least 2"),
             ("default", None, "tokenizer")]
    for spec, tokenizer, message in cases:
        model = small_llama(layers=1)
        with pytest.raises(CodecError, match=message):
            pycodec.compress_(model, CompressionConfig(calibration=spec), progress=False, tokenizer=tokenizer)
        assert not any(isinstance(m, CompressedLinear) for m in model.modules())  # refused before any change
    with pytest.raises(CodecError, match="stack of blocks"):
        pycodec.compress_(torch.nn.Sequential(torch.nn.Linear(8, 8)), CompressionConfig(calibration="default"),
                          progress=False, tokenizer=tok)


def test_default_calibration_texts_are_not_the_evaluation_text(monkeypatch):
    from pycodec.cli import DEFAULT_TEXT

    names = {os.path.basename(p) for p in calibrate.DEFAULT_CALIBRATION_TEXTS}
    assert os.path.basename(DEFAULT_TEXT) == "GPL-3" and not any("GPL" in n or "GFDL" in n for n in names)
    if not all(os.path.isfile(p) for p in calibrate.DEFAULT_CALIBRATION_TEXTS):
        pytest.skip("no /usr/share/common-licenses on this system")
    paths, body = calibrate.calibration_text("default")
    assert paths == list(calibrate.DEFAULT_CALIBRATION_TEXTS) and len(body) > 20000
    monkeypatch.setattr(calibrate, "DEFAULT_CALIBRATION_TEXTS", ("/nonexistent/Apache-2.0",))
    with pytest.raises(CodecError, match="not on this system: give a text file"):
        calibrate.calibration_text("default")


# ---------------------------------------------------------------------------- CLI

@pytest.mark.parametrize("args,message", [
    (["--calibration", "MISSING"], "no such file"),
    (["--calibration-tokens", "64"], "only apply with calibration"),
    (["--calibration", "default", "--calibration-tokens", "0"], "calibration_tokens must be a positive"),
    (["--mode", "lossless", "--calibration", "default"], "needs mode 'int' or 'rate'"),
])
def test_cli_calibration_errors_are_one_line_before_any_load(args, message, capsys, monkeypatch, tmp_path):
    from pycodec import cli

    monkeypatch.setattr(cli, "load_source", lambda *a, **k: pytest.fail("loaded a model before checking the options"))
    with pytest.raises(SystemExit) as e:
        cli.main(["compress", "smollm2", str(tmp_path / "out")] +
                 [str(tmp_path / x) if x == "MISSING" else x for x in args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1, err


def test_cli_compress_json_names_the_calibration_text(tmp_path, capsys, tok, calibration_file):
    from pycodec import cli

    small_llama(layers=1).save_pretrained(tmp_path / "src")
    tok.save_pretrained(tmp_path / "src")
    cli.main(["compress", str(tmp_path / "src"), str(tmp_path / "out"), "--bits", "3", "--calibration",
              calibration_file, "--calibration-tokens", "256", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["calibration"] == {"texts": [calibration_file], "tokens": 256, "sequences": 1,
                                     "bit_allocation": "sensitivity"}
    assert report["config"]["calibration"] == calibration_file
    assert decoder_mean_bits(report) <= 3.0
    assert math.isfinite(report["mean_sqnr_db"])
    cli.main(["compress", str(tmp_path / "src"), str(tmp_path / "out2"), "--bits", "3", "--calibration",
              calibration_file, "--calibration-tokens", "256", "--bit-allocation", "uniform"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    low, high = line.split("(bits: uniform, layers ")[1].split(")")[0].split("-")
    assert float(low) <= 3.0 < float(high)  # the decoder's linears at 3, the embedding table above
