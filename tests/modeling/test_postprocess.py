"""NMS and top-k post-processing."""

import unittest

import torch

from deta.modeling.postprocess import nms_inference, topk_inference


class TestNmsInference(unittest.TestCase):
    def test_classwise_nms_removes_duplicates_only_within_a_class(self):
        boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]])
        logits = torch.tensor([[[5.0, -9.0], [4.0, 3.0], [2.0, -9.0]]])
        (res,) = nms_inference(logits, boxes, [(100, 200)], max_detections=10)
        kept = sorted(zip(res.pred_classes.tolist(), res.scores.tolist()), key=lambda x: -x[1])
        # Query 1 / class 0 duplicates query 0 / class 0 and is removed; class 1 is kept.
        self.assertEqual([c for c, _ in kept[:3]], [0, 1, 0])
        # 6 pairs; per class the lower-scored identical box is removed -> 4.
        self.assertEqual(len(res), 4)
        torch.testing.assert_close(
            res.pred_boxes.tensor[0], torch.tensor([80.0, 40.0, 120.0, 60.0])
        )

    def test_small_q_times_k_and_max_detections(self):
        logits = torch.randn(2, 4, 3)
        boxes = torch.rand(2, 4, 4) * 0.5 + 0.25
        results = nms_inference(
            logits, boxes, [(10, 10), (20, 30)], pre_nms_topk=10000, max_detections=5
        )
        self.assertTrue(all(len(r) <= 5 for r in results))
        self.assertEqual(results[1].image_size, (20, 30))

    def test_boxes_are_not_clipped(self):
        boxes = torch.tensor([[[0.95, 0.5, 0.2, 0.2]]])
        (res,) = nms_inference(torch.zeros(1, 1, 1), boxes, [(100, 100)])
        self.assertGreater(res.pred_boxes.tensor[0, 2].item(), 100.0)


class TestTopkInference(unittest.TestCase):
    def test_top_pairs(self):
        logits = torch.tensor([[[1.0, 3.0], [2.0, 0.0]]])
        (res,) = topk_inference(logits, torch.rand(1, 2, 4), [(5, 5)], max_detections=3)
        self.assertEqual(res.pred_classes.tolist(), [1, 0, 0])
        self.assertEqual(len(res), 3)


if __name__ == "__main__":
    unittest.main()
