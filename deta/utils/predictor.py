"""Batched inference on in-memory images, as evaluation preprocesses them.

:class:`BatchPredictor` is Detectron2's ``DefaultPredictor`` for many images at once, with the
evaluation's test-time resize (``DetaDatasetMapper(cfg, is_train=False)``: the official rule,
long side truncated, where ``DefaultPredictor``'s ``ResizeShortestEdge`` rounds it) and optional
bfloat16 autocast. Problems a user can fix (weights file, dtype) raise :class:`PredictorError`
with a one-line message.

Only images of the same input size (after the resize) share a forward. A batch of mixed sizes is
zero-padded, and although the transformer masks the padding, the ResNet's convolutions near the
padded border do not: on a checkpoint of the demo model (tools/run_demo.py) batches of 4 mixed
sizes changed top scores by up to 0.07. Batching same-sized inputs (video frames, most folders)
gives the detections of one image at a time, within float rounding, whatever the neighbours;
:meth:`BatchPredictor.input_size` lets a caller gather same-sized images from file headers.
"""

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Instances

from .. import fast_cpu
from ..checkpoint import CheckpointError, DetaCheckpointer, describe_load_failure
from ..data import build_deta_augmentations

__all__ = ["DTYPES", "BatchPredictor", "PredictorError", "check_dtype", "load_weights"]

DTYPES = ("fp32", "bf16")


class PredictorError(Exception):
    """A problem with the weights file or the requested dtype; the message is one line."""


def load_weights(model: torch.nn.Module, path: str) -> None:
    """Load ``MODEL.WEIGHTS`` into ``model`` with the project's safe checkpointer.

    Raises:
        PredictorError: no path, no such file, or a file that is not a loadable checkpoint; the
            message names the file.
    """
    if not path:
        raise PredictorError(
            "MODEL.WEIGHTS is empty: give the trained model, e.g. MODEL.WEIGHTS model_final.pth"
        )
    if "://" not in path and not os.path.isfile(path):  # URLs go to Detectron2's PathManager
        raise PredictorError(f"MODEL.WEIGHTS {path}: no such file")
    try:
        DetaCheckpointer(model).load(path)
    except CheckpointError as e:
        raise PredictorError(f"MODEL.WEIGHTS {e}") from None
    except Exception as e:  # Detectron2's .pkl reader and URL downloads raise many types
        raise PredictorError(f"MODEL.WEIGHTS {path} {describe_load_failure(path, e)}") from None


def check_dtype(dtype: str, device: str = "cpu") -> None:
    """Raise :class:`PredictorError` when ``dtype`` cannot run on ``device``.

    On CPU, bf16 needs oneDNN's bfloat16 kernels (:func:`deta.fast_cpu.capabilities`, which
    ``$DETA_CPU_CAPS`` and ``fast_cpu.override_capabilities`` override): without them autocast
    would emulate bf16, slower than float32.
    """
    if dtype not in DTYPES:
        raise PredictorError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if dtype != "bf16":
        return
    if torch.device(device).type == "cpu":
        caps = fast_cpu.capabilities()
        if not caps.bf16:
            raise PredictorError(
                f"--dtype bf16: this CPU has no oneDNN bfloat16 kernels "
                f"({caps.reasons.get('bf16', 'unsupported')}); use --dtype fp32"
            )
    elif torch.device(device).type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PredictorError("--dtype bf16: this GPU has no bfloat16 support; use --dtype fp32")


class BatchPredictor:
    """Build the model of ``cfg``, load ``cfg.MODEL.WEIGHTS`` and predict lists of images.

    Example::

        predictor = BatchPredictor(cfg)
        instances = predictor([image_rgb_1, image_rgb_2], batch_size=8)

    Attributes:
        model (nn.Module): the model, in eval mode.
        dtype (str): "fp32" or "bf16" (autocast).
    """

    def __init__(self, cfg: CfgNode, dtype: str = "fp32"):
        """
        Args:
            cfg (CfgNode): the model's config; ``INPUT.FORMAT`` must be "RGB" or "BGR".
            dtype (str): "fp32", or "bf16" to run under bfloat16 autocast.

        Raises:
            PredictorError: see :func:`check_dtype` and :func:`load_weights`.
        """
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise PredictorError(f"INPUT.FORMAT {cfg.INPUT.FORMAT!r}: expected RGB or BGR")
        check_dtype(dtype, cfg.MODEL.DEVICE)
        self.dtype = dtype
        self.input_format = cfg.INPUT.FORMAT
        self.model = build_model(cfg)
        self.model.eval()
        load_weights(self.model, cfg.MODEL.WEIGHTS)
        self.augmentations = build_deta_augmentations(cfg, is_train=False)[0]
        self.augmentation = T.AugmentationList(self.augmentations)

    def input_size(self, height: int, width: int) -> Tuple[int, int]:
        """(height, width) of the model input for an image of this size, without pixels.

        Inputs of equal size share forwards, so callers can plan batches from file headers.
        """
        for aug in self.augmentations:
            # Test-time augmentations look at the shape only; a broadcast view allocates nothing.
            dummy = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (height, width, 3))
            box = aug.get_transform(dummy).apply_box(np.array([[0.0, 0.0, width, height]]))[0]
            height, width = int(round(box[3] - box[1])), int(round(box[2] - box[0]))
        return height, width

    def _to_input(self, image_rgb: np.ndarray) -> dict:
        h, w = image_rgb.shape[:2]
        image = image_rgb if self.input_format == "RGB" else image_rgb[:, :, ::-1]
        aug_input = T.AugInput(np.ascontiguousarray(image))
        self.augmentation(aug_input)
        tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        return {"image": tensor, "height": h, "width": w}  # boxes come back in this size

    def _forward(self, inputs: List[dict]) -> List[Instances]:
        device = torch.device(self.model.device).type
        with torch.autocast(device, dtype=torch.bfloat16, enabled=self.dtype == "bf16"):
            outputs = self.model(inputs)
        results = []
        for output in outputs:
            instances = output["instances"].to("cpu")
            instances.pred_boxes.tensor = instances.pred_boxes.tensor.float()
            instances.scores = instances.scores.float()
            results.append(instances)
        return results

    @torch.no_grad()
    def __call__(
        self, images_rgb: Sequence[np.ndarray], batch_size: Optional[int] = None
    ) -> List[Instances]:
        """Detections of each HWC uint8 RGB image, in its own pixels, on CPU, in float32.

        Args:
            images_rgb: the images.
            batch_size (int, optional): most images per forward; ``None``: no limit. Inputs of
                the same size after the resize share forwards (see the module docstring).

        Returns:
            list[Instances]: one per image, in order.
        """
        inputs = [self._to_input(image) for image in images_rgb]
        groups: Dict[Tuple[int, ...], List[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(tuple(x["image"].shape), []).append(i)
        results: List[Optional[Instances]] = [None] * len(inputs)
        step = batch_size or max(len(inputs), 1)
        for indices in groups.values():
            for start in range(0, len(indices), step):
                chunk = indices[start : start + step]
                for i, instances in zip(chunk, self._forward([inputs[i] for i in chunk])):
                    results[i] = instances
        return results
