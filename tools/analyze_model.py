#!/usr/bin/env python
"""Count a DETA model's FLOPs and parameters, or print its structure (Detectron2's
``tools/analyze_model.py`` for this plugin).

Examples::

    python tools/analyze_model.py --tasks flop parameter \\
        --config-file configs/deta_R_50_5scale_12ep.yaml
    python tools/analyze_model.py --tasks flop --size 640 960 --config-file CONFIG
    python tools/analyze_model.py --tasks flop --dataset --num-inputs 10 --config-file CONFIG
    python tools/analyze_model.py --tasks structure --config-file CONFIG MODEL.DETA.NUM_CLASSES 91

Tasks (one or more):

* ``parameter``: fvcore's per-module parameter table down to ``--max-depth``, and the total.
* ``flop``: fvcore's ``FlopCountAnalysis`` of the model in eval mode, per stage (backbone, input
  projection, encoder, two-stage proposals, decoder, heads, the rest) and per operator, averaged
  over ``--num-inputs`` images of batch size 1. One fused multiply-add counts as one flop, as in
  fvcore and Detectron2. The inputs are a synthetic image of ``--size H W`` (default 800 1333:
  a COCO image after the test resize), or ``--sample-image FILE``, or the first images of
  the config's ``DATASETS.TEST[0]`` (``--dataset``) through the test mapper.
* ``structure``: ``print(model)``.

The model is built with random weights (``MODEL.WEIGHTS`` is loaded when set; FLOPs and parameters
do not depend on it) on ``MODEL.DEVICE cpu`` unless the overrides name another device. Everything
printed also goes to ``--output`` (default ``output/analyze_model``): ``report.txt`` and
``report.json``. The counting itself (op handles, stage mapping) is ``deta.utils.flops``, which
``tools/benchmark.py roofline`` shares.
"""

import argparse
import json
import os
import statistics
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from fvcore.nn import parameter_count, parameter_count_table

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

import deta  # noqa: F401  registers DETA and the datasets
from deta.checkpoint import DetaCheckpointer, write_text_atomic
from deta.data import DetaDatasetMapper
from deta.utils.cli import add_config_args, build_cfg, default_output, fail, run_main
from deta.utils.flops import STAGES, count_flops, flop_handles, stage_of

__all__ = [
    "STAGES",
    "count_flops",
    "flop_handles",
    "main",
    "parse_args",
    "stage_of",
    "synthetic_images",
]

TASKS = ("flop", "parameter", "structure")


def synthetic_images(n: int, h: int, w: int) -> List[torch.Tensor]:
    # Seeded uniform noise: FLOPs depend on the size only, but the NMS inside runs on real scores.
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (3, h, w), generator=g).float() for _ in range(n)]


def _mapped_images(cfg, dicts: List[Dict], what: str) -> List[torch.Tensor]:
    mapper = DetaDatasetMapper(cfg, is_train=False)
    images = []
    for d in dicts:
        try:
            images.append(mapper(d)["image"].float())
        except Exception as e:  # the mapper's errors name the image
            fail(f"{what}: {e}")
    return images


def _input_images(args, cfg) -> List[torch.Tensor]:
    if args.sample_image:
        if not os.path.isfile(args.sample_image):
            fail(f"--sample-image {args.sample_image}: no such file")
        dicts = [{"file_name": args.sample_image, "image_id": 0}]
        return _mapped_images(cfg, dicts * args.num_inputs, f"--sample-image {args.sample_image}")
    if args.dataset:
        if not cfg.DATASETS.TEST:
            fail("--dataset: the config has no DATASETS.TEST")
        name = cfg.DATASETS.TEST[0]
        if name not in DatasetCatalog.list():
            fail(f"--dataset: DATASETS.TEST[0] {name!r} is not a registered dataset")
        try:
            dicts = DatasetCatalog.get(name)[: args.num_inputs]
        except Exception as e:  # e.g. COCO registered but not downloaded
            fail(f"--dataset {name}: {type(e).__name__}: {e}")
        if not dicts:
            fail(f"--dataset {name}: no images")
        return _mapped_images(cfg, dicts, f"--dataset {name}")
    return synthetic_images(args.num_inputs, *args.size)


def _gflops(x: float) -> str:
    return f"{x / 1e9:.3f}"


def _flop_task(args, images: List[torch.Tensor], model) -> Tuple[str, Dict]:
    runs = [count_flops(model, image) for image in images]
    totals = [r["total"] for r in runs]
    mean = statistics.fmean(totals)
    std = statistics.pstdev(totals) if len(totals) > 1 else 0.0
    stages = {s: statistics.fmean(r["by_stage"][s] for r in runs) for s, _ in STAGES}
    operators = Counter()
    for r in runs:
        operators.update(r["by_operator"])
    operators = {k: v / len(runs) for k, v in operators.most_common()}
    unsupported = Counter()
    for r in runs:
        unsupported.update(r["unsupported"])
    sizes = sorted({tuple(image.shape[-2:]) for image in images})

    lines = [
        f"FLOPs of {len(images)} input(s) of size(s) {', '.join(f'{h}x{w}' for h, w in sizes)}, "
        "batch size 1, averaged (fvcore counts one fused multiply-add as one flop).",
        "",
        f"{'stage':<11} {'GFLOPs':>9} {'share':>6}  modules",
    ]
    for stage, what in STAGES:
        share = 100 * stages[stage] / mean if mean else 0.0
        lines.append(f"{stage:<11} {_gflops(stages[stage]):>9} {share:5.1f}%  {what}")
    lines += [f"{'total':<11} {_gflops(mean):>9}" + (f" ± {_gflops(std)}" if std else ""), ""]
    per_op = ", ".join(f"{k} {_gflops(v)}" for k, v in operators.items())
    lines.append(f"GFLOPs per operator: {per_op}")
    lines.append(f"\nGFLOPs per module (first input, depth <= {args.max_depth}):")
    for name, flops in runs[0]["by_module"].items():
        if flops and name.count(".") < args.max_depth:
            lines.append(f"  {name:<44} {_gflops(flops):>9}")
    lines.append(
        "\nUnsupported ops (not counted; elementwise ops and cheap reductions are counted as 0): "
        + (", ".join(f"{k} x{v // len(runs)}" for k, v in sorted(unsupported.items())) or "none")
    )
    report = {
        "num_inputs": len(images),
        "image_sizes": [list(s) for s in sizes],
        "total_flops": mean,
        "total_flops_std": std,
        "total_gflops": mean / 1e9,
        "by_stage_flops": stages,
        "by_operator_flops": operators,
        "by_module_flops_first_input": runs[0]["by_module"],
        "unsupported_ops": {k: v // len(runs) for k, v in sorted(unsupported.items())},
        "flop_convention": "one fused multiply-add counts as one flop (fvcore)",
    }
    return "\n".join(lines), report


def _parameter_task(args, model) -> Tuple[str, Dict]:
    counts = parameter_count(model)
    total = counts[""]
    # Frozen ones (FREEZE_AT: the stem and res2) are in the total; papers usually quote trainable.
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    table = parameter_count_table(model, max_depth=args.max_depth)
    text = f"{table}\n\nTotal parameters: {total:,} ({trainable:,} trainable)"
    by_module = {k: v for k, v in counts.items() if k and k.count(".") < args.max_depth}
    return text, {"total": total, "trainable": trainable, "by_module": by_module}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks", nargs="+", choices=TASKS, required=True, help="one or more of " + " ".join(TASKS)
    )
    parser.add_argument("--num-inputs", type=int, default=1, help="images to count FLOPs on")
    parser.add_argument(
        "--max-depth", type=int, default=3, help="module depth of the parameter and FLOP tables"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--size",
        nargs=2,
        type=int,
        default=(800, 1333),
        metavar=("H", "W"),
        help="synthetic input size, as after the test resize (default 800 1333)",
    )
    source.add_argument("--sample-image", metavar="FILE", help="an image, through the test mapper")
    source.add_argument(
        "--dataset",
        action="store_true",
        help="the first --num-inputs images of DATASETS.TEST[0], through the test mapper",
    )
    parser.add_argument("--output", metavar="DIR", help="default: output/analyze_model")
    add_config_args(parser)
    args = parser.parse_args(argv)
    if args.num_inputs < 1:
        parser.error("--num-inputs must be at least 1")
    if min(args.size) < 1:
        parser.error("--size must be positive")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    opts = list(args.opts)
    if opts and opts[0] == "--":
        opts = opts[1:]
    # FLOPs and parameters do not depend on the device: CPU unless the overrides say otherwise.
    cfg = build_cfg(args.config_file, ["MODEL.DEVICE", "cpu", *opts])
    # Inputs first: a bad image or dataset fails before the (slow) model build.
    images = _input_images(args, cfg) if "flop" in args.tasks else []
    torch.manual_seed(0)
    model = build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        try:
            DetaCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        except Exception as e:  # missing or unreadable file: one line
            fail(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS}: {type(e).__name__}: {e}")
    model.eval()

    sections, report = [], {"config_file": args.config_file, "opts": opts}
    for task in dict.fromkeys(args.tasks):  # in the order given, once each
        if task == "flop":
            text, report["flop"] = _flop_task(args, images, model)
        elif task == "parameter":
            text, report["parameter"] = _parameter_task(args, model)
        else:
            text = str(model)
        sections.append(f"== {task} ==\n{text}")
        print(sections[-1], flush=True)

    output = default_output("analyze_model", args.output)
    os.makedirs(output, exist_ok=True)
    write_text_atomic(os.path.join(output, "report.txt"), "\n\n".join(sections) + "\n")
    write_text_atomic(os.path.join(output, "report.json"), json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {os.path.join(output, 'report.txt')} and report.json")
    return 0


if __name__ == "__main__":
    run_main(main)
