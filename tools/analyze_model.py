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
``report.json``.
"""

import argparse
import json
import os
import statistics
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from fvcore.nn import FlopCountAnalysis, parameter_count, parameter_count_table
from fvcore.nn.jit_handles import get_shape
from torch import nn

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

import deta  # noqa: F401  registers DETA and the datasets
from deta import fast_cpu
from deta.checkpoint import DetaCheckpointer, write_text_atomic
from deta.data import DetaDatasetMapper
from deta.utils.cli import add_config_args, build_cfg, default_output, fail, run_main

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

# Multiply-adds per channel of one sampled point of deformable attention: bilinear interpolation
# reads 4 neighbours and weighs each (4 MACs), then the attention weight scales the interpolated
# value into the head's sum (1 MAC). The per-point coordinate arithmetic does not scale with the
# channels and is left out. So one MSDA call costs N * Lq * M * L * P * D * (4 + 1).
BILINEAR_MACS = 4
ATTENTION_MACS = 1
# grid_sampler's interpolation_mode argument: 0 bilinear, 1 nearest, 2 bicubic (4x4 taps).
_GRID_SAMPLE_MACS = {0: 4, 1: 0, 2: 16}

# Elementwise ops and cheap reductions are counted as 0, as Detectron2's analysis does, so that
# the "unsupported" list shows only what might really be missing. aten::sum is here because its
# one use that matters (the attention-weighted sum of the PyTorch MSDA path) is charged to
# grid_sampler below.
_IGNORED_OPS = (
    "aten::add", "aten::add_", "aten::sub", "aten::rsub", "aten::mul", "aten::mul_",
    "aten::div", "aten::div_", "aten::neg", "aten::exp", "aten::log", "aten::pow", "aten::sqrt",
    "aten::rsqrt", "aten::sin", "aten::cos", "aten::sigmoid", "aten::sigmoid_", "aten::softmax",
    "aten::sum", "aten::cumsum", "aten::prod", "aten::max_pool2d", "aten::meshgrid", "aten::pad",
    "aten::constant_pad_nd", "aten::fill_", "aten::ones_like", "aten::lt", "aten::le",
    "aten::where", "aten::any", "aten::all", "aten::numel", "aten::resolve_conj",
    "aten::resolve_neg", "profiler::_record_function_enter_new",
    "profiler::_record_function_exit",
)  # fmt: skip

# (stage, description) in report order; stage_of() says which modules make up each.
STAGES = (
    ("backbone", "backbone"),
    ("neck", "input projection + position encoding"),
    ("encoder", "deformable encoder"),
    ("proposals", "two-stage proposals: enc_output, first-stage head, query init"),
    ("decoder", "deformable decoder layers"),
    ("heads", "per-decoder-layer class and box heads"),
    ("other", "ops outside these modules: preprocess, masks, level flattening, postprocess"),
)


def _msda_flop_jit(inputs, outputs) -> int:
    """``deta::ms_deform_attn_forward(value, shapes, starts, locations, weights, step)``."""
    n, _, m, d = get_shape(inputs[0])  # value (N, S, M, D)
    _, lq, _, levels, points, _ = get_shape(inputs[3])  # locations (N, Lq, M, L, P, 2)
    return n * lq * m * levels * points * d * (BILINEAR_MACS + ATTENTION_MACS)


def _grid_sample_flop_jit(inputs, outputs) -> int:
    """``grid_sampler(input, grid, mode, padding, align_corners)``: per output element.

    In DETA grid_sample is only the PyTorch MSDA path, whose output elements are exactly the
    (channel, sampled point) pairs, so it is charged the same 4 + 1 MACs as the compiled op: the
    weighted sum that follows is a mul and a sum, which count as 0.
    """
    mode = inputs[2].toIValue()
    macs = _GRID_SAMPLE_MACS.get(mode, BILINEAR_MACS) + ATTENTION_MACS
    numel = 1
    for s in get_shape(outputs[0]):  # (N * M, D, Lq, P)
        numel *= s
    return numel * macs


def flop_handles(deform_attn: bool = True) -> Dict[str, Optional[object]]:
    """fvcore op handles: the ignored ops, and the deformable-attention ones unless disabled
    (then the compiled op is unsupported and grid_sampler keeps fvcore's 4 per output)."""
    handles: Dict[str, Optional[object]] = {k: None for k in _IGNORED_OPS}
    if deform_attn:
        # The name the jit tracer records for the custom op (torch.library registration).
        handles["deta::ms_deform_attn_forward"] = _msda_flop_jit
        handles["aten::grid_sampler"] = _grid_sample_flop_jit
        handles["aten::grid_sampler_2d"] = _grid_sample_flop_jit
    return handles


class _Traced(nn.Module):
    """The model with tensor inputs and outputs, which the jit tracer needs.

    The model itself is the child ``model``, so fvcore's module names are ``model.<name>``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        (out,) = self.model([{"image": image}])
        inst = out["instances"]
        return inst.pred_boxes.tensor, inst.scores, inst.pred_classes


def stage_of(name: str, num_decoder_layers: int) -> Optional[str]:
    """The stage of a module name relative to DETA (``transformer.encoder``, ...), or None for
    modules that contain several stages (the model, ``transformer``, ``transformer.decoder``)."""
    parts = name.split(".")
    top = parts[0]
    if top == "backbone":
        return "backbone"
    if top in ("input_proj", "position_embedding"):
        return "neck"
    if top != "transformer" or len(parts) < 2:
        return None
    child = parts[1]
    if child == "encoder":
        return "encoder"
    if child in ("enc_output", "enc_output_norm", "pos_trans", "pos_trans_norm"):
        return "proposals"
    if child in ("pix_trans", "pix_trans_norm"):
        return "proposals"
    if child != "decoder" or len(parts) < 3:
        return None
    if parts[2] == "layers":
        return "decoder"
    if parts[2] in ("class_embed", "bbox_embed") and len(parts) >= 4:
        # Head index D is the first-stage (encoder) head; 0..D-1 are the decoder's. The heads
        # are shared with the meta-architecture, and fvcore names them by this first path.
        return "proposals" if int(parts[3]) == num_decoder_layers else "heads"
    return None


def _by_stage(by_module: Dict[str, int], total: int, num_decoder_layers: int) -> Dict[str, int]:
    stages = Counter({s: 0 for s, _ in STAGES})
    for name, flops in by_module.items():
        if not name.startswith("model."):
            continue
        rel = name[len("model.") :]
        parent = rel.rsplit(".", 1)[0] if "." in rel else ""
        stage = stage_of(rel, num_decoder_layers)
        # Count each module once: at the outermost name that has a stage.
        if stage is not None and (not parent or stage_of(parent, num_decoder_layers) is None):
            stages[stage] += flops
    stages["other"] = total - sum(v for k, v in stages.items() if k != "other")
    return dict(stages)


def count_flops(model: nn.Module, image: torch.Tensor, deform_attn: bool = True) -> Dict:
    """FLOPs of one forward of ``model`` (eval mode) on one CHW image.

    Returns:
        dict: ``total``, ``by_stage``, ``by_operator``, ``by_module`` (names relative to the
        model), ``unsupported`` ({op: count}).
    """
    was_training = model.training
    model.eval()
    analysis = FlopCountAnalysis(_Traced(model), (image.to(model.device),))
    analysis.set_op_handle(**flop_handles(deform_attn))
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    # The CPU fast paths call oneDNN ops fvcore cannot count; they and nn.MultiheadAttention's
    # fused kernel are only taken without autograd, so trace the plain modules with it on.
    try:
        with fast_cpu.disabled(), torch.enable_grad():
            total = analysis.total()
            by_module = analysis.by_module()
    finally:
        model.train(was_training)
    num_layers = model.transformer.decoder.num_layers
    return {
        "total": total,
        "by_stage": _by_stage(by_module, total, num_layers),
        "by_operator": dict(analysis.by_operator()),
        "by_module": {k[6:]: v for k, v in by_module.items() if k.startswith("model.")},
        "unsupported": dict(analysis.unsupported_ops()),
    }


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
