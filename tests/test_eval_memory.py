"""Evaluation over a few hundred images keeps memory flat: nothing grows per image.

The real evaluation path (``DetaDatasetMapper`` test loader, ``inference_on_dataset``,
``COCOEvaluator``) runs a tiny DETA over 300 synthetic images while a probe records the process's
resident memory after every image, twice over the same images. The second pass must not raise
the settled RSS by more than a fraction of what keeping one image per image alive would cost, and a
deliberately leaking evaluator measured the same way must be caught, so the check can fail.
"""

import ctypes
import gc
import logging
import os
import tempfile
import unittest

import numpy as np
import psutil
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators, inference_on_dataset
from detectron2.modeling import build_model

from deta import DetaDatasetMapper
from deta.data import SYNTHETIC_CATEGORIES, generate_synthetic_coco
from deta.data.datasets import register_deta_coco_instances
from deta.evaluation import build_coco_evaluator

from .helpers.tiny import tiny_cfg

NUM_IMAGES = 300
logger = logging.getLogger(__name__)


def settled_rss() -> int:
    """RSS after freed heap memory is handed back, so that reuse of memory freed earlier (by
    another test, say) cannot hide growth."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the plain RSS is still an upper bound
        pass
    return psutil.Process().memory_info().rss


class RssProbe(DatasetEvaluator):
    """Records the resident set size (bytes) after every processed image."""

    def __init__(self):
        self.proc = psutil.Process()
        self.rss = []

    def reset(self):
        self.rss = []

    def process(self, inputs, outputs):
        self.rss.extend([self.proc.memory_info().rss] * len(inputs))

    def evaluate(self):
        return {}


_LEAKED = []  # module-level, never cleared: what a real leak looks like


class LeakingEvaluator(DatasetEvaluator):
    """Keeps a copy of every image it is given, across resets: the bug the probe must catch."""

    def process(self, inputs, outputs):
        _LEAKED.extend(x["image"].clone().float() for x in inputs)

    def evaluate(self):
        return {}


def slope_per_image(rss):
    """Least-squares slope of the RSS in bytes per image."""
    return float(np.polyfit(np.arange(len(rss)), np.asarray(rss, dtype=np.float64), 1)[0])


class TestEvaluationMemory(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.threads = torch.get_num_threads()
        torch.set_num_threads(1)
        cls.tmp = tempfile.TemporaryDirectory()
        root = os.path.join(cls.tmp.name, "deta_synthetic")
        generate_synthetic_coco(
            root, num_train=1, num_val=NUM_IMAGES, seed=3, min_long_side=96, max_long_side=128
        )
        cls.dataset = "deta_test_eval_memory"
        if cls.dataset not in DatasetCatalog.list():
            classes = list(SYNTHETIC_CATEGORIES)
            meta = {
                "thing_classes": classes,
                "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(classes))},
            }
            json_file = os.path.join(root, "annotations", "instances_val.json")
            register_deta_coco_instances(cls.dataset, meta, json_file, os.path.join(root, "val"))
        cls.cfg = tiny_cfg(
            "MODEL.DETA.NUM_CLASSES", 6,
            "INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 128,
            "OUTPUT_DIR", cls.tmp.name,
        )  # fmt: skip
        torch.manual_seed(0)
        cls.model = build_model(cls.cfg).eval()
        cls.loader = build_detection_test_loader(
            cls.cfg, cls.dataset, mapper=DetaDatasetMapper(cls.cfg, is_train=False)
        )

    @classmethod
    def tearDownClass(cls):
        torch.set_num_threads(cls.threads)
        DatasetCatalog.remove(cls.dataset)
        MetadataCatalog.remove(cls.dataset)
        cls.tmp.cleanup()

    def run_eval(self, make_evaluator):
        """Two passes over the dataset: the RSS after every image and after each pass."""
        passes, settled = [], []
        for _ in range(2):
            probe = RssProbe()
            evaluators = DatasetEvaluators([make_evaluator(), probe])
            results = inference_on_dataset(self.model, self.loader, evaluators)
            self.assertEqual(len(probe.rss), NUM_IMAGES)
            passes.append(probe.rss)
            settled.append(settled_rss())
        return results, passes, settled

    def test_memory_is_flat_over_300_images(self):
        results, (first, second), settled = self.run_eval(
            lambda: build_coco_evaluator(self.cfg, self.dataset)
        )
        self.assertIn("AP", results["bbox"])  # the evaluation really ran to the end
        growth = settled[1] - settled[0]
        logger.info(
            f"eval memory, 2 x {NUM_IMAGES} images (COCOEvaluator): RSS after pass 1 "
            f"{settled[0] / 2**20:.1f} MiB, after pass 2 {settled[1] / 2**20:.1f} MiB; "
            f"slope {slope_per_image(first) / 1024:.1f} / {slope_per_image(second) / 1024:.1f} "
            "KiB per image"
        )
        # The first pass meets every input shape once (oneDNN builds and caches primitives per
        # shape) and fills the evaluator's per-image records; the second pass over the same
        # images must then add nothing. A leak of one input image per image is 144 KiB x 300 =
        # 42 MiB; RSS itself moves by a few MiB as the allocator returns memory.
        self.assertLess(growth, 16 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB in pass 2")

    def test_probe_catches_a_leak(self):
        _, _, settled = self.run_eval(LeakingEvaluator)
        _LEAKED.clear()
        growth = settled[1] - settled[0]
        self.assertGreater(growth, 32 * 2**20, f"a 42 MiB leak measured {growth / 2**20:.1f} MiB")


if __name__ == "__main__":
    unittest.main()
