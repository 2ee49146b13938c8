"""Unexpected errors while mapping, in the process or a data-loader worker, name the image."""

import unittest

import torch

from detectron2.data import build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.data.common import DatasetFromList, MapDataset

from deta.data import DetaDatasetMapper
from deta.data.dataset_mapper import DatasetMapperError
from tests.helpers.data import TmpDirCase, record


class _Boom(T.Augmentation):
    def get_transform(self, image):
        raise RuntimeError("boom")


class TestErrorContext(TmpDirCase):
    def test_unexpected_error_wrapped(self):
        mapper = DetaDatasetMapper(is_train=True, augmentation=[_Boom()])
        with self.assertRaises(DatasetMapperError) as ctx:
            mapper(record(self.rgb("x.png"), 30, 40, image_id=3))
        self.assertIn("x.png", str(ctx.exception))
        self.assertIn("image_id=3", str(ctx.exception))
        self.assertIn("RuntimeError: boom", str(ctx.exception))
        self.assertIsInstance(ctx.exception.__cause__, RuntimeError)

    def test_dataloader_worker_crash_names_the_image(self):
        good = self.rgb("good.png")
        with open(self.path("corrupt.jpg"), "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 truncated jpeg")
        dicts = [
            record(good, 30, 40, image_id=1),
            record(self.path("corrupt.jpg"), 30, 40, image_id=2),
        ]
        mapper = DetaDatasetMapper(is_train=True, augmentation=[])
        dataset = MapDataset(DatasetFromList(dicts, copy=False), mapper)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=1, num_workers=1, collate_fn=lambda batch: batch
        )
        with self.assertRaises(Exception) as ctx:
            for _ in loader:
                pass
        self.assertIn("DataLoader worker", str(ctx.exception))
        self.assertIn("corrupt.jpg", str(ctx.exception))
        self.assertIn("image_id=2", str(ctx.exception))
        # Detectron2's test loader (the train_net.py path) reports it the same way.
        loader = build_detection_test_loader(dicts, mapper=mapper, num_workers=1)
        with self.assertRaisesRegex(Exception, r"corrupt\.jpg"):
            for _ in loader:
                pass


if __name__ == "__main__":
    unittest.main()
