"""``train``: iterations/s and peak memory of forward + backward + optimizer step, on synthetic
images with random boxes, one fresh subprocess per batch size."""

import torch

from tools.benchmarking.harness import base_spec, load_average, measure, run_worker, start_result
from tools.benchmarking.models import parse_size, synthetic_image, worker_model
from tools.benchmarking.tables import ms, print_table


def synthetic_batch(spec: dict, num_classes: int) -> list:
    """``batch_size`` synthetic images with ``boxes_per_image`` random boxes and classes each."""
    from detectron2.structures import Boxes, Instances

    h, w = spec["image_size"]
    g = torch.Generator().manual_seed(spec["seed"])
    batch = []
    for i in range(spec["batch_size"]):
        n = spec["boxes_per_image"]
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = (torch.rand(n, 2, generator=g) * 0.25 + 0.05) * torch.tensor([w, h])
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        inst.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
        batch.append({"image": synthetic_image(h, w, spec["seed"] + i), "instances": inst})
    return batch


def train_worker(spec: dict) -> dict:
    from deta.solver import build_deta_optimizer

    device, cfg, model, amp = worker_model(spec, train=True)
    optimizer = build_deta_optimizer(cfg, model)
    batch = synthetic_batch(spec, cfg.MODEL.DETA.NUM_CLASSES)

    def step():
        with amp:
            losses = model(batch)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    result = start_result("ours", model, optimizer="build_deta_optimizer")
    result["memory_method"], result["step"] = measure(step, spec, device)
    result["loadavg_end"] = load_average()
    return result


def mode_train(args) -> dict:
    results = []
    for batch in args.batch_sizes:
        spec = base_spec(args)
        spec.update(
            image_size=parse_size(args.image_size),
            batch_size=batch,
            boxes_per_image=args.boxes_per_image,
        )
        r = run_worker("train", spec)
        results.append({"image_size": args.image_size, "batch_size": batch, "ours": r})
        if "error" in r:
            print(r["error"])
    rows = []
    for r in results:
        m = r["ours"]
        if "error" in m:
            continue
        s = m["step"]
        rows.append(
            [
                r["image_size"],
                r["batch_size"],
                m["optimizer"],
                ms(s["mean_s"]),
                ms(s["p50_s"]),
                f"{1 / s['mean_s']:.3f}",
                f"{r['batch_size'] / s['mean_s']:.2f}",
                f"{s['peak_mib']:.0f}",
                f"{m['loadavg_start']} -> {m['loadavg_end']}",
            ]
        )
    print(
        f"train step (forward + backward + optimizer), dtype {args.dtype}, {args.threads} "
        f"threads, {args.boxes_per_image} random boxes per image"
    )
    header = ["input", "batch", "optimizer", "mean ms", "p50 ms", "it/s", "img/s", "peak MiB"]
    print_table(header + ["load"], rows)
    return {"results": results}
