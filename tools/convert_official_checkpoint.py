#!/usr/bin/env python
"""Convert an official DETA checkpoint (jozhang97/DETA ``.pth``) for this project.

    python tools/convert_official_checkpoint.py --source adet_checkpoint0011.pth \\
        --output deta_R_50_5scale_12ep.pth [--config-file configs/deta_R_50_5scale_12ep.yaml] \\
        [KEY VALUE ...]

The result loads with ``DetectionCheckpointer`` (``MODEL.WEIGHTS deta.pth``) with zero missing and
zero unexpected keys: the conversion is checked against the model built from ``--config-file``
(``--config`` is an alias) and the trailing ``KEY VALUE`` overrides before anything is written,
and the file is written atomically (temporary file, then rename).

Class heads indexed by raw category id are sliced to Detectron2's contiguous classes unless
``--keep-raw-ids``: 91-way COCO to 80, 366-way Objects365 to 365 (kept as 366, Detectron2's class c
would read the logit of raw id c, not c + 1). The first-stage head keeps its objectness logit
(index 0). Other sizes are kept as they are.
"""

import argparse
import os
import sys

import torch

from detectron2.modeling import build_model

import deta  # noqa: F401  registers DETA and its backbones
from deta.checkpoint import (
    RAW_ID_HEADS,
    ConversionError,
    check_against_model,
    convert_official_state_dict,
    load_official_checkpoint,
    save_atomic,
)
from deta.utils.cli import add_config_args, build_cfg, run_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIGS = {
    "resnet": os.path.join(REPO, "configs", "deta_R_50_5scale_12ep.yaml"),
    "swin": os.path.join(REPO, "configs", "deta_swin_L_5scale_24ep.yaml"),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", required=True, help="official checkpoint (.pth)")
    p.add_argument("--output", required=True, help="converted checkpoint to write")
    p.add_argument(
        "--keep-raw-ids",
        "--keep-coco-ids",
        dest="keep_raw_ids",
        action="store_true",
        help="keep 91/366-way heads indexed by raw category ids (NUM_CLASSES 91/366)",
    )
    # Not required: the default config depends on the checkpoint's backbone, known only once
    # the file is read (see convert()).
    add_config_args(p, required=False)
    return p.parse_args(argv)


def num_classes_of(state):
    return state["class_embed.0.weight"].shape[0] if "class_embed.0.weight" in state else None


def _strip_separator(opts):
    # build_cfg drops a leading "--" only at the front of the list it gets.
    return opts[1:] if opts and opts[0] == "--" else list(opts or [])


def convert(args) -> dict:
    """Load, convert and validate; returns the checkpoint dict that would be written."""
    ckpt = load_official_checkpoint(args.source)
    official = ckpt["model"]
    classes = num_classes_of(official)
    state = convert_official_state_dict(
        official, slice_classes=classes in RAW_ID_HEADS and not args.keep_raw_ids
    )
    backbone = "swin" if any(k.startswith("backbone.patch_embed") for k in state) else "resnet"
    config = args.config_file or DEFAULT_CONFIGS[backbone]
    # The user's overrides come last so they can change the architecture being checked.
    fixed = ["MODEL.DEVICE", "cpu", "MODEL.DETA.NUM_CLASSES", str(num_classes_of(state))]
    cfg = build_cfg(config, [*fixed, *_strip_separator(args.opts)])
    model = build_model(cfg)
    check_against_model(state, model)
    epoch = ckpt.get("epoch")
    return {
        "model": state,
        "__author__": "deta/tools/convert_official_checkpoint.py",
        "official_epoch": epoch,
        "source": os.path.basename(args.source),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        out = convert(args)
    except (ConversionError, FileNotFoundError) as e:
        print(f"convert_official_checkpoint: {e}", file=sys.stderr)
        return 1
    save_atomic(out, args.output)
    print(
        f"wrote {args.output}: {len(out['model'])} tensors, "
        f"{num_classes_of(out['model'])} classes, loads with 0 missing / 0 unexpected keys"
    )
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    run_main(main)
