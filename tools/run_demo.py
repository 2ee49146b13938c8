#!/usr/bin/env python
"""``make demo``: train a small DETA on CPU on synthetic shapes, evaluate it, draw pictures.

Steps (each reused when already done, so a rerun with a finished model only re-evaluates):

1. write the synthetic dataset (``deta.data.DEMO_DATA``) to ``<output>/datasets/deta_synthetic``;
2. train ``configs/deta_R_18_synthetic_cpu.yaml`` with ``train_net.py --resume`` (so an
   interrupted run continues), logging progress and ETA;
3. evaluate ``model_final.pth`` with ``COCOEvaluator`` on ``deta_synthetic_val``;
4. draw predictions on val images and the training curves.

Outputs (``--output``, default ``output/demo``)::

    model/                  train_net.py output: model_final.pth, metrics.json, log.txt, config
    eval/                   coco_instances_results.json of step 3
    predictions.png         predictions on 12 val images (dashed white: ground truth)
    curves.png              loss terms, learning rate and AP against the iteration
    summary.json            AP table, score statistics and timings

Run ``python tools/run_demo.py --retrain`` to train again from scratch. Trailing ``KEY VALUE``
pairs override the config (for example ``SOLVER.MAX_ITER 200`` for a quick look).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from detectron2.utils.logger import setup_logger

import deta  # noqa: F401  registers DETA and the synthetic datasets
from deta import DetaDatasetMapper
from deta.data import DEMO_DATA, generate_synthetic_coco, register_deta_synthetic
from deta.engine import DetaCheckpointer
from deta.evaluation import build_coco_evaluator
from deta.utils.cli import build_cfg, default_output
from deta.utils.plot_metrics import plot_metrics
from deta.utils.visualization import draw_prediction_grid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "deta_R_18_synthetic_cpu.yaml")
VAL = "deta_synthetic_val"
AP_GOAL = 30.0


def _train(model_dir: str, datasets_dir: str, opts: List[str]) -> None:
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", CONFIG]
    cmd += ["--resume", "OUTPUT_DIR", model_dir, *opts]
    env = dict(os.environ, DETECTRON2_DATASETS=datasets_dir)
    if "OMP_WAIT_POLICY" not in env:
        # libgomp's threads spin ~300k times at every barrier before they sleep: fastest on an
        # idle machine, up to 5x slower as soon as another job shares the cores. Passive waiting
        # avoids that but cost 14-35% per step on an idle machine. 1000 spins kept most of both:
        # idle 0.44-0.46 s/it (default 0.40-0.47, passive 0.49-0.60), beside one busy process
        # 1.10 s/it (default 1.45, passive 0.99-1.01), measured on 2 cores (docs/TRAINING.md).
        env.setdefault("GOMP_SPINCOUNT", "1000")
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=True, cwd=REPO)


def _load_cfg(model_dir: str, opts: List[str]):
    weights = os.path.join(model_dir, "model_final.pth")
    return build_cfg(CONFIG, ["OUTPUT_DIR", model_dir, *opts, "MODEL.WEIGHTS", weights])


def _xyxy(boxes: List[List[float]], mode: BoxMode) -> Boxes:
    converted = [BoxMode.convert(b, mode, BoxMode.XYXY_ABS) for b in boxes]
    return Boxes(torch.tensor(converted, dtype=torch.float32).reshape(-1, 4))


def score_statistics(predictions: List[Dict], dataset_name: str) -> Dict[str, float]:
    """Scores of true positives (IoU >= 0.5, same class, greedy by score) vs. all detections.

    Documents how low DETA's sigmoid focal-loss scores are (tools/demo.py threshold advice).
    """
    by_image: Dict[int, List[Dict]] = {}
    for p in predictions:
        by_image.setdefault(p["image_id"], []).append(p)
    # Results carry dataset category ids, dataset dicts contiguous ones.
    to_contiguous = MetadataCatalog.get(dataset_name).thing_dataset_id_to_contiguous_id
    tp_scores = []
    num_gt = 0
    for record in DatasetCatalog.get(dataset_name):
        anns = record.get("annotations", [])
        num_gt += len(anns)
        preds = sorted(by_image.get(record["image_id"], []), key=lambda p: -p["score"])
        if not anns or not preds:
            continue
        gt = _xyxy([a["bbox"] for a in anns], anns[0]["bbox_mode"])
        iou = pairwise_iou(_xyxy([p["bbox"] for p in preds], BoxMode.XYWH_ABS), gt)
        taken = set()
        for i, p in enumerate(preds):
            for j in iou[i].argsort(descending=True).tolist():
                same_class = anns[j]["category_id"] == to_contiguous[p["category_id"]]
                if iou[i, j] >= 0.5 and j not in taken and same_class:
                    taken.add(j)
                    tp_scores.append(p["score"])
                    break
    tp = np.array(tp_scores) if tp_scores else np.zeros(1)
    return {
        "num_gt": num_gt,
        "num_tp_iou50": len(tp_scores),
        "tp_score_median": float(np.median(tp)),
        "tp_fraction_above_0.3": float((tp >= 0.3).mean()),
        "tp_fraction_above_0.5": float((tp >= 0.5).mean()),
        "recall_at_0.3": float((tp >= 0.3).sum() / max(num_gt, 1)),
        "recall_at_0.5": float((tp >= 0.5).sum() / max(num_gt, 1)),
    }


def _evaluate(cfg, model, eval_dir: str):
    evaluator = build_coco_evaluator(cfg, VAL, eval_dir)
    loader = build_detection_test_loader(cfg, VAL, mapper=DetaDatasetMapper(cfg, is_train=False))
    results = inference_on_dataset(model, loader, evaluator)
    with open(os.path.join(eval_dir, "coco_instances_results.json")) as f:
        predictions = json.load(f)
    return results["bbox"], score_statistics(predictions, VAL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="folder (default: output/demo)")
    # The old spelling, hidden: existing commands keep working.
    parser.add_argument("--output-dir", dest="output", help=argparse.SUPPRESS)
    parser.add_argument("--retrain", action="store_true", help="discard the model, train again")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args()
    start = time.perf_counter()
    setup_logger(name="deta")
    setup_logger()  # detectron2's logger: evaluation progress and the AP table
    out = os.path.abspath(default_output("demo", args.output))
    datasets_dir, model_dir = os.path.join(out, "datasets"), os.path.join(out, "model")

    data = generate_synthetic_coco(os.path.join(datasets_dir, "deta_synthetic"), **DEMO_DATA)
    print(f"dataset: {data['root']} ({'written' if data['generated'] else 'reused'})")
    register_deta_synthetic(data["root"])

    if args.retrain and os.path.isdir(model_dir):
        shutil.rmtree(model_dir)
    final = os.path.join(model_dir, "model_final.pth")
    train_start = time.perf_counter()
    trained = not os.path.isfile(final)
    if trained:
        _train(model_dir, datasets_dir, args.opts)
    else:
        print(f"reusing {final} (pass --retrain to train again)")
    train_seconds = time.perf_counter() - train_start

    # This process's OpenMP already spins (the policy is read at import): one thread is immune.
    torch.set_num_threads(1)
    cfg = _load_cfg(model_dir, args.opts)
    model = build_model(cfg)
    DetaCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    bbox, scores = _evaluate(cfg, model, os.path.join(out, "eval"))
    grid = draw_prediction_grid(cfg, model, os.path.join(out, "predictions.png"))
    curves = plot_metrics(
        os.path.join(model_dir, "metrics.json"), os.path.join(out, "curves.png"), "DETA demo"
    )
    wall = time.perf_counter() - start

    print("\nbbox AP on deta_synthetic_val (COCO, IoU 0.50:0.95):")
    print("  " + "  ".join(f"{k}={v:.1f}" for k, v in bbox.items() if not k.startswith("AP-")))
    print("  per class: " + "  ".join(f"{k[3:]}={v:.1f}" for k, v in bbox.items() if "AP-" in k))
    print(
        f"scores of true positives (IoU>=0.5): median {scores['tp_score_median']:.2f}, "
        f"{100 * scores['tp_fraction_above_0.5']:.0f}% >= 0.5, "
        f"{100 * scores['tp_fraction_above_0.3']:.0f}% >= 0.3"
    )
    print(f"pictures: {grid}, {curves}")
    summary = {
        "bbox": bbox,
        "scores": scores,
        "trained": trained,
        "train_seconds": train_seconds,
        "wall_seconds": wall,
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    verdict = "meets" if bbox["AP"] >= AP_GOAL else "is BELOW"
    what = f"training {train_seconds:.0f} s" if trained else "model reused"
    print(
        f"DEMO RESULT: bbox AP {bbox['AP']:.1f} (AP50 {bbox['AP50']:.1f}) on {VAL}, "
        f"{verdict} the {AP_GOAL:.0f} AP goal; wall time {wall:.0f} s ({what})"
    )


if __name__ == "__main__":
    main()
