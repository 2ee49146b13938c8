"""``deta.utils.cpu_allocator``: the mode is checked, ``keep`` stops big freed tensors from
coming back as fresh (page-faulting) memory, and the entry points apply and report it."""

import contextlib
import io
import json
import mmap
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import unittest
from unittest import mock

import torch

from deta.utils import cpu_allocator
from deta.utils.cpu_allocator import ENV, allocator_mode, configure_cpu_allocator
from tools.benchmarking import allocator as allocator_bench
from tools.benchmarking.harness import time_loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "quick_schedules", "deta_instant_test.yaml")
GLIBC = platform.libc_ver()[0] == "glibc"

# In a fresh interpreter (the setting is process-wide): configure, then allocate, touch and free
# a 256 MiB tensor 20 times; print the minor page faults of the last 5 rounds and the state. The
# first rounds may fault too: posix_memalign asks for a bit more than the block a round freed,
# so the heap grows until two freed neighbours merge into a block that fits (seen: by round 7).
REUSE = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from deta.utils.cpu_allocator import configure_cpu_allocator
    state = configure_cpu_allocator(sys.argv[1])
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rounds = []
    for _ in range(20):
        before = faults()
        x = torch.empty(64 * 2**20, dtype=torch.float32)
        x.fill_(1.0)
        del x
        rounds.append(faults() - before)
    print(json.dumps({"state": state, "faults": max(rounds[-5:])}))
    """
)


def run_reuse(mode):
    out = subprocess.run(
        [sys.executable, "-c", REUSE, mode], check=True, capture_output=True, text=True, cwd=REPO
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


class TestMode(unittest.TestCase):
    def test_default_is_keep(self):
        with mock.patch.dict(os.environ, {}, clear=False):
            os.environ.pop(ENV, None)
            self.assertEqual(allocator_mode(), "keep")

    def test_environment_is_read(self):
        with mock.patch.dict(os.environ, {ENV: "system"}):
            self.assertEqual(allocator_mode(), "system")

    def test_bad_environment_value_names_variable_and_value(self):
        with mock.patch.dict(os.environ, {ENV: "jemalloc"}):
            with self.assertRaises(ValueError) as ctx:
                allocator_mode()
        self.assertIn("DETA_CPU_ALLOCATOR='jemalloc'", str(ctx.exception))
        self.assertIn("keep, system", str(ctx.exception))

    def test_bad_argument_is_named(self):
        with self.assertRaisesRegex(ValueError, "mode='fast'"):
            configure_cpu_allocator("fast")

    def test_system_does_not_touch_malloc(self):
        with mock.patch.object(cpu_allocator.ctypes, "CDLL", side_effect=AssertionError):
            self.assertTrue(configure_cpu_allocator("system").startswith("system"))

    def test_refusal_is_reported(self):
        libc = mock.Mock()
        libc.mallopt.return_value = 0
        with (
            mock.patch.object(cpu_allocator.ctypes, "CDLL", return_value=libc),
            mock.patch.object(cpu_allocator.platform, "libc_ver", return_value=("glibc", "2.36")),
        ):
            self.assertEqual(configure_cpu_allocator("keep"), "system: glibc refused mallopt")


@unittest.skipUnless(GLIBC, "mallopt is glibc's")
class TestKeep(unittest.TestCase):
    def test_freed_tensor_memory_is_reused(self):
        # 256 MiB are 65536 pages of 4 KiB; with the memory kept, the second tensor faults in
        # (almost) none of them once the heap holds a block that fits (the last 5 rounds).
        keep = run_reuse("keep")
        self.assertTrue(keep["state"].startswith("keep"), keep)
        self.assertLess(keep["faults"], 1000, keep)

    def test_system_reports_itself(self):
        self.assertTrue(run_reuse("system")["state"].startswith("system"))


def fake_run(state, mean_s, peak_mib):
    step = {"mean_s": mean_s, "peak_mib": peak_mib}
    return {"image_size": "8x8", "batch_size": 1, "ours": {"allocator": state, "step": step}}


class TestRatios(unittest.TestCase):
    def test_repeated_modes_give_the_ratio_of_medians(self):
        results = [
            fake_run("system: as is", 3.0, 100), fake_run("keep: kept", 2.0, 120),
            fake_run("system: as is", 5.0, 100), fake_run("keep: kept", 2.5, 130),
            fake_run("system: as is", 4.0, 100), fake_run("keep: kept", 9.0, 110),
        ]  # fmt: skip
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            allocator_bench.print_ratios(results, ("image_size", "batch_size"), ("step",))
        line = out.getvalue().splitlines()[-1]
        self.assertIn("3 system / 3 keep run(s)", line)
        self.assertIn("step 4000 -> 2500 ms = 1.60x", line)
        self.assertIn("peak 100 -> 120 MiB = 1.20x", line)

    def test_one_mode_only_prints_nothing(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            results = [fake_run("keep: kept", 1.0, 1)]
            allocator_bench.print_ratios(results, ("batch_size",), ("step",))
        self.assertEqual(out.getvalue(), "")


class TestFaultCounts(unittest.TestCase):
    def test_time_loop_counts_the_faults_of_fresh_pages(self):
        pages = 2048

        def touch_fresh_pages():
            with mmap.mmap(-1, pages * mmap.PAGESIZE) as m:  # new anonymous pages every call
                for i in range(pages):
                    m[i * mmap.PAGESIZE] = 1

        stats = time_loop(touch_fresh_pages, 1, 3, torch.device("cpu"))
        self.assertGreaterEqual(stats["faults_per_iter"], pages)

    def test_warns_only_where_kept_memory_still_faults(self):
        def run(state, faults, key="ours"):
            m = {"allocator": state, "step": {"faults_per_iter": faults, "warmup": 1}}
            return {"image_size": "8x8", "batch_size": 2, key: m}

        many = allocator_bench.GROWING_HEAP_FAULTS
        results = [
            run("keep: kept", many), run("keep: kept", many - 1), run("system: as is", 10 * many),
            run("keep: kept", 2 * many, key="peer"), {"image_size": "8x8", "batch_size": 1},
        ]  # fmt: skip
        lines = allocator_bench.growing_heap_notes(results, ("step",))
        self.assertEqual(len(lines), 2, lines)
        expected = f"ours step at 8x8 batch 2 kept memory but still made {many} page faults"
        self.assertIn(expected, lines[0])
        self.assertIn("after 1 warm-up calls", lines[0])
        self.assertTrue(lines[1].startswith("note: peer step"), lines[1])
        # Inference results: forward and e2e are each checked.
        inference = {"image_size": "8x8", "batch_size": 1, "ours": {"allocator": "keep: kept"}}
        inference["ours"]["forward"] = {"faults_per_iter": 0}
        inference["ours"]["e2e"] = {"faults_per_iter": many, "warmup": 2}
        lines = allocator_bench.growing_heap_notes([inference], ("forward", "e2e"))
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("note: ours e2e at 8x8 batch 1"), lines[0])
        self.assertIn("after 2 warm-up calls", lines[0])


class TestEntryPoints(unittest.TestCase):
    def test_train_net_rejects_a_bad_mode_in_one_line(self):
        env = dict(os.environ, **{ENV: "tcmalloc"})
        cmd = [sys.executable, "train_net.py", "--config-file", TINY]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
        self.assertIn("error: DETA_CPU_ALLOCATOR='tcmalloc'", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)

    def test_demo_rejects_a_bad_mode_in_one_line(self):
        env = dict(os.environ, **{ENV: "tcmalloc"})
        cmd = [sys.executable, "tools/demo.py", "--config-file", TINY, "--input", "missing.jpg"]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
        self.assertIn("error: DETA_CPU_ALLOCATOR='tcmalloc'", proc.stderr)

    def test_benchmark_peer_gets_its_own_mode(self):
        from tools.benchmarking.cli import parse_args
        from tools.benchmarking.harness import base_spec
        from tools.benchmarking.inference import _peer_spec

        args = parse_args(["inference", "--peer", "hf", "--allocator", "keep", "system"])
        spec = base_spec(args)
        self.assertEqual(spec["allocator"], "keep")
        self.assertEqual(_peer_spec(args, spec, "fp32", 1)["allocator"], "system")
        args = parse_args(["inference", "--peer", "hf", "--peer-allocator", "keep"])
        self.assertEqual(_peer_spec(args, base_spec(args), "fp32", 1)["allocator"], "keep")

    def test_ab_takes_one_mode(self):
        cmd = [
            sys.executable, "tools/benchmark.py", "train", "--config-file", TINY,
            "--ab", "MODEL.DETA.BACKBONE_TRAIN_DTYPE", "float32", "bfloat16",
            "--allocator", "system", "keep",
        ]  # fmt: skip
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        self.assertEqual(proc.returncode, 2, proc.stderr[-2000:])
        self.assertIn("--ab: one --allocator at a time", proc.stderr)

    def test_benchmark_measures_both_modes_and_records_them(self):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "r.json")
            cmd = [
                sys.executable, "tools/benchmark.py", "train", "--json", out, "--config-file",
                TINY, "--threads", "1", "--image-size", "64x96", "--batch-sizes", "1",
                "--boxes-per-image", "2", "--warmup", "0", "--iters", "1",
                "--allocator", "system", "keep",
            ]  # fmt: skip
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
            with open(out) as f:
                results = json.load(f)["results"]
        self.assertEqual([r["allocator"] for r in results], ["system", "keep"])
        states = [r["ours"]["allocator"] for r in results]
        self.assertTrue(states[0].startswith("system"), states)
        self.assertTrue(states[1].startswith("keep" if GLIBC else "system"), states)
        if GLIBC:
            self.assertIn("keep vs system", proc.stdout)


if __name__ == "__main__":
    unittest.main()
