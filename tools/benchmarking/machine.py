"""What this machine can do at best: square GEMM GFLOP/s (fp32, and bf16 where the CPU has it)
and memory-copy GB/s, measured now, with the ISA they ran on. ``--probe-machine`` adds it to any
mode's header and JSON; ``roofline`` always measures it, as its limit."""

import time

import torch

from tools.benchmarking.harness import isa_info, load_average

GEMM_N = 2048  # 2 * 2048^3 = 17.2 GFLOP per product: ~0.1-1 s on a few cores
COPY_MIB = 256  # well beyond the last-level cache
REPEATS = 5


def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: first-touch page faults, oneDNN primitive creation
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def gemm_gflops(n: int, dtype: torch.dtype, repeats: int = REPEATS) -> float:
    """Best of ``repeats`` ``torch.mm`` of two n x n matrices, as 2 * n^3 / seconds / 1e9 (real
    FLOPs: a multiply-add is 2)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    return 2 * n**3 / _best_seconds(lambda: torch.mm(a, b, out=out), repeats) / 1e9


def copy_gbs(mib: int = COPY_MIB, repeats: int = REPEATS) -> float:
    """Best of ``repeats`` ``dst.copy_(src)`` of ``mib`` MiB, counting the bytes read plus the
    bytes written (2 x the size) per second, 1e9 bytes per GB."""
    src = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    return 2 * src.nbytes / _best_seconds(lambda: dst.copy_(src), repeats) / 1e9


def probe_machine(
    threads: int, gemm_n: int = GEMM_N, copy_mib: int = COPY_MIB, repeats: int = REPEATS
) -> dict:
    """Measured peaks at ``threads`` threads (restored after): fp32 GEMM, bf16 GEMM (None where
    oneDNN has no bf16 on this CPU), copy bandwidth; with the ISA and the load around it."""
    from deta import fast_cpu

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    load_start = load_average()
    try:
        fp32 = gemm_gflops(gemm_n, torch.float32, repeats)
        bf16 = (
            gemm_gflops(gemm_n, torch.bfloat16, repeats) if fast_cpu.capabilities().bf16 else None
        )
        copy = copy_gbs(copy_mib, repeats)
    finally:
        torch.set_num_threads(saved)
    return {
        "threads": threads,
        "isa": isa_info(),
        "gemm_n": gemm_n,
        "gemm_fp32_gflops": fp32,
        "gemm_bf16_gflops": bf16,
        "copy_mib": copy_mib,
        "copy_gbs": copy,
        "method": (
            f"best of {repeats} after a warm-up; GEMM: torch.mm of {gemm_n}x{gemm_n} matrices, "
            f"2*n^3 FLOPs; copy: copy_ of a {copy_mib} MiB fp32 tensor, read + write bytes"
        ),
        "loadavg": [load_start, load_average()],
    }


def print_probe(probe: dict) -> None:
    bf16 = probe["gemm_bf16_gflops"]
    print(
        f"measured peak at {probe['threads']} threads: fp32 GEMM {probe['gemm_fp32_gflops']:.1f} "
        "GFLOP/s, bf16 GEMM "
        + (f"{bf16:.1f} GFLOP/s" if bf16 is not None else "- (no oneDNN bf16)")
        + f", copy {probe['copy_gbs']:.1f} GB/s; load {probe['loadavg'][0]} -> "
        f"{probe['loadavg'][1]}"
    )
    print(f"  ({probe['method']})")
