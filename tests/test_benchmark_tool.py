"""``tools/benchmark.py`` runs its modes end to end and writes what BENCHMARKS.md quotes.

Tiny model and inputs, one timed iteration: this checks that the command lines work and that the
JSON holds the fields (and the parity check) the documentation relies on, not any speed.
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "quick_schedules", "deta_instant_test.yaml")
# The tiny config with FrozenBN, so that the fused CPU ResNet is what gets checked.
FROZEN_BN = ["MODEL.RESNETS.NORM", "FrozenBN"]


def benchmark(mode, *argv):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        # --json before the rest: --opts takes every argument after it.
        tool = os.path.join(REPO, "tools", "benchmark.py")
        cmd = [sys.executable, tool, mode, "--json", out, *argv]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run(cmd, check=True, cwd=REPO, env=env, capture_output=True, text=True)
        with open(out) as f:
            return json.load(f)


class TestBenchmarkTool(unittest.TestCase):
    def test_inference_with_parity_check(self):
        result = benchmark(
            "inference", "--config-file", TINY, "--threads", "1", "--image-sizes", "96x128",
            "--batch-sizes", "1", "2", "--warmup", "0", "--iters", "1", "--check",
            "--opts", *FROZEN_BN,
        )  # fmt: skip
        self.assertEqual(result["machine"]["threads"], 1)
        rows = result["results"]
        self.assertEqual([r["batch_size"] for r in rows], [1, 2])
        for row in rows:
            ours = row["ours"]
            self.assertGreater(ours["forward"]["mean_s"], 0)
            self.assertGreater(ours["e2e"]["mean_s"], 0)
            self.assertEqual(ours["shapes"]["pred_logits"], [row["batch_size"], 20, 6])
        # --check runs once, at the smallest batch.
        check = rows[0]["ours"]["check"]
        self.assertTrue(check["pass_1e-4"], check)
        self.assertEqual(check["selected_same_fraction"], 1.0)
        self.assertNotIn("check", rows[1]["ours"])

    def test_breakdown_names_every_stage(self):
        result = benchmark(
            "breakdown", "--config-file", TINY, "--threads", "1", "--image-size", "96x128",
            "--iters", "1", "--opts", *FROZEN_BN,
        )  # fmt: skip
        stages = {s["stage"]: s["ms"] for s in result["stages"]}
        for name in ("backbone", "encoder", "decoder", "post-process (NMS)"):
            self.assertGreater(stages[name], 0, name)
        self.assertTrue(result["top_ops"])

    def test_train_and_assign(self):
        train = benchmark(
            "train", "--config-file", TINY, "--threads", "1", "--image-size", "96x128",
            "--batch-sizes", "2", "--warmup", "1", "--iters", "1",
        )  # fmt: skip
        self.assertGreater(train["results"][0]["ours"]["step"]["mean_s"], 0)
        assign = benchmark("assign", "--threads", "1", "--warmup", "0", "--iters", "1")
        self.assertEqual([r["num_gt"] for r in assign["results"]], [10, 50, 100])
        for row in assign["results"]:
            for method in ("stage1", "stage2", "hungarian"):
                self.assertGreater(row[method]["mean_s"], 0)


if __name__ == "__main__":
    unittest.main()
