"""Multi-process CPU runs of ``train_net.py`` (gloo): training, and evaluation parity.

Each run is a subprocess of the real command line (``--num-gpus 2`` spawns two CPU workers when
CUDA is absent), so the process groups never touch the pytest process.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

import torch

from .helpers.train import INSTANT_CONFIG, REPO, make_tiny_dataset

_COPYPASTE = re.compile(r"copypaste: ([0-9.]+,[0-9.,nan]+)")


def _run(env, output_dir, num_gpus, *opts, eval_only=False):
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", INSTANT_CONFIG]
    cmd += ["--num-gpus", str(num_gpus), "--dist-url", "auto"]
    if eval_only:
        cmd.append("--eval-only")
    cmd += ["OUTPUT_DIR", output_dir, *map(str, opts)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc.stdout + proc.stderr


def _ap_line(log):
    found = _COPYPASTE.findall(log)
    if not found:
        raise AssertionError(f"no AP in the log:\n{log[-3000:]}")
    return found[-1]


def _predictions(output_dir):
    with open(os.path.join(output_dir, "inference", "coco_instances_results.json")) as f:
        preds = json.load(f)
    return sorted(preds, key=lambda d: (d["image_id"], d["category_id"], -d["score"], d["bbox"]))


@unittest.skipIf(torch.cuda.is_available(), "the CPU (gloo) path is only taken without CUDA")
class TestDistributedCPU(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        make_tiny_dataset(cls._tmp.name)
        cls.env = dict(
            os.environ,
            DETECTRON2_DATASETS=cls._tmp.name,
            PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
            OMP_NUM_THREADS="1",  # same per-process numerics for 1 and 2 workers
        )
        cls.train_dir = os.path.join(cls._tmp.name, "train2")
        # 6 iterations of 4 images: 2 per worker.
        cls.train_log = _run(
            cls.env,
            cls.train_dir,
            2,
            "SOLVER.MAX_ITER", 6,
            "SOLVER.IMS_PER_BATCH", 4,
            "SOLVER.CHECKPOINT_PERIOD", 100,
        )  # fmt: skip

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def test_two_process_training(self):
        self.assertIn("Starting training from iteration 0", self.train_log)
        ckpt = torch.load(os.path.join(self.train_dir, "model_final.pth"), weights_only=True)
        self.assertEqual(ckpt["iteration"], 5)
        # Two workers, each with a shard of the batch.
        self.assertIn("on 2 devices", self.train_log)

    def test_distributed_eval_matches_single_process(self):
        weights = os.path.join(self.train_dir, "model_final.pth")
        one = os.path.join(self._tmp.name, "eval1")
        two = os.path.join(self._tmp.name, "eval2")
        ap_one = _ap_line(_run(self.env, one, 1, "MODEL.WEIGHTS", weights, eval_only=True))
        ap_two = _ap_line(_run(self.env, two, 2, "MODEL.WEIGHTS", weights, eval_only=True))
        self.assertEqual(ap_one, ap_two)
        p1, p2 = _predictions(one), _predictions(two)
        self.assertGreater(len(p1), 0)
        self.assertEqual(len(p1), len(p2))
        for a, b in zip(p1, p2):
            self.assertEqual((a["image_id"], a["category_id"]), (b["image_id"], b["category_id"]))
            self.assertAlmostEqual(a["score"], b["score"], places=5)
            for x, y in zip(a["bbox"], b["bbox"]):
                self.assertAlmostEqual(x, y, places=3)


if __name__ == "__main__":
    unittest.main()
