"""Numerical parity with the official DETA implementation, given the same weights and batch.

What is guaranteed, and checked:

* The **plain path** (``fast_cpu.disabled()``: the PyTorch modules the official code runs) matches
  every official output at 1e-4 absolute in float32 (the official code itself moves by up to 5e-6
  between thread counts). Integer outputs (selected tokens, assigner indices, labels) match
  exactly, except for first-stage tokens that were masked out (padding / border): they all carry
  the same logit and the same box, so which of them NMS keeps is a tie-break with identical
  downstream outputs.
* The **default path** (CPU fast paths on) matches, end to end, tie-aware: everything before the
  first-stage selection at 1e-4; a selection that differs only where the official scores are
  tied within ``EPS_TIE``; every decoder output at 1e-4 once queries are aligned by source token;
  the detections one to one (label, score within 1e-4, box within 1e-4 of the image size). The
  fast path's float rounding depends on the CPU's ISA (e.g. AVX2 vs AVX-512), so near-tied
  tokens may swap there.
* **Fast vs plain with the selection pinned** (both fed the plain path's tokens): every continuous
  output at 1e-4, independent of ties.
"""

import random
import unittest

import numpy as np
import torch

from deta import fast_cpu
from deta.checkpoint import COCO_CATEGORY_IDS
from deta.modeling.postprocess import nms_inference

from ..helpers.golden import golden_model, reference, require_golden
from ..helpers.tie_aware import compare_selection, match_detections, query_keys

ATOL = 1e-4
# Both paths' first-stage logits are within ATOL of the official ones (test_encoder_outputs), so
# two tokens can change places only if their official logits are within 2 * ATOL.
EPS_TIE = 2 * ATOL


def _max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def _forward(model, inputs, plain: bool, select=None):
    saved = model.transformer.select_queries
    if select is not None:
        model.transformer.select_queries = select
    try:
        with torch.no_grad():
            if plain:
                with fast_cpu.disabled():
                    return model.forward_features(inputs["samples_tensors"], inputs["samples_mask"])
            return model.forward_features(inputs["samples_tensors"], inputs["samples_mask"])
    finally:
        model.transformer.select_queries = saved


def _detections(out, sizes):
    results = nms_inference(out["pred_logits"], out["pred_boxes"], sizes)
    return [
        {"scores": r.scores, "labels": r.pred_classes, "boxes": r.pred_boxes.tensor}
        for r in results
    ]


class _Close(unittest.TestCase):
    def assertClose(self, ours, theirs, name, atol=ATOL):
        self.assertEqual(tuple(ours.shape), tuple(theirs.shape), name)
        self.assertLess(_max_diff(ours, theirs), atol, name)


class TestGoldenEvalPlainPath(_Close):
    """The plain path against the official outputs, exactly as the official code runs."""

    @classmethod
    def setUpClass(cls):
        require_golden(cls)
        cls.ref = reference()
        cls.model = golden_model()
        cls.out = _forward(cls.model, cls.ref["inputs"], plain=True)

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
        out = _forward(model, self.ref["inputs"], plain=True)
        ids = torch.as_tensor(COCO_CATEGORY_IDS)
        self.assertClose(out["pred_logits"], self.ref["eval"]["pred_logits"][..., ids], "logits")
        self.assertClose(out["pred_boxes"], self.ref["eval"]["pred_boxes"], "boxes")
        # The first-stage objectness logit (class index 0) is kept.
        self.assertClose(
            out["enc_outputs"]["pred_logits"][..., 0],
            self.ref["eval"]["enc_outputs"]["pred_logits"][..., 0],
            "objectness",
        )


class TestGoldenEvalDefaultPath(_Close):
    """The default (fast) CPU path against the official outputs, end to end, tie-aware."""

    @classmethod
    def setUpClass(cls):
        require_golden(cls)
        cls.ref = reference()
        cls.model = golden_model()
        cls.out = _forward(cls.model, cls.ref["inputs"], plain=False)
        e = cls.ref["eval"]
        starts = cls.out["extras"]["level_start_index"]
        cls.selections = []
        for b in range(len(cls.out["pred_logits"])):
            official = e["selected_query_token_index"][b]
            ours = cls.out["extras"]["selected"][b]
            keys_official = query_keys(official, e["enc_outputs"]["anchors"][b], starts)
            keys_ours = query_keys(ours, cls.out["enc_outputs"]["anchors"][b], starts)
            objectness = e["enc_outputs"]["pred_logits"][b, :, 0]
            cls.selections.append(
                compare_selection(keys_official, official, keys_ours, ours, objectness)
            )

    def test_everything_before_the_selection(self):
        e, it, ex = self.ref["eval"]["enc_outputs"], self.ref["intermediates"], self.out["extras"]
        for key in ("pred_logits", "pred_boxes", "anchors"):
            self.assertClose(self.out["enc_outputs"][key], e[key], f"enc {key}")
        for lvl, t in enumerate(it["srcs"]):
            if t is not None:
                self.assertClose(ex["srcs"][lvl], t, f"srcs[{lvl}]")
        start = it["level_start_index"].tolist()
        for lvl, t in enumerate(it["encoder_memory_per_level"]):
            if t is not None:
                ours = ex["memory"][:, start[lvl] : start[lvl] + t.shape[1]]
                self.assertClose(ours, t, f"memory level {lvl}")

    def test_selection_differs_only_between_tied_tokens(self):
        for b, sel in enumerate(self.selections):
            with self.subTest(image=b):
                flipped = f"tokens {sel['only_a']} vs {sel['only_b']}"
                self.assertLess(sel["set_gap"], EPS_TIE, flipped)
                self.assertLess(sel["order_gap"], EPS_TIE, f"{sel['order_flips']} order flips")

    def test_decoder_outputs_with_queries_aligned(self):
        e = self.ref["eval"]
        pairs = [("pred_logits", e["pred_logits"]), ("pred_boxes", e["pred_boxes"])]
        pairs += [("init_reference", e["init_reference"])]
        checked = 0
        for b, sel in enumerate(self.selections):
            if sel["only_a"]:
                continue  # another token entered the decoder: compared through detections only
            perm = torch.as_tensor(sel["perm"])  # ours[q] is official[perm[q]]
            checked += 1
            for key, theirs in pairs:
                self.assertClose(self.out[key][b], theirs[b][perm], f"image {b} {key}")
            for i, aux in enumerate(self.out["aux_outputs"]):
                gold = e["aux_outputs"][i]
                self.assertClose(aux["pred_logits"][b], gold["pred_logits"][b][perm], f"aux {i}")
                self.assertClose(aux["pred_boxes"][b], gold["pred_boxes"][b][perm], f"aux {i}")
            refs = self.ref["intermediates"]["decoder_inter_references"][:, b]
            self.assertClose(self.out["extras"]["inter_references"][:, b], refs[:, perm], "refs")
        self.assertGreater(checked, 0, "no image had the official selection")

    def test_detections_match_one_to_one(self):
        sizes = [tuple(s) for s in self.ref["inputs"]["target_sizes"].tolist()]
        ours = _detections(self.out, sizes)
        for b, (res, gold) in enumerate(zip(ours, self.ref["postprocess"]["results"])):
            with self.subTest(image=b):
                self.assertEqual(match_detections(gold, res, sizes[b], ATOL), [])


class TestGoldenFastVsPlainPinned(_Close):
    """Fast vs plain path with the plain path's selection fed to both: no ties can intervene."""

    @classmethod
    def setUpClass(cls):
        require_golden(cls)
        cls.ref = reference()
        model = golden_model()
        inputs = cls.ref["inputs"]
        cls.plain = _forward(model, inputs, plain=True)
        chosen = cls.plain["extras"]["selected"]
        cls.fast = _forward(model, inputs, plain=False, select=lambda *a: chosen)

    def test_every_continuous_output(self):
        fast, plain = self.fast, self.plain
        for key in ("pred_logits", "pred_boxes", "init_reference"):
            self.assertClose(fast[key], plain[key], key)
        for key in ("pred_logits", "pred_boxes", "anchors"):
            self.assertClose(fast["enc_outputs"][key], plain["enc_outputs"][key], f"enc {key}")
        for i, (a, b) in enumerate(zip(fast["aux_outputs"], plain["aux_outputs"])):
            self.assertClose(a["pred_logits"], b["pred_logits"], f"aux {i} logits")
            self.assertClose(a["pred_boxes"], b["pred_boxes"], f"aux {i} boxes")
        for key in ("memory", "inter_references"):
            self.assertClose(fast["extras"][key], plain["extras"][key], key)
        for lvl, (a, b) in enumerate(zip(fast["extras"]["srcs"], plain["extras"]["srcs"])):
            self.assertClose(a, b, f"srcs[{lvl}]")

    def test_detections(self):
        sizes = [tuple(s) for s in self.ref["inputs"]["target_sizes"].tolist()]
        pairs = zip(_detections(self.fast, sizes), _detections(self.plain, sizes))
        for b, (fast, plain) in enumerate(pairs):
            self.assertEqual(match_detections(plain, fast, sizes[b], ATOL), [], f"image {b}")


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
