"""Sine position encodings against their closed form."""

import math
import unittest

import torch

from deta.modeling.position_encoding import PositionEmbeddingSine, box_sine_embedding


class TestPositionEmbeddingSine(unittest.TestCase):
    def test_values_without_padding(self):
        mask = torch.zeros(1, 3, 4, dtype=torch.bool)
        pos = PositionEmbeddingSine(num_pos_feats=8)(mask)
        self.assertEqual(pos.shape, (1, 16, 3, 4))
        i, j = 1, 2
        y = (i + 1 - 0.5) / (3 + 1e-6) * 2 * math.pi
        x = (j + 1 - 0.5) / (4 + 1e-6) * 2 * math.pi
        for k in range(8):
            freq = 10000 ** (2 * (k // 2) / 8)
            f = math.sin if k % 2 == 0 else math.cos
            self.assertAlmostEqual(pos[0, k, i, j].item(), f(y / freq), places=5)  # y first
            self.assertAlmostEqual(pos[0, 8 + k, i, j].item(), f(x / freq), places=5)

    def test_padding_does_not_change_valid_pixels(self):
        mask = torch.zeros(1, 3, 6, dtype=torch.bool)
        mask[:, :, 4:] = True
        padded = PositionEmbeddingSine(num_pos_feats=8)(mask)
        plain = PositionEmbeddingSine(num_pos_feats=8)(torch.zeros(1, 3, 4, dtype=torch.bool))
        torch.testing.assert_close(padded[..., :4], plain)


class TestBoxSineEmbedding(unittest.TestCase):
    def test_layout(self):
        coords = torch.logit(torch.tensor([[[0.1, 0.2, 0.3, 0.4]]]))
        emb = box_sine_embedding(coords, num_feats=4)
        self.assertEqual(emb.shape, (1, 1, 16))
        for c, value in enumerate([0.1, 0.2, 0.3, 0.4]):
            a = value * 2 * math.pi
            expect = [math.sin(a), math.cos(a), math.sin(a / 100), math.cos(a / 100)]
            torch.testing.assert_close(emb[0, 0, 4 * c : 4 * c + 4], torch.tensor(expect))


if __name__ == "__main__":
    unittest.main()
