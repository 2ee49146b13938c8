"""``tools/benchmark.py train --peer hf``: Hugging Face ``DetaForObjectDetection`` built from our
config trains one step on our synthetic batch, and configs it cannot express stop with one line.

The workers run as the tool runs them (``harness.run_worker``, a fresh subprocess that imports
``transformers`` from the peer path); they are skipped where that path holds no transformers.
"""

import importlib.machinery
import math
import os
import subprocess
import sys
import unittest

from tools.benchmarking.cli import DEFAULT_PEER_PATH
from tools.benchmarking.harness import run_worker
from tools.benchmarking.models import build_cfg, build_model
from tools.benchmarking.peer_hf import hf_token_error

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "quick_schedules", "deta_instant_test.yaml")  # R-18, GN
DEMO = os.path.join(REPO, "configs", "deta_R_18_synthetic_cpu.yaml")  # R-18 without res5, BN
SWIN = os.path.join(REPO, "configs", "deta_swin_L_5scale_24ep.yaml")
# The smallest input of these configs' 4 levels with the 1000 encoder tokens HF needs.
SIZE = [192, 256]
HAS_HF = importlib.machinery.PathFinder.find_spec("transformers", [DEFAULT_PEER_PATH]) is not None


def spec(config_file: str, batch_size: int) -> dict:
    return {
        "config_file": config_file,
        "opts": [],
        "device": "cpu",
        "threads": 1,
        "dtype": "fp32",
        "warmup": 0,
        "iters": 1,
        "seed": 0,
        "weights": None,
        "image_size": SIZE,
        "batch_size": batch_size,
        "boxes_per_image": 3,
        "peer_path": DEFAULT_PEER_PATH,
    }


def our_params(config_file: str) -> int:
    model = build_model(build_cfg(config_file, [], "cpu"))
    return sum(p.numel() for p in model.parameters())


class TestTrainPeer(unittest.TestCase):
    @unittest.skipUnless(HAS_HF, f"no transformers in {DEFAULT_PEER_PATH}")
    def test_hf_train_step(self):
        result = run_worker("peer_train", spec(TINY, batch_size=1))
        self.assertNotIn("error", result, result.get("error"))
        self.assertIn("transformers", result["impl"])
        # Built from our config: the same weights, one for one (GN backbone, aux heads).
        self.assertEqual(result["params"], our_params(TINY))
        self.assertTrue(math.isfinite(result["loss"]), result["loss"])
        step = result["step"]
        self.assertEqual((step["iters"], step["warmup"]), (1, 0))
        self.assertGreater(step["mean_s"], 0)
        self.assertGreater(step["peak_mib"], 0)
        # Our optimizer groups with our lr factors, and the step moved every group.
        groups = result["groups"]
        self.assertEqual(set(groups), {"default", "backbone", "linear_proj"})
        self.assertAlmostEqual(groups["linear_proj"][1], 0.1 * groups["default"][1])
        self.assertEqual(sorted(result["changed_groups"]), sorted(groups))

    @unittest.skipUnless(HAS_HF, f"no transformers in {DEFAULT_PEER_PATH}")
    def test_hf_inference_on_the_demo_backbone(self):
        # The demo's R-18 feeds res3-res4 only: HF gets a 3-stage ResNet with trainable BN.
        result = run_worker("peer", spec(DEMO, batch_size=1))
        self.assertNotIn("error", result, result.get("error"))
        self.assertEqual(result["params"], our_params(DEMO))
        self.assertEqual(result["shapes"]["pred_logits"], [1, 100, 6])
        self.assertEqual(result["forward"]["iters"], 1)

    def test_hf_token_minimum(self):
        cfg = build_cfg(DEMO, [], "cpu")
        # The demo's training size: strides 8..64 give 20x27 + 10x14 + 5x7 + 3x4 tokens.
        self.assertIn("727 encoder tokens", hf_token_error(cfg, (160, 213)))
        self.assertIsNone(hf_token_error(cfg, tuple(SIZE)))
        no_nms = build_cfg(DEMO, ["MODEL.DETA.ASSIGN_FIRST_STAGE", "False"], "cpu")
        self.assertIsNone(hf_token_error(no_nms, (160, 213)))

    def test_non_resnet_config_is_one_line(self):
        tool = os.path.join(REPO, "tools", "benchmark.py")
        cmd = [sys.executable, tool, "train", "--config-file", SWIN, "--peer", "hf"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        self.assertEqual(len(errors), 1, proc.stderr)
        self.assertIn(SWIN, errors[0])
        self.assertIn("MODEL.BACKBONE.NAME 'build_swin_backbone'", errors[0])
        self.assertNotIn("train step", proc.stdout)  # stopped before measuring


if __name__ == "__main__":
    unittest.main()
