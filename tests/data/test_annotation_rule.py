"""The annotation rule as the mapper applies it: boxes kept, clipped or dropped, bad ones stop.

Errors must name the file, the image id and the annotation id (or its position).
"""

import unittest

import numpy as np

from detectron2.structures import BoxMode

from deta.data import DetaDatasetMapper
from deta.data.annotations import AnnotationRule, DatasetError
from deta.data.dataset_check import check_dataset_dicts
from tests.helpers.data import TmpDirCase, ann, official_cfg, record, train_mapper


class TestBoxes(TmpDirCase):
    def test_zero_annotations_kept(self):
        out = train_mapper()(record(self.rgb(), 30, 40, []))
        self.assertEqual(len(out["instances"]), 0)
        self.assertEqual(tuple(out["instances"].gt_boxes.tensor.shape), (0, 4))
        self.assertEqual(tuple(out["image"].shape), (3, 30, 40))

    def test_crowd_only_image_kept_empty(self):
        annotations = [ann(1, 1, 10, 10, iscrowd=1, ann_id=1), ann(5, 5, 9, 9, iscrowd=1)]
        out = train_mapper()(record(self.rgb(), 30, 40, annotations))
        self.assertEqual(len(out["instances"]), 0)

    def test_zero_size_boxes_dropped(self):
        annotations = [ann(5, 5, 0, 10, ann_id=1), ann(5, 5, 10, 0, ann_id=2), ann(5, 5, 4, 4, 2)]
        inst = train_mapper()(record(self.rgb(), 30, 40, annotations))["instances"]
        self.assertEqual(inst.gt_boxes.tensor.tolist(), [[5.0, 5.0, 9.0, 9.0]])
        self.assertEqual(inst.gt_classes.tolist(), [2])

    def test_outside_boxes_clipped_or_dropped(self):
        annotations = [
            ann(30, 20, 20, 20, 0),  # past the bottom-right corner: clipped
            ann(-5, -3, 10, 10, 1),  # negative x/y, past the top-left corner: clipped
            ann(45, 5, 10, 10, 2),  # fully right of the image: dropped
            ann(-20, 5, 10, 10, 2),  # fully left of it: dropped
            ann(5, 40, 10, 10, 2),  # fully below: dropped
        ]
        inst = train_mapper()(record(self.rgb(), 30, 40, annotations))["instances"]
        self.assertEqual(inst.gt_boxes.tensor.tolist(), [[30, 20, 40, 30], [0, 0, 5, 7]])
        self.assertEqual(inst.gt_classes.tolist(), [0, 1])

    def test_nonfinite_and_negative_size_boxes_raise(self):
        cases = [
            ([float("nan"), 1, 5, 5], "NaN or infinite"),
            ([1, 1, float("inf"), 5], "NaN or infinite"),
            ([1, 1, -5, 5], "negative width or height"),
            ([1, 1, 5, -0.5], "negative width or height"),
            ([1, 1, 5], "not a list of 4 numbers"),
            ([1, "2", 5, 5], "not a number"),
        ]
        path = self.rgb("nan.png")
        for bbox, expected in cases:
            a = ann(0, 0, 1, 1, ann_id=42)
            a["bbox"] = bbox
            d = record(path, 30, 40, [ann(1, 1, 4, 4, ann_id=41), a], image_id=9)
            with self.subTest(bbox=bbox):
                with self.assertRaises(DatasetError) as ctx:
                    train_mapper()(d)
                message = str(ctx.exception)
                for part in ("annotation id=42", "nan.png", "image_id=9", expected):
                    self.assertIn(part, message)
        # Without an 'id' (Detectron2's own loader drops it), the position is named instead.
        a = ann(1, 1, -5, 5)
        with self.assertRaisesRegex(DatasetError, r"annotation #1 \(no 'id'\).*nan.png"):
            train_mapper()(record(path, 30, 40, [ann(1, 1, 4, 4), a]))

    def test_test_mapper_ignores_annotations(self):
        d = record(self.rgb(), 30, 40, [ann(1, 1, -5, 5, ann_id=3)])
        out = DetaDatasetMapper(is_train=False, augmentation=[])(d)
        self.assertNotIn("instances", out)

    def test_category_out_of_range(self):
        path = self.rgb("cat.png")
        mapper = DetaDatasetMapper(official_cfg(), is_train=True)  # NUM_CLASSES = 3
        for cat in (3, -1, 1.0, "1", None):
            d = record(path, 30, 40, [ann(1, 1, 4, 4, cat=cat, ann_id=77)], image_id=5)
            with self.subTest(cat=cat):
                with self.assertRaises(DatasetError) as ctx:
                    mapper(d)
                for part in ("annotation id=77", "cat.png", "image_id=5", f"category_id={cat!r}"):
                    self.assertIn(part, str(ctx.exception))
        np.random.seed(0)
        d = record(path, 30, 40, [ann(1, 1, 4, 4, cat=np.int64(2), ann_id=77)])
        self.assertEqual(mapper(d)["instances"].gt_classes.tolist(), [2])

    def test_missing_bbox_mode_raises(self):
        a = ann(1, 1, 4, 4, ann_id=8)
        del a["bbox_mode"]
        with self.assertRaisesRegex(DatasetError, "annotation id=8 of image .*bbox_mode"):
            train_mapper()(record(self.rgb(), 30, 40, [a]))


class TestOneRule(TmpDirCase):
    """The mapper and the dataset checks apply one rule, so they agree on every annotation."""

    def test_mapper_and_dict_check_agree(self):
        path = self.rgb("agree.png")
        cases = {
            "unknown_category": ann(1, 1, 4, 4, cat=5, ann_id=1),
            "bad_annotation_entry": dict(ann(1, 1, 4, 4, ann_id=1), ignore=1),
            "nonfinite_bbox": ann(1, 1, float("nan"), 4, ann_id=1),
        }
        for kind, a in cases.items():
            d = record(path, 30, 40, [a], image_id=3)
            with self.subTest(kind=kind):
                report = check_dataset_dicts([d], num_classes=3, check_images=False)
                self.assertEqual([p.kind for p in report.problems], [kind])
                with self.assertRaises(DatasetError) as ctx:
                    train_mapper(num_classes=3)(d)
                self.assertIn(report.problems[0].message, str(ctx.exception))

    def test_every_problem_in_order(self):
        problems, trainable = AnnotationRule(num_classes=2).check(ann(1, 1, -4, 4, cat=2))
        self.assertEqual([k for k, _ in problems], ["unknown_category", "negative_bbox_size"])
        self.assertFalse(trainable)

    def test_fixed_box_mode(self):
        # XYXY_ABS is 0: a fixed mode must not fall back to the annotation's 'bbox_mode'.
        rule = AnnotationRule(category_ids={1}, bbox_mode=BoxMode.XYXY_ABS)
        self.assertEqual(rule.check({"category_id": 1, "bbox": [1, 1, 5, 5]}), ([], True))
        problems, _ = rule.check({"category_id": 1, "bbox": [5, 1, 1, 5]})
        self.assertEqual(problems[0][0], "negative_bbox_size")


if __name__ == "__main__":
    unittest.main()
