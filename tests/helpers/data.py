"""Builders of messy images, annotations and datasets, shared by the tests in ``tests/data``.

Each test builds its files in a temporary folder (see :class:`TmpDirCase`).
"""

import json
import os
import struct
import tempfile
import unittest
import zlib

import numpy as np
from PIL import Image

from detectron2.config import get_cfg
from detectron2.structures import BoxMode

from deta.config import add_deta_config
from deta.data import DetaDatasetMapper

SCALES = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)


def official_cfg():
    """The official resize/crop rules (configs/Base-DETA.yaml), set here so the test is stable."""
    cfg = get_cfg()
    add_deta_config(cfg)
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = SCALES
    cfg.INPUT.MAX_SIZE_TRAIN = 1333
    cfg.INPUT.MIN_SIZE_TEST = 800
    cfg.INPUT.MAX_SIZE_TEST = 1333
    cfg.INPUT.RANDOM_FLIP = "horizontal"
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute_range"
    cfg.INPUT.CROP.SIZE = [384, 600]
    cfg.INPUT.CROP.PRE_RESIZE_SIZES = [400, 500, 600]
    cfg.MODEL.DETA.NUM_CLASSES = 3
    return cfg


def write_rgb(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)


def write_png16(path, pixels):
    """Write a 16-bit grey (HxW) or RGB (HxWx3) PNG; PIL cannot write 16-bit RGB itself."""
    h, w = pixels.shape[:2]
    color_type = 2 if pixels.ndim == 3 else 0
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header))
        f.write(chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def ann(x, y, w, h, cat=0, ann_id=None, iscrowd=0):
    """A Detectron2 annotation dict (XYWH_ABS), as the loader returns it."""
    a = {"bbox": [x, y, w, h], "bbox_mode": BoxMode.XYWH_ABS, "category_id": cat}
    a["iscrowd"] = iscrowd
    if ann_id is not None:
        a["id"] = ann_id
    return a


def record(path, h, w, annotations=(), image_id=1):
    return {
        "file_name": path,
        "height": h,
        "width": w,
        "image_id": image_id,
        "annotations": list(annotations),
    }


def write_coco(path, images, annotations, categories=None):
    categories = categories or [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)]
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def coco_ann(ann_id, image_id, bbox, cat=1, iscrowd=0):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat,
        "bbox": bbox,
        "iscrowd": iscrowd,
    }


def train_mapper(**kwargs):
    kwargs.setdefault("augmentation", [])
    return DetaDatasetMapper(is_train=True, **kwargs)


class TmpDirCase(unittest.TestCase):
    """A test case with a fresh temporary folder, ``self.dir``."""

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.dir = self._tmp.name
        self.addCleanup(self._tmp.cleanup)

    def path(self, name):
        return os.path.join(self.dir, name)

    def rgb(self, name="img.png", h=30, w=40):
        write_rgb(self.path(name), h, w)
        return self.path(name)
