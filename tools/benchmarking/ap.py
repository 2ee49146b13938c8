"""``ap``: COCO AP of a trained model in fp32 and under bf16/fp16 autocast, on one dataset."""

import os
import tempfile
import time

import torch

from tools.benchmarking.harness import autocast, load_average, worker_setup
from tools.benchmarking.models import build_cfg, build_model
from tools.benchmarking.tables import print_table


class Autocast(torch.nn.Module):
    """``model`` run under ``autocast(device, dtype)``, as ``inference_on_dataset`` calls it."""

    def __init__(self, model, device: torch.device, dtype: str):
        super().__init__()
        self.model, self.device, self.dtype = model, device, dtype

    def forward(self, batched_inputs):
        with autocast(self.device, self.dtype):
            return self.model(batched_inputs)


def mode_ap(args) -> dict:
    """COCO AP of a trained model per dtype: what bf16/fp16 autocast costs in accuracy."""
    from detectron2.data import build_detection_test_loader
    from detectron2.evaluation import inference_on_dataset

    from deta import DetaDatasetMapper
    from deta.data import register_deta_synthetic
    from deta.evaluation import build_coco_evaluator

    if not os.path.isfile(args.weights or ""):
        raise SystemExit(f"no trained model at {args.weights} (make it with tools/run_demo.py)")
    device = worker_setup(vars(args))
    register_deta_synthetic(args.dataset_root)
    cfg = build_cfg(args.config_file, args.opts, args.device)
    model = build_model(cfg, args.weights, args.seed).eval()
    results = []
    for dtype in args.dtypes:
        loader = build_detection_test_loader(
            cfg, args.dataset, mapper=DetaDatasetMapper(cfg, is_train=False)
        )
        with tempfile.TemporaryDirectory() as tmp:
            evaluator = build_coco_evaluator(cfg, args.dataset, tmp)
            load_start, t0 = load_average(), time.perf_counter()
            wrapped = Autocast(model, device, dtype)
            bbox = inference_on_dataset(wrapped, loader, evaluator)["bbox"]
        results.append(
            {
                "dtype": dtype,
                "bbox": bbox,
                "seconds": time.perf_counter() - t0,
                "loadavg": [load_start, load_average()],
            }
        )
    base = results[0]["bbox"]
    print(f"{args.dataset} ({args.weights}), {args.threads} threads")
    rows = [
        [
            r["dtype"],
            f"{r['bbox']['AP']:.2f}",
            f"{r['bbox']['AP'] - base['AP']:+.2f}",
            f"{r['bbox']['AP50']:.2f}",
            f"{r['bbox']['AP75']:.2f}",
            f"{r['seconds']:.0f}",
        ]
        for r in results
    ]
    header = ["dtype", "AP", f"AP - {results[0]['dtype']} AP", "AP50", "AP75", "eval s"]
    print_table(header, rows)
    return {"dataset": args.dataset, "weights": args.weights, "results": results}
