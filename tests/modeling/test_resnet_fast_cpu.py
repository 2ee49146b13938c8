"""The fused CPU inference ResNet (FrozenBN folded, ReLU/residual fused) equals Detectron2's."""

import unittest

import torch

from detectron2.modeling import build_backbone

from deta.fast_cpu import (
    capabilities,
    fused_resnet_forward,
    fused_resnet_supported,
    override_capabilities,
)

from ..helpers.tiny import tiny_cfg


def backbone(*opts):
    """A ResNet with random, non-trivial FrozenBN statistics (fresh ones are the identity)."""
    torch.manual_seed(0)
    model = build_backbone(tiny_cfg(*opts)).eval()
    for name, buf in model.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(torch.randn_like(buf) * 0.1)
        elif name.endswith("running_var"):
            buf.copy_(torch.rand_like(buf) + 0.5)
        elif name.endswith("norm.weight"):
            buf.copy_(torch.rand_like(buf) + 0.5)
        elif name.endswith("norm.bias"):
            buf.copy_(torch.randn_like(buf) * 0.1)
    return model


@unittest.skipIf(not capabilities().onednn_conv, "this torch build has no oneDNN convolution")
class TestFusedResNet(unittest.TestCase):
    def check_equal(self, model, x, rtol):
        with torch.no_grad():
            ref = model(x)
            out = fused_resnet_forward(model, x)
        self.assertEqual(sorted(out), sorted(ref))
        for k in ref:
            self.assertEqual(out[k].shape, ref[k].shape, k)
            scale = ref[k].abs().max().item()
            err = (out[k] - ref[k]).abs().max().item()
            self.assertLess(err, rtol * scale, f"{k}: max |Δ| {err:.3g} of max {scale:.3g}")

    def test_resnet18_and_50_match_detectron2(self):
        x = torch.randn(2, 3, 96, 130).contiguous(memory_format=torch.channels_last)
        for depth, res2 in ((18, 64), (50, 256)):
            with self.subTest(depth=depth):
                model = backbone(
                    "MODEL.RESNETS.DEPTH", depth, "MODEL.RESNETS.RES2_OUT_CHANNELS", res2
                )
                self.assertTrue(fused_resnet_supported(model))
                # A BN statistic that is not the identity must really be folded in.
                bn = model.res3[0].conv1.norm
                self.assertFalse(torch.allclose(bn.running_var, torch.ones_like(bn.running_var)))
                self.check_equal(model, x, rtol=1e-5)
                self.check_equal(model, x.contiguous(), rtol=1e-5)  # NCHW input too

    def test_uses_current_weights_after_loading(self):
        model = backbone()
        x = torch.randn(1, 3, 64, 64)
        model.res3[0].conv1.norm.running_var.mul_(4.0)  # e.g. a checkpoint loaded afterwards
        self.check_equal(model, x, rtol=1e-5)

    def test_stem_and_res2_outputs(self):
        model = backbone("MODEL.RESNETS.OUT_FEATURES", ["stem", "res2", "res4"])
        self.check_equal(model, torch.randn(1, 3, 64, 80), rtol=1e-5)

    @unittest.skipIf(not capabilities().bf16, "oneDNN has no bf16 on this CPU (or under its cap)")
    def test_bf16_is_close_to_autocast_detectron2(self):
        model = backbone()
        x = torch.randn(1, 3, 96, 128)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            ref, out = model(x), fused_resnet_forward(model, x, torch.bfloat16)
        for k in ref:
            self.assertEqual(out[k].dtype, torch.bfloat16)
            rel = ((out[k].float() - ref[k].float()).norm() / ref[k].float().norm()).item()
            self.assertLess(rel, 2e-2, k)  # bf16 rounding of folded vs. unfolded weights

    def test_bf16_without_cpu_support_is_refused_by_name(self):
        # The dispatch never asks for it (it picks float32); a direct call gets a clear error
        # instead of oneDNN's.
        with override_capabilities(bf16=False), self.assertRaisesRegex(RuntimeError, "bfloat16"):
            with torch.no_grad():
                fused_resnet_forward(backbone(), torch.randn(1, 3, 64, 64), torch.bfloat16)

    def test_no_onednn_conv_means_not_supported(self):
        model = backbone()
        self.assertTrue(fused_resnet_supported(model))
        with override_capabilities(onednn_conv=False):
            self.assertFalse(fused_resnet_supported(model))

    def test_batchnorm_in_eval_mode_is_folded(self):
        model = backbone("MODEL.RESNETS.NORM", "BN")  # what configs/deta_R_18_synthetic_cpu uses
        self.assertTrue(fused_resnet_supported(model))
        self.check_equal(model, torch.randn(1, 3, 64, 96), rtol=1e-5)
        model.train()  # batch statistics: nothing to fold
        self.assertFalse(fused_resnet_supported(model))

    def test_other_norms_are_not_fused(self):
        self.assertFalse(fused_resnet_supported(backbone("MODEL.RESNETS.NORM", "GN")))
        self.assertFalse(
            fused_resnet_supported(
                backbone("MODEL.RESNETS.DEPTH", 50, "MODEL.RESNETS.RES2_OUT_CHANNELS", 256,
                         "MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False, True, False, False])
            )
        )  # fmt: skip


if __name__ == "__main__":
    unittest.main()
