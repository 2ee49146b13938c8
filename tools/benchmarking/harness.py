"""What every mode shares: the machine record, peak memory, the timing loop and the worker
subprocesses (``tools/benchmark.py _worker NAME JSON``)."""

import contextlib
import glob
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from tools.benchmark_ms_deform_attn import cpu_model

try:
    import resource
except ImportError:  # not on Windows: no fault counts there
    resource = None

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Workers are started through the entry point, so they see the same sys.path set-up.
ENTRY = os.path.join(REPO, "tools", "benchmark.py")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Variables that cap the instruction set of oneDNN / ATen / the deta._C kernels.
ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "DETA_CPU_CAPS", "DETA_CPU_KERNEL_ISA")


# ----------------------------------------------------------------------------------------------
# Environment


def load_average():
    return [round(x, 2) for x in os.getloadavg()]


def ext_info() -> dict:
    """Where ``deta._C`` is, whether it loads, and whether it is older than its sources."""
    from deta.layers.ms_deform_attn_func import describe_msda_impl, has_cpp_ext, has_cuda_ext

    sos = glob.glob(os.path.join(REPO, "deta", "_C*.so"))
    info = {"path": sos[0] if sos else None, "cpu": has_cpp_ext(), "cuda": has_cuda_ext()}
    info["cpu_impl"] = describe_msda_impl("cpu")
    if sos:
        built = os.path.getmtime(sos[0])
        sources = glob.glob(
            os.path.join(REPO, "deta", "layers", "csrc", "**", "*.*"), recursive=True
        )
        info["built"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(built))
        info["stale"] = any(os.path.getmtime(s) > built for s in sources)
    return info


def isa_info() -> dict:
    """The vector ISA of ATen's kernels and what deta's fast paths found (AVX-512, AMX, bf16)."""
    from deta import fast_cpu

    caps = fast_cpu.capabilities()
    return {
        "aten_capability": caps.aten_capability,
        "avx512": caps.avx512,
        "amx": caps.amx,
        "bf16": caps.bf16,
    }


def machine_info(threads: int, device: str = "cpu") -> dict:
    import torchvision

    from deta import fast_cpu

    info = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "deta_C": ext_info(),
        "isa": isa_info(),
        "isa_caps": {k: os.environ[k] for k in ISA_ENV if k in os.environ},
        "cpu_fast_paths": {k.strip(): v for k, v in fast_cpu.describe()},
        "device": device,
        "loadavg": load_average(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def print_machine(info: dict) -> None:
    ext = info["deta_C"]
    stale = " (STALE: older than its sources, rebuild)" if ext.get("stale") else ""
    print(
        f"machine: {info['cpu']}, {info['usable_cores']}/{info['logical_cores']} cores usable, "
        f"{info['threads']} threads; torch {info['torch']}, torchvision {info['torchvision']}"
    )
    print(
        f"deta._C: {os.path.basename(ext['path'] or '-')}, built {ext.get('built', '-')}{stale}, "
        f"cpu kernel {ext['cpu']}, cuda kernel {ext['cuda']}; device {info['device']}"
        + (f" ({info['gpu']})" if "gpu" in info else "")
    )
    isa = info["isa"]
    caps = " ".join(f"{k}={v}" for k, v in info["isa_caps"].items()) or "none"
    print(
        f"ISA: ATen {isa['aten_capability']}, AVX-512 {isa['avx512']}, AMX {isa['amx']}, "
        f"oneDNN bf16 {isa['bf16']}; ISA caps in the environment: {caps}"
    )
    for name, state in info["cpu_fast_paths"].items():
        print(f"  {name}: {state}")
    print(f"load average (1, 5, 15 min) at start: {info['loadavg']}")


# ----------------------------------------------------------------------------------------------
# Memory and timing


def rss_mib(field: str = "VmRSS") -> float:
    """Current (VmRSS) or peak (VmHWM) resident set of this process, MiB (Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_memory(device: torch.device) -> str:
    """Start a new peak-memory window; returns the method used."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "cuda.max_memory_allocated"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return "VmHWM"
    except OSError:
        return "ru_maxrss"  # process lifetime peak: the fresh subprocess keeps it meaningful


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return rss_mib("VmHWM")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, dtype: str):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def time_loop(fn, warmup: int, iters: int, device: torch.device) -> dict:
    """Official timing: synchronise, time one call, synchronise; warm-up calls discarded.

    Returns wall seconds per call (mean, the official statistic, plus p50/p90/min), process
    CPU seconds per call, which is far less inflated than wall time when other jobs compete,
    and the process's minor page faults per timed call (``faults_per_iter``): many of them mean
    fresh memory every call, or a heap still growing to its working size (too short a warm-up).
    """
    for _ in range(warmup):
        fn()
        synchronize(device)
    wall, cpu = [], []
    faults = minor_faults()
    for _ in range(iters):
        w, c = timed_call(fn, device)
        wall.append(w)
        cpu.append(c)
    stats = summarize(wall, cpu, warmup)
    if faults is not None:
        stats["faults_per_iter"] = round((minor_faults() - faults) / iters)
    return stats


def minor_faults():
    """Minor page faults of this process so far (all threads), None where not counted."""
    return None if resource is None else resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed_call(fn, device: torch.device):
    """(wall, process CPU) seconds of one synchronised call of ``fn``."""
    synchronize(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - t0, time.process_time() - c0


def percentile(values, q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def summarize(wall: list, cpu: list, warmup: int) -> dict:
    """The statistics of one sample set of per-call wall and CPU seconds."""
    return {
        "mean_s": statistics.fmean(wall),
        "p50_s": percentile(wall, 0.5),
        "p90_s": percentile(wall, 0.9),
        "min_s": min(wall),
        "cpu_s": statistics.fmean(cpu),
        "iters": len(wall),
        "warmup": warmup,
    }


def measure(fn, spec: dict, device: torch.device):
    """``time_loop`` with the spec's warm-up and iterations in a new peak-memory window.

    Returns (memory method, timings with ``peak_mib`` added).
    """
    method = reset_peak_memory(device)
    timings = time_loop(fn, spec["warmup"], spec["iters"], device)
    timings["peak_mib"] = peak_memory_mib(device)
    return method, timings


def start_result(impl: str, model, **extra) -> dict:
    """The head of a worker's result: what ran, its size, and the memory and load before timing."""
    return {
        "impl": impl,
        **extra,
        "allocator": ALLOCATOR["state"],
        "params": sum(p.numel() for p in model.parameters()),
        "rss_model_mib": rss_mib(),
        "loadavg_start": load_average(),
    }


# ----------------------------------------------------------------------------------------------
# Workers (run in fresh subprocesses; each prints one JSON line last)


# What configure_cpu_allocator did in this process (worker_setup sets it; results record it).
ALLOCATOR = {"state": None}


def worker_setup(spec: dict) -> torch.device:
    """Allocator, threads and device of a measurement; ``spec`` is a worker spec or
    ``vars(args)``. The allocator first: it only affects what is allocated after it."""
    from deta.utils.cpu_allocator import configure_cpu_allocator

    ALLOCATOR["state"] = configure_cpu_allocator(spec.get("allocator", "keep"))
    torch.set_num_threads(spec["threads"])
    return torch.device(spec["device"])


def base_spec(args) -> dict:
    """The worker spec fields every mode takes from its common flags."""
    return {
        "config_file": args.config_file,
        "opts": list(args.opts),
        "device": args.device,
        "threads": args.threads,
        "dtype": getattr(args, "dtype", None),
        "warmup": args.warmup,
        "iters": args.iters,
        "seed": args.seed,
        "weights": args.weights,
        "allocator": getattr(args, "allocator", None) or args.allocators[0],
    }


def run_worker(kind: str, spec: dict) -> dict:
    """Run one measurement in a fresh interpreter; its last stdout line is the JSON result."""
    cmd = [sys.executable, ENTRY, "_worker", kind, json.dumps(spec)]
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        return {"error": f"{kind} worker exited with {proc.returncode}:\n{tail}"}
    return json.loads(lines[-1])
