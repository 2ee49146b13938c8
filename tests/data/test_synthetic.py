"""Tests of the synthetic dataset generator, its registration and the CLI wrapper."""

import contextlib
import io
import json
import os
import runpy
import sys
import tempfile
import unittest
from unittest import mock

import numpy as np

from detectron2.data import DatasetCatalog, MetadataCatalog

from deta.data import SYNTHETIC_CATEGORIES, generate_synthetic_coco, register_deta_synthetic
from deta.data.synthetic import render_synthetic_image

# Small and fast: the defaults (2000 + 200 images) take seconds, these take a fraction of one.
_SMALL = dict(num_train=40, num_val=8, min_long_side=96, max_long_side=160)
_TOOL = os.path.join(os.path.dirname(__file__), "..", "..", "tools", "make_synthetic_coco.py")


def _load(root, split):
    with open(os.path.join(root, "annotations", f"instances_{split}.json")) as f:
        return json.load(f)


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


class TestGenerateSyntheticCoco(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.root = os.path.join(cls._tmp.name, "a")
        cls.result = generate_synthetic_coco(cls.root, seed=3, **_SMALL)
        cls.train = _load(cls.root, "train")

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def test_result_and_layout(self):
        self.assertTrue(self.result["generated"])
        self.assertEqual(self.result["stats"]["train"]["images"], 40)
        self.assertEqual(self.result["stats"]["val"]["images"], 8)
        for split in ("train", "val"):
            self.assertTrue(os.path.isfile(self.result[f"{split}_json"]))
            coco = _load(self.root, split)
            for im in coco["images"]:
                self.assertTrue(
                    os.path.isfile(os.path.join(self.result[f"{split}_images"], im["file_name"]))
                )

    def test_deterministic(self):
        other = os.path.join(self._tmp.name, "b")
        generate_synthetic_coco(other, seed=3, **_SMALL)
        for split in ("train", "val"):
            rel = os.path.join("annotations", f"instances_{split}.json")
            self.assertEqual(
                _read_bytes(os.path.join(self.root, rel)), _read_bytes(os.path.join(other, rel))
            )
            for im in _load(self.root, split)["images"]:
                rel = os.path.join(split, im["file_name"])
                self.assertEqual(
                    _read_bytes(os.path.join(self.root, rel)), _read_bytes(os.path.join(other, rel))
                )

    def test_other_seed_differs(self):
        other = os.path.join(self._tmp.name, "c")
        generate_synthetic_coco(other, seed=4, **_SMALL)
        self.assertNotEqual(_load(other, "train")["annotations"], self.train["annotations"])

    def test_rerun_is_noop_and_changed_args_regenerate(self):
        root = os.path.join(self._tmp.name, "d")
        args = dict(num_train=4, num_val=2, min_long_side=64, max_long_side=80)
        self.assertTrue(generate_synthetic_coco(root, **args)["generated"])
        self.assertFalse(generate_synthetic_coco(root, **args)["generated"])
        self.assertTrue(generate_synthetic_coco(root, force=True, **args)["generated"])
        os.remove(os.path.join(root, "train", "000002.jpg"))  # an incomplete copy is redone
        self.assertTrue(generate_synthetic_coco(root, **args)["generated"])
        args["num_train"] = 3
        self.assertTrue(generate_synthetic_coco(root, **args)["generated"])
        self.assertEqual(
            sorted(os.listdir(os.path.join(root, "train"))),
            ["000001.jpg", "000002.jpg", "000003.jpg"],
        )

    def test_categories(self):
        cats = self.train["categories"]
        self.assertGreaterEqual(len(cats), 4)
        self.assertEqual([c["id"] for c in cats], list(range(1, len(cats) + 1)))
        self.assertEqual([c["name"] for c in cats], list(SYNTHETIC_CATEGORIES))
        used = {a["category_id"] for a in self.train["annotations"]}
        self.assertGreaterEqual(len(used), 4)

    def test_annotations(self):
        images = {im["id"]: im for im in self.train["images"]}
        ids = [a["id"] for a in self.train["annotations"]]
        self.assertEqual(len(set(ids)), len(ids))
        for a in self.train["annotations"]:
            im = images[a["image_id"]]
            x, y, w, h = a["bbox"]
            self.assertGreater(w, 0)
            self.assertGreater(h, 0)
            self.assertGreaterEqual(x, 0)
            self.assertGreaterEqual(y, 0)
            self.assertLessEqual(x + w, im["width"])
            self.assertLessEqual(y + h, im["height"])
            self.assertEqual(a["iscrowd"], 0)
            self.assertGreater(a["area"], 0)
            self.assertLessEqual(a["area"], w * h + 1e-6)
        counts = np.bincount([a["image_id"] for a in self.train["annotations"]], minlength=41)[1:]
        self.assertGreaterEqual(int((counts == 0).sum()), 1)  # some images without objects
        self.assertLessEqual(int(counts.max()), 8)
        sizes = [max(a["bbox"][2:]) for a in self.train["annotations"]]
        self.assertLess(min(sizes), 20)  # small objects ...
        self.assertGreater(max(sizes), 40)  # ... and large ones

    def test_size_and_aspect_variety(self):
        hw = [(im["height"], im["width"]) for im in self.train["images"]]
        self.assertGreater(len(set(hw)), 10)
        self.assertTrue(any(h > w for h, w in hw) and any(w > h for h, w in hw))
        for h, w in hw:
            self.assertTrue(96 <= max(h, w) <= 160)
            self.assertGreaterEqual(min(h, w) / max(h, w), 0.59)

    def test_render_respects_visibility(self):
        image, objects = render_synthetic_image(np.random.default_rng(0), 120, 100, 8)
        self.assertEqual(image.shape, (120, 100, 3))
        self.assertEqual(image.dtype, np.uint8)
        self.assertTrue(1 <= len(objects) <= 8)
        for obj in objects:
            x0, y0, x1, y1 = obj["bbox"]
            self.assertTrue(0 <= x0 < x1 <= 100 and 0 <= y0 < y1 <= 120)


class TestRegisterDetaSynthetic(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.root = cls._tmp.name
        generate_synthetic_coco(
            cls.root, num_train=6, num_val=3, min_long_side=64, max_long_side=96
        )

    @classmethod
    def tearDownClass(cls):
        register_deta_synthetic()  # back to the default root registered on import
        cls._tmp.cleanup()

    def test_register_and_load(self):
        register_deta_synthetic(self.root)
        register_deta_synthetic(self.root)  # same root: a no-op
        for name, num in (("deta_synthetic_train", 6), ("deta_synthetic_val", 3)):
            dicts = DatasetCatalog.get(name)
            self.assertEqual(len(dicts), num)
            meta = MetadataCatalog.get(name)
            self.assertEqual(meta.thing_classes, list(SYNTHETIC_CATEGORIES))
            self.assertEqual(meta.evaluator_type, "coco")
            for d in dicts:
                self.assertTrue(os.path.isfile(d["file_name"]))
                for a in d["annotations"]:
                    self.assertTrue(0 <= a["category_id"] < len(SYNTHETIC_CATEGORIES))

    def test_reregister_other_root(self):
        register_deta_synthetic(os.path.join(self.root, "elsewhere"))
        self.assertIn("elsewhere", MetadataCatalog.get("deta_synthetic_train").json_file)
        register_deta_synthetic(self.root)
        self.assertEqual(len(DatasetCatalog.get("deta_synthetic_train")), 6)

    def test_default_root_is_registered_on_import(self):
        self.assertIn("deta_synthetic_train", DatasetCatalog.list())
        self.assertIn("deta_synthetic_val", DatasetCatalog.list())


class TestMakeSyntheticCocoTool(unittest.TestCase):
    def test_cli(self):
        with tempfile.TemporaryDirectory() as tmp:
            argv = [_TOOL, "--root", tmp, "--num-train", "2", "--num-val", "1", "--seed", "1"]
            for expected in ("train: 2 images", "nothing written"):
                out = io.StringIO()
                with mock.patch.object(sys, "argv", argv), contextlib.redirect_stdout(out):
                    runpy.run_path(_TOOL, run_name="__main__")
                self.assertIn(expected, out.getvalue())


if __name__ == "__main__":
    unittest.main()
