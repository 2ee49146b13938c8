"""The CPU inference fast paths compute what the plain modules compute, and fall back per op.

Every module with a fast twin is run twice on the same input under ``no_grad``: once as is
(the fast path), once inside ``fast_cpu.disabled()`` (the plain PyTorch code the official
implementation runs). They must agree within float rounding (1e-5 relative). The fallbacks of
CPUs one does not have are tested by overriding the capability probe.
"""

import copy
import os
import unittest
from unittest import mock

import torch
from torch import nn

from detectron2.modeling import build_model

from deta import fast_cpu
from deta.fast_cpu.capabilities import _parse_overrides
from deta.layers import MSDeformAttn
from deta.modeling.deformable_transformer import DeformableDecoderLayer, DeformableEncoderLayer
from deta.modeling.heads import MLP

from ..helpers.tiny import tiny_batch, tiny_cfg

HAS_ONEDNN = fast_cpu.capabilities().onednn_linear


def levels():
    shapes = torch.tensor([[12, 16], [6, 8], [3, 4]])
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    return shapes, starts, int(shapes.prod(1).sum())


def both_paths(fn, *args):
    """(fast, plain) results of ``fn(*args)``, both without autograd."""
    with torch.no_grad():
        assert fast_cpu.compute_dtype(args[0]) is not None, "the fast path does not apply"
        fast = fn(*args)
        with fast_cpu.disabled():
            assert fast_cpu.compute_dtype(args[0]) is None
            plain = fn(*args)
    return fast, plain


@unittest.skipIf(not HAS_ONEDNN, "no oneDNN fast path in this build")
class TestFastPathsMatchPlainModules(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)

    def assertClose(self, fast, plain, tol=1e-5):
        self.assertEqual(fast.shape, plain.shape)
        self.assertFalse(torch.equal(fast, torch.zeros_like(fast)))
        err = (fast - plain).abs().max().item()
        self.assertLess(err, tol * max(1.0, plain.abs().max().item()), f"max |Δ| {err:.3g}")

    def test_mlp(self):
        mlp = MLP(32, 32, 4, 3).eval()
        self.assertClose(*both_paths(mlp, torch.randn(2, 300, 32)))

    def test_deform_attn_2d_and_4d_references_with_padding(self):
        shapes, starts, s = levels()
        n = 2
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
                    lambda q, r: attn(q, r, value, shapes, starts, padding), query, ref
                )
                self.assertClose(fast, plain)

    def test_encoder_and_decoder_layers(self):
        shapes, starts, s = levels()
        n = 2
        enc = DeformableEncoderLayer(32, 64, 0.1, 3, 4, 2).eval()
        dec = DeformableDecoderLayer(32, 64, 0.1, 3, 4, 2).eval()
        for layer in (enc, dec):
            nn.init.normal_(layer.self_attn.sampling_offsets.weight if layer is enc else
                            layer.cross_attn.sampling_offsets.weight, std=0.05)  # fmt: skip
        src, pos = torch.randn(n, s, 32), torch.randn(n, s, 32)
        padding = torch.zeros(n, s, dtype=torch.bool)
        padding[0, -10:] = True
        ref2 = torch.rand(n, s, 3, 2)
        # More tokens than one FFN chunk (2048) would need a bigger map; chunking is checked in
        # test_chunked_ffn_reassembles_in_order.
        self.assertClose(*both_paths(lambda x: enc(x, pos, ref2, shapes, starts, padding), src))
        tgt, qpos = torch.randn(n, 30, 32), torch.randn(n, 30, 32)
        ref4 = torch.rand(n, 30, 3, 4) * 0.5 + 0.25
        self.assertClose(
            *both_paths(lambda t: dec(t, qpos, ref4, src, shapes, starts, padding), tgt)
        )

    def test_chunked_ffn_reassembles_in_order(self):
        from deta.fast_cpu.ops import chunked_ffn

        x = torch.randn(2, 300, 32)
        l1, l2 = nn.Linear(32, 64), nn.Linear(64, 32)
        with torch.no_grad():
            # chunk=128 splits 600 tokens unevenly: the pieces must be reassembled in order.
            fast = chunked_ffn(x, l1, l2, torch.float32, chunk=128)
            plain = l2(torch.relu(l1(x)))
        self.assertClose(fast, plain)

    def test_whole_model_matches_with_selection_pinned(self):
        model = build_model(tiny_cfg()).eval()
        batch = tiny_batch()
        images = model.preprocess_image(batch)
        x, mask = images.tensor, model.padding_mask(images)
        with torch.no_grad(), fast_cpu.disabled():
            plain = model.forward_features(x, mask)
        chosen = plain["extras"]["selected"]
        model.transformer.select_queries = lambda *a: chosen
        with torch.no_grad():
            fast = model.forward_features(x, mask)
        for key in ("pred_logits", "pred_boxes", "init_reference"):
            self.assertClose(fast[key], plain[key])
        self.assertClose(fast["enc_outputs"]["pred_logits"], plain["enc_outputs"]["pred_logits"])


@unittest.skipIf(not HAS_ONEDNN, "no oneDNN fast path in this build")
class TestDispatch(unittest.TestCase):
    def test_plain_path_conditions(self):
        x = torch.zeros(2, 3)
        layer = nn.Linear(3, 3).eval()
        with torch.no_grad():
            self.assertEqual(fast_cpu.compute_dtype(x, layer), torch.float32)
            self.assertIsNone(fast_cpu.compute_dtype(x.double(), layer))
            self.assertIsNone(fast_cpu.compute_dtype(x, layer.train(True)))
        self.assertIsNone(fast_cpu.compute_dtype(x))  # autograd on

    def test_env_var_is_read_at_call_time(self):
        x = torch.zeros(1)
        with torch.no_grad():
            for value, fast in (("0", False), ("1", True)):
                with mock.patch.dict(os.environ, {fast_cpu.ENV_SWITCH: value}):
                    self.assertEqual(fast_cpu.compute_dtype(x) is not None, fast, value)
                    self.assertEqual(fast_cpu.compute_dtype(x, op="conv") is not None, fast)

    FAST_PATHS = (
        "deform_attn_forward",
        "encoder_layer_forward",
        "decoder_layer_forward",
        "mlp_forward",
        "backbone_forward",
    )

    def fast_path_calls(self, model, batch, switch: str) -> dict:
        """How often each fast path ran in one inference with ``$DETA_FAST_CPU_INFERENCE``."""
        calls = {}

        def counting(name):
            fn = getattr(fast_cpu, name)

            def wrapper(*args, **kwargs):
                calls[name] = calls.get(name, 0) + 1
                return fn(*args, **kwargs)

            return mock.patch.object(fast_cpu, name, wrapper)

        patches = [counting(n) for n in self.FAST_PATHS]
        with mock.patch.dict(os.environ, {fast_cpu.ENV_SWITCH: switch}), torch.no_grad():
            for p in patches:
                p.start()
            try:
                model(batch)
            finally:
                for p in patches:
                    p.stop()
        return calls

    def test_switch_off_runs_no_fast_path_in_a_real_forward(self):
        model = build_model(tiny_cfg()).eval()
        batch = tiny_batch()
        self.assertEqual(self.fast_path_calls(model, batch, "0"), {})
        # Switched on, every fast path ran, the ResNet one included.
        self.assertEqual(sorted(self.fast_path_calls(model, batch, "1")), sorted(self.FAST_PATHS))

    def test_missing_onednn_primitive_means_plain_path_for_that_op_only(self):
        x = torch.zeros(1)
        with torch.no_grad():
            with fast_cpu.override_capabilities(onednn_linear=False):
                self.assertIsNone(fast_cpu.compute_dtype(x))
                self.assertIsNotNone(fast_cpu.compute_dtype(x, op="conv"))
            with fast_cpu.override_capabilities(onednn_conv=False):
                self.assertIsNotNone(fast_cpu.compute_dtype(x))
                self.assertIsNone(fast_cpu.compute_dtype(x, op="conv"))

    def test_bf16_autocast_dtype_follows_the_probe(self):
        x = torch.zeros(1)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            with fast_cpu.override_capabilities(bf16=True):
                self.assertEqual(fast_cpu.compute_dtype(x), torch.bfloat16)
            with fast_cpu.override_capabilities(bf16=False):
                self.assertEqual(fast_cpu.compute_dtype(x), torch.float32)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
            self.assertIsNone(fast_cpu.compute_dtype(x))

    def test_no_avx512_also_means_no_bf16_and_no_amx(self):
        with fast_cpu.override_capabilities(avx512=False) as caps:
            self.assertFalse(caps.bf16 or caps.amx or caps.avx512)
            x = torch.zeros(1)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                self.assertEqual(fast_cpu.compute_dtype(x), torch.float32)
        with fast_cpu.override_capabilities(avx512=False, bf16=True) as caps:
            self.assertTrue(caps.bf16)  # e.g. AVX-NE-CONVERT without AVX-512
        with self.assertRaisesRegex(TypeError, "sse"):
            with fast_cpu.override_capabilities(sse=False):
                pass

    def test_capability_env_override_is_parsed_and_checked(self):
        self.assertEqual(_parse_overrides("bf16=0, amx=1"), {"bf16": False, "amx": True})
        for bad in ("bf16", "bf16=2", "sse=1"):
            with self.subTest(bad), self.assertRaisesRegex(ValueError, "DETA_CPU_CAPS"):
                _parse_overrides(bad)

    def test_describe_names_every_path_and_why(self):
        with fast_cpu.override_capabilities(bf16=False, onednn_conv=False):
            rows = dict(fast_cpu.describe())
        self.assertIn("inactive", rows["  fused ResNet convs"])
        self.assertIn("override_capabilities", rows["  fused ResNet convs"])
        self.assertIn("float32", rows["  under bf16 autocast"])
        with mock.patch.dict(os.environ, {fast_cpu.ENV_SWITCH: "0"}):
            rows = dict(fast_cpu.describe())
        self.assertIn("off", rows["CPU fast paths"])
        self.assertTrue(rows["  oneDNN linears"].startswith("inactive"))


@unittest.skipIf(not HAS_ONEDNN, "no oneDNN fast path in this build")
class TestBf16Autocast(unittest.TestCase):
    """bf16 autocast inference of the whole model runs on every CPU class."""

    @classmethod
    def setUpClass(cls):
        torch.manual_seed(0)
        cls.model = build_model(tiny_cfg()).eval()
        cls.batch = tiny_batch()
        with torch.no_grad():
            cls.fp32 = cls.model.forward_features(*cls.inputs())

    @classmethod
    def inputs(cls):
        images = cls.model.preprocess_image(cls.batch)
        return images.tensor, cls.model.padding_mask(images)

    def run_bf16(self):
        model = copy.deepcopy(self.model)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.forward_features(*self.inputs())
            detections = model(self.batch)
        self.assertEqual(len(detections), len(self.batch))
        return out

    def test_without_onednn_bf16_runs_in_float32_fast_paths(self):
        # As on an AVX2-only CPU: no oneDNN bf16 call may be made (it would raise there).
        with fast_cpu.override_capabilities(bf16=False):
            out = self.run_bf16()
        self.assertTrue(torch.isfinite(out["pred_logits"]).all())
        # Only the plain modules in between (LayerNorm, heads, ...) follow autocast, so the
        # first-stage logits stay close to float32.
        err = out["enc_outputs"]["pred_logits"].float() - self.fp32["enc_outputs"]["pred_logits"]
        self.assertLess(err.abs().max().item(), 0.1)

    @unittest.skipIf(not fast_cpu.capabilities().bf16, "oneDNN has no bf16 on this CPU")
    def test_with_onednn_bf16(self):
        out = self.run_bf16()
        err = out["enc_outputs"]["pred_logits"].float() - self.fp32["enc_outputs"]["pred_logits"]
        self.assertLess(err.abs().max().item(), 0.5)  # bf16 rounding: 8-bit mantissa

    def test_plain_path_under_bf16_autocast(self):
        with fast_cpu.disabled():
            out = self.run_bf16()
        self.assertTrue(torch.isfinite(out["pred_logits"].float()).all())


if __name__ == "__main__":
    unittest.main()
