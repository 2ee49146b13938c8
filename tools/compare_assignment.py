#!/usr/bin/env python
"""Reproduce the paper's central claim in miniature: IoU assignment + NMS converges faster.

Trains the same configuration several times with the same seed, data order and iteration budget,
switching only the assignment (NMS at test follows the second-stage assignment, as in the
official code):

- ``deta``: both IoU assigners (many-to-one), NMS post-process;
- ``hungarian``: the Improved Deformable DETR baseline (one-to-one everywhere, top-k);
- ``stage1``: IoU assignment for the first stage only;
- ``stage2``: IoU assignment for the decoder only (and NMS).

Each run is evaluated every ``--eval-period`` iterations; the tool writes ``table.md``,
``results.json`` and ``ap_vs_iteration.png`` to the ``--output`` folder (default
``output/compare_assignment``)::

    python tools/compare_assignment.py                          # the CPU miniature (synthetic data)
    python tools/compare_assignment.py --config-file configs/deta_R_50_5scale_12ep.yaml \\
        --num-gpus 8 --max-iter 88716 --eval-period 7393 MODEL.WEIGHTS weights/R-50.pth

Runs resume where they stopped, so an interrupted comparison continues.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from deta.checkpoint import load_weights_only  # noqa: E402
from deta.data import DEMO_DATA, generate_synthetic_coco  # noqa: E402
from deta.utils.cli import build_cfg, default_output, fail, run_main  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {
    # name: (ASSIGN_FIRST_STAGE, ASSIGN_SECOND_STAGE, label)
    "deta": (True, True, "DETA: IoU assignment (both stages) + NMS"),
    "hungarian": (False, False, "Improved Deformable DETR: Hungarian, no NMS"),
    "stage1": (True, False, "IoU assignment in stage 1 only"),
    "stage2": (False, True, "IoU assignment in stage 2 only (+ NMS)"),
}
METRICS = ("AP", "AP50", "AP75")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config-file", default=os.path.join(REPO, "configs", "deta_R_18_synthetic_cpu.yaml")
    )
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--max-iter", type=int, default=600)
    p.add_argument("--eval-period", type=int, default=150)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--num-gpus", type=int, default=1)
    p.add_argument("--output", default=None, help="folder (default: output/compare_assignment)")
    # The old spelling, hidden: existing commands keep working.
    p.add_argument("--output-dir", dest="output", help=argparse.SUPPRESS)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run")
    return p.parse_args(argv)


def train_variant(args, name: str, env: Dict[str, str]) -> str:
    first, second, _ = VARIANTS[name]
    out = os.path.join(args.output, name)
    cmd = [
        sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", args.config_file,
        "--resume", "--num-gpus", str(args.num_gpus),
        "OUTPUT_DIR", out, "SEED", str(args.seed),
        "SOLVER.MAX_ITER", str(args.max_iter), "TEST.EVAL_PERIOD", str(args.eval_period),
        "SOLVER.CHECKPOINT_PERIOD", str(args.eval_period),
        "MODEL.DETA.ASSIGN_FIRST_STAGE", str(first), "MODEL.DETA.ASSIGN_SECOND_STAGE", str(second),
        "MODEL.DETA.NMS_ON_TEST", str(second), *args.opts,
    ]  # fmt: skip
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=True, cwd=REPO)
    return out


def read_ap_curve(output_dir: str, max_iter: int) -> List[Dict[str, float]]:
    """Evaluation points of a run's metrics.json: iteration (1-based) and bbox AP/AP50/AP75."""
    points = {}
    with open(os.path.join(output_dir, "metrics.json")) as f:
        for line in f:
            row = json.loads(line)
            if "bbox/AP" in row:
                # Periodic evals are logged at the 0-based iteration, the final one at max_iter.
                it = min(row["iteration"] + 1, max_iter)
                points[it] = {"iteration": it, **{m: row[f"bbox/{m}"] for m in METRICS}}
    return [points[k] for k in sorted(points)]


def write_report(curves: Dict[str, List[Dict]], out_dir: str, seconds: Dict[str, float]) -> str:
    iterations = sorted({p["iteration"] for c in curves.values() for p in c})
    lines = ["| variant | " + " | ".join(f"it {i}: AP / AP50 / AP75" for i in iterations) + " |"]
    lines.append("| --- |" + " --- |" * len(iterations))
    for name, curve in curves.items():
        by_it = {p["iteration"]: p for p in curve}
        cells = [
            " / ".join(f"{by_it[i][m]:.1f}" for m in METRICS) if i in by_it else "–"
            for i in iterations
        ]
        lines.append(f"| {name} ({seconds[name]:.0f} s) | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(table)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({"curves": curves, "train_seconds": seconds}, f, indent=1)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, curve in curves.items():
        ax.plot(
            [p["iteration"] for p in curve],
            [p["AP"] for p in curve],
            marker="o",
            label=VARIANTS[name][2],
        )
    ax.set_xlabel("iteration")
    ax.set_ylabel("bbox AP (val)")
    ax.set_title("IoU assignment vs. Hungarian matching, same budget and seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "ap_vs_iteration.png"), dpi=120)
    plt.close(fig)
    return table


def main(argv=None) -> None:
    args = parse_args(argv)
    # The config, the overrides and MODEL.WEIGHTS are checked before the dataset is written and
    # the first run starts, so a bad one stops in one line (the runs would each fail on it).
    weights = build_cfg(args.config_file, args.opts).MODEL.WEIGHTS
    if weights and "://" not in weights:  # URLs and Detectron2's .pkl are left to the runs
        if not weights.endswith((".pkl", ".pyth")):
            load_weights_only(weights)
        elif not os.path.isfile(weights):
            fail(f"MODEL.WEIGHTS {weights}: no such file")
    args.output = os.path.abspath(default_output("compare_assignment", args.output))
    os.makedirs(args.output, exist_ok=True)
    env = dict(os.environ)
    if "synthetic" in os.path.basename(args.config_file):
        datasets = os.path.join(args.output, "datasets")
        generate_synthetic_coco(os.path.join(datasets, "deta_synthetic"), **DEMO_DATA)
        env["DETECTRON2_DATASETS"] = datasets
    curves, seconds = {}, {}
    for name in args.variants:
        start = time.perf_counter()
        out = train_variant(args, name, env)
        seconds[name] = time.perf_counter() - start
        curves[name] = read_ap_curve(out, args.max_iter)
    print(write_report(curves, args.output, seconds))
    print(f"wrote {args.output}/table.md, results.json, ap_vs_iteration.png")


if __name__ == "__main__":
    run_main(main)
