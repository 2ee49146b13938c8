"""Shared loading of the official-implementation reference bundle (weights + outputs).

The bundle (``official_deta_r50_small.pth``, ``reference.pt``) is produced by the official DETA code
on CPU. Its location is ``$DETA_GOLDEN_DIR``, by default ``../shared/golden`` beside the checkout.
Without it the parity tests skip, saying so, unless ``$DETA_REQUIRE_GOLDEN=1`` (set by CI): then
they fail.
"""

import functools
import os
import unittest

import torch

from detectron2.modeling import build_model

import deta  # noqa: F401  registers DETA
from deta.checkpoint import convert_official_state_dict

from .config import load

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN_DIR = os.getenv("DETA_GOLDEN_DIR", os.path.join(REPO, "..", "shared", "golden"))
WEIGHTS = os.path.join(GOLDEN_DIR, "official_deta_r50_small.pth")
REFERENCE = os.path.join(GOLDEN_DIR, "reference.pt")

# The reduced official configuration of the bundle: deta.sh + 2/2 layers, FFN 512, 300 queries.
GOLDEN_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.DETA.NUM_CLASSES", 91,
    "MODEL.DETA.ENC_LAYERS", 2,
    "MODEL.DETA.DEC_LAYERS", 2,
    "MODEL.DETA.DIM_FEEDFORWARD", 512,
    "MODEL.DETA.NUM_QUERIES", 300,
    # The bundle was made with the grid_sample reference; the C++ kernel is compared separately.
    "MODEL.DETA.MSDA_IMPL", "pytorch",
]  # fmt: skip


def require_golden(test_case: unittest.TestCase) -> None:
    missing = [p for p in (WEIGHTS, REFERENCE) if not os.path.isfile(p)]
    if not missing:
        return
    message = f"official reference bundle not found: {', '.join(missing)}"
    if os.environ.get("DETA_REQUIRE_GOLDEN") == "1":
        raise AssertionError(f"{message} (DETA_REQUIRE_GOLDEN=1: the bundle is required)")
    raise unittest.SkipTest(f"{message}; set DETA_GOLDEN_DIR to run the parity tests")


def golden_cfg(*extra):
    return load(os.path.join(REPO, "configs", "Base-DETA.yaml"), *GOLDEN_OPTS, *extra)


@functools.lru_cache(maxsize=None)
def reference():
    return torch.load(REFERENCE, map_location="cpu", weights_only=True)


@functools.lru_cache(maxsize=None)
def official_state_dict():
    return torch.load(WEIGHTS, map_location="cpu", weights_only=True)["model"]


def golden_model(*extra, slice_coco_classes: bool = False):
    """The project's model with the bundle's weights converted and loaded strictly."""
    model = build_model(golden_cfg(*extra)).eval()
    state = convert_official_state_dict(official_state_dict(), slice_coco_classes)
    model.load_state_dict(state, strict=True)
    return model
