"""The CPU inference fast paths compute what the plain modules compute.

Each helper of ``deformable_transformer`` takes its oneDNN branch when autograd is off and the
plain PyTorch modules otherwise, so running it once under ``no_grad`` and once under
``enable_grad`` compares the two branches. The deformable-attention branch re-implements
``MSDeformAttn.forward`` step by step; this test keeps the two in step.
"""

import os
import subprocess
import sys
import unittest

import torch
from torch import nn

from deta.layers import MSDeformAttn
from deta.modeling.deformable_transformer import (
    _ONEDNN_LINEAR,
    MLP,
    chunked_ffn,
    deform_attn,
    fast_cpu_inference,
    linear,
    self_attention,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def both_paths(fn, *args):
    """(fast, plain) results of ``fn(*args)``."""
    with torch.no_grad():
        assert fast_cpu_inference(args[0])
        fast = fn(*args)
    with torch.enable_grad():
        plain = fn(*args).detach()
    return fast, plain


@unittest.skipIf(_ONEDNN_LINEAR is None, "no oneDNN fast path in this build")
class TestFastPathsMatchPlainModules(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)

    def assertClose(self, fast, plain, tol=1e-5):
        self.assertEqual(fast.shape, plain.shape)
        err = (fast - plain).abs().max().item()
        self.assertLess(err, tol * max(1.0, plain.abs().max().item()), f"max |Δ| {err:.3g}")

    def test_linear_mlp_and_chunked_ffn(self):
        x = torch.randn(2, 300, 32)
        layer = nn.Linear(32, 48)
        self.assertClose(*both_paths(lambda t: linear(t, layer, relu=True), x))
        mlp = MLP(32, 32, 4, 3)
        self.assertClose(*both_paths(mlp, x))
        l1, l2 = nn.Linear(32, 64), nn.Linear(64, 32)
        # chunk=128 splits 600 tokens unevenly: the pieces must be reassembled in order.
        self.assertClose(*both_paths(lambda t: chunked_ffn(t, l1, l2, chunk=128), x))

    def test_self_attention(self):
        mha = nn.MultiheadAttention(32, 4, dropout=0.0).eval()
        qk, v = torch.randn(2, 50, 32), torch.randn(2, 50, 32)
        self.assertClose(*both_paths(lambda a, b: self_attention(mha, a, b), qk, v))

    def test_deform_attn_2d_and_4d_references_with_padding(self):
        shapes = torch.tensor([[12, 16], [6, 8], [3, 4]])
        starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
        n, s = 2, int(shapes.prod(1).sum())
        attn = MSDeformAttn(32, n_levels=3, n_heads=4, n_points=2).eval()
        # Non-zero offset weights, so that the folded (W, H) normalisation is exercised.
        nn.init.normal_(attn.sampling_offsets.weight, std=0.05)
        value = torch.randn(n, s, 32)
        padding = torch.zeros(n, s, dtype=torch.bool)
        padding[1, -20:] = True
        for name, query, ref in (
            ("encoder, 2-d", torch.randn(n, s, 32), torch.rand(n, s, 3, 2)),
            ("decoder, 4-d", torch.randn(n, 30, 32), torch.rand(n, 30, 3, 4) * 0.5 + 0.25),
        ):
            with self.subTest(name):
                fast, plain = both_paths(
                    lambda q, r: deform_attn(attn, q, r, value, shapes, starts, padding), query, ref
                )
                self.assertClose(fast, plain)


if __name__ == "__main__":
    unittest.main()


@unittest.skipIf(_ONEDNN_LINEAR is None, "no oneDNN fast path in this build")
class TestSwitchOff(unittest.TestCase):
    def test_env_var_turns_every_fast_path_off(self):
        # Read at import, so it is checked in a fresh interpreter. Every fast path (oneDNN
        # linears, fused ResNet, channels-last input, ...) is gated by fast_cpu_inference.
        probe = (
            "import torch\n"
            "from deta.modeling.deformable_transformer import fast_cpu_inference\n"
            "with torch.no_grad():\n"
            "    print(fast_cpu_inference(torch.zeros(1)))\n"
        )
        for value, expected in (("0", "False"), ("1", "True")):
            with self.subTest(DETA_FAST_CPU_INFERENCE=value):
                env = dict(os.environ, DETA_FAST_CPU_INFERENCE=value)
                out = subprocess.run(
                    [sys.executable, "-c", probe], env=env, cwd=REPO, check=True,
                    capture_output=True, text=True,
                )  # fmt: skip
                self.assertEqual(out.stdout.strip().splitlines()[-1], expected)
