"""``python -m deta.utils.collect_env`` names the build and every CPU fast path's state."""

import os
import subprocess
import sys
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def collect_env(**env) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "deta.utils.collect_env"],
        env=dict(os.environ, **env), cwd=REPO, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout


class TestCollectEnv(unittest.TestCase):
    def test_reports_fast_paths_and_overrides(self):
        text = collect_env(DETA_CPU_CAPS="bf16=0,onednn_conv=0", DETA_CPU_KERNEL_ISA="baseline")
        for row in ("CPU fast paths", "oneDNN linears", "fused ResNet convs", "AMX", "ATen CPU"):
            self.assertIn(row, text)
        self.assertRegex(text, r"fused ResNet convs\s+inactive: .*DETA_CPU_CAPS")
        self.assertRegex(text, r"under bf16 autocast\s+falls back to float32")
        # make setup always builds deta._C, so the kernel row must be there.
        self.assertRegex(text, r"deta._C\s+importable")
        self.assertRegex(text, r"deta._C CPU kernels\s+baseline build \(forced")

    def test_reports_the_allocator_mode(self):
        text = collect_env(DETA_CPU_ALLOCATOR="system")
        self.assertRegex(text, r"CPU allocator\s+system \(\$DETA_CPU_ALLOCATOR")
        text = collect_env(DETA_CPU_ALLOCATOR="big")
        self.assertRegex(text, r"CPU allocator\s+invalid: DETA_CPU_ALLOCATOR='big'")

    def test_switch_off(self):
        self.assertRegex(collect_env(DETA_FAST_CPU_INFERENCE="0"), r"CPU fast paths\s+off")


if __name__ == "__main__":
    unittest.main()
