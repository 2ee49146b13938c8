#!/usr/bin/env python
"""Draw a trained DETA's predictions on dataset images as one grid PNG.

Each cell is one image of the dataset with the predictions at or above the score threshold drawn
by Detectron2's ``Visualizer`` (class name and score), and the ground-truth boxes as dashed white
outlines (``deta.utils.visualization.draw_prediction_grid``). Images are chosen evenly over the
dataset, so reruns show the same ones.

Example::

    python tools/visualize_predictions.py --config-file configs/deta_R_18_synthetic_cpu.yaml \\
        --output output/demo MODEL.WEIGHTS output/demo/model/model_final.pth
"""

import argparse
import os
from typing import Optional, Sequence

import deta  # noqa: F401  registers DETA and the synthetic datasets
from deta.utils.cli import add_config_args, build_cfg, default_output, fail, run_main
from deta.utils.predictor import BatchPredictor, PredictorError
from deta.utils.visualization import draw_prediction_grid


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="folder for predictions.png (default: output/visualize_predictions)",
    )
    parser.add_argument("--dataset", default=None, help="default: the config's DATASETS.TEST[0]")
    parser.add_argument("--num-images", type=int, default=12)
    parser.add_argument("--confidence-threshold", type=float, default=0.3)
    args = parser.parse_args(argv)
    cfg = build_cfg(args.config_file, args.opts)
    try:  # the predictor's loader turns a missing or broken weights file into one line
        model = BatchPredictor(cfg).model
    except PredictorError as e:
        fail(str(e))
    output = os.path.join(default_output("visualize_predictions", args.output), "predictions.png")
    out = draw_prediction_grid(
        cfg, model, output, args.dataset, args.num_images, args.confidence_threshold
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    run_main(main)
