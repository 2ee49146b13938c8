"""A corrupt, truncated or missing weights file: one line naming the file, never unsafe advice.

``deta.checkpoint.load_weights_only`` diagnoses the file; ``train_net.py --eval-only``,
``tools/visualize_predictions.py``, ``tools/visualize_assignment.py``,
``tools/compare_assignment.py`` and ``tools/benchmark.py`` are run as a user runs them (a
subprocess), since what matters is what the terminal shows: exit status 2, one line on stderr,
no traceback.
"""

import os
import subprocess
import sys
import tempfile
import unittest

import torch

from deta.checkpoint import CheckpointError, load_weights_only

from .helpers.train import INSTANT_CONFIG, REPO


def write_broken_files(folder):
    """{kind: path} of a garbage file, a truncated torch.save archive and a missing path."""
    garbage = os.path.join(folder, "garbage.pth")
    with open(garbage, "wb") as f:
        f.write(b"not a checkpoint, just some bytes" * 4)
    good = os.path.join(folder, "good.pth")
    torch.save({"model": {"w": torch.arange(10000.0)}}, good)
    truncated = os.path.join(folder, "truncated.pth")
    with open(good, "rb") as f:
        data = f.read()
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    return {
        "garbage": (garbage, "is not a PyTorch checkpoint"),
        "truncated": (truncated, "truncated or corrupt"),
        "missing": (os.path.join(folder, "nowhere.pth"), "no such file"),
    }


class TestLoader(unittest.TestCase):
    def test_each_kind_is_named(self):
        with tempfile.TemporaryDirectory() as tmp:
            for kind, (path, why) in write_broken_files(tmp).items():
                with self.subTest(kind), self.assertRaises(CheckpointError) as ctx:
                    load_weights_only(path)
                message = str(ctx.exception)
                self.assertIn(path, message)
                self.assertIn(why, message)
                self.assertNotIn("weights_only=False", message)
                self.assertEqual(message.count("\n"), 0, message)
                self.assertIsNone(ctx.exception.__cause__)

    def test_objects_beyond_tensors_are_refused_without_unsafe_advice(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "object.pth")
            torch.save({"model": {}, "callback": unittest.TestCase}, path)
            with self.assertRaises(CheckpointError) as ctx:
                load_weights_only(path)
        self.assertIn("holds Python objects", str(ctx.exception))
        self.assertNotIn("weights_only=False", str(ctx.exception))


class TestTools(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory()
        cls.files = write_broken_files(cls._tmp.name)

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def run_tool(self, *argv):
        # Detectron2 v0.6 warns about torch.jit.script at import; that is not the tool talking.
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        return subprocess.run(
            [sys.executable, *argv], cwd=self._tmp.name, env=env, capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip

    def check_one_line(self, proc, path, why):
        self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
        # Detectron2's environment report may log torch's CUDA_HOME warning first; the tool's
        # own words are one "error:" line, the last.
        lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
        self.assertEqual(len(lines), 1, proc.stderr[-2000:])
        self.assertTrue(proc.stderr.strip().endswith(lines[0]), proc.stderr[-2000:])
        self.assertIn(path, lines[0])
        self.assertIn(why, lines[0])
        self.assertNotIn("weights_only=False", proc.stdout + proc.stderr)
        self.assertNotIn("Traceback", proc.stdout + proc.stderr)

    def test_train_net_eval_only(self):
        for kind in ("garbage", "truncated"):
            path, why = self.files[kind]
            with self.subTest(kind):
                proc = self.run_tool(
                    os.path.join(REPO, "train_net.py"), "--config-file", INSTANT_CONFIG,
                    "--eval-only", "MODEL.WEIGHTS", path, "OUTPUT_DIR", self._tmp.name,
                )  # fmt: skip
                self.check_one_line(proc, path, why)

    def test_benchmark(self):
        path, why = self.files["truncated"]
        proc = self.run_tool(
            os.path.join(REPO, "tools", "benchmark.py"), "inference", "--config-file",
            INSTANT_CONFIG, "--weights", path, "--image-sizes", "96x128", "--batch-sizes", "1",
        )  # fmt: skip
        self.check_one_line(proc, path, why)

    def test_visualize_predictions(self):
        path, why = self.files["garbage"]
        proc = self.run_tool(
            os.path.join(REPO, "tools", "visualize_predictions.py"), "--config-file",
            INSTANT_CONFIG, "MODEL.WEIGHTS", path,
        )  # fmt: skip
        self.check_one_line(proc, path, why)

    def test_visualize_assignment_stops_before_writing_the_dataset(self):
        path, why = self.files["truncated"]
        proc = self.run_tool(
            os.path.join(REPO, "tools", "visualize_assignment.py"), "MODEL.WEIGHTS", path,
        )  # fmt: skip
        self.check_one_line(proc, path, why)
        self.assertFalse(os.path.exists(os.path.join(self._tmp.name, "output", "demo")))

    def test_compare_assignment_stops_before_the_first_run(self):
        for kind in ("garbage", "missing"):
            path, why = self.files[kind]
            with self.subTest(kind):
                proc = self.run_tool(
                    os.path.join(REPO, "tools", "compare_assignment.py"), "--output",
                    os.path.join(self._tmp.name, "cmp"), "MODEL.WEIGHTS", path,
                )  # fmt: skip
                self.check_one_line(proc, path, why)
                self.assertFalse(os.path.exists(os.path.join(self._tmp.name, "cmp", "datasets")))


if __name__ == "__main__":
    unittest.main()
