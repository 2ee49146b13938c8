"""A tiny DETA configuration and synthetic batches for fast CPU tests."""

import os

import torch

from detectron2.structures import Boxes, Instances

import deta  # noqa: F401  registers DETA

from .config import load

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.DEPTH", 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
    "MODEL.DETA.NUM_CLASSES", 3,
    "MODEL.DETA.HIDDEN_DIM", 64,  # GroupNorm(32) needs >1 value per group at 1x1 levels
    "MODEL.DETA.NHEADS", 2,
    "MODEL.DETA.ENC_LAYERS", 1,
    "MODEL.DETA.DEC_LAYERS", 6,
    "MODEL.DETA.DIM_FEEDFORWARD", 64,
    "MODEL.DETA.NUM_QUERIES", 20,
]  # fmt: skip


def tiny_cfg(*extra):
    return load(os.path.join(REPO, "configs", "Base-DETA.yaml"), *TINY_OPTS, *extra)


def tiny_batch(sizes=((96, 128), (80, 112)), boxes_per_image=(2, 0), num_classes=3, seed=0):
    """Random uint8 images with random boxes; ``boxes_per_image`` may contain 0 (no GT)."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for (h, w), n in zip(sizes, boxes_per_image):
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = (torch.rand(n, 2, generator=g) * 0.3 + 0.1) * torch.tensor([w, h])
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], 1))
        inst.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
        batch.append({"image": image, "instances": inst, "height": h, "width": w})
    return batch
