"""Tests of the official-style augmentations and ``DetaDatasetMapper``."""

import os
import tempfile
import unittest

import numpy as np
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.data.datasets import load_coco_json
from detectron2.structures import BoxMode

from deta.config import add_deta_config
from deta.data import (
    DetaDatasetMapper,
    DetrResize,
    RandomSelect,
    RandomSizeCrop,
    build_deta_augmentations,
    detr_resize_shape,
    generate_synthetic_coco,
)

# Small sizes keep the many-seed loops fast; the rules do not depend on scale.
_SCALES = (32, 40, 48, 56, 64)
_MAX_SIZE = 90
_PRE_SIZES = (40, 50, 60)
_CROP = (24, 48)


def _small_cfg(crop=True):
    cfg = get_cfg()
    add_deta_config(cfg)
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MIN_SIZE_TRAIN = _SCALES
    cfg.INPUT.MAX_SIZE_TRAIN = _MAX_SIZE
    cfg.INPUT.MIN_SIZE_TEST = 800
    cfg.INPUT.MAX_SIZE_TEST = 1333
    cfg.INPUT.CROP.ENABLED = crop
    cfg.INPUT.CROP.TYPE = "absolute_range"
    cfg.INPUT.CROP.SIZE = list(_CROP)
    cfg.INPUT.CROP.PRE_RESIZE_SIZES = list(_PRE_SIZES)
    return cfg


def _write_image(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)


def _ann(x0, y0, x1, y1, cls=0, iscrowd=0):
    return {
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": cls,
        "iscrowd": iscrowd,
    }


class TestDetrResizeShape(unittest.TestCase):
    def test_truncates_long_side(self):
        self.assertEqual(detr_resize_shape(480, 640, 800, 1333), (800, 1066))
        self.assertEqual(detr_resize_shape(640, 480, 800, 1333), (1066, 800))
        # Detectron2's rule rounds instead, which is why DETA needs its own augmentation.
        self.assertEqual(T.ResizeShortestEdge.get_output_shape(480, 640, 800, 1333), (800, 1067))

    def test_max_size(self):
        # 1000/200 * 800 > 1333, so s = round(1333 * 200 / 1000) = 267 and the long side is
        # int(267 * 1000 / 200) = 1335: slightly above max_size, as in the official code.
        self.assertEqual(detr_resize_shape(200, 1000, 800, 1333), (267, 1335))
        self.assertEqual(detr_resize_shape(1000, 200, 800, 1333), (1335, 267))
        self.assertEqual(detr_resize_shape(200, 1000, 800, None), (800, 4000))
        # Python's round: half to even (2.5 -> 2).
        self.assertEqual(detr_resize_shape(1, 4, 800, 10), (2, 8))

    def test_unchanged_when_short_side_matches(self):
        self.assertEqual(detr_resize_shape(600, 800, 600, 1333), (600, 800))
        self.assertEqual(detr_resize_shape(50, 50, 50, None), (50, 50))
        tfm = DetrResize([600], 1333).get_transform(np.zeros((600, 800, 3), np.uint8))
        self.assertIsInstance(tfm, T.NoOpTransform)

    def test_augmentation_output(self):
        aug_input = T.AugInput(np.zeros((480, 640, 3), np.uint8))
        T.AugmentationList([DetrResize([800], 1333)])(aug_input)
        self.assertEqual(aug_input.image.shape, (800, 1066, 3))

    def test_random_choice(self):
        np.random.seed(0)
        aug = DetrResize(_SCALES, None)
        seen = {aug.get_transform(np.zeros((30, 40, 3), np.uint8)).new_h for _ in range(200)}
        self.assertEqual(seen, set(_SCALES))


class TestRandomSizeCrop(unittest.TestCase):
    def test_bounds_inclusive(self):
        np.random.seed(0)
        aug = RandomSizeCrop(10, 12)
        widths, heights = set(), set()
        for _ in range(300):
            tfm = aug.get_transform(np.zeros((20, 30, 3), np.uint8))
            widths.add(tfm.w)
            heights.add(tfm.h)
            self.assertTrue(0 <= tfm.x0 and tfm.x0 + tfm.w <= 30)
            self.assertTrue(0 <= tfm.y0 and tfm.y0 + tfm.h <= 20)
        self.assertEqual(widths, {10, 11, 12})
        self.assertEqual(heights, {10, 11, 12})

    def test_capped_by_image(self):
        np.random.seed(1)
        aug = RandomSizeCrop(384, 600)
        for _ in range(50):
            tfm = aug.get_transform(np.zeros((400, 500, 3), np.uint8))
            self.assertTrue(384 <= tfm.w <= 500 and 384 <= tfm.h <= 400)
        # Smaller than min_size: the side is kept whole (the official code would raise).
        tfm = aug.get_transform(np.zeros((100, 700, 3), np.uint8))
        self.assertEqual(tfm.h, 100)
        self.assertTrue(384 <= tfm.w <= 600)


class TestRandomSelect(unittest.TestCase):
    def test_branch_probability(self):
        image = np.zeros((20, 40, 3), np.uint8)
        first, second = [DetrResize([10])], [DetrResize([30])]
        for prob, expected in ((1.0, 10), (0.0, 30)):
            aug_input = T.AugInput(image)
            RandomSelect(first, second, prob)(aug_input)
            self.assertEqual(aug_input.image.shape[0], expected)
        np.random.seed(0)
        picks = []
        for _ in range(400):
            aug_input = T.AugInput(image)
            T.AugmentationList([RandomSelect(first, second)])(aug_input)
            picks.append(aug_input.image.shape[0] == 10)
        self.assertTrue(0.4 < np.mean(picks) < 0.6)


class TestDetaDatasetMapper(unittest.TestCase):
    H, W = 60, 80

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.image_path = os.path.join(cls._tmp.name, "img.png")
        _write_image(cls.image_path, cls.H, cls.W)

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def _dict(self, annotations):
        return {
            "file_name": self.image_path,
            "height": self.H,
            "width": self.W,
            "image_id": 7,
            "annotations": annotations,
        }

    def _annotations(self):
        return [
            _ann(0, 0, 10, 12, cls=0),  # corner
            _ann(70, 50, 80, 60, cls=1),  # opposite corner
            _ann(20, 15, 60, 45, cls=2),  # large, central
            _ann(5, 30, 90, 70, cls=3),  # extends past the image: clipped
            _ann(30, 5, 38, 13, cls=4, iscrowd=1),  # crowd: dropped
        ]

    def _check_instances(self, out):
        inst = out["instances"]
        h, w = out["image"].shape[1:]
        self.assertEqual(inst.image_size, (h, w))
        boxes = inst.gt_boxes.tensor
        self.assertEqual(boxes.dtype, torch.float32)
        self.assertTrue(torch.all(boxes[:, 0::2] >= 0) and torch.all(boxes[:, 0::2] <= w))
        self.assertTrue(torch.all(boxes[:, 1::2] >= 0) and torch.all(boxes[:, 1::2] <= h))
        self.assertTrue(
            torch.all(boxes[:, 2] > boxes[:, 0]) and torch.all(boxes[:, 3] > boxes[:, 1])
        )
        self.assertNotIn(4, inst.gt_classes.tolist())
        self.assertEqual(inst.gt_classes.dtype, torch.int64)
        self.assertEqual((out["height"], out["width"]), (self.H, self.W))
        return inst

    def test_branches_keep_boxes_inside(self):
        augmentation, with_crop = build_deta_augmentations(_small_cfg(), is_train=True)
        self.assertIsNotNone(with_crop)
        shapes = {detr_resize_shape(self.H, self.W, s, _MAX_SIZE) for s in _SCALES}
        crop_shapes = set()  # every size the pre-resize -> crop -> resize chain can produce
        for pre in _PRE_SIZES:
            ph, pw = detr_resize_shape(self.H, self.W, pre, None)
            for ch in range(_CROP[0], min(ph, _CROP[1]) + 1):
                for cw in range(_CROP[0], min(pw, _CROP[1]) + 1):
                    crop_shapes |= {detr_resize_shape(ch, cw, s, _MAX_SIZE) for s in _SCALES}
        for branch in (augmentation, with_crop):
            mapper = DetaDatasetMapper(is_train=True, augmentation=branch, image_format="RGB")
            for seed in range(60):
                np.random.seed(seed)
                out = mapper(self._dict(self._annotations()))
                inst = self._check_instances(out)
                if branch is augmentation:
                    self.assertIn(tuple(out["image"].shape[1:]), shapes)
                    self.assertEqual(len(inst), 4)  # nothing is lost without a crop
                else:
                    self.assertIn(tuple(out["image"].shape[1:]), crop_shapes)

    def test_from_config_random_select(self):
        mapper = DetaDatasetMapper(_small_cfg(), is_train=True)
        self.assertIsInstance(mapper.augmentations.augs[0], RandomSelect)
        for seed in range(40):
            np.random.seed(seed)
            self._check_instances(mapper(self._dict(self._annotations())))
        no_crop = DetaDatasetMapper(_small_cfg(crop=False), is_train=True)
        self.assertIsInstance(no_crop.augmentations.augs[0], T.RandomFlip)
        self.assertIsInstance(no_crop.augmentations.augs[1], DetrResize)

    def test_crop_config_validation(self):
        cfg = _small_cfg()
        cfg.INPUT.CROP.TYPE = "relative_range"
        with self.assertRaisesRegex(ValueError, "CROP.TYPE"):
            DetaDatasetMapper(cfg, is_train=True)

    def test_flip_and_clip(self):
        mapper = DetaDatasetMapper(is_train=True, augmentation=[T.RandomFlip(prob=1.0)])
        out = mapper(self._dict(self._annotations()))
        boxes = out["instances"].gt_boxes.tensor.tolist()
        self.assertEqual(boxes[0], [70.0, 0.0, 80.0, 12.0])  # x0' = W - x1, x1' = W - x0
        self.assertEqual(boxes[3], [0.0, 30.0, 75.0, 60.0])  # clipped to the image, then flipped
        self.assertEqual(out["instances"].gt_classes.tolist(), [0, 1, 2, 3])

    def test_degenerate_and_outside_boxes_removed(self):
        annotations = [_ann(10, 10, 10, 20), _ann(85, 10, 95, 20), _ann(10, 10, 20, 20, cls=5)]
        mapper = DetaDatasetMapper(is_train=True, augmentation=[])
        inst = mapper(self._dict(annotations))["instances"]
        self.assertEqual(inst.gt_classes.tolist(), [5])

    def test_empty_images_kept(self):
        mapper = DetaDatasetMapper(_small_cfg(), is_train=True)
        for annotations in ([], [_ann(1, 1, 30, 30, iscrowd=1)]):
            out = mapper(self._dict(annotations))
            self.assertEqual(len(out["instances"]), 0)
            self.assertEqual(tuple(out["instances"].gt_boxes.tensor.shape), (0, 4))
        d = self._dict([])
        del d["annotations"]
        self.assertEqual(len(mapper(d)["instances"]), 0)

    def test_input_dict_untouched(self):
        d = self._dict(self._annotations())
        DetaDatasetMapper(_small_cfg(), is_train=True)(d)
        self.assertEqual(len(d["annotations"]), 5)
        self.assertNotIn("image", d)

    def test_test_time(self):
        path = os.path.join(self._tmp.name, "big.png")
        Image.new("RGB", (640, 480), (10, 200, 30)).save(path)
        d = {"file_name": path, "height": 480, "width": 640, "image_id": 3}
        d["annotations"] = [_ann(1, 1, 30, 30)]
        out = DetaDatasetMapper(_small_cfg(), is_train=False)(d)
        self.assertEqual(tuple(out["image"].shape), (3, 800, 1066))
        self.assertEqual(out["image"].dtype, torch.uint8)
        self.assertEqual((out["height"], out["width"], out["image_id"]), (480, 640, 3))
        self.assertNotIn("instances", out)
        self.assertNotIn("annotations", out)
        self.assertEqual(out["image"][:, 400, 500].tolist(), [10, 200, 30])  # RGB order

    def test_image_format(self):
        rgb = DetaDatasetMapper(is_train=False, augmentation=[], image_format="RGB")
        bgr = DetaDatasetMapper(is_train=False, augmentation=[], image_format="BGR")
        d = self._dict([])
        self.assertTrue(torch.equal(rgb(d)["image"], bgr(d)["image"].flip(0)))

    def test_unreadable_image(self):
        broken = os.path.join(self._tmp.name, "broken.jpg")
        with open(broken, "wb") as f:
            f.write(b"this is not an image")
        mapper = DetaDatasetMapper(is_train=False, augmentation=[])
        d = self._dict([])
        d["file_name"] = broken
        with self.assertRaisesRegex(OSError, "broken.jpg.*image_id=7"):
            mapper(d)
        d["file_name"] = os.path.join(self._tmp.name, "missing.jpg")
        with self.assertRaisesRegex(FileNotFoundError, "missing.jpg"):
            mapper(d)

    def test_synthetic_dataset_end_to_end(self):
        root = os.path.join(self._tmp.name, "synthetic")
        generate_synthetic_coco(root, num_train=8, num_val=1, min_long_side=64, max_long_side=96)
        dicts = load_coco_json(
            os.path.join(root, "annotations", "instances_train.json"), os.path.join(root, "train")
        )
        cfg = _small_cfg()
        mapper = DetaDatasetMapper(cfg, is_train=True)
        np.random.seed(0)
        for d in dicts:
            inst = mapper(d)["instances"]
            h, w = inst.image_size
            boxes = inst.gt_boxes.tensor
            self.assertTrue(torch.all(boxes[:, 2:] <= torch.tensor([w, h])))
            self.assertTrue(torch.all(boxes >= 0))


if __name__ == "__main__":
    unittest.main()
