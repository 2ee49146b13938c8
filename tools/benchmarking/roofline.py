"""``roofline``: per stage of one CPU inference (batch 1), its FLOPs, its measured time, the
GFLOP/s that makes, and that as a fraction of this machine's measured GEMM peak; then the
stages sorted by how far they are from the time they would take at that peak.

FLOPs come from fvcore (``deta.utils.flops``), charged to the ``record_function`` scopes that
``breakdown`` times, so that FLOPs and times cover the same code. fvcore counts one multiply-add
as one flop; the table is in real FLOPs (2 per multiply-add), the unit of the GEMM peak
(2 * n^3 / t). The analysis by module (``tools/analyze_model.py``'s stages) is cross-checked
against the scopes through :data:`BLOCKS`.
"""

from collections import Counter
from typing import Dict, List, Optional

import torch

from deta.utils.cli import fail
from deta.utils.flops import STAGES as MODULE_STAGES
from deta.utils.flops import count_flops, real_flops
from tools.benchmarking.breakdown import OTHER, STAGES, TOP_LEVEL, forward_run, profile_stages
from tools.benchmarking.machine import probe_machine
from tools.benchmarking.models import forward_inputs, parse_size, synthetic_image, worker_model
from tools.benchmarking.tables import print_table

ROWS = [label for label, _ in STAGES] + [OTHER]
ENCODER, ENCODER_PARTS = "encoder", ("  encoder attention", "  encoder FFN")
ENCODER_REST = "  encoder (rest)"
# analyze_model's stages (by module) and the breakdown rows (by scope) they run in. A module can
# run in another stage's scope (the decoder calls the box heads to refine its references; the
# query init calls pos_trans), so the FLOPs agree per block, not per stage.
BLOCKS = [
    (("backbone",), ("backbone",)),
    (("neck", "other"), ("input proj + pos. enc.", "post-process (NMS)", OTHER)),
    (("encoder",), ("encoder",)),
    (("proposals",), ("proposals + enc. heads", "selection + query init")),
    (("decoder", "heads"), ("decoder", "heads")),
]
FLOP_CONVENTION = (
    "real FLOPs: 2 x fvcore's count (1 per multiply-add) for conv, linear, matmul, bmm and "
    "deformable attention; norms and the rest per element as fvcore counts them; ops fvcore "
    "does not count (NMS, topk, sort, elementwise) are 0"
)


def fvcore_by_row(by_scope: Dict[str, Dict[str, int]]) -> Dict[str, Counter]:
    """fvcore counts per operator of every row of :data:`ROWS`, from ``count_flops``'s
    ``by_scope``. A row takes the ops run inside any of its scopes; :data:`OTHER` those
    outside every top-level one (so the top-level rows and OTHER add up to the total)."""
    rows = {label: Counter() for label in ROWS}
    top_scopes = {s for label, scopes in STAGES if label in TOP_LEVEL for s in scopes}
    for path, ops in by_scope.items():
        open_scopes = set(path.split("/")) if path else set()
        for label, scopes in STAGES:
            if open_scopes & set(scopes):
                rows[label].update(ops)
        if not open_scopes & top_scopes:
            rows[OTHER].update(ops)
    return rows


def check_blocks(by_stage: Dict[str, int], fvcore_rows: Dict[str, Counter]) -> List[dict]:
    """For every block of :data:`BLOCKS`: the FLOPs by module and by scope, and if they agree."""
    out = []
    for stages, rows in BLOCKS:
        by_module = sum(by_stage[s] for s in stages)
        by_scope = sum(sum(fvcore_rows[r].values()) for r in rows)
        out.append(
            {
                "stages": list(stages),
                "rows": list(rows),
                "by_module": by_module,
                "by_scope": by_scope,
                "agree": abs(by_module - by_scope) <= 1e-9 * max(1, by_module),
            }
        )
    return out


def roofline_row(label: str, flops: float, fvcore: float, ms: float, peak_gflops: float) -> dict:
    """One row: achieved GFLOP/s, its fraction of ``peak_gflops``, the time at that peak and the
    gap to it (the measured time above the limit)."""
    achieved = flops / (ms / 1e3) / 1e9 if ms > 0 else None
    at_peak_ms = 1e3 * flops / (peak_gflops * 1e9)
    return {
        "stage": label,
        "fvcore_flops": fvcore,
        "flops": flops,
        "ms": ms,
        "gflops_per_s": achieved,
        "fraction_of_peak": achieved / peak_gflops if achieved is not None else None,
        "ms_at_peak": at_peak_ms,
        "gap_ms": ms - at_peak_ms,
    }


def build_rows(fvcore_rows, stage_ms: Dict[str, float], total_ms: float, peak: float):
    """(table rows in breakdown order, the total row, the leaf rows sorted by gap).

    The leaves are the top-level rows with the encoder replaced by its attention, FFN and
    whatever of it is outside both, so that they add up to the whole forward.
    """
    rows = [
        roofline_row(
            label, real_flops(fvcore_rows[label]), sum(fvcore_rows[label].values()),
            stage_ms[label], peak,
        )
        for label in ROWS
    ]  # fmt: skip
    by_label = {r["stage"]: r for r in rows}
    top = [by_label[label] for label in TOP_LEVEL + [OTHER]]
    total = roofline_row(
        "total", sum(r["flops"] for r in top), sum(r["fvcore_flops"] for r in top), total_ms, peak
    )
    enc = by_label[ENCODER]
    parts = [by_label[p] for p in ENCODER_PARTS]
    rest = roofline_row(
        ENCODER_REST,
        enc["flops"] - sum(p["flops"] for p in parts),
        enc["fvcore_flops"] - sum(p["fvcore_flops"] for p in parts),
        max(0.0, enc["ms"] - sum(p["ms"] for p in parts)),
        peak,
    )
    leaves = [r for r in top if r["stage"] != ENCODER] + parts + [rest]
    return rows, total, sorted(leaves, key=lambda r: r["gap_ms"], reverse=True)


def _fmt(x: Optional[float], spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _pct(fraction: Optional[float]) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}"


def print_roofline(rows, total, gaps, peak_name: str, peak: float) -> None:
    print_table(
        ["stage", "GFLOP", "ms", "GFLOP/s", f"% of {peak_name}", "ms at peak", "gap ms"],
        [
            [
                r["stage"], f"{r['flops'] / 1e9:.3f}", f"{r['ms']:.1f}",
                _fmt(r["gflops_per_s"], ".1f"),
                _pct(r["fraction_of_peak"]),
                f"{r['ms_at_peak']:.2f}", f"{r['gap_ms']:.1f}",
            ]
            for r in rows + [total]
        ],
    )  # fmt: skip
    print(
        f"\nWhere the time above the limit goes (leaf stages by gap; at {peak:.1f} GFLOP/s the "
        f"forward would take {total['ms_at_peak']:.1f} ms, it took {total['ms']:.1f} ms):"
    )
    gap_sum = sum(max(0.0, r["gap_ms"]) for r in gaps) or 1.0
    cumulative, table = 0.0, []
    for r in gaps:
        share = 100 * max(0.0, r["gap_ms"]) / gap_sum
        cumulative += share
        table.append(
            [r["stage"].strip(), f"{r['gap_ms']:.1f}", f"{share:.1f}%", f"{cumulative:.1f}%",
             _pct(r["fraction_of_peak"])]
        )  # fmt: skip
    print_table(["stage", "gap ms", "share of gap", "cumulative", f"% of {peak_name}"], table)


def _peak(probe: dict, dtype: str):
    """The GEMM peak the stages are held to: bf16 under bf16 autocast where the CPU has it."""
    if dtype == "bf16" and probe["gemm_bf16_gflops"]:
        return "bf16 GEMM peak", probe["gemm_bf16_gflops"]
    return "fp32 GEMM peak", probe["gemm_fp32_gflops"]


def mode_roofline(args) -> dict:
    if args.device != "cpu":
        fail(f"roofline: --device {args.device}: only cpu is supported (CPU inference)")
    if args.dtype not in ("fp32", "bf16"):
        fail(f"roofline: --dtype {args.dtype}: expected fp32 or bf16")
    if args.iters < 1:
        fail(f"roofline: --iters {args.iters}: at least 1 timed iteration is needed")
    probe = getattr(args, "probe", None) or probe_machine(args.threads)
    peak_name, peak = _peak(probe, args.dtype)
    device, _, model, amp = worker_model(vars(args))
    h, w = parse_size(args.image_size)
    image = synthetic_image(h, w, args.seed)
    counted = count_flops(model, image.float())  # the plain fp32 modules: the same FLOPs
    fvcore_rows = fvcore_by_row(counted["by_scope"])
    blocks = check_blocks(counted["by_stage"], fvcore_rows)

    x, mask = forward_inputs(model, image, 1)
    run = forward_run(model, x, mask, [(h, w)], amp)
    measured = profile_stages(run, device, args.warmup, args.iters, top=10)
    stage_ms = {s["stage"]: s["ms"] for s in measured["stages"]}
    # Rows and total from the same (profiled) iterations, so that the rows add up to the total;
    # breakdown's OTHER is against the unprofiled run, which can be the shorter one.
    total_ms = 1e3 * measured["profiled_mean_s"]
    stage_ms[OTHER] = max(0.0, total_ms - sum(stage_ms[label] for label in TOP_LEVEL))
    rows, total, gaps = build_rows(fvcore_rows, stage_ms, total_ms, peak)

    load_start, load_end = measured["loadavg_profiled"]
    unprofiled_ms = 1e3 * measured["unprofiled"]["mean_s"]
    print(
        f"\nroofline: {h}x{w}, batch 1, {args.dtype}, {args.threads} threads; mean of "
        f"{args.iters} profiled iterations: stages the CPU time of their scopes, total the wall "
        f"time (unprofiled: {unprofiled_ms:.1f} ms); load {load_start} -> {load_end}"
    )
    print(f"FLOPs: {FLOP_CONVENTION}.")
    print(
        f"limit: {peak_name} {peak:.1f} GFLOP/s measured above; ms at peak = FLOPs / peak; "
        "gap = ms - ms at peak"
    )
    print_roofline(rows, total, gaps, peak_name, peak)
    for b in blocks:
        if not b["agree"]:
            print(
                f"note: FLOPs of module stages {b['stages']} ({b['by_module']}) differ from the "
                f"scopes {b['rows']} ({b['by_scope']}): a module now runs in another scope"
            )
    # The tracer drops values that reach no output: in eval, the predictions of every decoder
    # layer but the last are computed and then unused. Same shapes as the last: D - 1 times it.
    dead_layers = model.transformer.decoder.num_layers - 1
    dead_flops = dead_layers * next(r["flops"] for r in rows if r["stage"] == "heads")
    if dead_layers:
        print(
            f"not in the FLOPs: the unused predictions of decoder layers 0..{dead_layers - 1}, "
            f"~{dead_flops / 1e9:.3f} GFLOP ({dead_layers} x the heads row; the tracer drops "
            "values that reach no output)"
        )
    unsupported = ", ".join(f"{k} x{v}" for k, v in sorted(counted["unsupported"].items()))
    print(f"not counted (no FLOP handle): {unsupported or 'none'}")
    return {
        "image_size": [h, w],
        "batch_size": 1,
        "dtype": args.dtype,
        "peak": {"name": peak_name, "gflops": peak},
        "flop_convention": FLOP_CONVENTION,
        "rows": rows,
        "total": total,
        "gap_order": gaps,
        "fvcore_total": counted["total"],
        "by_module_stage_flops": counted["by_stage"],
        "module_stages": [s for s, _ in MODULE_STAGES],
        "blocks": blocks,
        "uncounted_unused_heads_flops": dead_flops,
        "unsupported_ops": counted["unsupported"],
        "measurement": measured,
        "num_threads": torch.get_num_threads(),
    }
