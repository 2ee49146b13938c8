"""COCO json loading with the dataset check: ids kept, warnings summarised, errors named."""

import os
import unittest

from detectron2.data import DatasetCatalog, MetadataCatalog

from deta.data.annotations import DatasetError
from deta.data.datasets import (
    load_deta_coco_json,
    register_deta_coco_instances,
    use_deta_coco_loader,
)
from tests.helpers.data import TmpDirCase, coco_ann, train_mapper, write_coco, write_rgb


class TestCocoLoading(TmpDirCase):
    def setUp(self):
        super().setUp()
        self.images = os.path.join(self.dir, "images")
        os.mkdir(self.images)
        for i in (1, 2, 3):
            write_rgb(os.path.join(self.images, f"{i}.jpg"), 30, 40, seed=i)
        self.image_entries = [
            {"id": i, "file_name": f"{i}.jpg", "width": 40, "height": 30} for i in (1, 2, 3)
        ]

    def _json(self, annotations, name="a.json", **kwargs):
        path = self.path(name)
        write_coco(path, self.image_entries, annotations, **kwargs)
        return path

    def _register(self, name, json_file):
        register_deta_coco_instances(name, {}, json_file, self.images)

        def cleanup():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)

        self.addCleanup(cleanup)

    def test_ids_kept_and_empty_images_loaded(self):
        annotations = [
            coco_ann(10, 1, [1, 1, 5, 5], cat=3),
            coco_ann(11, 2, [1, 1, 5, 5], iscrowd=1),  # image 2: crowd only; image 3: nothing
        ]
        dicts = load_deta_coco_json(self._json(annotations), self.images, "deta_test_messy_ok")
        MetadataCatalog.remove("deta_test_messy_ok")
        self.assertEqual([d["image_id"] for d in dicts], [1, 2, 3])
        self.assertEqual([a["id"] for a in dicts[0]["annotations"]], [10])
        self.assertEqual(dicts[0]["annotations"][0]["category_id"], 2)  # contiguous
        mapper = train_mapper(num_classes=3)
        counts = [len(mapper(d)["instances"]) for d in dicts]
        self.assertEqual(counts, [1, 0, 0])

    def test_warnings_summarised(self):
        annotations = [
            coco_ann(1, 1, [1, 1, 0, 5]),
            coco_ann(2, 1, [1, 1, 5, 0]),
            coco_ann(3, 1, [100, 1, 5, 5]),
            coco_ann(4, 1, [30, 1, 20, 5]),
        ]
        with self.assertLogs("deta.data.datasets", level="WARNING") as logs:
            load_deta_coco_json(self._json(annotations), self.images)
        text = "\n".join(logs.output)
        self.assertIn("2 x zero-size box", text)
        self.assertIn("1 x box fully outside", text)
        self.assertIn("1 x box extends past", text)
        self.assertIn("annotation id=1 of image '1.jpg'", text)

    def test_unknown_category_raises_with_ids(self):
        json_file = self._json([coco_ann(1, 1, [1, 1, 5, 5]), coco_ann(55, 2, [1, 1, 5, 5], 99)])
        self._register("deta_test_messy_cat", json_file)
        with self.assertRaises(DatasetError) as ctx:
            DatasetCatalog.get("deta_test_messy_cat")
        message = str(ctx.exception)
        for part in ("annotation id=55", "category_id=99", "'2.jpg'", "a.json", "ids: 1, 2, 3"):
            self.assertIn(part, message)

    def test_bad_boxes_raise_with_ids(self):
        # json.dump writes NaN/Infinity literals, which json.load (and pycocotools) accept.
        annotations = [
            coco_ann(7, 1, [float("nan"), 1, 5, 5]),
            coco_ann(8, 2, [1, 1, float("inf"), 5]),
            coco_ann(9, 3, [1, 1, -4, 5]),
            coco_ann(10, 3, [-2, -2, 5, 5]),  # negative x/y only: clipped, not an error
        ]
        with self.assertRaises(DatasetError) as ctx:
            load_deta_coco_json(self._json(annotations), self.images, None)
        message = str(ctx.exception)
        self.assertIn("3 error(s)", message)
        self.assertRegex(message, r"annotation id=7 of image '1\.jpg'.*NaN")
        self.assertRegex(message, r"annotation id=8 of image '2\.jpg'.*NaN or infinite")
        self.assertRegex(message, r"annotation id=9 of image '3\.jpg'.*negative width")
        self.assertNotIn("id=10", message)

    def test_duplicate_ids_and_malformed_entries(self):
        self.image_entries.append({"id": 3, "file_name": "3b.jpg", "width": 40, "height": 30})
        self.image_entries.append({"id": 4, "file_name": "4.jpg", "height": 30})
        annotations = [coco_ann(1, 1, [1, 1, 5, 5]), coco_ann(1, 2, [1, 1, 5, 5])]
        annotations.append({"id": 2, "image_id": 1, "category_id": 1})
        with self.assertRaises(DatasetError) as ctx:
            load_deta_coco_json(self._json(annotations), self.images)
        message = str(ctx.exception)
        self.assertRegex(message, r"duplicate_image_id.*'3b\.jpg' \(image_id=3\).*'3\.jpg'")
        self.assertRegex(message, r"bad_image_entry.*'4\.jpg' \(image_id=4\).*width/height")
        self.assertRegex(message, r"duplicate_annotation_id.*'2\.jpg'.*id=1 is also used")
        self.assertRegex(message, r"annotation id=2 of image '1\.jpg' \(image_id=1\): no 'bbox'")

    def test_use_deta_coco_loader(self):
        json_file = self._json([coco_ann(5, 1, [1, 1, 5, 5])])
        name = "deta_test_messy_builtin"
        from detectron2.data.datasets import register_coco_instances

        register_coco_instances(name, {}, json_file, self.images)
        self.addCleanup(lambda: (DatasetCatalog.remove(name), MetadataCatalog.remove(name)))
        self.assertNotIn("id", DatasetCatalog.get(name)[0]["annotations"][0])  # Detectron2's
        use_deta_coco_loader(name)
        self.assertEqual(DatasetCatalog.get(name)[0]["annotations"][0]["id"], 5)


if __name__ == "__main__":
    unittest.main()
