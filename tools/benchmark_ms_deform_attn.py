#!/usr/bin/env python
"""Benchmark the multi-scale deformable attention op on CPU: the compiled kernel (``cpp``)
against the pure-PyTorch reference (``pytorch``), at DETA's encoder and decoder shapes.

For each shape, mode (forward; forward + backward) and implementation it reports

- the median wall time over ``--iters`` runs after ``--warmup`` runs (and the minimum, which
  shows how much load from other processes inflated the median); speed-up = median of the
  reference / median;
- the peak memory of one call, measured in a fresh subprocess as the growth of the resident set
  (Linux ``VmHWM`` reset through ``/proc/self/clear_refs`` just before the call, after a small
  warm-up call, so thread pools and lazy library loading are not counted; inputs excluded,
  outputs and gradients included; glibc's mmap threshold is fixed at 64 KiB so large
  temporaries are real mappings);
- the bandwidth floor: the bytes the op must touch (inputs read and outputs written once, see
  ``floor_bytes``) divided by the copy bandwidth of this machine, measured in the same run with a
  large tensor copy; "% of floor" is floor time / measured time.

Example::

    python tools/benchmark_ms_deform_attn.py --threads 2 --json /tmp/msda.json

``run_benchmark(Options(...))`` does the same from Python (``tools/benchmark.py op`` calls it).
"""

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from typing import Sequence

import torch

from deta.layers import ms_deform_attn

# DETA R-50 at an 800x1200-ish input: strides 8..128 give these 5 levels (S = 20167).
LEVELS = [(100, 151), (50, 76), (25, 38), (13, 19), (7, 10)]
HEADS, CHANNELS, POINTS = 8, 32, 4
CASES = {"encoder": None, "decoder": 900}  # queries: all tokens / 900 object queries
MODES = ("forward", "forward+backward")
IMPLS = ("cpp", "pytorch")


@dataclass
class Options:
    """What :func:`run_benchmark` measures; the defaults are those of the command line."""

    threads: int = 2  # torch.set_num_threads, also in the memory subprocesses
    warmup: int = 2
    iters: int = 20  # timed runs of the cpp kernel
    ref_iters: int = 5  # timed runs of the (much slower) reference
    cases: Sequence[str] = tuple(CASES)
    no_memory: bool = False  # skip the memory subprocesses


def make_inputs(case: str, seed: int = 0, levels=LEVELS):
    """Op inputs with DETA-like sampling: each query has a reference point (encoder: its own
    pixel centre; decoder: uniform), offsets are the init grid of MSDeformAttn plus N(0, 2)
    pixels, weights a softmax over L*P. Returns (value, shapes, starts, locations, weights)."""
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(levels, dtype=torch.int64)
    sizes = shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    num_value = int(sizes.sum())
    queries = CASES[case] or num_value
    if CASES[case] is None:
        centres = []
        for h, w in levels:
            ys, xs = torch.meshgrid(
                (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij"
            )
            centres.append(torch.stack([xs.flatten(), ys.flatten()], -1))
        ref = torch.cat(centres)
    else:
        ref = torch.rand(queries, 2, generator=g)
    thetas = torch.arange(HEADS) * (2 * math.pi / HEADS)
    dirs = torch.stack([thetas.cos(), thetas.sin()], -1)
    dirs = dirs / dirs.abs().max(-1, keepdim=True)[0]
    grid = dirs[:, None, None, :] * torch.arange(1, POINTS + 1.0)[None, None, :, None]
    offsets = grid + 2 * torch.randn(1, queries, HEADS, len(levels), POINTS, 2, generator=g)
    normalizer = torch.stack([shapes[:, 1], shapes[:, 0]], -1).float()
    locations = ref[None, :, None, None, None, :] + offsets / normalizer[:, None, :]
    logits = torch.randn(1, queries, HEADS, len(levels) * POINTS, generator=g)
    weights = logits.softmax(-1).view(1, queries, HEADS, len(levels), POINTS)
    value = torch.randn(1, num_value, HEADS, CHANNELS, generator=g)
    return value, shapes, starts, locations.contiguous(), weights


def make_step(inputs, impl: str, mode: str):
    """A closure running one call of the op (and its backward for forward+backward)."""
    value, shapes, starts, locations, weights = inputs
    if mode == "forward":

        def step():
            with torch.no_grad():
                return ms_deform_attn(value, shapes, starts, locations, weights, impl=impl)

        return step
    leaves = [t.detach().clone().requires_grad_() for t in (value, locations, weights)]
    grad_output = torch.randn(value.shape[0], locations.shape[1], HEADS * CHANNELS)

    def step():
        for t in leaves:
            t.grad = None
        out = ms_deform_attn(leaves[0], shapes, starts, leaves[1], leaves[2], impl=impl)
        out.backward(grad_output)
        return out

    return step


def time_ms(step, warmup: int, iters: int):
    """(median, min) wall time in ms; the min shows how much a shared machine inflated the
    median."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), 1e3 * min(times)


def floor_bytes(inputs, mode: str) -> int:
    """Bytes an ideal kernel must move: forward reads value, locations and weights and writes
    the output; the backward reads those and grad_output and writes the three gradients."""
    value, _, _, locations, weights = inputs
    nbytes = [t.numel() * t.element_size() for t in (value, locations, weights)]
    out = value.shape[0] * locations.shape[1] * HEADS * CHANNELS * value.element_size()
    forward = sum(nbytes) + out
    return forward if mode == "forward" else 2 * forward + sum(nbytes)


def copy_bandwidth(nbytes: int = 256 << 20, iters: int = 5) -> float:
    """Bytes/s of a large tensor copy (read + write counted), with the current threads."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / min(times)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_probe(case: str, impl: str, mode: str) -> dict:
    """Peak resident-set growth (MiB) of one call; meant to run in a fresh process."""
    small = make_inputs(case, levels=[(h // 8 + 1, w // 8 + 1) for h, w in LEVELS])
    make_step(small, impl, mode)()  # thread pools, lazy imports and kernels loaded here
    inputs = make_inputs(case)
    step = make_step(inputs, impl, mode)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (the peak RSS) to the current RSS
        method = "VmHWM"
    except OSError:
        method = "ru_maxrss"  # process-lifetime peak; over-reports if setup peaked higher
    before = _rss_kib("VmRSS")
    step()
    peak = _rss_kib("VmHWM") if method == "VmHWM" else resource.getrusage(0).ru_maxrss
    return {"peak_mib": max(0, peak - before) / 1024, "method": method}


def run_memory_probe(case: str, impl: str, mode: str, threads: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(threads)]
    cmd += ["--memory-probe", case, impl, mode]
    # A fixed glibc mmap threshold makes every large block a fresh mapping that is unmapped on
    # free, so the resident set follows the live large allocations instead of hiding them in
    # heap memory freed while the inputs were built.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def parse_args():
    d = Options()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=d.threads, help="torch.set_num_threads")
    parser.add_argument("--warmup", type=int, default=d.warmup)
    parser.add_argument("--iters", type=int, default=d.iters, help="timed runs of the cpp kernel")
    parser.add_argument(
        "--ref-iters", type=int, default=d.ref_iters, help="timed runs of the reference"
    )
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--memory-probe", nargs=3, help=argparse.SUPPRESS)
    return parser.parse_args()


def benchmark_case(case: str, options: Options, bandwidth: float) -> list:
    inputs = make_inputs(case)
    fwd = [make_step(inputs, impl, "forward")() for impl in IMPLS]
    max_diff = (fwd[0] - fwd[1]).abs().max().item()
    rows = []
    for mode in MODES:
        floor_ms = 1e3 * floor_bytes(inputs, mode) / bandwidth
        for impl in IMPLS:
            iters = options.iters if impl == "cpp" else options.ref_iters
            ms, min_ms = time_ms(make_step(inputs, impl, mode), options.warmup, iters)
            mem = None
            if not options.no_memory:
                mem = run_memory_probe(case, impl, mode, options.threads)
            rows.append(
                {
                    "case": case,
                    "queries": inputs[3].shape[1],
                    "mode": mode,
                    "impl": impl,
                    "median_ms": ms,
                    "min_ms": min_ms,
                    "iters": iters,
                    "peak_mib": None if mem is None else mem["peak_mib"],
                    "memory_method": None if mem is None else mem["method"],
                    "floor_ms": floor_ms,
                    "fraction_of_floor": floor_ms / ms,
                    "max_abs_diff_forward": max_diff,
                }
            )
    return rows


def print_table(rows: list) -> None:
    ref = {(r["case"], r["mode"]): r for r in rows if r["impl"] == "pytorch"}
    header = ["case", "mode", "impl", "median ms", "min ms", "speed-up", "peak MiB", "mem ratio"]
    header += ["floor ms", "% of floor"]
    lines = [header]
    for r in rows:
        base = ref[(r["case"], r["mode"])]
        mem = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        ratio = "-"
        if r["peak_mib"] and base["peak_mib"]:
            ratio = f"{base['peak_mib'] / r['peak_mib']:.1f}x"
        lines.append(
            [
                f"{r['case']} (Lq={r['queries']})",
                r["mode"],
                r["impl"],
                f"{r['median_ms']:.1f}",
                f"{r['min_ms']:.1f}",
                f"{base['median_ms'] / r['median_ms']:.1f}x",
                mem,
                ratio,
                f"{r['floor_ms']:.2f}",
                f"{100 * r['fraction_of_floor']:.1f}%",
            ]
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for k, line in enumerate(lines):
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def run_benchmark(options: Options) -> dict:
    """Time every case, mode and implementation, print the table; returns ``{"info": machine and
    shapes, "results": one row per (case, mode, impl)}``, what ``--json`` writes."""
    torch.set_num_threads(options.threads)
    load_before = os.getloadavg()[0]
    bandwidth = copy_bandwidth()
    rows = []
    for case in options.cases:
        rows += benchmark_case(case, options, bandwidth)
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "copy_bandwidth_gb_s": bandwidth / 1e9,
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "levels": LEVELS,
        "heads": HEADS,
        "channels": CHANNELS,
        "points": POINTS,
    }
    print(
        f"{info['cpu']} ({info['cores']} cores), "
        f"torch {info['torch']}, {info['threads']} threads, copy bandwidth "
        f"{info['copy_bandwidth_gb_s']:.1f} GB/s, levels {LEVELS}, "
        f"{HEADS} heads x {CHANNELS} channels, {POINTS} points, float32; 1-min load average "
        f"{load_before:.1f} before, {info['load_average_1min'][1]:.1f} after"
    )
    print_table(rows)
    for case in options.cases:
        diff = next(r["max_abs_diff_forward"] for r in rows if r["case"] == case)
        print(f"{case}: max |cpp - pytorch| forward = {diff:.2e}")
    return {"info": info, "results": rows}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        print(json.dumps(memory_probe(*args.memory_probe)))
        return
    data = run_benchmark(Options(**{f.name: getattr(args, f.name) for f in fields(Options)}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=2)


if __name__ == "__main__":
    main()
