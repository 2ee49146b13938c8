"""Config lookup and model construction for the shipped configs (see the package docstring).

The yaml files live in the repository's ``configs/``; ``setup.py`` copies them into this package
(``deta/model_zoo/configs``) so that a wheel or a non-editable install has them too. A source
checkout (editable install) reads ``configs/`` directly, so edits there take effect at once.
"""

import os
from typing import List, Optional, Sequence

import torch

from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager

from ..checkpoint import (
    RAW_ID_HEADS,
    DetaCheckpointer,
    check_against_model,
    convert_official_state_dict,
    load_official_checkpoint,
    load_weights_only,
    save_atomic,
)
from ..config import add_deta_config

__all__ = ["get", "get_config", "get_config_file", "list_configs"]

_PACKAGED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
_SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "configs")


def _config_root() -> str:
    # A source checkout's configs/ first: an editable install also has a (possibly stale) copy.
    for root in (os.path.abspath(_SOURCE), _PACKAGED):
        if os.path.isfile(os.path.join(root, "Base-DETA.yaml")):
            return root
    raise FileNotFoundError(
        f"no DETA configs found in {_PACKAGED} (installed) or {os.path.abspath(_SOURCE)} "
        "(source checkout); reinstall the package"
    )


def list_configs() -> List[str]:
    """Every shipped config, relative to the config folder (e.g. ``quick_schedules/...``)."""
    root = _config_root()
    names = []
    for folder, _, files in os.walk(root):
        for f in files:
            if f.endswith(".yaml"):
                names.append(os.path.relpath(os.path.join(folder, f), root))
    return sorted(names)


def get_config_file(name: str) -> str:
    """Absolute path of a shipped config, e.g. ``get_config_file("deta_R_50_5scale_12ep.yaml")``."""
    path = os.path.join(_config_root(), name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no shipped config {name!r}; available: {list_configs()}")
    return path


def get_config(name: str, opts: Sequence = ()) -> CfgNode:
    """A Detectron2 config with the DETA keys, the named shipped config and ``opts`` merged."""
    cfg = get_cfg()
    add_deta_config(cfg)
    cfg.merge_from_file(get_config_file(name))
    cfg.merge_from_list(list(opts))
    return cfg


def _is_official(state: dict) -> bool:
    return any(k.startswith("backbone.0.") for k in state)


def _converted_path(path: str) -> str:
    stem = path[:-4] if path.endswith(".pth") else path
    return stem + ".d2.pth"


def _convert_official(path: str, model: torch.nn.Module, num_classes: int) -> str:
    """Convert an official checkpoint for ``model`` once; returns the cached ``*.d2.pth``."""
    cached = _converted_path(path)
    if os.path.isfile(cached) and os.path.getmtime(cached) >= os.path.getmtime(path):
        return cached
    official = load_official_checkpoint(path)["model"]
    heads = official.get("class_embed.0.weight")
    ids = RAW_ID_HEADS.get(heads.shape[0]) if heads is not None else None
    state = convert_official_state_dict(
        official, slice_classes=ids is not None and num_classes == len(ids)
    )
    check_against_model(state, model)
    save_atomic({"model": state, "source": os.path.basename(path)}, cached)
    return cached


def get(
    name: str, weights: Optional[str] = None, opts: Sequence = (), device: str = "cpu"
) -> torch.nn.Module:
    """The model of a shipped config in eval mode, with ``weights`` loaded if given.

    Args:
        name: a config name of :func:`list_configs`.
        weights: a checkpoint path or URL: this project's layout, or an official DETA
            ``.pth``, which is converted (heads sliced to 80 classes when the config has 80)
            and cached next to it as ``*.d2.pth`` for the next call.
        opts: config overrides ``[KEY, VALUE, ...]``.
    """
    cfg = get_config(name, ["MODEL.DEVICE", device, *opts])
    model = build_model(cfg).eval()
    if weights:
        local = PathManager.get_local_path(weights)
        state = load_weights_only(local)
        if isinstance(state, dict) and _is_official(state.get("model", {})):
            local = _convert_official(local, model, cfg.MODEL.DETA.NUM_CLASSES)
        DetaCheckpointer(model).load(local)
    return model
