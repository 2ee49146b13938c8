"""Numerical parity with the official DETA implementation, given the same weights and batch.

Tolerance: 1e-4 absolute in float32 (the official code itself moves by up to 5e-6 between thread
counts). Integer outputs (selected tokens, assigner indices, labels) must match exactly, except for
first-stage tokens that were masked out (padding / border): they all carry the same logit and the
same box, so which of them NMS keeps is a tie-break with identical downstream outputs.
"""

import random
import unittest

import numpy as np
import torch

from deta.checkpoint import COCO_CATEGORY_IDS
from deta.modeling.postprocess import nms_inference

from .golden import golden_model, reference, require_golden

ATOL = 1e-4


def _max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


class TestGoldenEval(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_golden(cls)
        cls.ref = reference()
        cls.model = golden_model()
        inputs = cls.ref["inputs"]
        with torch.no_grad():
            cls.out = cls.model.forward_features(inputs["samples_tensors"], inputs["samples_mask"])

    def assertClose(self, ours, theirs, name, atol=ATOL):
        self.assertEqual(tuple(ours.shape), tuple(theirs.shape), name)
        self.assertLess(_max_diff(ours, theirs), atol, name)

    def test_decoder_outputs(self):
        e = self.ref["eval"]
        self.assertClose(self.out["pred_logits"], e["pred_logits"], "pred_logits")
        self.assertClose(self.out["pred_boxes"], e["pred_boxes"], "pred_boxes")
        self.assertClose(self.out["init_reference"], e["init_reference"], "init_reference")
        self.assertEqual(len(self.out["aux_outputs"]), len(e["aux_outputs"]))
        for i, (ours, theirs) in enumerate(zip(self.out["aux_outputs"], e["aux_outputs"])):
            self.assertClose(ours["pred_logits"], theirs["pred_logits"], f"aux {i} logits")
            self.assertClose(ours["pred_boxes"], theirs["pred_boxes"], f"aux {i} boxes")

    def test_encoder_outputs(self):
        e = self.ref["eval"]["enc_outputs"]
        for key in ("pred_logits", "pred_boxes", "anchors"):
            self.assertClose(self.out["enc_outputs"][key], e[key], f"enc {key}")

    def test_intermediates(self):
        it, ex = self.ref["intermediates"], self.out["extras"]
        self.assertTrue(torch.equal(ex["spatial_shapes"], it["spatial_shapes"]))
        self.assertTrue(torch.equal(ex["level_start_index"], it["level_start_index"]))
        self.assertClose(ex["valid_ratios"], it["valid_ratios"], "valid_ratios")
        for lvl, m in enumerate(it["masks"]):
            self.assertTrue(torch.equal(ex["masks"][lvl], m), f"mask level {lvl}")
        for key in ("srcs", "pos"):
            for lvl, t in enumerate(it[key]):
                if t is not None:
                    self.assertClose(ex[key][lvl], t, f"{key}[{lvl}]")
        start = it["level_start_index"].tolist()
        for lvl, t in enumerate(it["encoder_memory_per_level"]):
            if t is not None:
                ours = ex["memory"][:, start[lvl] : start[lvl] + t.shape[1]]
                self.assertClose(ours, t, f"memory level {lvl}")
        self.assertClose(ex["inter_references"], it["decoder_inter_references"], "inter_references")

    def test_selected_queries(self):
        e = self.ref["eval"]
        ours, theirs = self.out["extras"]["selected"], e["selected_query_token_index"]
        invalid = e["selected_query_from_invalid_token"]
        self.assertEqual(ours.shape, theirs.shape)
        self.assertTrue(torch.equal(ours[~invalid], theirs[~invalid]))
        starts = self.out["extras"]["level_start_index"]
        for b in range(ours.shape[0]):
            # Masked-out tokens: the same number per level, in the same query slots.
            lv_ours = torch.bucketize(ours[b][invalid[b]], starts, right=True) - 1
            lv_theirs = torch.bucketize(theirs[b][invalid[b]], starts, right=True) - 1
            self.assertEqual(sorted(lv_ours.tolist()), sorted(lv_theirs.tolist()))
        per_level = [
            torch.bincount(torch.bucketize(s, starts, right=True) - 1, minlength=5).tolist()
            for s in ours
        ]
        self.assertEqual(per_level, self.ref["meta"]["selected_queries_per_level"])

    def test_nms_postprocess(self):
        sizes = [tuple(s) for s in self.ref["inputs"]["target_sizes"].tolist()]
        results = nms_inference(self.out["pred_logits"], self.out["pred_boxes"], sizes)
        for b, (res, gold) in enumerate(zip(results, self.ref["postprocess"]["results"])):
            self.assertEqual(len(res), len(gold["scores"]))
            self.assertClose(res.scores, gold["scores"], f"image {b} scores")
            self.assertTrue(torch.equal(res.pred_classes, gold["labels"]), f"image {b} labels")
            h, w = sizes[b]
            scale = torch.tensor([w, h, w, h], dtype=torch.float32)
            self.assertClose(res.pred_boxes.tensor / scale, gold["boxes"] / scale, f"boxes {b}")

    def test_eighty_class_conversion(self):
        """Heads sliced to the 80 COCO classes give the same logits for those classes."""
        model = golden_model("MODEL.DETA.NUM_CLASSES", 80, slice_coco_classes=True)
        inputs = self.ref["inputs"]
        with torch.no_grad():
            out = model.forward_features(inputs["samples_tensors"], inputs["samples_mask"])
        ids = torch.as_tensor(COCO_CATEGORY_IDS)
        self.assertClose(out["pred_logits"], self.ref["eval"]["pred_logits"][..., ids], "logits")
        self.assertClose(out["pred_boxes"], self.ref["eval"]["pred_boxes"], "boxes")
        # The first-stage objectness logit (class index 0) is kept.
        self.assertClose(
            out["enc_outputs"]["pred_logits"][..., 0],
            self.ref["eval"]["enc_outputs"]["pred_logits"][..., 0],
            "objectness",
        )


class TestGoldenTrain(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        require_golden(cls)
        cls.ref = reference()
        cls.model = golden_model().train()
        tr = cls.ref["train"]
        cls.targets = [{"labels": t["labels"], "boxes": t["boxes"]} for t in tr["targets"]]
        inputs = cls.ref["inputs"]
        seed = tr["seed"]
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        cls.outputs = cls.model.forward_features(inputs["samples_tensors"], inputs["samples_mask"])
        cls.losses = cls.model.criterion(cls.outputs, cls.targets)

    def test_every_weighted_loss_term(self):
        weights = self.model.criterion.weight_dict
        gold = self.ref["train"]["weighted_losses"]
        self.assertEqual(sorted(weights), sorted(gold))
        for key, value in gold.items():
            ours = self.losses[key].item() * weights[key]
            self.assertAlmostEqual(ours, float(value), delta=ATOL, msg=key)
        total = sum(self.losses[k] * weights[k] for k in weights).item()
        self.assertAlmostEqual(total, self.ref["train"]["total_weighted_loss"], delta=ATOL)

    def test_unweighted_losses(self):
        for key, value in self.ref["train"]["loss_dict"].items():
            if key.startswith(("class_error", "cardinality_error")):
                continue  # logged only by the official code, never trained
            self.assertAlmostEqual(self.losses[key].item(), float(value), delta=ATOL, msg=key)

    def test_assigner_indices(self):
        gold = self.ref["train"]["assigner_indices"]
        ours = self.model.criterion.last_indices
        for b in range(len(self.targets)):
            for stage, key in (("stage1", "enc"), ("stage2", "final")):
                pred, gt = gold[stage][b]
                self.assertTrue(torch.equal(ours[key][b][0], pred), f"{stage} image {b} preds")
                self.assertTrue(torch.equal(ours[key][b][1], gt), f"{stage} image {b} gts")
            # Stage-2 indices are reused for the auxiliary layer.
            self.assertIs(ours["aux_0"], ours["final"])

    def test_backward_is_finite(self):
        weights = self.model.criterion.weight_dict
        total = sum(self.losses[k] * weights[k] for k in weights)
        total.backward()
        norms = [p.grad.norm() for p in self.model.parameters() if p.grad is not None]
        self.assertTrue(torch.isfinite(torch.stack(norms)).all())


if __name__ == "__main__":
    unittest.main()
