"""MODEL.DETA.BACKBONE_TRAIN_DTYPE: the backbone's training forward/backward under bf16 autocast."""

import unittest

import torch

from detectron2.modeling import build_model

from deta import fast_cpu

from ..helpers.tiny import tiny_batch, tiny_cfg


def _pair():
    """A float32 and a bfloat16-backbone model with the same weights."""
    torch.manual_seed(0)
    fp32 = build_model(tiny_cfg())
    bf16 = build_model(tiny_cfg("MODEL.DETA.BACKBONE_TRAIN_DTYPE", "bfloat16"))
    bf16.load_state_dict(fp32.state_dict())
    return fp32, bf16


def _conv_and_feature_dtypes(model, batch):
    """The stem conv's output dtype and input_proj's input dtypes in one training forward."""
    seen = {}

    def record(key, use_input):
        def hook(module, inputs, output):  # returns None: the output is left as it is
            seen.setdefault(key, (inputs[0] if use_input else output).dtype)

        return hook

    hooks = [
        model.backbone.stem.conv1.register_forward_hook(record("conv", False)),
        model.input_proj[0].register_forward_hook(record("proj_in", True)),
    ]
    losses = model(batch)
    for h in hooks:
        h.remove()
    return seen, losses


class TestBackboneTrainDtype(unittest.TestCase):
    def setUp(self):
        self.batch = tiny_batch(boxes_per_image=(3, 2))

    @unittest.skipUnless(fast_cpu.capabilities().bf16, "no oneDNN bf16 on this CPU")
    def test_bf16_backbone_trains_close_to_fp32(self):
        fp32, bf16 = _pair()
        fp32.train(), bf16.train()
        seen, losses = _conv_and_feature_dtypes(bf16, self.batch)
        self.assertEqual(seen, {"conv": torch.bfloat16, "proj_in": torch.float32})
        ref = fp32(self.batch)
        self.assertEqual(sorted(losses), sorted(ref))
        total, total_ref = sum(losses.values()), sum(ref.values())
        # bf16 keeps ~3 significant digits: the summed loss agrees to a few per cent, not exactly.
        self.assertNotEqual(total.item(), total_ref.item())
        self.assertAlmostEqual(total.item(), total_ref.item(), delta=0.05 * total_ref.item())
        total.backward()
        for name, p in bf16.backbone.named_parameters():
            if p.requires_grad:
                self.assertEqual(p.dtype, torch.float32, name)
                self.assertIsNotNone(p.grad, name)
                self.assertEqual(p.grad.dtype, torch.float32, name)
                self.assertTrue(torch.isfinite(p.grad).all(), name)

    def test_without_bf16_it_trains_in_float32_and_warns_once(self):
        fp32, bf16 = _pair()
        fp32.train(), bf16.train()
        with fast_cpu.override_capabilities(bf16=False):
            with self.assertLogs("deta.modeling.deta", "WARNING") as logs:
                seen, losses = _conv_and_feature_dtypes(bf16, self.batch)
                bf16(self.batch)
        self.assertEqual(seen, {"conv": torch.float32, "proj_in": torch.float32})
        self.assertEqual(len(logs.records), 1, logs.output)
        self.assertIn("MODEL.DETA.BACKBONE_TRAIN_DTYPE", logs.output[0])
        ref = fp32(self.batch)
        for key in ref:
            torch.testing.assert_close(losses[key], ref[key], rtol=0, atol=0, msg=key)

    def test_inference_ignores_it(self):
        fp32, bf16 = _pair()
        fp32.eval(), bf16.eval()
        with torch.no_grad():
            a, b = fp32(self.batch), bf16(self.batch)
        for x, y in zip(a, b):
            torch.testing.assert_close(
                x["instances"].pred_boxes.tensor, y["instances"].pred_boxes.tensor, rtol=0, atol=0
            )
            torch.testing.assert_close(x["instances"].scores, y["instances"].scores, rtol=0, atol=0)

    def test_bad_value_names_the_key(self):
        with self.assertRaises(ValueError) as ctx:
            build_model(tiny_cfg("MODEL.DETA.BACKBONE_TRAIN_DTYPE", "float16"))
        self.assertIn("MODEL.DETA.BACKBONE_TRAIN_DTYPE='float16'", str(ctx.exception))


if __name__ == "__main__":
    unittest.main()
