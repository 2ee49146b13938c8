#!/usr/bin/env python
"""Run a trained DETA on images and write them with the detected boxes drawn.

Example::

    python tools/demo.py --config-file configs/deta_R_18_synthetic_cpu.yaml \\
        --input datasets/deta_synthetic/val --output output/demo/vis \\
        --opts MODEL.WEIGHTS output/demo/model/model_final.pth

``--input`` takes image files, glob patterns or folders (every .jpg/.jpeg/.png/.bmp inside).
``--output`` is a folder (one ``<name>.png`` per input); with a single input it may also be a
file name ending in an image extension.

About ``--confidence-threshold``: DETA scores are per-class sigmoid probabilities trained with
the focal loss, not softmax probabilities. The focal loss keeps them low even for correct
detections, so thresholds that suit softmax detectors (0.5 and above) drop many true boxes; use
about 0.3. Measured on the demo model (tools/run_demo.py, 43.0 AP on the synthetic val split):
the true positives at IoU 0.5 had a median score of 0.50; 52% of them scored 0.5 or more and 81%
scored 0.3 or more (docs/TRAINING.md).

Images go through Detectron2's ``DefaultPredictor``, which resizes with ``ResizeShortestEdge``
(rounding the long side); the evaluation mapper truncates it like the official code, so boxes can
differ by a fraction of a pixel from ``train_net.py --eval-only``.
"""

import argparse
import glob
import os
from typing import List

from PIL import Image
from visualize_predictions import render_instances  # tools/ is on sys.path for scripts

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.engine import DefaultPredictor
from detectron2.utils.logger import setup_logger

import deta  # noqa: F401  registers DETA and the synthetic datasets
from deta import add_deta_config

__all__ = ["collect_inputs"]

_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def collect_inputs(inputs: List[str]) -> List[str]:
    """Expand files, glob patterns and folders into a sorted list of image paths."""
    paths: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            names = sorted(os.listdir(item))
            paths += [os.path.join(item, n) for n in names if n.lower().endswith(_EXTENSIONS)]
        elif os.path.isfile(item):
            paths.append(item)
        else:
            matches = sorted(glob.glob(os.path.expanduser(item)))
            if not matches:
                raise FileNotFoundError(f"--input {item!r}: no such file, folder or pattern")
            paths += matches
    return paths


def _output_path(output: str, path: str, single: bool) -> str:
    if single and output.lower().endswith(_EXTENSIONS):
        return output
    return os.path.join(output, os.path.splitext(os.path.basename(path))[0] + ".png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, help="the model's config")
    parser.add_argument("--input", nargs="+", required=True, help="images, globs or folders")
    parser.add_argument("--output", required=True, help="output folder (or file, one input)")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.3,
        help="smallest drawn score; DETA's sigmoid scores are low, see the module docstring",
    )
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE ...")
    args = parser.parse_args()
    setup_logger(name="deta")

    cfg = get_cfg()
    add_deta_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    predictor = DefaultPredictor(cfg)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")

    paths = collect_inputs(args.input)
    if not paths:
        raise FileNotFoundError(f"no images found in {args.input}")
    for path in paths:
        image_bgr = utils.read_image(path, format="BGR")  # DefaultPredictor takes BGR
        instances = predictor(image_bgr)["instances"].to("cpu")
        instances = instances[instances.scores >= args.confidence_threshold]
        drawn = render_instances(image_bgr[:, :, ::-1].copy(), instances, metadata)
        out_file = _output_path(args.output, path, single=len(paths) == 1)
        os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
        Image.fromarray(drawn).save(out_file)
        print(f"{path}: {len(instances)} detections >= {args.confidence_threshold:g} -> {out_file}")


if __name__ == "__main__":
    main()
