"""``tools/benchmark.py roofline`` and ``--probe-machine``: the FLOP accounting per stage, the
arithmetic of the table, the machine probe and the stage mapping.

Tiny model (configs/quick_schedules/deta_instant_test.yaml) at 128x160, one timed iteration and
a small probe, all in-process: this checks what the mode must get right, not any speed.
"""

import contextlib
import io
import json
import os
import sys
import tempfile
import unittest
from functools import partial
from unittest import mock

import torch

from deta import fast_cpu
from deta.utils.cli import CliError
from deta.utils.flops import STAGES as MODULE_STAGES
from deta.utils.flops import real_flops
from tools import analyze_model
from tools.benchmarking import cli
from tools.benchmarking.breakdown import OTHER, TOP_LEVEL
from tools.benchmarking.machine import probe_machine
from tools.benchmarking.roofline import BLOCKS, ENCODER_PARTS, ENCODER_REST, ROWS, mode_roofline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "quick_schedules", "deta_instant_test.yaml")
SIZE = (128, 160)
# A probe small enough for a test: 256^3 GEMMs, a 16 MiB copy.
SMALL_PROBE = partial(probe_machine, gemm_n=256, copy_mib=16, repeats=2)


def roofline_args(*extra):
    size = f"{SIZE[0]}x{SIZE[1]}"
    argv = ["roofline", "--config-file", TINY, "--threads", "1", "--image-size", size]
    return cli.parse_args([*argv, "--iters", "1", "--warmup", "0", *extra])


class TestRoofline(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # One thread: OpenMP threads spinning on a shared 2-core machine slow everything down.
        cls._threads = torch.get_num_threads()
        torch.set_num_threads(1)
        cls.probe = SMALL_PROBE(1)
        args = roofline_args()
        args.probe = cls.probe
        with contextlib.redirect_stdout(io.StringIO()) as out:
            cls.result = mode_roofline(args)
        cls.printed = out.getvalue()

    @classmethod
    def tearDownClass(cls):
        torch.set_num_threads(cls._threads)

    def test_probe_is_positive(self):
        p = self.probe
        self.assertGreater(p["gemm_fp32_gflops"], 0)
        self.assertGreater(p["copy_gbs"], 0)
        if fast_cpu.capabilities().bf16:
            self.assertGreater(p["gemm_bf16_gflops"], 0)
        else:
            self.assertIsNone(p["gemm_bf16_gflops"])
        self.assertEqual(p["threads"], 1)
        self.assertEqual(p["isa"]["aten_capability"], torch.backends.cpu.get_cpu_capability())
        self.assertEqual(torch.get_num_threads(), 1)  # restored

    def test_rows_sum_to_analyze_models_total(self):
        # analyze_model's own CLI on the same config and size (its image differs: FLOPs do not).
        with tempfile.TemporaryDirectory() as tmp:
            argv = ["--tasks", "flop", "--size", *map(str, SIZE), "--output", tmp]
            with contextlib.redirect_stdout(io.StringIO()):
                analyze_model.main([*argv, "--config-file", TINY])
            with open(os.path.join(tmp, "report.json")) as f:
                flop = json.load(f)["flop"]
        rows = {r["stage"]: r for r in self.result["rows"]}
        self.assertEqual(list(rows), ROWS)
        top = [rows[label] for label in TOP_LEVEL + [OTHER]]
        self.assertEqual(sum(r["fvcore_flops"] for r in top), flop["total_flops"])
        self.assertEqual(self.result["total"]["fvcore_flops"], flop["total_flops"])
        # Real FLOPs: twice fvcore's multiply-adds, the norms as counted.
        self.assertAlmostEqual(
            self.result["total"]["flops"], real_flops(flop["by_operator_flops"]), delta=1
        )
        self.assertGreater(self.result["total"]["flops"], 1.9 * flop["total_flops"])
        # The encoder's parts have FLOPs of their own and fit in it.
        parts = [rows[p] for p in ENCODER_PARTS]
        for part in parts:
            self.assertGreater(part["flops"], 0, part["stage"])
        self.assertLessEqual(sum(p["flops"] for p in parts), rows["encoder"]["flops"])

    def test_fractions_are_flops_over_time_over_peak(self):
        peak = self.result["peak"]["gflops"]
        self.assertEqual(peak, self.probe["gemm_fp32_gflops"])  # fp32 run: the fp32 peak
        for r in self.result["rows"] + [self.result["total"]]:
            if r["stage"] in TOP_LEVEL or r["stage"] in ENCODER_PARTS or r["stage"] == "total":
                self.assertGreater(r["ms"], 0, r["stage"])  # every scope ran
            self.assertGreaterEqual(r["ms"], 0)
            self.assertAlmostEqual(r["ms_at_peak"], 1e3 * r["flops"] / (peak * 1e9))
            self.assertAlmostEqual(r["gap_ms"], r["ms"] - r["ms_at_peak"])
            if r["ms"] == 0:
                self.assertIsNone(r["fraction_of_peak"])
                continue
            achieved = r["flops"] / (r["ms"] / 1e3) / 1e9
            self.assertAlmostEqual(r["gflops_per_s"], achieved)
            self.assertAlmostEqual(r["fraction_of_peak"], achieved / peak)

    def test_rows_add_up_to_the_total_time(self):
        # Rows and total come from the same profiled iterations; OTHER is what the rows leave.
        rows = {r["stage"]: r for r in self.result["rows"]}
        total = self.result["total"]
        self.assertAlmostEqual(total["ms"], 1e3 * self.result["measurement"]["profiled_mean_s"])
        top = sum(rows[label]["ms"] for label in TOP_LEVEL)
        self.assertLessEqual(top, total["ms"] + 1e-6)
        self.assertAlmostEqual(rows[OTHER]["ms"], total["ms"] - top)
        self.assertAlmostEqual(sum(r["ms"] for r in self.result["gap_order"]), total["ms"])

    def test_gap_order_covers_the_forward(self):
        gaps = self.result["gap_order"]
        self.assertEqual(gaps, sorted(gaps, key=lambda r: r["gap_ms"], reverse=True))
        leaves = [s for s in TOP_LEVEL + [OTHER] if s != "encoder"] + [*ENCODER_PARTS, ENCODER_REST]
        self.assertCountEqual([r["stage"] for r in gaps], leaves)
        self.assertAlmostEqual(
            sum(r["flops"] for r in gaps), self.result["total"]["flops"], delta=1
        )
        self.assertIn("gap ms", self.printed)
        self.assertIn("2 x fvcore's count", self.printed)

    def test_stage_mapping_covers_every_stage(self):
        stages = [s for block, _ in BLOCKS for s in block]
        self.assertCountEqual(stages, [s for s, _ in MODULE_STAGES])  # each exactly once
        rows = [r for _, block in BLOCKS for r in block]
        self.assertCountEqual(rows, TOP_LEVEL + [OTHER])
        # On the model, the FLOPs by module and by scope agree block by block.
        for block in self.result["blocks"]:
            self.assertTrue(block["agree"], block)
            self.assertEqual(block["by_module"], block["by_scope"])
        by_stage = self.result["by_module_stage_flops"]
        self.assertEqual(sum(by_stage.values()), self.result["fvcore_total"])

    def test_bad_flags_are_one_line_errors(self):
        for extra, what in ((["--dtype", "fp16"], "--dtype fp16"), (["--device", "cuda"], "cuda")):
            with self.assertRaises(CliError) as ctx:
                mode_roofline(roofline_args(*extra))
            self.assertIn(what, str(ctx.exception))
            self.assertNotIn("\n", str(ctx.exception))


class TestProbeMachineFlag(unittest.TestCase):
    def test_every_mode_takes_it(self):
        for mode in cli.MODES:
            # Opt-in, except for roofline, whose limit it is.
            self.assertEqual(cli.parse_args([mode]).probe_machine, mode == "roofline", mode)
            self.assertTrue(cli.parse_args([mode, "--probe-machine"]).probe_machine, mode)

    def test_probe_in_header_and_json(self):
        threads = torch.get_num_threads()
        self.addCleanup(torch.set_num_threads, threads)  # main sets them
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "assign.json")
            argv = ["benchmark.py", "assign", "--config-file", TINY, "--threads", "1"]
            argv += ["--warmup", "0", "--iters", "1", "--num-gts", "5", "--tokens", "300"]
            argv += ["--probe-machine", "--json", out]
            with (
                mock.patch.object(sys, "argv", argv),
                mock.patch.object(cli, "probe_machine", SMALL_PROBE),
                contextlib.redirect_stdout(io.StringIO()) as printed,
            ):
                cli.main()
            with open(out) as f:
                machine = json.load(f)["machine"]
        probe = machine["probe"]
        self.assertGreater(probe["gemm_fp32_gflops"], 0)
        self.assertGreater(probe["copy_gbs"], 0)
        self.assertEqual(machine["isa"], probe["isa"])
        self.assertIn("fp32 GEMM", printed.getvalue())
        self.assertIn("ISA: ATen", printed.getvalue())


if __name__ == "__main__":
    unittest.main()
