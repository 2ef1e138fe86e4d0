"""Pieces shared by the tiled matmul kernels: program ordering, tile offsets, the output store,
and launch checks."""
import torch
import triton
import triton.language as tl


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) for program `pid`, GROUP_M row blocks at a time.

    Consecutive programs share one column of weight tiles across GROUP_M row blocks, so
    those tiles are re-read from L2 instead of HBM when M spans several blocks.
    """
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_rows
    pid_n = (pid % num_pid_in_group) // group_rows
    return pid_m, pid_n


@triton.jit
def tile_offsets(pid_m, pid_n, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """An output tile's rows and columns, a K step's offsets, and the row and column masks.

    Rows and columns are int64: offs * stride passes 2^31 for M * K or N * K >= 2^31 elements.
    """
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K)
    return offs_m, offs_n, offs_k, offs_m < M, offs_n < N


@triton.jit
def store_tile(y_ptr, acc, offs_m, offs_n, mask_m, mask_n, stride_ym, stride_yn):
    """The fp32 accumulator into the output tile, in the output's dtype."""
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_activations(x: torch.Tensor, k: int, device: torch.device) -> None:
    """Activations a kernel takes: a float dtype, last dimension K, on the weight's device."""
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"x must be float16, bfloat16 or float32; got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x's last dimension must equal K = {k}; got x of shape {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"x is on {x.device} but the weight is on {device}")


def resolve_launch(x: torch.Tensor, out_dtype, **blocks: int) -> torch.dtype:
    """Checks the output dtype and tile sizes of a tiled launch; returns the output dtype."""
    out_dtype = x.dtype if out_dtype is None else out_dtype
    if out_dtype not in FLOAT_DTYPES:
        raise ValueError(f"out_dtype must be float16, bfloat16 or float32; got {out_dtype}")
    for name, b in blocks.items():
        if b < 16 or b & (b - 1):
            raise ValueError(f"{name} must be a power of two >= 16 (tl.dot minimum); got {b}")
    return out_dtype
