#!/usr/bin/env python
"""Picture of the method: which decoder queries each ground truth supervises.

For one image, the left panel shows Hungarian matching (one-to-one: each ground truth gets exactly
one query, the baseline's assignment) and the middle panel DETA's stage-2 IoU assignment
(many-to-one: every query whose *input* box overlaps a ground truth by IoU >= 0.6, at most 4 per
ground truth); a third panel shows stage 1, the encoder anchors assigned to each ground truth.
Ground truths are thick boxes; the queries assigned to them are thin boxes of the same colour,
linked to their ground truth's centre; unassigned queries are not drawn.

    python tools/visualize_assignment.py MODEL.WEIGHTS output/demo/model/model_final.pth

``--output`` is a folder (default ``output/visualize_assignment``) that gets ``assignment.png``;
a name ending in ``.png`` is the picture's file name itself (``--output docs/assignment.png``).

Without trained weights the queries still come from the (random) first stage, which makes the
one-to-one vs many-to-one contrast visible but not the learned proposals.
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches as patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import BoxMode  # noqa: E402

import deta  # noqa: E402, F401
from deta import DetaDatasetMapper  # noqa: E402
from deta.data import DEMO_DATA, generate_synthetic_coco, register_deta_synthetic  # noqa: E402
from deta.engine import DetaCheckpointer  # noqa: E402
from deta.utils.cli import build_cfg, default_output, run_main  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "deta_R_18_synthetic_cpu.yaml")
COLORS = plt.get_cmap("tab10").colors


def _targets(record, image_size):
    """GT of a dataset record in the mapped image: normalised cxcywh boxes and labels."""
    h, w = image_size
    sy, sx = h / record["height"], w / record["width"]
    boxes = [
        BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in record["annotations"]
    ]
    xyxy = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) * torch.tensor([sx, sy, sx, sy])
    cxcywh = torch.stack(
        [
            (xyxy[:, 0] + xyxy[:, 2]) / 2,
            (xyxy[:, 1] + xyxy[:, 3]) / 2,
            xyxy[:, 2] - xyxy[:, 0],
            xyxy[:, 3] - xyxy[:, 1],
        ],
        1,
    ) / torch.tensor([w, h, w, h])
    labels = torch.tensor([a["category_id"] for a in record["annotations"]], dtype=torch.int64)
    return {"boxes": cxcywh, "labels": labels}, xyxy


def _draw(ax, image, gt_xyxy, query_boxes, indices, size, title):
    h, w = size
    ax.imshow(image)
    pred, gt = indices
    for g, box in enumerate(gt_xyxy.tolist()):
        c = COLORS[g % len(COLORS)]
        ax.add_patch(
            patches.Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False, lw=3, color=c)
        )
        for q in pred[gt == g].tolist():
            cx, cy, bw, bh = (query_boxes[q] * torch.tensor([w, h, w, h])).tolist()
            ax.add_patch(
                patches.Rectangle(
                    (cx - bw / 2, cy - bh / 2), bw, bh, fill=False, lw=1, ls="--", color=c
                )
            )
            ax.plot([cx, (box[0] + box[2]) / 2], [cy, (box[1] + box[3]) / 2], color=c, lw=0.8)
    ax.set_title(f"{title}: {len(pred)} for {len(gt_xyxy)} objects", fontsize=9)
    ax.axis("off")


def _picture_path(output):
    # A .png name is the file itself, so commands that named the picture keep working.
    if output and output.lower().endswith(".png"):
        return output
    return os.path.join(default_output("visualize_assignment", output), "assignment.png")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", default=CONFIG)
    p.add_argument(
        "--output",
        default=None,
        help="folder for assignment.png, or a .png file (default: output/visualize_assignment)",
    )
    p.add_argument("--image-index", type=int, default=3, help="index into deta_synthetic_val")
    p.add_argument("opts", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    # Config and weights first: a bad one stops in one line before the dataset is written.
    cfg = build_cfg(args.config_file, ["MODEL.DEVICE", "cpu", *args.opts])
    model = build_model(cfg).eval()
    if cfg.MODEL.WEIGHTS:
        DetaCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    # The dataset tools/run_demo.py writes (reused when it is already there).
    root = os.path.join(default_output("demo"), "datasets", "deta_synthetic")
    register_deta_synthetic(generate_synthetic_coco(root, **DEMO_DATA)["root"])
    records = [r for r in DatasetCatalog.get("deta_synthetic_val") if r["annotations"]]
    record = records[args.image_index % len(records)]
    item = DetaDatasetMapper(cfg, is_train=False)(dict(record))
    images = model.preprocess_image([item])
    size = images.image_sizes[0]
    targets, gt_xyxy = _targets(record, size)
    with torch.no_grad():
        out = model.forward_features(images.tensor, model.padding_mask(images))
        final = {
            k: v for k, v in out.items() if k in ("pred_logits", "pred_boxes", "init_reference")
        }
        hungarian = model.criterion.matcher(final, [targets])[0]
        stage2 = model.criterion.stage2_assigner
        if stage2 is None:
            raise SystemExit(
                "the config has MODEL.DETA.ASSIGN_SECOND_STAGE False: nothing to compare"
            )
        iou_assign = stage2(final, [targets])[0]
        stage1 = model.criterion.stage1_assigner
        bin_targets = [dict(targets, labels=torch.zeros_like(targets["labels"]))]
        anchors = out["enc_outputs"]["anchors"]
        anchor_assign = stage1({"anchors": anchors}, bin_targets)[0] if stage1 else None
    image = item["image"].permute(1, 2, 0).numpy()
    if cfg.INPUT.FORMAT == "BGR":
        image = image[:, :, ::-1]
    panels = 3 if anchor_assign is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 5.2))
    _draw(
        axes[0],
        image,
        gt_xyxy,
        final["pred_boxes"][0],
        hungarian,
        size,
        "Hungarian, one-to-one\n(predicted boxes)",
    )
    _draw(
        axes[1],
        image,
        gt_xyxy,
        final["init_reference"][0],
        iou_assign,
        size,
        "DETA stage 2, IoU >= 0.6\n(query input boxes)",
    )
    if anchor_assign is not None:
        _draw(
            axes[2],
            image,
            gt_xyxy,
            anchors[0],
            anchor_assign,
            size,
            "DETA stage 1, IoU >= 0.7 or best\n(encoder anchors)",
        )
    fig.tight_layout()
    path = _picture_path(args.output)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    run_main(main)
