"""Official DETA checkpoints (jozhang97/DETA) → this project's layout.

Only the backbone is renamed: the transformer, heads and input projections already use the
official names, including the ``transformer.decoder.{class,bbox}_embed`` aliases of the shared
heads. Class heads indexed by raw category id (COCO's 91 rows, Objects365's 366) can be sliced to
Detectron2's contiguous classes (80, 365).
"""

import logging
import os
import re
from typing import Dict, List, Optional

import torch

from .io import load_weights_only

__all__ = [
    "COCO_CATEGORY_IDS",
    "O365_CATEGORY_IDS",
    "RAW_ID_HEADS",
    "ConversionError",
    "convert_official_state_dict",
    "convert_swin_classification",
    "convert_torchvision_resnet",
    "load_official_checkpoint",
    "check_against_model",
]

logger = logging.getLogger(__name__)

# The 80 category ids of COCO 2017 in Detectron2's contiguous order.
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
# Objects365 v2 ids are 1..365. The released O365 heads have a row per raw id plus an unused
# row 0, like COCO's 91: kept as is, Detectron2's contiguous class c would read row c, the
# logit of raw id c instead of c + 1.
O365_CATEGORY_IDS = list(range(1, 366))
# Rows of an official class head -> the raw ids of Detectron2's contiguous classes, in order.
RAW_ID_HEADS = {91: COCO_CATEGORY_IDS, 366: O365_CATEGORY_IDS}

_STEM = {"conv1": "stem.conv1", "bn1": "stem.conv1.norm"}
# torchvision block module → Detectron2 block module (FrozenBN sits inside the conv as .norm).
_BLOCK = {
    "downsample.0": "shortcut",
    "downsample.1": "shortcut.norm",
    "conv1": "conv1",
    "conv2": "conv2",
    "conv3": "conv3",
    "bn1": "conv1.norm",
    "bn2": "conv2.norm",
    "bn3": "conv3.norm",
}
_RESNET_KEY = re.compile(
    r"^backbone\.0\.body\.layer(\d)\.(\d+)\.(downsample\.[01]|conv\d|bn\d)\.(\w+)$"
)
_STEM_KEY = re.compile(r"^backbone\.0\.body\.(conv1|bn1)\.(\w+)$")
_KNOWN_PREFIXES = ("transformer.", "class_embed.", "bbox_embed.", "input_proj.")


class ConversionError(ValueError):
    """An official checkpoint that cannot be converted; the message lists the offending keys."""


def load_official_checkpoint(path: str) -> Dict:
    """Load an official ``.pth`` and return the whole checkpoint dict (weights-only unpickling,
    see :func:`~deta.checkpoint.io.load_weights_only`)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"official checkpoint {path!r} does not exist")
    try:
        ckpt = load_weights_only(path)
    except Exception as e:  # noqa: BLE001 - torch raises several types for corrupt files
        lines = [ln for ln in str(e).splitlines() if ln.strip() and "documentation" not in ln]
        reason = lines[-1] if lines else type(e).__name__
        raise ConversionError(f"{path!r} is not a readable torch checkpoint ({reason})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        keys = sorted(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ConversionError(
            f"{path!r} has no 'model' entry (found {keys}); not an official DETA checkpoint"
        )
    return ckpt


def _rename_resnet(key: str) -> Optional[str]:
    m = _STEM_KEY.match(key)
    if m:
        return f"backbone.{_STEM[m.group(1)]}.{m.group(2)}"
    m = _RESNET_KEY.match(key)
    if m and m.group(3) in _BLOCK:
        stage, block, module, leaf = m.groups()
        return f"backbone.res{int(stage) + 1}.{block}.{_BLOCK[module]}.{leaf}"
    return None


def _rename(key: str, backbone: str) -> Optional[str]:
    if key.startswith(_KNOWN_PREFIXES):
        return key
    if backbone == "swin" and key.startswith("backbone.0.body."):
        return "backbone." + key[len("backbone.0.body.") :]
    if backbone == "resnet":
        return _rename_resnet(key)
    return None


def _num_decoder_layers(state: Dict[str, torch.Tensor]) -> int:
    ids = {int(m.group(1)) for k in state for m in [re.match(r"^class_embed\.(\d+)\.", k)] if m}
    if not ids:
        raise ConversionError("no 'class_embed.N.*' keys: not a DETA / Deformable-DETR checkpoint")
    return max(ids)  # the last head is the first-stage head


def _slice_classes(state: Dict[str, torch.Tensor], num_dec: int) -> None:
    """Raw-id rows → contiguous rows (91 → 80, 366 → 365); the first-stage head keeps row 0
    (objectness)."""
    rows = state["class_embed.0.bias"].shape[0]
    if rows not in RAW_ID_HEADS:
        raise ConversionError(
            f"class_embed.0 has {rows} classes; slicing needs one of {sorted(RAW_ID_HEADS)}"
        )
    ids = RAW_ID_HEADS[rows]
    dec_rows = torch.as_tensor(ids)
    # First-stage head: only logit 0 is ever read; the other rows are trained as negatives only.
    enc_rows = torch.as_tensor([0] + ids[1:])
    for key in list(state):
        m = re.match(r"^(?:transformer\.decoder\.)?class_embed\.(\d+)\.(weight|bias)$", key)
        if m:
            if state[key].shape[0] != rows:
                raise ConversionError(f"{key} has {state[key].shape[0]} classes, not {rows}")
            index = enc_rows if int(m.group(1)) == num_dec else dec_rows
            state[key] = state[key][index].clone()


def convert_official_state_dict(
    official: Dict[str, torch.Tensor],
    slice_coco_classes: bool = False,
    *,
    slice_classes: bool = False,
) -> Dict[str, torch.Tensor]:
    """Rename an official ``ckpt['model']`` to this project's keys (float32 tensors).

    Args:
        official: the official state dict (R-50 or Swin-L backbone).
        slice_classes: map heads indexed by raw category id to Detectron2's contiguous classes:
            91-way COCO to 80, 366-way Objects365 to 365 (:data:`RAW_ID_HEADS`).
        slice_coco_classes: the older name of ``slice_classes``.

    Raises:
        ConversionError: listing every key that matches no known pattern.
    """
    if any(k.startswith("backbone.0.body.patch_embed") for k in official):
        backbone = "swin"
    elif any(k.startswith("backbone.0.body.conv1") for k in official):
        backbone = "resnet"
    else:
        raise ConversionError("unknown backbone: no 'backbone.0.body.conv1' or '.patch_embed' keys")
    out, unknown = {}, []
    for key, value in official.items():
        if key.endswith("num_batches_tracked") or key.endswith(("total_ops", "total_params")):
            continue
        new = _rename(key, backbone)
        if new is None:
            unknown.append(key)
            continue
        out[new] = value.float() if value.is_floating_point() else value
    if unknown:
        raise ConversionError(
            f"{len(unknown)} unknown keys in the official checkpoint: {unknown[:20]}"
        )
    if slice_classes or slice_coco_classes:
        _slice_classes(out, _num_decoder_layers(out))
    return out


def convert_torchvision_resnet(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """torchvision ResNet ImageNet weights → Detectron2 ``backbone.*`` keys (``fc`` dropped)."""
    out, unknown = {}, []
    for key, value in state.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        new = _rename_resnet("backbone.0.body." + key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown or not out:
        raise ConversionError(f"not a torchvision ResNet state dict; unknown keys: {unknown[:20]}")
    return out


def convert_swin_classification(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Microsoft Swin ImageNet classification weights → ``backbone.*`` keys.

    The classifier (``head.*``), the final ``norm.*`` and the stored shifted-window ``attn_mask``
    buffers are dropped, as the official DETA's non-strict load ignores them; ``norm1/2/3`` of the
    detection outputs stay at their initialisation.
    """
    state = state.get("model", state)
    out = {}
    for key, value in state.items():
        if key.startswith(("head.", "norm.")) or key.endswith("attn_mask"):
            continue
        if not key.startswith(("patch_embed.", "layers.", "absolute_pos_embed")):
            raise ConversionError(f"not a Swin classification checkpoint: unexpected key {key!r}")
        out["backbone." + key] = value
    return out


def check_against_model(converted: Dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Raise ``ConversionError`` listing missing, unexpected and shape-mismatched keys."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in converted and converted[k].shape != v.shape
    ]
    problems: List[str] = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {missing[:20]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {unexpected[:20]}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {shapes[:20]}")
    if problems:
        raise ConversionError(
            "converted checkpoint does not fit the config's model; " + "; ".join(problems)
        )
