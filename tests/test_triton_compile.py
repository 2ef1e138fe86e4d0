"""Every Triton kernel compiles to sm_90 machine code here, with no GPU: triton.compile
on the kernel's source for a named target. The interpreter the other Triton tests use is lenient
(it runs Python): a kernel it accepts may still fail Triton's compiler, which only a GPU session
would otherwise find. Runs in a subprocess, since TRITON_INTERPRET is set for this pytest run."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip("triton")

SCRIPT = textwrap.dedent("""
    import importlib, json, sys
    import triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    def module(name):
        return importlib.import_module("pycodec_triton." + name)

    AM, BM, AG = module("affine_matmul"), module("bf16_matmul"), module("affine_gemv")
    I32 = "i32"
    # (kernel, pointer types, number of int arguments, constexpr values in order)
    CASES = {
        "affine_matmul bf16, block scales": (AM._affine_matmul_kernel, ["*bf16", "*u8", "*fp16", "*fp16", "*bf16"], 14,
            [64, 64, 64, 8, True, True, tl.bfloat16, "ieee"]),
        "affine_matmul fp32, small groups": (AM._affine_matmul_kernel, ["*fp32", "*u8", "*fp16", "*fp16", "*fp32"], 14,
            [32, 64, 64, 8, False, False, tl.float32, "tf32"]),
        "bf16_matmul": (BM._bf16_matmul_kernel, ["*bf16", "*u8", "*u8", "*bf16"], 9, [64, 64, 64, 8, True, True, "ieee"]),
        "bf16_matmul fp32": (BM._bf16_matmul_kernel, ["*fp32", "*u8", "*u8", "*fp32"], 9,
            [64, 64, 32, 8, False, False, "ieee"]),
        "bf16_reconstruct": (BM._bf16_reconstruct_kernel, ["*u8", "*u8", "*i16"], 1, [1024]),
        # GemvPlan's tiles at batch 1 and 16 (product budget 4096)
        "affine_gemv batch 1": (AG._affine_gemv_kernel, ["*bf16", "*u8", "*fp16", "*fp16", "*fp32"], 16,
            [1, 32, 128, True, True]),
        "affine_gemv batch 16, small groups": (AG._affine_gemv_kernel, ["*fp16", "*u8", "*fp16", "*fp16", "*fp32"], 16,
            [16, 4, 64, False, False]),
    }
    sizes = {}
    for arch in (90,):  # the GPU sessions' H100 / H200
        for label, (fn, pointers, n_ints, constexprs) in CASES.items():
            names = fn.arg_names
            types = pointers + [I32] * n_ints + ["constexpr"] * len(constexprs)
            assert len(types) == len(names), (label, len(types), names)
            first_constexpr = len(pointers) + n_ints
            values = {(first_constexpr + i,): v for i, v in enumerate(constexprs)}
            k = triton.compile(ASTSource(fn=fn, signature=dict(zip(names, types)), constexprs=values),
                               target=GPUTarget("cuda", arch, 32))
            assert k.asm.get("cubin"), label
            sizes[f"sm_{arch} {label}"] = len(k.asm["cubin"])
    print(json.dumps(sizes))
""")


def test_every_triton_kernel_compiles_for_hopper():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    sizes = __import__("json").loads(proc.stdout.strip().splitlines()[-1])
    assert len(sizes) == 7 and all(v > 1000 for v in sizes.values()), sizes
