"""The tie-aware comparison used by the parity tests accepts ties and nothing else."""

import unittest

import torch

from ..helpers.tie_aware import compare_selection, match_detections, query_keys

STARTS = torch.tensor([0, 6])  # two levels: tokens 0-5 and 6-9
ANCHORS = torch.full((10, 4), 0.5)
ANCHORS[[4, 5, 9]] = 1.0  # masked-out tokens: level 0 has 4 and 5, level 1 has 9
SCORES = torch.tensor([3.0, 2.0, 1.0, 1.0 + 1e-6, -5.0, -5.0, 0.5, 0.4, 0.3, -5.0])


def compare(a, b):
    a, b = torch.tensor(a), torch.tensor(b)
    ka, kb = query_keys(a, ANCHORS, STARTS), query_keys(b, ANCHORS, STARTS)
    return compare_selection(ka, a, kb, b, SCORES)


class TestCompareSelection(unittest.TestCase):
    def test_masked_out_tokens_are_interchangeable(self):
        sel = compare([0, 1, 4, 6], [0, 1, 5, 6])
        self.assertEqual((sel["only_a"], sel["only_b"], sel["order_flips"]), ([], [], 0))
        self.assertEqual(sel["perm"], [0, 1, 2, 3])

    def test_swap_of_tied_tokens_has_a_tiny_gap(self):
        sel = compare([0, 2, 3, 6], [0, 3, 2, 6])
        self.assertEqual(sel["order_flips"], 1)
        self.assertLess(sel["order_gap"], 1e-5)
        self.assertEqual(sel["perm"], [0, 2, 1, 3])

    def test_swap_of_distinct_tokens_is_reported(self):
        sel = compare([0, 1, 6], [1, 0, 6])
        self.assertAlmostEqual(sel["order_gap"], 1.0)

    def test_different_token_sets(self):
        sel = compare([0, 2, 6], [0, 3, 6])  # tied: 1.0 vs 1.0 + 1e-6
        self.assertEqual((sel["only_a"], sel["only_b"]), ([("token", 2)], [("token", 3)]))
        self.assertLess(sel["set_gap"], 1e-5)
        self.assertEqual(sel["perm"], [0, -1, 2])
        self.assertAlmostEqual(compare([0, 1, 6], [0, 7, 6])["set_gap"], 1.6, places=5)
        self.assertEqual(compare([0, 1], [0, 1, 6])["set_gap"], float("inf"))


class TestMatchDetections(unittest.TestCase):
    def dets(self, scores, labels, boxes):
        return {
            "scores": torch.tensor(scores),
            "labels": torch.tensor(labels),
            "boxes": torch.tensor(boxes, dtype=torch.float32),
        }

    def test_order_does_not_matter_but_values_do(self):
        a = self.dets([0.9, 0.5], [1, 2], [[0, 0, 10, 10], [5, 5, 20, 20]])
        b = self.dets([0.5, 0.9], [2, 1], [[5, 5, 20, 20], [0, 0, 10, 10]])
        self.assertEqual(match_detections(a, b, (100, 100), 1e-4), [])
        c = self.dets([0.5, 0.9], [3, 1], [[5, 5, 20, 20], [0, 0, 10, 10]])
        self.assertEqual(len(match_detections(a, c, (100, 100), 1e-4)), 1)  # label
        d = self.dets([0.5, 0.9], [2, 1], [[5, 5, 20.1, 20], [0, 0, 10, 10]])
        self.assertEqual(len(match_detections(a, d, (100, 100), 1e-4)), 1)  # box
        e = self.dets([0.9], [1], [[0, 0, 10, 10]])
        self.assertEqual(len(match_detections(a, e, (100, 100), 1e-4)), 2)  # count + unmatched


if __name__ == "__main__":
    unittest.main()
