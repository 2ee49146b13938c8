"""``--compile MODE ...`` of ``inference`` and ``train``: eager and ``torch.compile``'d models
measured in turn in one run (adjacent subprocesses, so both see about the same load), the
first call (which compiles) timed apart from the steady state, and the ratio printed."""

import atexit
import contextlib
import os
import shutil
import tempfile
import time

from deta.config import COMPILE_MODES
from tools.benchmarking.harness import synchronize

CHOICES = ["", *COMPILE_MODES]


def add_compile_arg(p) -> None:
    p.add_argument(
        "--compile", nargs="+", choices=CHOICES, default=None, metavar="MODE",
        help="'' (eager) or a torch.compile mode (deta.utils.compile), several measured in turn, "
        "e.g. --compile '' default; default: the config's MODEL.DETA.COMPILE. Each compiles "
        "with an empty inductor cache, so the first call's time is a cold compile",
    )  # fmt: skip


def compile_modes(args) -> list:
    """The modes to measure; None means the config's ``MODEL.DETA.COMPILE``."""
    return list(args.compile) if args.compile else [None]


class CompileProbe:
    """Compiles the worker's model as its spec asks, times the first call, counts graphs."""

    def __init__(self, model, cfg, spec: dict, device):
        from deta.utils.compile import compile_model, compile_stats

        self.stats = compile_stats
        self.device = device
        mode = spec.get("compile")
        self.mode = cfg.MODEL.DETA.COMPILE if mode is None else mode
        if self.mode:
            # A fresh cache: the first call then times a cold compile, not a rerun that finds
            # the kernels of an earlier run on disk.
            cache = tempfile.mkdtemp(prefix="deta_inductor_")
            atexit.register(shutil.rmtree, cache, ignore_errors=True)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
            compile_model(model, self.mode)
        self.before = self.stats()
        self.first_s = None

    def first_call(self, fn) -> None:
        """Run ``fn`` once, timed: the compile (if any) plus one call."""
        synchronize(self.device)
        t0 = time.perf_counter()
        fn()
        synchronize(self.device)
        self.first_s = time.perf_counter() - t0
        self.after_first = self.stats()

    def finish(self) -> dict:
        """Mode, first-call seconds, graphs and breaks of the compile, recompiles after it."""
        now = self.stats()
        first = self.after_first
        return {
            "mode": self.mode,
            "first_call_s": self.first_s,
            "graphs": first["graphs"] - self.before["graphs"],
            "graph_breaks": first["graph_breaks"] - self.before["graph_breaks"],
            "recompiles_after_first_call": now["frames"] - first["frames"],
        }


@contextlib.contextmanager
def eager(model):
    """Inside the block, a compiled model's ``forward_features`` is the eager method."""
    compiled = model.__dict__.pop("forward_features", None)
    try:
        yield
    finally:
        if compiled is not None:
            model.forward_features = compiled


def label(result: dict) -> str:
    """``impl``, with the compile mode where one was used."""
    mode = result.get("compile", {}).get("mode")
    return f"{result['impl']} compile={mode}" if mode else result["impl"]


def print_ratios(results: list, keys: tuple, metrics: tuple) -> None:
    """For every compiled row, its first call and ``metrics`` against the eager row of the same
    ``keys`` (image size, batch, ...): eager / compiled, > 1 where compiling is faster."""
    eager = {}
    for r in results:
        c = r["ours"].get("compile")
        if c and not c["mode"]:
            eager[tuple(r[k] for k in keys)] = r["ours"]
    lines = []
    for r in results:
        m, c = r["ours"], r["ours"].get("compile")
        base = eager.get(tuple(r[k] for k in keys))
        if not c or not c["mode"] or "error" in m or not base or "error" in base:
            continue
        compile_s = c["first_call_s"] - m[metrics[0]]["mean_s"]
        parts = [
            f"first call {c['first_call_s']:.1f} s vs {base['compile']['first_call_s']:.1f} s "
            f"eager (compile ~{compile_s:.0f} s)"
        ]
        for metric in metrics:
            if metric in m and metric in base:
                e, k = base[metric]["mean_s"], m[metric]["mean_s"]
                parts.append(f"{metric} {e * 1e3:.0f} -> {k * 1e3:.0f} ms = {e / k:.2f}x")
        parts.append(
            f"{c['graphs']} graphs, {c['graph_breaks']} breaks, "
            f"{c['recompiles_after_first_call']} recompiles after the first call"
        )
        where = " ".join(str(r[k]) for k in keys)
        lines.append(f"  [{where}] compile={c['mode']} vs eager: " + "; ".join(parts))
    if lines:
        print("torch.compile vs eager (eager/compiled mean time, > 1x: compiled is faster):")
        print("\n".join(lines))
