#!/usr/bin/env python
"""Export a DETA model: ONNX (``model.onnx``) or a ``torch.export`` program (``model.pt2``).

    python tools/deploy/export_model.py --config-file configs/deta_R_18_synthetic_cpu.yaml \\
        --format onnx --output output/export MODEL.WEIGHTS output/demo/model/model_final.pth

The graph takes one image, float32 (3, H, W) in INPUT.FORMAT order with 0-255 values, already
resized as the test mapper does; H and W are dynamic. It returns ``boxes`` (N, 4) xyxy in that
image's pixels, ``scores`` (N,) and ``classes`` (N,) int64, after the model's own NMS.
"""

import argparse
import os
import time

import numpy as np
import torch

from detectron2.data import transforms as T
from detectron2.modeling import build_model

from deta.data import build_deta_augmentations
from deta.data.images import ImageReadError, read_image
from deta.export.exporter import FORMATS, ExportError, export_onnx, export_program
from deta.utils.cli import add_config_args, build_cfg, default_output, fail, run_main
from deta.utils.predictor import PredictorError, load_weights

_FILES = {"onnx": "model.onnx", "torch_export": "model.pt2"}


def sample_image(cfg, path=None) -> torch.Tensor:
    """(3, H, W) float32 sample: ``path`` resized as the test mapper does, else random pixels
    at the test size of a 4:3 image (the values do not matter for tracing)."""
    if path:
        try:
            image = read_image(path, format=cfg.INPUT.FORMAT)
        except (OSError, ImageReadError) as e:
            fail(f"--sample-image {path}: {e}")
    else:
        short = cfg.INPUT.MIN_SIZE_TEST
        image = np.zeros((short, short * 4 // 3, 3), np.uint8)
    aug = T.AugInput(image)
    T.AugmentationList(build_deta_augmentations(cfg, is_train=False)[0])(aug)
    tensor = torch.as_tensor(np.ascontiguousarray(aug.image.transpose(2, 0, 1))).float()
    if not path:
        tensor = torch.rand(tensor.shape, generator=torch.Generator().manual_seed(0)) * 255
    return tensor


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--output", help="output folder (default output/export)")
    parser.add_argument("--sample-image", help="an image to trace with (default: random pixels)")
    add_config_args(parser)
    args = parser.parse_args(argv)
    if args.format == "torchscript":
        fail(
            "--format torchscript is not supported: TorchScript cannot keep the image size "
            "dynamic through the data-dependent NMS steps (tracing fixes one size, scripting "
            "does not accept the model). Use --format torch_export (a .pt2 for "
            "torch.export.load) or --format onnx."
        )
    cfg = build_cfg(args.config_file, ["MODEL.DEVICE", "cpu", *args.opts])
    out_dir = default_output("export", args.output)
    os.makedirs(out_dir, exist_ok=True)
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        try:
            load_weights(model, cfg.MODEL.WEIGHTS)
        except PredictorError as e:
            fail(str(e))
    else:
        print("MODEL.WEIGHTS is empty: exporting random weights")
    image = sample_image(cfg, args.sample_image)
    start = time.perf_counter()
    try:
        program = export_program(model, image)
        path = os.path.join(out_dir, _FILES[args.format])
        if args.format == "onnx":
            export_onnx(program, path)
        else:
            torch.export.save(program, path)
    except ExportError as e:
        fail(str(e))
    print(f"exported {path} in {time.perf_counter() - start:.1f} s")
    if args.format == "onnx":
        print(
            "run it with ONNX Runtime:\n"
            "  import onnxruntime as ort\n"
            f"  sess = ort.InferenceSession({path!r}, providers=['CPUExecutionProvider'])\n"
            "  boxes, scores, classes = sess.run(None, {'image': image_chw_float32})"
        )
    else:
        print(
            "run it with PyTorch:\n"
            "  import torch, deta.export  # registers the custom ops\n"
            f"  program = torch.export.load({path!r}).module()\n"
            "  boxes, scores, classes = program(image_chw_float32)"
        )


if __name__ == "__main__":
    run_main(main)
