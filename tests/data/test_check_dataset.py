"""Tests of ``tools/check_dataset.py`` and the report it prints (``deta.data.dataset_check``)."""

import contextlib
import io
import json
import os
import tempfile
import unittest

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from deta.data.dataset_check import ERROR, PROBLEM_KINDS, WARNING, check_coco_json
from deta.data.datasets import register_deta_coco_instances
from tests.helpers.data import coco_ann, write_coco, write_png16, write_rgb
from tools.check_dataset import main

# Every problem kind the messy dataset below contains, with (file, annotation id) it must name.
_EXPECTED = {
    "duplicate_image_id": ("dup_id.jpg", None),
    "bad_image_entry": ("no_size.jpg", None),
    "duplicate_file_name": ("ok.jpg", None),
    "bad_category_entry": (None, None),
    "duplicate_annotation_id": ("ok.jpg", 3),
    "bad_annotation_entry": ("ok.jpg", 12),
    "unknown_category": ("ok.jpg", 4),
    "bad_bbox": ("ok.jpg", 5),
    "nonfinite_bbox": ("ok.jpg", 6),
    "negative_bbox_size": ("ok.jpg", 7),
    "empty_bbox": ("empty_box.jpg", 8),
    "bbox_outside_image": ("empty_box.jpg", 9),
    "bbox_partly_outside": ("empty_box.jpg", 10),
    "invalid_segmentation": ("ok.jpg", 11),
    "unknown_image_id": (None, 13),
    "missing_image": ("missing.jpg", None),
    "unreadable_image": ("truncated.jpg", None),
    "size_mismatch": ("wrong_size.png", None),
    "exif_orientation": ("square_exif.jpg", None),
}


def _write_messy(root):
    """A dataset with one instance of every problem kind; returns (json path, image folder)."""
    images_dir = os.path.join(root, "images")
    os.mkdir(images_dir)

    def image_path(name):
        return os.path.join(images_dir, name)

    for name in ("ok.jpg", "dup_id.jpg", "empty_box.jpg", "no_size.jpg"):
        write_rgb(image_path(name), 30, 40)
    write_rgb(image_path("full.jpg"), 64, 96)
    with open(image_path("full.jpg"), "rb") as f:
        data = f.read()
    with open(image_path("truncated.jpg"), "wb") as f:
        f.write(data[: len(data) // 2])  # the header survives: only a full decode finds it
    write_png16(image_path("wrong_size.png"), np.zeros((20, 20), np.uint16))
    exif = Image.Exif()
    exif[274] = 3  # rotated 180°: same size either way
    Image.new("RGB", (16, 16)).save(image_path("square_exif.jpg"), exif=exif)

    def entry(i, name, w=40, h=30):
        return {"id": i, "file_name": name, "width": w, "height": h}

    images = [
        entry(1, "ok.jpg"),
        entry(1, "dup_id.jpg"),
        entry(2, "empty_box.jpg"),
        {"id": 3, "file_name": "no_size.jpg", "width": 0, "height": 30},
        entry(4, "ok.jpg"),
        entry(5, "missing.jpg"),
        entry(6, "truncated.jpg", 96, 64),
        entry(7, "wrong_size.png", 20, 21),
        entry(8, "square_exif.jpg", 16, 16),
        entry(9, "clean.jpg"),
    ]
    write_rgb(image_path("clean.jpg"), 30, 40)
    annotations = [
        coco_ann(1, 1, [1, 1, 5, 5]),
        coco_ann(3, 1, [1, 1, 5, 5]),
        coco_ann(3, 1, [2, 2, 5, 5]),
        coco_ann(4, 1, [1, 1, 5, 5], cat=99),
        coco_ann(5, 1, [1, 1, 5]),
        coco_ann(6, 1, [1, float("nan"), 5, 5]),
        coco_ann(7, 1, [1, 1, 5, -5]),
        coco_ann(8, 2, [1, 1, 0, 5]),
        coco_ann(9, 2, [50, 1, 5, 5]),
        coco_ann(10, 2, [30, 1, 20, 5]),
        dict(coco_ann(11, 1, [1, 1, 5, 5]), segmentation=[[1, 1, 2, 2]]),
        dict(coco_ann(12, 1, [1, 1, 5, 5]), ignore=1),
        coco_ann(13, 77, [1, 1, 5, 5]),
        coco_ann(14, 9, [1, 1, 5, 5]),
    ]
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 2, "name": "again"}]
    json_file = os.path.join(root, "messy.json")
    write_coco(json_file, images, annotations, categories)
    return json_file, images_dir


def _run(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(argv)
    return status, out.getvalue()


class TestCheckDataset(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.json_file, cls.images = _write_messy(cls._tmp.name)

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def test_every_problem_found(self):
        report = check_coco_json(self.json_file, self.images)
        found = {p.kind for p in report.problems}
        self.assertEqual(found, set(_EXPECTED))
        for kind, (file_name, ann_id) in _EXPECTED.items():
            with self.subTest(kind=kind):
                problem = next(p for p in report.problems if p.kind == kind)
                if file_name:
                    self.assertIn(file_name, problem.message)
                if ann_id is not None:
                    self.assertIn(f"id={ann_id}", problem.message)
                    self.assertEqual(problem.annotation_id, ann_id)
        self.assertTrue(all(p.severity in (ERROR, WARNING) for p in report.problems))
        self.assertEqual((report.num_images, report.num_annotations), (10, 14))
        # 8 usable image entries (not the malformed one or the duplicate id), of which 1 (ann 1),
        # 2 (ann 10, clipped) and 9 (ann 14) have a trainable box.
        self.assertEqual(report.num_images_without_boxes, 8 - 3)

    def test_cli_report(self):
        status, text = _run(["--json", self.json_file, "--images", self.images])
        self.assertEqual(status, 1)
        errors_at, warnings_at = text.index("ERRORS ("), text.index("WARNINGS (")
        self.assertLess(errors_at, warnings_at)
        for kind, (severity, title, _) in PROBLEM_KINDS.items():
            if kind not in _EXPECTED:
                continue
            at = text.index(f"{title} [{kind}]")
            self.assertEqual(at > warnings_at, severity == WARNING, kind)
        self.assertIn("annotation id=4 of image 'ok.jpg' (image_id=1): category_id=99", text)
        self.assertIn("missing.jpg' (image_id=5) does not exist", text)
        self.assertIn("truncated.jpg' (image_id=6)", text)
        self.assertIn("wrong_size.png' (image_id=7) is 20x20 (width x height)", text)
        self.assertRegex(text, r"\d+ errors, \d+ warnings")

    def test_no_decode_misses_truncation(self):
        report = check_coco_json(self.json_file, self.images, decode=False)
        self.assertNotIn("unreadable_image", {p.kind for p in report.problems})
        self.assertIn("missing_image", {p.kind for p in report.problems})

    def test_max_errors(self):
        status, text = _run(
            ["--json", self.json_file, "--images", self.images, "--max-errors", "2"]
        )
        self.assertEqual(status, 1)
        self.assertIn("ERRORS (2)", text)
        self.assertIn("Stopped at the error limit", text)

    def test_clean_dataset_and_registered_name(self):
        with tempfile.TemporaryDirectory() as root:
            write_rgb(os.path.join(root, "a.jpg"), 30, 40)
            json_file = os.path.join(root, "clean.json")
            image = {"id": 1, "file_name": "a.jpg", "width": 40, "height": 30}
            write_coco(json_file, [image], [coco_ann(1, 1, [1, 1, 5, 5])])
            status, text = _run(["--json", json_file, "--images", root])
            self.assertEqual(status, 0, text)
            self.assertIn("0 errors, 0 warnings", text)

            name = "deta_test_check_dataset"
            register_deta_coco_instances(name, {}, json_file, root)
            try:
                status, text = _run(["--dataset", name])
            finally:
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
            self.assertEqual(status, 0, text)
            self.assertIn(f"dataset '{name}'", text)

    def test_registered_dicts_without_json(self):
        path = os.path.join(self._tmp.name, "images", "ok.jpg")
        bbox = {"bbox_mode": BoxMode.XYWH_ABS, "iscrowd": 0}
        dicts = [
            {
                "file_name": path,
                "image_id": 1,
                "width": 40,
                "height": 30,
                "annotations": [
                    dict(bbox, bbox=[1, 1, 5, 5], category_id=0, id=1),
                    dict(bbox, bbox=[1, 1, 5, float("inf")], category_id=0, id=2),
                    dict(bbox, bbox=[1, 1, 5, 5], category_id=5, id=3),
                ],
            },
            {"file_name": path + ".gone", "image_id": 2, "width": 40, "height": 30},
        ]
        name = "deta_test_check_dataset_dicts"
        DatasetCatalog.register(name, lambda: dicts)
        MetadataCatalog.get(name).thing_classes = ["a", "b"]
        try:
            status, text = _run(["--dataset", name])
        finally:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        self.assertEqual(status, 1)
        self.assertIn("annotation id=2 of image", text)
        self.assertIn("NaN or infinite", text)
        self.assertIn("annotation id=3 of image", text)
        self.assertIn("category_id=5 is not a contiguous class id 0..1", text)
        self.assertIn("ok.jpg.gone' (image_id=2) does not exist", text)

    def test_usage_errors(self):
        for argv in ([], ["--json", self.json_file], ["--dataset", "x", "--images", "y"]):
            with self.subTest(argv=argv):
                with (
                    self.assertRaises(SystemExit) as ctx,
                    contextlib.redirect_stderr(io.StringIO()),
                ):
                    main(argv)
                self.assertEqual(ctx.exception.code, 2)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            self.assertEqual(main(["--dataset", "no_such_dataset_xyz"]), 2)
        self.assertIn("no_such_dataset_xyz", err.getvalue())

    def test_invalid_json(self):
        bad = os.path.join(self._tmp.name, "bad.json")
        with open(bad, "w") as f:
            f.write('{"images": [')
        status, text = _run(["--json", bad, "--images", self.images])
        self.assertEqual(status, 1)
        self.assertIn("invalid_json", text)
        self.assertIn("bad.json", text)
        with open(bad, "w") as f:
            json.dump([1, 2], f)
        self.assertEqual(_run(["--json", bad, "--images", self.images])[0], 1)


if __name__ == "__main__":
    unittest.main()
