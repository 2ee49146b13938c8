"""First-stage proposals and DETA's query selection on hand-computable cases."""

import unittest
from unittest import mock

import torch

from deta.modeling import two_stage
from deta.modeling.two_stage import (
    _first_copies,
    encoder_output_proposals,
    select_queries_nms,
    select_queries_topk,
)


class TestEncoderOutputProposals(unittest.TestCase):
    def test_validity_border_and_anchor_sizes(self):
        # Level 0: 60x60 (0.5/60 < 0.01: the outer ring is invalid); level 1: 40x40 (all valid).
        shapes = [(60, 60), (40, 40)]
        S = sum(h * w for h, w in shapes)
        memory = torch.randn(1, S, 8)
        mask = torch.zeros(1, S, dtype=torch.bool)
        out, proposals, level_ids = encoder_output_proposals(memory, mask, shapes)
        lvl0 = proposals[0, :3600].view(60, 60, 4)
        inf0 = torch.isinf(lvl0).all(-1)
        self.assertTrue(inf0[0].all() and inf0[-1].all() and inf0[:, 0].all() and inf0[:, -1].all())
        self.assertFalse(inf0[1:-1, 1:-1].any())
        self.assertFalse(torch.isinf(proposals[0, 3600:]).any())
        anchors = proposals.sigmoid()
        torch.testing.assert_close(anchors[0, 61, 2:], torch.tensor([0.05, 0.05]))
        torch.testing.assert_close(anchors[0, 3600, 2:], torch.tensor([0.1, 0.1]))
        # Centre of token (1, 1) of level 0 is (1.5 / 60, 1.5 / 60).
        torch.testing.assert_close(anchors[0, 61, :2], torch.tensor([1.5 / 60, 1.5 / 60]))
        self.assertTrue((out[0, :3600][inf0.flatten()] == 0).all())
        self.assertEqual(level_ids.tolist(), [0] * 3600 + [1] * 1600)

    def test_padding_normalises_by_valid_size(self):
        shapes = [(4, 8)]
        mask = torch.zeros(1, 4, 8, dtype=torch.bool)
        mask[:, :, 4:] = True  # right half padded
        _, proposals, _ = encoder_output_proposals(
            torch.randn(1, 32, 8), mask.flatten(1), shapes, valid_range=(0.0, 1.0)
        )
        p = proposals.view(4, 8, 4)
        self.assertTrue(torch.isinf(p[:, 4:]).all())
        torch.testing.assert_close(p[0, 3, 0].sigmoid(), torch.tensor(3.5 / 4))


class TestQuerySelection(unittest.TestCase):
    def _grid_boxes(self, n):
        # Disjoint small boxes (no NMS suppression) in logit space.
        cx = (torch.arange(n) % 50 + 0.5) / 50
        cy = (torch.arange(n) // 50 + 0.5) / 50
        boxes = torch.stack([cx, cy, torch.full((n,), 0.01), torch.full((n,), 0.01)], -1)
        return torch.logit(boxes)[None]

    def test_per_level_cap_and_padding_order(self):
        # 3 levels of 100, 50 and 10 tokens; 30 queries -> at most 10 per level.
        sizes = [100, 50, 10]
        level_ids = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
        S = sum(sizes)
        scores = torch.linspace(10, -10, S)[None]  # level 0 best, then 1, then 2
        sel = select_queries_nms(scores, self._grid_boxes(S), level_ids, sizes, 30)
        chosen = sel[0].tolist()
        self.assertEqual(len(chosen), 30)
        # 10 from each level, returned in global score-descending order.
        self.assertEqual(
            [sum(level_ids[i] == lvl for i in chosen).item() for lvl in range(3)], [10, 10, 10]
        )
        self.assertEqual(chosen, sorted(chosen))  # descending score == ascending index here

    def test_padding_takes_best_leftovers_when_a_level_is_short(self):
        sizes = [100, 50, 3]
        level_ids = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
        S = sum(sizes)
        scores = torch.linspace(10, -10, S)[None]
        sel = select_queries_nms(scores, self._grid_boxes(S), level_ids, sizes, 30)[0].tolist()
        # 10 + 10 + 3 from the caps; the 7 missing slots go to the best leftovers (level 0).
        counts = [sum(level_ids[i] == lvl for i in sel).item() for lvl in range(3)]
        self.assertEqual(counts, [17, 10, 3])
        self.assertEqual(sel, sorted(sel))

    def test_nms_is_per_level(self):
        # Two identical boxes on different levels both survive; on the same level one survives.
        sizes = [2, 2]
        level_ids = torch.tensor([0, 0, 1, 1])
        boxes = torch.logit(torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 3 + [[0.2, 0.2, 0.1, 0.1]]))[None]
        scores = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
        sel = select_queries_nms(scores, boxes, level_ids, sizes, 4, nms_thresh=0.9)
        # Token 1 is suppressed by token 0 (same level); NMS keeps 3 < 4 queries, so the
        # official fallback takes the plain top-4.
        self.assertEqual(sel[0].tolist(), [0, 1, 2, 3])
        sel = select_queries_nms(scores, boxes, level_ids, sizes, 2, nms_thresh=0.9)
        self.assertEqual(sel[0].tolist(), [0, 2])

    def test_fewer_tokens_than_queries(self):
        level_ids = torch.zeros(5, dtype=torch.int64)
        sel = select_queries_nms(torch.randn(2, 5), torch.randn(2, 5, 4), level_ids, [5], 900)
        self.assertEqual(sel.shape, (2, 5))
        self.assertEqual(select_queries_topk(torch.randn(2, 5), 900).shape, (2, 5))


class TestRepeatedCandidates(unittest.TestCase):
    """Levels shorter than ``pre_nms_topk`` put every token in several levels' lists; NMS then
    runs on one copy of each, and must keep exactly what it keeps on all copies."""

    def _inputs(self, seed, sizes, B=2):
        g = torch.Generator().manual_seed(seed)
        S = sum(sizes)
        level_ids = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
        objectness = torch.randn(B, S, generator=g)
        boxes = torch.randn(B, S, 4, generator=g)
        # Ties as in the model: padded/border tokens share one logit and one (clamped) box.
        border = torch.rand(B, S, generator=g) < 0.2
        objectness[border] = -1.5
        boxes[border] = float("inf")
        # Coarse boxes, so that NMS at 0.5 suppresses many, and a few of zero area.
        boxes[..., :2] = (boxes[..., :2] * 2).round() / 2
        boxes[..., 2:][torch.rand(B, S, 2, generator=g) < 0.05] = -200.0
        return objectness, boxes, level_ids, sizes

    def test_same_selection_as_nms_on_every_copy(self):
        every_copy = mock.patch.object(
            two_stage, "_first_copies", lambda tokens, n, boxes, t: torch.arange(boxes.shape[0])
        )
        for seed in range(20):
            for sizes, q, thresh in (([60, 20, 6], 40, 0.5), ([300, 80, 20, 6], 100, 0.9)):
                args = self._inputs(seed, sizes)
                got = select_queries_nms(*args, q, pre_nms_topk=100, nms_thresh=thresh)
                with every_copy:
                    expected = select_queries_nms(*args, q, pre_nms_topk=100, nms_thresh=thresh)
                self.assertEqual(got.tolist(), expected.tolist(), (seed, sizes))

    def test_which_copies_stay(self):
        tokens = torch.tensor([[3, 5, 3, 7], [13, 13, 19, 19]])  # image * S + token, S = 10
        box = [0.1, 0.1, 0.4, 0.5]
        flat = torch.tensor([box] * 6 + [[0.2, 0.2, 0.2, 0.6]] * 2)  # the last token: no area
        self.assertEqual(_first_copies(tokens, 20, flat, 0.9).tolist(), [0, 1, 3, 4, 6, 7])
        self.assertEqual(_first_copies(tokens, 20, flat, 1.0).tolist(), list(range(8)))


if __name__ == "__main__":
    unittest.main()
