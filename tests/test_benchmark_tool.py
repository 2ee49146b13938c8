"""``tools/benchmark.py`` runs its modes end to end and writes what BENCHMARKS.md quotes.

Tiny model and inputs, one or two timed iterations: this checks what the tool must get right (the
iterations it was asked for, the parity check, the stage accounting of ``breakdown``, the config
that ``assign`` builds its assigners from, the machine record), not any speed.
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

import torch

from deta import fast_cpu
from deta.layers import has_cpp_ext
from tools import benchmark_ms_deform_attn as msda
from tools.benchmarking.assign import assign_cfg
from tools.benchmarking.breakdown import OTHER, STAGES, TOP_LEVEL
from tools.benchmarking.cli import parse_args
from tools.benchmarking.op import mode_op

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "quick_schedules", "deta_instant_test.yaml")
TINY_QUERIES, TINY_CLASSES = 20, 6  # MODEL.DETA.NUM_QUERIES / NUM_CLASSES of TINY
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
    def assert_timings(self, timings, iters, warmup):
        """The requested iterations were timed and the statistics are those of one sample set."""
        self.assertEqual((timings["iters"], timings["warmup"]), (iters, warmup))
        self.assertLessEqual(timings["min_s"], timings["p50_s"])
        self.assertLessEqual(timings["p50_s"], timings["p90_s"])
        self.assertLessEqual(timings["min_s"], timings["mean_s"])
        self.assertGreaterEqual(timings["faults_per_iter"], 0)  # counted (Linux)

    def test_inference_with_parity_check(self):
        result = benchmark(
            "inference", "--config-file", TINY, "--threads", "1", "--image-sizes", "96x128",
            "--batch-sizes", "1", "2", "--warmup", "0", "--iters", "2", "--check",
            "--opts", *FROZEN_BN,
        )  # fmt: skip
        self.assertEqual(result["mode"], "inference")
        machine = result["machine"]
        self.assertEqual((machine["threads"], machine["device"]), (1, "cpu"))
        # The fast-path states are deta's own report, names unindented.
        expected = {name.strip(): state for name, state in fast_cpu.describe()}
        self.assertEqual(machine["cpu_fast_paths"], expected)
        self.assertEqual(machine["deta_C"]["cpu"], has_cpp_ext())
        self.assertEqual(len(machine["loadavg"]), 3)
        self.assertEqual(len(machine["loadavg_end"]), 3)
        rows = result["results"]
        self.assertEqual([(r["batch_size"], r["dtype"]) for r in rows], [(1, "fp32"), (2, "fp32")])
        for row in rows:
            ours = row["ours"]
            self.assert_timings(ours["forward"], iters=2, warmup=0)
            self.assert_timings(ours["e2e"], iters=2, warmup=0)
            batch = row["batch_size"]
            self.assertEqual(ours["shapes"]["pred_logits"], [batch, TINY_QUERIES, TINY_CLASSES])
            self.assertEqual(ours["shapes"]["pred_boxes"], [batch, TINY_QUERIES, 4])
        # --check runs once, at the smallest batch, and passes at 1e-4 on fp32.
        check = rows[0]["ours"]["check"]
        self.assertTrue(check["pass_1e-4"], check)
        self.assertLess(check["max_abs_diff_pred_logits"], 1e-4)
        self.assertLess(check["max_abs_diff_pred_boxes"], 1e-4)
        self.assertEqual(check["selected_same_fraction"], 1.0)
        self.assertNotIn("check", rows[1]["ours"])

    def test_breakdown_accounts_for_every_stage(self):
        result = benchmark(
            "breakdown", "--config-file", TINY, "--threads", "1", "--image-size", "96x128",
            "--iters", "1", "--top", "5", "--opts", *FROZEN_BN,
        )  # fmt: skip
        self.assertEqual([s["stage"] for s in result["stages"]], [s for s, _ in STAGES] + [OTHER])
        stages = {s["stage"]: s["ms"] for s in result["stages"]}
        for name in TOP_LEVEL:  # every scope of the model ran
            self.assertGreater(stages[name], 0, name)
        nested = stages["  encoder attention"] + stages["  encoder FFN"]
        self.assertLessEqual(nested, stages["encoder"] + 1e-6)
        # The top-level scopes do not overlap: they fit in the wall time of the profiled
        # iterations. The unprofiled total is another run (it can be the shorter one), and
        # "other" is what the top-level stages leave of it.
        top = sum(stages[name] for name in TOP_LEVEL)
        self.assertLessEqual(top, 1e3 * result["profiled_mean_s"])
        total = 1e3 * result["unprofiled"]["mean_s"]
        self.assertAlmostEqual(stages[OTHER], max(0.0, total - top), places=6)
        self.assert_timings(result["unprofiled"], iters=1, warmup=1)
        ops = result["top_ops"]
        self.assertEqual(len(ops), 5)
        self.assertEqual(ops, sorted(ops, key=lambda o: o["self_ms"], reverse=True))
        self.assertFalse([o["op"] for o in ops if o["op"].startswith("deta.")])

    def test_train(self):
        result = benchmark(
            "train", "--config-file", TINY, "--threads", "1", "--image-size", "96x128",
            "--batch-sizes", "2", "--warmup", "1", "--iters", "1",
        )  # fmt: skip
        (row,) = result["results"]
        self.assertEqual((row["image_size"], row["batch_size"]), ("96x128", 2))
        self.assertEqual(row["ours"]["optimizer"], "build_deta_optimizer")
        self.assert_timings(row["ours"]["step"], iters=1, warmup=1)

    def test_assign_honours_the_config(self):
        # Sample sizes small enough to cap the positives: Stage1 keeps at most 8 * 0.5 = 4,
        # Stage2 at most int(20 queries * 0.1) = 2; the matcher is one-to-one.
        result = benchmark(
            "assign", "--config-file", TINY, "--threads", "1", "--warmup", "0", "--iters", "1",
            "--num-gts", "5", "30", "--tokens", "3000",
            "--opts", "MODEL.DETA.STAGE1.BATCH_SIZE_PER_IMAGE", "8",
            "MODEL.DETA.STAGE2.POSITIVE_FRACTION", "0.1",
        )  # fmt: skip
        self.assertEqual((result["queries"], result["classes"]), (TINY_QUERIES, TINY_CLASSES))
        self.assertEqual(result["assigner_cfg"]["STAGE1"]["BATCH_SIZE_PER_IMAGE"], 8)
        self.assertEqual([r["num_gt"] for r in result["results"]], [5, 30])
        for row in result["results"]:
            for method in ("stage1", "stage2", "hungarian"):
                self.assert_timings(row[method], iters=1, warmup=0)
            positives = row["positives"]
            self.assertEqual(positives["hungarian"], min(row["num_gt"], TINY_QUERIES))
            self.assertTrue(0 < positives["stage1"] <= 4, positives)
            self.assertTrue(0 < positives["stage2"] <= 2, positives)

    def test_assign_flags_override_the_config(self):
        argv = ["assign", "--config-file", TINY, "--queries", "40", "--num-classes", "3"]
        argv += ["--opts", "MODEL.DETA.ASSIGN_SECOND_STAGE", "False"]
        d = assign_cfg(parse_args(argv)).MODEL.DETA
        self.assertEqual((d.NUM_QUERIES, d.NUM_CLASSES), (40, 3))
        # Both assigners are built whatever the config trains with.
        self.assertTrue(d.ASSIGN_FIRST_STAGE and d.ASSIGN_SECOND_STAGE)
        d = assign_cfg(parse_args(argv[:3])).MODEL.DETA
        self.assertEqual((d.NUM_QUERIES, d.NUM_CLASSES), (TINY_QUERIES, TINY_CLASSES))

    def test_trailing_overrides_and_deprecated_opts(self):
        pair = ["MODEL.DETA.NUM_CLASSES", "3"]
        trailing = parse_args(["assign", "--config", TINY, *pair, "MODEL.DETA.NUM_QUERIES", "40"])
        self.assertEqual(trailing.config_file, TINY)
        self.assertEqual(trailing.opts, [*pair, "MODEL.DETA.NUM_QUERIES", "40"])
        d = assign_cfg(trailing).MODEL.DETA
        self.assertEqual((d.NUM_QUERIES, d.NUM_CLASSES), (40, 3))
        # --opts still works, alone or after trailing pairs, and means the same.
        legacy = parse_args(["assign", "--config-file", TINY, "--opts", *pair])
        self.assertEqual(legacy.opts, pair)
        both = parse_args(["assign", *pair, "--opts", "MODEL.DETA.NUM_QUERIES", "40"])
        self.assertEqual(both.opts, trailing.opts)
        self.assertFalse(hasattr(both, "legacy_opts"))

    def test_op_mode_passes_its_flags(self):
        argv = ["op", "--threads", "1", "--iters", "3", "--warmup", "1", "--no-memory"]
        with mock.patch.object(msda, "run_benchmark", side_effect=lambda options: options):
            options = mode_op(parse_args(argv))
        self.assertEqual(options, msda.Options(threads=1, iters=3, warmup=1, no_memory=True))

    @unittest.skipIf(not has_cpp_ext(), "requires deta._C (pip install -e .)")
    def test_op_benchmark_function(self):
        threads = torch.get_num_threads()
        self.addCleanup(torch.set_num_threads, threads)  # run_benchmark sets them
        options = msda.Options(
            threads=1, warmup=0, iters=2, ref_iters=1, cases=("decoder",), no_memory=True
        )
        result = msda.run_benchmark(options)
        rows = result["results"]
        self.assertEqual(
            [(r["mode"], r["impl"], r["iters"]) for r in rows],
            [(m, impl, 2 if impl == "cpp" else 1) for m in msda.MODES for impl in msda.IMPLS],
        )
        for r in rows:
            self.assertEqual(r["queries"], msda.CASES["decoder"])
            self.assertLess(r["max_abs_diff_forward"], 1e-4)
            self.assertLessEqual(r["min_ms"], r["median_ms"])
            self.assertIsNone(r["peak_mib"])
        self.assertEqual(result["info"]["threads"], 1)


if __name__ == "__main__":
    unittest.main()
