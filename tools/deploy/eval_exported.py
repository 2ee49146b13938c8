#!/usr/bin/env python
"""COCO evaluation of an exported model (``model.onnx`` in ONNX Runtime, or ``model.pt2``).

    python tools/deploy/eval_exported.py --model output/export/model.onnx \\
        --config-file configs/deta_R_18_synthetic_cpu.yaml [--dataset deta_synthetic_val]

Images go through the config's test mapper; the exported boxes (in the resized image) are
scaled to the original image size as the PyTorch model does, and ``COCOEvaluator`` scores them.
"""

import argparse
import os
import time

import torch

from detectron2.data import build_detection_test_loader
from detectron2.structures import Boxes, Instances
from detectron2.utils.logger import setup_logger

from deta.data import DetaDatasetMapper
from deta.evaluation import build_coco_evaluator
from deta.utils.cli import add_config_args, build_cfg, default_output, fail, run_main


def load_runner(path: str):
    """A function (3, H, W) float32 tensor -> (boxes, scores, classes) tensors."""
    if not os.path.isfile(path):
        fail(f"--model {path}: no such file")
    if path.endswith(".onnx"):
        try:
            import onnxruntime as ort
        except ImportError:
            fail("evaluating ONNX needs onnxruntime: pip install -e .[export]")
        try:
            sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for bad files
            fail(f"--model {path}: not a loadable ONNX model ({str(e).splitlines()[0]})")

        def run(image):
            return [torch.from_numpy(x) for x in sess.run(None, {"image": image.numpy()})]

        return run
    if path.endswith(".pt2"):
        import deta.export  # noqa: F401  registers deta::group_nms

        try:
            program = torch.export.load(path).module()
        except Exception as e:
            fail(f"--model {path}: not a loadable torch.export program ({e})")
        return program
    fail(f"--model {path}: expected a .onnx or .pt2 file")


def evaluate(run, cfg, dataset: str, output_dir: str):
    """COCO metrics of ``run`` (see :func:`load_runner`) on ``dataset``, and the seconds taken."""
    loader = build_detection_test_loader(cfg, dataset, mapper=DetaDatasetMapper(cfg, False))
    evaluator = build_coco_evaluator(cfg, dataset, output_dir)
    evaluator.reset()
    start = time.perf_counter()
    with torch.no_grad():
        for inputs in loader:
            outputs = []
            for x in inputs:
                image = x["image"].float()
                boxes, scores, classes = run(image)
                _, h, w = image.shape
                # The exported boxes are in the input's pixels; the PyTorch model scales its
                # normalised boxes to the original size directly, which this equals.
                scale = torch.tensor([x["width"] / w, x["height"] / h] * 2)
                inst = Instances((x["height"], x["width"]))
                inst.pred_boxes = Boxes(boxes * scale)
                inst.scores = scores
                inst.pred_classes = classes
                outputs.append({"instances": inst})
            evaluator.process(inputs, outputs)
    seconds = time.perf_counter() - start
    return evaluator.evaluate(), seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model.onnx or model.pt2")
    parser.add_argument("--dataset", help="registered dataset (default: DATASETS.TEST[0])")
    parser.add_argument("--output", help="where predictions go (default output/eval_exported)")
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logger(name="deta")
    cfg = build_cfg(args.config_file, ["MODEL.DEVICE", "cpu", *args.opts])
    dataset = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    if not dataset:
        fail("no dataset: pass --dataset or set DATASETS.TEST")
    run = load_runner(args.model)
    results, seconds = evaluate(run, cfg, dataset, default_output("eval_exported", args.output))
    print(f"{dataset}: bbox AP {results['bbox']['AP']:.2f} ({seconds:.1f} s) with {args.model}")
    return 0


if __name__ == "__main__":
    run_main(main)
