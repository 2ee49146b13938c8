"""Device checks of the CUDA ms_deform_attn kernel beyond tests/layers.

Run from the repository root after ``python setup.py build_ext --inplace`` (with FORCE_CUDA=1):
``python tools/gpu/msda_check.py``. ``SMOKE=1 DEV=cpu`` runs the small parts (1-3) on CPU, which
checks the script itself. Adapted from the project's prepared device script to the current
layout; it stubs the ``deta`` package (and its CPU fast paths, which import Detectron2), so it
runs on a bare device image with only torch installed.

Checks: 1. CUDA against the CPU kernel in float64 for several D; 2. exact-border sampling
locations; 3. bitwise repeatability of the output and of the location and weight gradients,
also on a side stream; 4. the grid-stride loop (9M groups); 5. int64 indexing past 2^31 value
elements (about 45 GB of GPU memory); 6. forward+backward time at the encoder's size against the
PyTorch reference, and the cost of the per-call level check (``set_validate_levels(True)``).
"""

import os
import sys
import time
import types

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _stub_package() -> None:
    """Import deta.layers without deta/__init__ (Detectron2 models) and deta.fast_cpu."""
    pkg = types.ModuleType("deta")
    pkg.__path__ = [os.path.join(REPO, "deta")]
    sys.modules["deta"] = pkg
    fast_cpu = types.ModuleType("deta.fast_cpu")
    fast_cpu.compute_dtype = lambda *args, **kwargs: None  # CPU inference paths only
    sys.modules["deta.fast_cpu"] = fast_cpu
    pkg.fast_cpu = fast_cpu
    sys.path.insert(0, REPO)  # tests.layers.test_ms_deform_attn: make_inputs


_stub_package()
from deta.layers.ms_deform_attn_func import (  # noqa: E402
    has_cuda_ext,
    ms_deform_attn,
    ms_deform_attn_pytorch,
    set_validate_levels,
)
from tests.layers.test_ms_deform_attn import DETA_LEVELS, make_inputs  # noqa: E402

DEV = os.environ.get("DEV", "cuda")
SMOKE = os.environ.get("SMOKE") == "1"


def run(impl, inputs, g=None):
    ts = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = ms_deform_attn(*ts, impl=impl)
    if g is None:
        return out, []
    out.backward(g)
    return out, [ts[0].grad, ts[3].grad, ts[4].grad]


def close(name, a, b, **tol):
    err = 0.0
    for x, y in zip(a, b):
        err = (x.double() - y.double()).abs().max().item() if x.numel() else 0.0
        torch.testing.assert_close(x, y, msg=lambda m: f"{name}: {m}", **tol)
    print(f"ok {name} (last max abs diff {err:.2e})")


def to_dev(ts):
    return [t.to(DEV) for t in ts]


def check_against_cpu():
    """1. CUDA kernel vs CPU kernel, float64 (same formulas: should agree to ~1e-15)."""
    for d in (1, 30, 32, 71, 256):
        heads = 8 if d < 256 else 1
        inp = make_inputs(DETA_LEVELS, queries=300, heads=heads, channels=d, points=4, seed=d)
        g = torch.randn(2, 300, heads * d, dtype=torch.float64)
        o_c, g_c = run("cpp", inp, g)
        o_d, g_d = run("cpp", to_dev(inp), g.to(DEV))
        got = [o_d.cpu()] + [t.cpu() for t in g_d]
        close(f"cuda-vs-cpu D={d}", got, [o_c] + g_c, rtol=1e-10, atol=1e-12)


def check_borders():
    """2. Exact borders: pixel x, y in {-1, -0.999, -0.5, 0, 1, W-1, W-0.5, W-1e-3, W}."""
    h, w = 4, 6
    px = torch.tensor([-1, -0.999, -0.5, 0, 1, w - 1, w - 0.5, w - 1e-3, w], dtype=torch.float64)
    py = torch.tensor([-1, -0.999, -0.5, 0, 1, h - 1, h - 0.5, h - 1e-3, h], dtype=torch.float64)
    gx, gy = torch.meshgrid((px + 0.5) / w, (py + 0.5) / h, indexing="ij")
    loc = torch.stack([gx, gy], -1).reshape(1, -1, 1, 1, 1, 2)
    value = torch.randn(1, h * w, 1, 4, dtype=torch.float64)
    attn = torch.rand(1, loc.shape[1], 1, 1, 1, dtype=torch.float64)
    inp = [value, torch.tensor([[h, w]]), torch.tensor([0]), loc, attn]
    g = torch.randn(1, loc.shape[1], 4, dtype=torch.float64)
    o_c, g_c = run("cpp", inp, g)
    o_d, g_d = run("cpp", to_dev(inp), g.to(DEV))
    got = [o_d.cpu()] + [t.cpu() for t in g_d]
    close("borders cuda-vs-cpu", got, [o_c] + g_c, rtol=0, atol=1e-14)
    ref = ms_deform_attn_pytorch(value, inp[1], loc, attn)
    close("borders fwd vs grid_sample", [o_d.cpu()], [ref], rtol=1e-12, atol=1e-12)


def check_determinism():
    """3. Bitwise repeatable forward / grad_loc / grad_attn, also on a side stream."""
    kwargs = dict(queries=1000, heads=8, channels=32, points=4, dtype=torch.float32)
    inp = to_dev(make_inputs(DETA_LEVELS, **kwargs))
    g = torch.randn(2, 1000, 256, device=DEV)
    o1, g1 = run("cpp", inp, g)
    if DEV == "cuda":
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            o2, g2 = run("cpp", inp, g)
        torch.cuda.current_stream().wait_stream(s)
        torch.cuda.synchronize()
    else:
        o2, g2 = run("cpp", inp, g)
    same = torch.equal(o1, o2) and torch.equal(g1[1], g2[1]) and torch.equal(g1[2], g2[2])
    assert same, "forward / grad_loc / grad_attn not bitwise repeatable"
    print("ok forward, grad_loc, grad_attn bitwise repeatable")
    close("grad_value run-to-run", [g1[0]], [g2[0]], rtol=1e-5, atol=1e-6)


def check_grid_stride():
    """4. Grid-stride loop (> 8 * 2**20 groups), forward and backward, float64 vs reference."""
    lq = 9_000_000
    kwargs = dict(batch=1, queries=lq, heads=1, channels=1, points=1, spread=0.05)
    inp = [t.cuda() for t in make_inputs([(512, 512)], **kwargs)]
    g = torch.randn(1, lq, 1, dtype=torch.float64, device="cuda")
    o_r, g_r = run("pytorch", inp, g)
    o_d, g_d = run("cpp", inp, g)
    close("grid-stride 9M groups", [o_d] + g_d, [o_r] + g_r, rtol=1e-9, atol=1e-9)


def check_int64_indexing():
    """5. value with > 2**31 elements, samples near the far corner, float32."""
    h = w = 46341  # h * w = 2_147_488_281 > 2**31
    value = torch.randn(1, h * w, 1, 1, device="cuda")
    loc = 0.98 + 0.02 * torch.rand(1, 4096, 1, 1, 1, 2, device="cuda")
    attn = torch.rand(1, 4096, 1, 1, 1, device="cuda")
    shapes = torch.tensor([[h, w]], device="cuda")
    inp = [value, shapes, torch.tensor([0], device="cuda"), loc, attn]
    g = torch.randn(1, 4096, 1, device="cuda")
    o_r, g_r = run("pytorch", inp, g)
    o_d, g_d = run("cpp", inp, g)
    got, ref = [o_d, g_d[1], g_d[2]], [o_r, g_r[1], g_r[2]]
    close(">2^31 value elements", got, ref, rtol=1e-4, atol=1e-4)
    idx = g_r[0].flatten().nonzero().flatten()
    got, ref = [g_d[0].flatten()[idx]], [g_r[0].flatten()[idx]]
    close(">2^31 grad_value (touched)", got, ref, rtol=1e-4, atol=1e-5)
    assert g_d[0].count_nonzero() <= idx.numel(), "grad_value written outside the touched rows"


def time_encoder_size():
    """6. fwd+bwd at a DETA encoder size (N=2, Lq=S~22k, M=8, D=32, L=4, P=4), float32."""
    lv = [(100, 167), (50, 84), (25, 42), (13, 21)]
    s = sum(h * w for h, w in lv)
    kwargs = dict(batch=2, queries=s, heads=8, channels=32, points=4, spread=0.02)
    inp = [t.cuda() for t in make_inputs(lv, dtype=torch.float32, **kwargs)]
    g = torch.randn(2, s, 256, device="cuda")
    for impl, validate in (("cpp", False), ("cpp", True), ("pytorch", False)):
        set_validate_levels(validate)
        for _ in range(3):
            run(impl, inp, g)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            run(impl, inp, g)
        torch.cuda.synchronize()
        label = impl + (" (set_validate_levels(True): syncs each call)" if validate else "")
        print(f"{label}: fwd+bwd {(time.perf_counter() - t0) / 10 * 1e3:.2f} ms")
    set_validate_levels(None)


def main() -> None:
    if DEV == "cuda":
        if not torch.cuda.is_available():
            sys.exit("msda_check: no CUDA device visible (DEV=cpu SMOKE=1 checks the script)")
        if not has_cuda_ext():
            sys.exit("msda_check: deta._C has no CUDA kernels; build with FORCE_CUDA=1 first")
        print(torch.cuda.get_device_name(), torch.__version__, torch.version.cuda)
    check_against_cpu()
    check_borders()
    check_determinism()
    if SMOKE or DEV != "cuda":
        print("SMOKE CHECKS PASSED")
        return
    check_grid_stride()
    torch.cuda.empty_cache()
    check_int64_indexing()
    torch.cuda.empty_cache()
    time_encoder_size()
    print("ALL DEVICE CHECKS PASSED")


if __name__ == "__main__":
    main()
