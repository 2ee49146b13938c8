"""Flush-to-zero (deta.engine.flush_denormals): every intra-op thread flushes, not only the
caller; ``$DETA_FLUSH_DENORMAL=0`` keeps denormals; train_net.py turns it on first thing.

The checks run in subprocesses, because the floating-point mode is process state.
"""

import os
import subprocess
import sys
import unittest
from unittest import mock

from .helpers.train import load_train_net

# 4M denormal values multiplied by 1 with two threads: ATen gives each thread one half, so a
# thread left out keeps denormals (nonzero values) in its half.
PROBE = """
import torch
from deta.engine import flush_denormals
torch.set_num_threads(2)
x = torch.full((4_000_000,), 1e-39)
before = int((x * 1.0).count_nonzero())
on = flush_denormals()
after = (x * 1.0).ne(0).view(2, -1).any(1).tolist()
print(before, on, after[0], after[1])
"""


def probe(**env):
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return out


class TestFlushDenormals(unittest.TestCase):
    def test_every_thread_flushes(self):
        out = probe(DETA_FLUSH_DENORMAL="1")
        self.assertEqual(out.returncode, 0, out.stderr)
        before, on, first_half, second_half = out.stdout.split()
        self.assertEqual(int(before), 4_000_000)  # denormals survive without the setting
        self.assertEqual(on, "True")
        self.assertEqual((first_half, second_half), ("False", "False"), "a thread kept denormals")

    def test_opt_out_keeps_denormals(self):
        out = probe(DETA_FLUSH_DENORMAL="0")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.split(), ["4000000", "False", "True", "True"])

    def test_bad_value_names_the_variable(self):
        out = probe(DETA_FLUSH_DENORMAL="yes")
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("$DETA_FLUSH_DENORMAL='yes': must be 0 or 1", out.stderr)

    def test_train_net_flushes_before_setup(self):
        tn = load_train_net()

        class Stop(Exception):
            pass

        calls = []
        with mock.patch.object(tn, "flush_denormals", side_effect=lambda: calls.append("flush")):
            with mock.patch.object(tn, "setup", side_effect=lambda args: calls.append("setup")):
                with mock.patch.object(tn, "Trainer", side_effect=Stop):
                    with self.assertRaises(Stop):
                        tn.main(mock.Mock(eval_only=False))
        self.assertEqual(calls, ["flush", "setup"])


if __name__ == "__main__":
    unittest.main()
