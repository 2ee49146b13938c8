"""End-to-end behaviour of the DETA meta-architecture on a tiny CPU configuration."""

import copy
import unittest

import torch

from detectron2.modeling import build_model
from detectron2.structures import Instances

from ..helpers.tiny import tiny_batch, tiny_cfg


def _expected_loss_keys(num_dec_layers: int):
    keys = []
    for suffix in [""] + [f"_{i}" for i in range(num_dec_layers - 1)] + ["_enc"]:
        keys += [f"loss_ce{suffix}", f"loss_bbox{suffix}", f"loss_giou{suffix}"]
    return sorted(keys)


class TestDetaEndToEnd(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.model = build_model(tiny_cfg())

    def test_train_step_losses_and_gradients(self):
        self.model.train()
        losses = self.model(tiny_batch(boxes_per_image=(3, 2)))
        self.assertEqual(sorted(losses), _expected_loss_keys(6))
        self.assertEqual(len(losses), 21)
        for key, value in losses.items():
            self.assertTrue(torch.isfinite(value), key)
        sum(losses.values()).backward()
        missing = [
            name
            for name, p in self.model.named_parameters()
            if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
        ]
        self.assertEqual(missing, [], "trainable parameters without a finite gradient")

    def test_images_without_boxes(self):
        self.model.train()
        losses = self.model(tiny_batch(boxes_per_image=(0, 0)))
        for key, value in losses.items():
            self.assertTrue(torch.isfinite(value), key)
        # With no GT there is nothing to regress: only the classification terms are non-zero.
        self.assertEqual(losses["loss_bbox"].item(), 0.0)
        self.assertGreater(losses["loss_ce"].item(), 0.0)
        sum(losses.values()).backward()

    def test_inference_returns_instances_in_input_coordinates(self):
        self.model.eval()
        batch = tiny_batch()
        batch[0]["height"], batch[0]["width"] = 192, 256  # the image was resized by 1/2
        with torch.no_grad():
            results = self.model(batch)
        self.assertEqual(len(results), 2)
        inst = results[0]["instances"]
        self.assertIsInstance(inst, Instances)
        self.assertEqual(inst.image_size, (192, 256))
        self.assertLessEqual(len(inst), 100)
        self.assertTrue({"pred_boxes", "scores", "pred_classes"} <= set(inst.get_fields()))
        self.assertTrue(((inst.pred_classes >= 0) & (inst.pred_classes < 3)).all())
        # Scores are sorted by NMS and are sigmoid probabilities.
        self.assertTrue((inst.scores[:-1] >= inst.scores[1:]).all())
        self.assertTrue(((inst.scores > 0) & (inst.scores < 1)).all())

    def test_batched_inference_matches_single(self):
        """Each image alone gives the same detections as in a batch of identical sizes."""
        self.model.eval()
        batch = tiny_batch(sizes=((96, 128), (96, 128)), boxes_per_image=(0, 0))
        with torch.no_grad():
            together = self.model(batch)
            alone = [self.model([x])[0] for x in batch]
        for a, b in zip(together, alone):
            torch.testing.assert_close(a["instances"].scores, b["instances"].scores)

    def test_buffers_follow_to(self):
        model = self.model.to(torch.float64)
        self.assertEqual(model.pixel_mean.dtype, torch.float64)
        self.assertEqual(model.device, torch.device("cpu"))
        self.assertNotIn("pixel_mean", model.state_dict())

    def test_state_dict_round_trip(self):
        other = build_model(tiny_cfg())
        other.load_state_dict(copy.deepcopy(self.model.state_dict()), strict=True)
        self.model.eval()
        other.eval()
        batch = tiny_batch()
        with torch.no_grad():
            a, b = self.model(batch), other(batch)
        torch.testing.assert_close(a[0]["instances"].scores, b[0]["instances"].scores)

    def test_topk_postprocess_for_hungarian_baseline(self):
        cfg = tiny_cfg(
            "MODEL.DETA.ASSIGN_FIRST_STAGE", False,
            "MODEL.DETA.ASSIGN_SECOND_STAGE", False,
            "MODEL.DETA.NMS_ON_TEST", False,
        )  # fmt: skip
        model = build_model(cfg)
        model.train()
        losses = model(tiny_batch(boxes_per_image=(2, 1)))
        self.assertEqual(len(losses), 21)
        sum(losses.values()).backward()
        model.eval()
        with torch.no_grad():
            inst = model(tiny_batch())[0]["instances"]
        self.assertEqual(len(inst), 20 * 3 if 20 * 3 < 100 else 100)


class TestRobustness(unittest.TestCase):
    """Settings that crash the official code: few classes, queries, tokens."""

    def _run(self, *opts, sizes=((96, 128), (80, 112))):
        torch.manual_seed(0)
        model = build_model(tiny_cfg(*opts))
        model.train()
        losses = model(tiny_batch(sizes=sizes, boxes_per_image=(2, 1), num_classes=1))
        self.assertTrue(all(torch.isfinite(v) for v in losses.values()))
        model.eval()
        with torch.no_grad():
            return model(tiny_batch(sizes=sizes, boxes_per_image=(0, 0)))

    def test_one_class(self):
        results = self._run("MODEL.DETA.NUM_CLASSES", 1)
        self.assertTrue((results[0]["instances"].pred_classes == 0).all())

    def test_more_queries_than_tokens(self):
        # 32x32 input: 4x4 + 2x2 + 1x1 + 1x1 + 1x1 = 23 tokens < 50 queries.
        results = self._run("MODEL.DETA.NUM_QUERIES", 50, sizes=((32, 32), (32, 32)))
        self.assertGreater(len(results[0]["instances"]), 0)

    def test_pre_nms_topk_larger_than_candidates(self):
        self._run("MODEL.DETA.PRE_NMS_TOPK_TEST", 100000, "MODEL.DETA.PROPOSAL_PRE_NMS_TOPK", 10**6)


if __name__ == "__main__":
    unittest.main()
