"""Stage-1/Stage-2 IoU assignment and top-k-per-GT on hand-made boxes."""

import unittest

import torch

from deta.modeling.assigner import Stage1Assigner, Stage2Assigner, sample_topk_per_gt


def _cxcywh(x0, y0, x1, y1):
    return [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]


class TestSampleTopkPerGt(unittest.TestCase):
    def test_keeps_min_count_k_by_iou_over_all_predictions(self):
        iou = torch.tensor([[0.9, 0.1, 0.8, 0.7, 0.6, 0.5], [0.0, 0.95, 0.0, 0.0, 0.0, 0.3]])
        # GT 0 has 5 positives -> its global top-4; GT 1 has 1 positive -> its best prediction.
        pr, gt = sample_topk_per_gt(
            torch.tensor([0, 2, 3, 4, 5, 1]), torch.tensor([0, 0, 0, 0, 0, 1]), iou, k=4
        )
        self.assertEqual(pr.tolist(), [0, 2, 3, 4, 1])
        self.assertEqual(gt.tolist(), [0, 0, 0, 0, 1])

    def test_not_restricted_to_matched_predictions(self):
        # GT 0 has one positive (pred 3) but pred 0 has a higher IoU with it: pred 0 is taken.
        iou = torch.tensor([[0.5, 0.1, 0.1, 0.4]])
        pr, gt = sample_topk_per_gt(torch.tensor([3]), torch.tensor([0]), iou, k=4)
        self.assertEqual(pr.tolist(), [0])

    def test_empty(self):
        e = torch.empty(0, dtype=torch.int64)
        pr, gt = sample_topk_per_gt(e, e, torch.zeros(0, 5), 4)
        self.assertEqual(len(pr), 0)

    def test_k_larger_than_predictions(self):
        pr, _ = sample_topk_per_gt(torch.tensor([0, 1]), torch.tensor([0, 0]), torch.rand(1, 2), 4)
        self.assertEqual(sorted(pr.tolist()), [0, 1])


class TestStage1Assigner(unittest.TestCase):
    def test_thresholds_and_low_quality_matches(self):
        gt = torch.tensor([_cxcywh(0.0, 0.0, 0.4, 0.4)])
        anchors = torch.tensor(
            [
                _cxcywh(0.0, 0.0, 0.4, 0.4),  # IoU 1.0 -> positive
                _cxcywh(0.0, 0.0, 0.4, 0.2),  # IoU 0.5 -> ignored
                _cxcywh(0.6, 0.6, 0.9, 0.9),  # IoU 0 -> negative
            ]
        )[None]
        ((pr, g),) = Stage1Assigner()({"anchors": anchors}, [{"boxes": gt}])
        self.assertEqual(pr.tolist(), [0])
        self.assertEqual(g.tolist(), [0])

    def test_low_quality_ties_all_become_positive(self):
        gt = torch.tensor([_cxcywh(0.0, 0.0, 0.2, 0.2)])
        # Two anchors tie at the GT's best IoU (0.25 < 0.3): both become positive.
        anchors = torch.tensor(
            [_cxcywh(0.0, 0.0, 0.4, 0.4), _cxcywh(0.0, 0.0, 0.4, 0.4), _cxcywh(0.5, 0.5, 1, 1)]
        )[None]
        ((pr, _),) = Stage1Assigner()({"anchors": anchors}, [{"boxes": gt}])
        self.assertEqual(sorted(pr.tolist()), [0, 1])

    def test_positive_cap_and_max_k(self):
        torch.manual_seed(0)
        gt = torch.tensor([_cxcywh(0.0, 0.0, 0.5, 0.5), _cxcywh(0.5, 0.5, 1.0, 1.0)])
        anchors = torch.cat([gt[:1].repeat(10, 1), gt[1:].repeat(10, 1)])[None]
        assigner = Stage1Assigner(batch_size_per_image=8, positive_fraction=0.5, max_k=3)
        ((pr, g),) = assigner({"anchors": anchors}, [{"boxes": gt}])
        # At most 4 sampled positives in all, at most 3 per GT.
        self.assertLessEqual(len(pr), 4)
        self.assertTrue(all((g == i).sum() <= 3 for i in range(2)))

    def test_no_gt_gives_empty_indices_on_device(self):
        anchors = torch.rand(1, 7, 4)
        ((pr, g),) = Stage1Assigner()({"anchors": anchors}, [{"boxes": torch.zeros(0, 4)}])
        self.assertEqual((len(pr), len(g)), (0, 0))
        self.assertEqual(pr.dtype, torch.int64)
        self.assertEqual(pr.device, anchors.device)


class TestStage2Assigner(unittest.TestCase):
    def test_iou_threshold_and_background_label(self):
        gt = torch.tensor([_cxcywh(0.0, 0.0, 0.4, 0.4)])
        refs = torch.tensor(
            [
                _cxcywh(0.0, 0.0, 0.4, 0.4),  # 1.0
                _cxcywh(0.0, 0.0, 0.4, 0.3),  # 0.75 >= 0.6
                _cxcywh(0.0, 0.0, 0.4, 0.2),  # 0.5 < 0.6 -> background
            ]
        )[None]
        # 8 x 0.25 = 2 positives may be sampled.
        assigner = Stage2Assigner(num_classes=1, num_queries=8)
        ((pr, g),) = assigner(
            {"init_reference": refs}, [{"boxes": gt, "labels": torch.tensor([0])}]
        )
        # Label 0 is a real class: the background label is num_classes, not 0.
        self.assertEqual(pr.tolist(), [0, 1])
        self.assertEqual(g.tolist(), [0, 0])

    def test_empty_gt(self):
        assigner = Stage2Assigner(num_classes=3, num_queries=5)
        ((pr, g),) = assigner(
            {"init_reference": torch.rand(1, 5, 4)},
            [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}],
        )
        self.assertEqual((len(pr), len(g)), (0, 0))

    def test_positive_fraction_caps_positives(self):
        torch.manual_seed(0)
        gt = torch.tensor(
            [_cxcywh(0.1 * i, 0.1 * i, 0.1 * i + 0.1, 0.1 * i + 0.1) for i in range(8)]
        )
        refs = gt.repeat_interleave(4, 0)[None]  # 32 perfect queries, 4 per GT
        assigner = Stage2Assigner(num_classes=2, num_queries=32, positive_fraction=0.25)
        ((pr, g),) = assigner(
            {"init_reference": refs}, [{"boxes": gt, "labels": torch.zeros(8, dtype=torch.int64)}]
        )
        # 32 * 0.25 = 8 sampled positives; top-k per GT then keeps min(count, 4) per GT.
        self.assertEqual(len(pr), 8)


if __name__ == "__main__":
    unittest.main()
