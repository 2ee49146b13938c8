"""Drawing DETA predictions: boxes on one image, and a grid of a dataset's images.

Boxes and labels are drawn by Detectron2's ``Visualizer``, which imports OpenCV (``cv2``). Where
it is not installed they are drawn with PIL instead (same content, plainer style) and a warning
says so.
"""

import logging
import math
import os
from typing import List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode, Instances
from detectron2.utils.logger import log_first_n

from ..data import DetaDatasetMapper
from ..data.images import read_image

__all__ = ["draw_prediction_grid", "render_instances"]

try:
    from detectron2.utils.visualizer import Visualizer
except ImportError as e:  # Detectron2's visualizer needs OpenCV, which is optional here
    Visualizer = None
    _VISUALIZER_ERROR = str(e)

_PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48)]
_PALETTE += [(145, 30, 180), (70, 240, 240), (240, 50, 230)]


def _render_with_pil(
    image: np.ndarray, instances: Instances, class_names: Sequence[str], gt_boxes
) -> np.ndarray:
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for box in gt_boxes:
        draw.rectangle([float(v) for v in box], outline=(255, 255, 255), width=1)
    for box, label, score in zip(
        instances.pred_boxes.tensor.tolist(),
        instances.pred_classes.tolist(),
        instances.scores.tolist(),
    ):
        colour = _PALETTE[label % len(_PALETTE)]
        draw.rectangle(box, outline=colour, width=2)
        name = class_names[label] if label < len(class_names) else str(label)
        draw.text((box[0] + 2, box[1] + 1), f"{name} {score:.0%}", fill=colour)
    return np.asarray(canvas)


def render_instances(
    image: np.ndarray, instances: Instances, metadata, gt_boxes: Optional[List] = None
) -> np.ndarray:
    """Draw predicted ``instances`` (and optional XYXY ``gt_boxes``) on an RGB uint8 image.

    Uses Detectron2's ``Visualizer`` when OpenCV is installed, PIL otherwise.

    Returns:
        np.ndarray: the drawn HWC RGB uint8 image, the size of ``image``.
    """
    gt_boxes = gt_boxes or []
    if Visualizer is None:
        log_first_n(
            logging.WARNING,
            f"Detectron2's Visualizer is unavailable ({_VISUALIZER_ERROR}); drawing with PIL. "
            "Install opencv-python-headless for Detectron2's drawing style.",
            name=__name__,
        )
        return _render_with_pil(image, instances, metadata.get("thing_classes", []), gt_boxes)
    vis = Visualizer(image, metadata, scale=1.0)
    for box in gt_boxes:
        vis.draw_box(box, alpha=0.9, edge_color="white", line_style="--")
    return vis.draw_instance_predictions(instances).get_image()


@torch.no_grad()
def draw_prediction_grid(
    cfg: CfgNode,
    model: torch.nn.Module,
    output_path: str,
    dataset_name: Optional[str] = None,
    num_images: int = 12,
    score_threshold: float = 0.3,
    columns: int = 4,
) -> str:
    """Run ``model`` on ``num_images`` images of ``dataset_name`` and save a grid PNG.

    Images are chosen evenly over the dataset, so reruns show the same ones; ground-truth boxes
    are drawn as dashed white outlines.

    Args:
        cfg (CfgNode): the model's config (test resize and ``INPUT.FORMAT`` are used).
        model (nn.Module): a DETA model with weights loaded.
        output_path (str): PNG to write.
        dataset_name (str, optional): defaults to ``cfg.DATASETS.TEST[0]``.
        num_images (int): cells in the grid.
        score_threshold (float): smallest drawn score (sigmoid probability).
        columns (int): cells per row.

    Returns:
        str: ``output_path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset_name = dataset_name or cfg.DATASETS.TEST[0]
    dicts = DatasetCatalog.get(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    picks = np.linspace(0, len(dicts) - 1, num=min(num_images, len(dicts))).round().astype(int)
    mapper = DetaDatasetMapper(cfg, is_train=False)
    model.eval()
    rows = math.ceil(len(picks) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, idx in zip(axes.flat, picks):
        record = dicts[int(idx)]
        instances = model([mapper(record)])[0]["instances"].to("cpu")
        instances = instances[instances.scores >= score_threshold]
        image = read_image(record["file_name"], format="RGB", image_id=record.get("image_id"))
        gt = [
            BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
            for a in record.get("annotations", [])
        ]
        ax.imshow(render_instances(image, instances, metadata, gt))
        ax.set_title(
            f"image {record['image_id']}: {len(record.get('annotations', []))} GT, "
            f"{len(instances)} pred >= {score_threshold:g}",
            fontsize=8,
        )
    fig.suptitle(f"DETA predictions on {dataset_name} (white: ground truth)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    fig.savefig(output_path, dpi=100)
    plt.close(fig)
    return output_path
