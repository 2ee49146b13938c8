"""Loss values on hand-computable inputs."""

import math
import unittest

import torch

from deta.modeling.criterion import SetCriterion
from deta.modeling.matcher import HungarianMatcher


class _FixedMatcher(torch.nn.Module):
    def __init__(self, indices):
        super().__init__()
        self.indices = indices

    def forward(self, outputs, targets):
        return self.indices


class TestSetCriterion(unittest.TestCase):
    def _criterion(self, indices):
        weights = {"loss_ce": 1.0, "loss_bbox": 5.0, "loss_giou": 2.0}
        return SetCriterion(_FixedMatcher(indices), weights)

    def test_focal_loss_value(self):
        # One query, two classes, logit 0 everywhere (p = 0.5), target class 1.
        logits = torch.zeros(1, 1, 2)
        boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2]]])
        targets = [{"labels": torch.tensor([1]), "boxes": boxes[0]}]
        crit = self._criterion([(torch.tensor([0]), torch.tensor([0]))])
        losses = crit({"pred_logits": logits, "pred_boxes": boxes}, targets)
        ce = math.log(2)
        # positive: 0.25 * ce * 0.5^2; negative: 0.75 * ce * 0.5^2; num_boxes = 1.
        self.assertAlmostEqual(losses["loss_ce"].item(), (0.25 + 0.75) * ce * 0.25, places=6)
        self.assertAlmostEqual(losses["loss_bbox"].item(), 0.0, places=6)
        # torchvision's GIoU adds eps=1e-7 to the denominators: ~2.5e-6 here.
        self.assertAlmostEqual(losses["loss_giou"].item(), 0.0, delta=1e-5)

    def test_box_losses_normalised_by_gt_count(self):
        pred = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]])
        gt = torch.tensor([[0.6, 0.5, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1]])
        targets = [{"labels": torch.tensor([0, 1]), "boxes": gt}]
        # Only the first GT is matched, but num_boxes counts both (official normalisation).
        crit = self._criterion([(torch.tensor([0]), torch.tensor([0]))])
        losses = crit({"pred_logits": torch.zeros(1, 2, 2), "pred_boxes": pred}, targets)
        self.assertAlmostEqual(losses["loss_bbox"].item(), 0.1 / 2, places=6)
        # IoU of two 0.2 boxes shifted by 0.1: inter 0.02, union 0.06, hull = union.
        self.assertAlmostEqual(losses["loss_giou"].item(), (1 - 1 / 3) / 2, places=5)

    def test_encoder_targets_are_class_agnostic(self):
        targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
        bin_targets = SetCriterion._binary_targets(targets)
        self.assertEqual(bin_targets[0]["labels"].tolist(), [0])
        self.assertEqual(targets[0]["labels"].tolist(), [1])  # the input is not modified


class TestHungarianMatcher(unittest.TestCase):
    def test_one_to_one(self):
        boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.8, 0.8, 0.1, 0.1], [0.5, 0.5, 0.3, 0.3]]])
        targets = [{"labels": torch.tensor([0, 0]), "boxes": boxes[0, [1, 0]]}]
        ((pr, gt),) = HungarianMatcher()(
            {"pred_logits": torch.zeros(1, 3, 1), "pred_boxes": boxes}, targets
        )
        self.assertEqual(dict(zip(pr.tolist(), gt.tolist())), {0: 1, 1: 0})


if __name__ == "__main__":
    unittest.main()
